#pragma once
// QSGD's per-element arithmetic (cpp/src/compress/qsgd.cpp quantizeChunk), EFCOMM_HD so that the
// host tests check it against the CPU path; `fused` follows the CPU build's FMA contraction.
#include <cmath>
#include <cstdint>

#include "../common/hd.hpp"
#include "common/rng.hpp"

namespace efcomm::cuda {

/// The level xi_j of element i with value v: floor(min(|v| pre r + 1/2, s + 1/2) + u_i) with
/// u_i = int32(uniformBits(key, i)) / 2^32.
EFCOMM_HD inline int qsgdLevel(double v, double pre, double r, int s, bool fused, uint64_t key, uint64_t i) {
  const double top = s + 0.5;
  const double m = madd(fused, mulRn(std::fabs(v), pre), r, 0.5);
  const double a = m < top ? m : top;
  const double u = static_cast<double>(static_cast<int32_t>(uniformBits(key, i))) * 0x1p-32;
  return static_cast<int>(addRn(a, u));
}

/// The offset code s + sign(v) level.
EFCOMM_HD inline uint32_t qsgdCode(double v, int level, int s) { return static_cast<uint32_t>(s + (v < 0 ? -level : level)); }

}  // namespace efcomm::cuda
