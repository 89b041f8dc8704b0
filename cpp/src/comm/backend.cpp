#include "comm/backend.hpp"

#include <cmath>
#include <cstdint>

namespace efcomm::comm {

double resolveTimeout(std::optional<double> requested, double fallback) {
  const double t = requested.value_or(fallback);
  EFCOMM_CHECK(std::isfinite(t) && t > 0, "collective timeout must be finite and > 0 seconds, got ", t);
  return t;
}

void checkBuffer(const void* p, size_t bytes, const char* what) {
  EFCOMM_CHECK(p != nullptr || bytes == 0, what, ": null buffer for ", bytes, " bytes");
}

void checkSumBuffer(const void* buf, size_t count, DType dtype) {
  EFCOMM_CHECK(dtype == DType::kFloat32 || dtype == DType::kFloat64,
               "allreduceSum: dtype must be float32 or float64, got ", dtypeName(dtype));
  checkBuffer(buf, count, "allreduceSum");
  EFCOMM_CHECK(reinterpret_cast<uintptr_t>(buf) % itemSize(dtype) == 0,
               "allreduceSum: buffer not aligned to ", itemSize(dtype), " bytes");
}

namespace {
template <typename T>
void addTyped(T* __restrict acc, const T* __restrict x, size_t count) {
  for (size_t i = 0; i < count; ++i) acc[i] += x[i];
}
}  // namespace

void addInto(void* acc, const void* x, size_t count, DType dtype) {
  if (dtype == DType::kFloat32) {
    addTyped(static_cast<float*>(acc), static_cast<const float*>(x), count);
  } else {
    addTyped(static_cast<double*>(acc), static_cast<const double*>(x), count);
  }
}

}  // namespace efcomm::comm
