#include "common/finite.hpp"

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "common/parallel.hpp"

namespace efcomm {

bool anyNonFinite(const ConstTensorView& x) {
  return dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const auto* p = static_cast<const uint8_t*>(x.data);
    return blockedReduce<uint32_t>(x.numel(), [&](int64_t lo, int64_t hi) {
      uint32_t b = 0;  // an integer OR: vectorizes
      for (int64_t i = lo; i < hi; ++i) b |= nonFiniteBit(loadAs<T>(p + i * static_cast<int64_t>(sizeof(T))));
      return b;
    }) != 0;
  });
}

}  // namespace efcomm
