#pragma once
// BlockQuant's per-block and per-element arithmetic (cpp/src/compress/blockquant.cpp), EFCOMM_HD
// so that the host tests check it against the CPU path. `fused` follows the CPU build's FMA
// contraction (cpuContractsFma()), so scales, codes and decoded values match bit for bit.
#include <cfloat>
#include <cmath>
#include <cstdint>

#include "../common/hd.hpp"

namespace efcomm::cuda {

template <typename C>
struct QuantAffine {
  C lo, hi, s, a, inv, step, unscale;
};

template <typename C>
EFCOMM_HD inline C quantMax();
template <>
EFCOMM_HD inline float quantMax<float>() { return FLT_MAX; }
template <>
EFCOMM_HD inline double quantMax<double>() { return DBL_MAX; }

/// blockquant.cpp affine(): s = 2^k keeps every intermediate finite and non-zero.
template <typename C>
EFCOMM_HD inline QuantAffine<C> quantAffine(C lo, C hi, int levels, bool fused) {
  const C range = hi - lo;
  C s = 1;
  if (!(range <= quantMax<C>())) {
    s = C(0.25);
  } else if (range > 0 && range < C(0x1p-100)) {
    s = C(0x1p64);
  }
  const C a = mulRn(lo, s);
  const C rs = madd(fused, hi, s, -a);
  const C L = static_cast<C>(levels);
  const C unscale = s == C(1) ? C(1) : (s == C(0.25) ? C(4) : C(0x1p-64));  // 1 / s, exact
  return {lo, hi, s, a, rs > 0 ? L / rs : C(0), rs / L, unscale};
}

EFCOMM_HD inline int32_t roundToEven(float t) {
#if defined(__CUDA_ARCH__)
  return __float2int_rn(t);
#else
  return static_cast<int32_t>(std::nearbyint(t));
#endif
}
EFCOMM_HD inline int32_t roundToEven(double t) {
#if defined(__CUDA_ARCH__)
  return __double2int_rn(t);
#else
  return static_cast<int32_t>(std::nearbyint(t));
#endif
}

/// The code of value v: round_half_even((v s - a) inv), truncated to 8 bits as the CPU stores it.
template <typename C>
EFCOMM_HD inline uint32_t quantCode(C v, const QuantAffine<C>& f, bool fused) {
  const C t = mulRn(madd(fused, v, f.s, -f.a), f.inv);
  return static_cast<uint8_t>(roundToEven(t));
}

/// The decoded value of code q: (a + q step) / s clamped to [lo, hi].
template <typename C>
EFCOMM_HD inline C quantValue(uint32_t q, const QuantAffine<C>& f, bool fused) {
  C y = mulRn(madd(fused, static_cast<C>(q), f.step, f.a), f.unscale);
  y = y < f.lo ? f.lo : y;
  y = y > f.hi ? f.hi : y;
  return y;
}

/// The CPU's tie order of min/max (16 lanes seeded with element 0, lanes combined in order):
/// among equal values (only ±0 differ in bits) the one of smallest rank is kept.
EFCOMM_HD inline uint64_t quantRank(int64_t i) {
  return i == 0 ? 0 : 1 + (static_cast<uint64_t>(i % 16) << 40) + static_cast<uint64_t>(i / 16);
}

}  // namespace efcomm::cuda
