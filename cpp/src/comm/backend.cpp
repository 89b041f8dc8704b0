#include "comm/backend.hpp"

#include <cmath>
#include <cstdint>

#include "common/dispatch.hpp"

namespace efcomm::comm {

Clock::time_point deadlineAfter(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
}

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

size_t partBegin(size_t count, int n, int c) {
  const auto product = static_cast<unsigned __int128>(count) * static_cast<unsigned>(c);
  return static_cast<size_t>(product / static_cast<unsigned>(n));
}

std::string rankList(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

double resolveTimeout(std::optional<double> requested, double fallback) {
  const double t = requested.value_or(fallback);
  EFCOMM_CHECK(std::isfinite(t) && t > 0, "collective timeout must be finite and > 0 seconds, got ", t);
  return t;
}

void checkBuffer(const void* p, size_t bytes, const char* what) {
  EFCOMM_CHECK(p != nullptr || bytes == 0, what, ": null buffer for ", bytes, " bytes");
}

void checkSumBuffer(const void* buf, size_t count, DType dtype) {
  EFCOMM_CHECK(dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kBFloat16 ||
                   dtype == DType::kFloat16,
               "allreduceSum: dtype must be float32, float64, bfloat16 or float16, got ", dtypeName(dtype));
  checkBuffer(buf, count, "allreduceSum");
  EFCOMM_CHECK(reinterpret_cast<uintptr_t>(buf) % itemSize(dtype) == 0,
               "allreduceSum: buffer not aligned to ", itemSize(dtype), " bytes");
}

void addInto(void* acc, const void* x, size_t count, DType dtype) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* __restrict a = static_cast<T*>(acc);
    const T* __restrict b = static_cast<const T*>(x);
    // 16-bit types: each addition in float32, rounded to the type (Elem<T>).
    for (size_t i = 0; i < count; ++i) a[i] = Elem<T>::store(Elem<T>::load(a[i]) + Elem<T>::load(b[i]));
  });
}

}  // namespace efcomm::comm
