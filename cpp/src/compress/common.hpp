#pragma once
// Helpers shared by the compressor implementations.
#include <cmath>
#include <cstdint>
#include <string>

#include "common/dispatch.hpp"
#include "common/parallel.hpp"
#include "efcomm/error.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// Slow path after a fused check found a non-finite value: finds the first one and throws
/// NonFiniteError naming it. Returns normally only if every element is finite (the caller's
/// reduction overflowed instead).
void throwIfNonFinite(const ConstTensorView& x, const std::string& who);

/// Number of kept coordinates for a ratio or an explicit k on a d-element input:
/// k = min(d, max(1, round(ratio * d))) (0 for d = 0).
int64_t keepCount(int64_t d, double ratio, int64_t k);

/// "ratio=0.01" or "k=100" for spec strings.
std::string keepSpec(double ratio, int64_t k);

/// Checks message parameters against the element count; throws CorruptMessageError.
inline void checkCount(bool ok, const char* what) { EFCOMM_CHECK_MSG(ok, what); }

}  // namespace efcomm
