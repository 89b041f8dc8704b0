#pragma once
// Runs a generic lambda with the C++ storage type of a DType:
//   dispatchDType(dt, [&](auto tag) { using T = typename decltype(tag)::type; ... });
// and asks whether a value fits a dtype.
#include <cmath>

#include "common/half.hpp"
#include "efcomm/error.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

template <typename T>
struct TypeTag {
  using type = T;
};

template <typename Fn>
decltype(auto) dispatchDType(DType dt, Fn&& fn) {
  switch (dt) {
    case DType::kFloat32: return fn(TypeTag<float>{});
    case DType::kFloat64: return fn(TypeTag<double>{});
    case DType::kBFloat16: return fn(TypeTag<BF16>{});
    case DType::kFloat16: return fn(TypeTag<F16>{});
  }
  throw InvalidArgument("unsupported dtype code " + std::to_string(static_cast<int>(dt)));
}

/// True when v, rounded to dtype dt as a decoder stores it (roundFromDouble), is finite: the
/// check of a decoded magnitude that validation makes, so that no valid message decodes to Inf.
inline bool fits(DType dt, double v) {
  return dispatchDType(dt, [&](auto tag) {
    using T = typename decltype(tag)::type;
    return std::isfinite(static_cast<double>(Elem<T>::load(roundFromDouble<T>(v))));
  });
}

}  // namespace efcomm
