#include "compress/common.hpp"

#include <algorithm>
#include <cmath>

#include "common/bytes.hpp"
#include "common/spec.hpp"
#include "efcomm/message.hpp"

namespace efcomm {

void throwIfNonFinite(const ConstTensorView& x, const std::string& who) {
  const int64_t n = x.numel();
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = static_cast<const T*>(x.data);
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(Elem<T>::load(p[i]));
      if (!std::isfinite(v)) {
        throw NonFiniteError(who + ": input holds " + (std::isnan(v) ? "NaN" : "Inf") +
                             " at flat index " + std::to_string(i) + " of " + std::to_string(n) +
                             " (shape " + shapeString(x.shape) + ")");
      }
    }
  });
}

void checkPayloadValues(const uint8_t* values, int64_t count, DType dtype, const std::string& who, double scale) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto at = [&](int64_t i) { return loadAs<T>(values + i * static_cast<int64_t>(sizeof(T))); };
    using C = typename Elem<T>::Compute;
    const C s = static_cast<C>(scale);
    // Each value as the decoder makes it (value times the scale in the compute type, rounded to
    // T), so that what the sender checked on its side passes here exactly.
    const auto decoded = [&](int64_t i) { return Elem<T>::store(Elem<T>::load(at(i)) * s); };
    const uint32_t bad = blockedReduce<uint32_t>(count, [&](int64_t lo, int64_t hi) {
      uint32_t b = 0;  // an integer OR: vectorizes
      for (int64_t i = lo; i < hi; ++i) b |= nonFiniteBit(at(i)) | nonFiniteBit(decoded(i));
      return b;
    });
    if (!bad) return;
    for (int64_t i = 0; i < count; ++i) {
      const double v = static_cast<double>(Elem<T>::load(at(i)));
      EFCOMM_CHECK_MSG(std::isfinite(v) && !nonFiniteBit(decoded(i)), who, ": payload value ", i, " of ", count,
                       std::isfinite(v) ? " decodes beyond the " + dtypeName(dtype) + " range"
                                        : std::string(" is ") + (std::isnan(v) ? "NaN" : "Inf"),
                       ": efcomm never sends one (a crafted message)");
    }
  });
}

int64_t keepCount(int64_t d, double ratio, int64_t k) {
  if (d <= 0) return 0;
  if (k > 0) return std::min(d, k);
  const double r = std::llround(ratio * static_cast<double>(d));
  return std::min<int64_t>(d, std::max<int64_t>(1, static_cast<int64_t>(r)));
}

std::string keepSpec(double ratio, int64_t k) {
  return k > 0 ? "k=" + std::to_string(k) : "ratio=" + formatDouble(ratio);
}

}  // namespace efcomm
