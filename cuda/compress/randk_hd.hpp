#pragma once
// RandK's draw (cpp/src/compress/randk.cpp drawIndices: Robert Floyd's algorithm fed by
// SplitMix64(drawKey(seed, step))), reformulated for parallel threads with the same result:
//
// Step i (0..k-1) handles j = base + i (base = d - k) and draws t_i = below(j + 1) from the
// generator's i-th output x_i = mix64(s0 + (i + 1) gamma) (a rejection in Lemire's method, with
// probability below 2^-38 per step, shifts the stream: then the t_i are redrawn sequentially).
// Floyd marks t_i unless it is already marked ("collision" C_i), and then marks j. A value
// v < base can only be marked as some t, so it is marked before step i iff an earlier step
// drew v. A value v >= base is marked before step i (v < j) iff an earlier step drew it or step
// v - base collided. Hence, with notFirst_i = "an earlier step drew the same value":
//   C_i = notFirst_i or (base <= t_i < j and C_{t_i - base}),
// a chain through strictly decreasing steps. The kept set is {t_i : not C_i} + {j : C_i}.
#include <cstdint>

#include "../common/hd.hpp"
#include "common/rng.hpp"

namespace efcomm::cuda {

/// t_i = below(bound) from the generator's i-th output, assuming no earlier rejection; sets
/// `rejected` when this draw itself would reject (the stream then differs from here on).
EFCOMM_HD inline uint64_t floydDraw(uint64_t s0, uint64_t i, uint64_t bound, bool& rejected) {
  const uint64_t x = mix64(s0 + (i + 1) * kSplitMixGamma);
  const uint64_t l = x * bound;
  if (l < bound) {
    const uint64_t t = (0 - bound) % bound;
    if (l < t) rejected = true;
  }
  return mulHi64(x, bound);
}

/// The t_i of all k steps, sequentially (the exact stream, rejections included).
EFCOMM_HD inline void floydDrawSequential(uint64_t s0, uint64_t base, uint64_t k, uint64_t* t) {
  SplitMix64 g(s0);
  for (uint64_t i = 0; i < k; ++i) t[i] = g.below(base + i + 1);
}

/// C_i by walking the chain; notFirst[i] != 0 when an earlier step drew t[i].
EFCOMM_HD inline bool floydCollides(uint64_t i, uint64_t base, const uint64_t* t, const uint8_t* notFirst) {
  for (;;) {
    if (notFirst[i]) return true;
    const uint64_t v = t[i];
    if (v >= base && v < base + i) {
      i = v - base;
    } else {
      return false;
    }
  }
}

/// The position step i keeps.
EFCOMM_HD inline uint64_t floydKept(uint64_t i, uint64_t base, const uint64_t* t, const uint8_t* notFirst) {
  return floydCollides(i, base, t, notFirst) ? base + i : t[i];
}

}  // namespace efcomm::cuda
