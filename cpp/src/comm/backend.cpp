#include "comm/backend.hpp"

#include <cmath>
#include <cstdint>

#include "common/half.hpp"

namespace efcomm::comm {

Clock::time_point deadlineAfter(double seconds) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds));
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

namespace {
template <typename T>
void addTyped(T* __restrict acc, const T* __restrict x, size_t count) {
  for (size_t i = 0; i < count; ++i) acc[i] += x[i];
}

// 16-bit arithmetic: each addition in float32, rounded to the 16-bit type (nearest even).
template <float (*kWiden)(uint16_t), uint16_t (*kRound)(float)>
void addHalf(uint16_t* __restrict acc, const uint16_t* __restrict x, size_t count) {
  for (size_t i = 0; i < count; ++i) acc[i] = kRound(kWiden(acc[i]) + kWiden(x[i]));
}
}  // namespace

void addInto(void* acc, const void* x, size_t count, DType dtype) {
  switch (dtype) {
    case DType::kFloat32: addTyped(static_cast<float*>(acc), static_cast<const float*>(x), count); break;
    case DType::kFloat64: addTyped(static_cast<double*>(acc), static_cast<const double*>(x), count); break;
    case DType::kBFloat16:
      addHalf<bf16ToFloat, floatToBf16>(static_cast<uint16_t*>(acc), static_cast<const uint16_t*>(x), count);
      break;
    case DType::kFloat16:
      addHalf<f16ToFloat, floatToF16>(static_cast<uint16_t*>(acc), static_cast<const uint16_t*>(x), count);
      break;
    default: throw InvalidArgument("allreduceSum: unsupported dtype " + dtypeName(dtype));
  }
}

}  // namespace efcomm::comm
