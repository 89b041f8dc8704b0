#include "compress/common.hpp"

#include "common/spec.hpp"

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
