#pragma once
// The counter-based generator of cpp/src/common/rng.hpp for kernels: the same functions, bit
// for bit, so a kernel draws what the CPU path draws for the same (seed, step, index).
// SplitMix64::below uses a 128-bit product, here __umul64hi on the device.
#include <cstdint>

#include "hd.hpp"

namespace efcomm::cuda {

EFCOMM_HD inline uint64_t hdMix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

EFCOMM_HD inline uint64_t hdDrawKey(uint64_t seed, uint64_t step) {
  return hdMix64(hdMix64(seed ^ 0x6a09e667f3bcc909ULL) ^ (step + 0x9e3779b97f4a7c15ULL));
}

struct HdRunKey {
  uint32_t lo, hi;
};
EFCOMM_HD inline HdRunKey hdRunKey(uint64_t key, uint64_t i) {
  return {static_cast<uint32_t>(key),
          static_cast<uint32_t>(key >> 32) ^ static_cast<uint32_t>((i >> 32) * 0x9e3779b9u)};
}
EFCOMM_HD inline uint32_t hdUniformBits(HdRunKey k, uint32_t i) {
  uint32_t x = (i ^ k.lo) + k.hi;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}
/// rng.hpp uniformBits(key, i).
EFCOMM_HD inline uint32_t hdUniformBits(uint64_t key, uint64_t i) {
  return hdUniformBits(hdRunKey(key, i), static_cast<uint32_t>(i));
}

/// High 64 bits of a * b.
EFCOMM_HD inline uint64_t hdMulHi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

/// rng.hpp SplitMix64 (next, below) for sequential draws.
struct HdSplitMix64 {
  uint64_t s;
  EFCOMM_HD explicit HdSplitMix64(uint64_t seed) : s(seed) {}
  EFCOMM_HD uint64_t next() { return hdMix64(s += 0x9e3779b97f4a7c15ULL); }
  /// Uniform integer in [0, bound) (Lemire 2019), the same rejections as the CPU.
  EFCOMM_HD uint64_t below(uint64_t bound) {
    uint64_t x = next();
    uint64_t l = x * bound;
    uint64_t h = hdMulHi64(x, bound);
    if (l < bound) {
      const uint64_t t = (0 - bound) % bound;
      while (l < t) {
        x = next();
        l = x * bound;
        h = hdMulHi64(x, bound);
      }
    }
    return h;
  }
};

}  // namespace efcomm::cuda
