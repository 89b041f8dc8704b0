#pragma once
// Helpers shared by the compressor implementations.
#include <cmath>
#include <cstdint>
#include <cstring>
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

/// Validation of the `count` values of `dtype` at `values` that a sparse message carries as they
/// are (TopK, RandK: decoders store them, times RandK's d/k when `scale` != 1): CorruptMessageError
/// for one that is or decodes to NaN or Inf, which efcomm's compressors never send (a crafted
/// message whose checksum was made to match). Cheap: k values. Identity and cast payloads are
/// not scanned (a second pass over the whole payload; the checksum guards them against damage).
void checkPayloadValues(const uint8_t* values, int64_t count, DType dtype, const std::string& who, double scale = 1);

/// Number of kept coordinates for a ratio or an explicit k on a d-element input:
/// k = min(d, max(1, round(ratio * d))) (0 for d = 0).
int64_t keepCount(int64_t d, double ratio, int64_t k);

/// "ratio=0.01" or "k=100" for spec strings.
std::string keepSpec(double ratio, int64_t k);

}  // namespace efcomm
