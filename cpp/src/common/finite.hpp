#pragma once
// A whole-tensor NaN/Inf scan (the per-element test, nonFiniteBit, is in common/half.hpp).
#include "efcomm/tensor.hpp"

namespace efcomm {

/// True when x (any dtype, any alignment) holds a NaN or Inf: a parallel, vectorized scan, for
/// callers without a pass of their own to fuse the check into (the error-feedback step's RandK
/// check, state loads).
bool anyNonFinite(const ConstTensorView& x);

}  // namespace efcomm
