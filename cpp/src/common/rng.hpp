#pragma once
// Counter-based randomness: every random number is a pure function of (seed, step, index), so
// any rank can replay another rank's draw, kernels can run in any thread order, and no
// generator state is carried between calls. The CUDA kernels run these same functions
// (EFCOMM_HD), so a kernel draws what the CPU path draws for the same (seed, step, index).
#include <cstdint>

#include "common/host_device.hpp"

namespace efcomm {

/// SplitMix64's increment (2^64 / the golden ratio).
constexpr uint64_t kSplitMixGamma = 0x9e3779b97f4a7c15ULL;

/// SplitMix64 finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
EFCOMM_HD inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Key of one draw: mixes the compressor's seed and the step.
EFCOMM_HD inline uint64_t drawKey(uint64_t seed, uint64_t step) {
  return mix64(mix64(seed ^ 0x6a09e667f3bcc909ULL) ^ (step + kSplitMixGamma));
}

/// The part of draw `key` that depends on the high 32 bits of index i. Kernels walking a range
/// of indices with one value of i >> 32 (any range inside an aligned run of 2^32) hoist it out
/// of the loop and iterate a 32-bit index, which vectorizes better.
struct RunKey {
  uint32_t lo, hi;
};
EFCOMM_HD inline RunKey runKey(uint64_t key, uint64_t i) {
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32) ^ static_cast<uint32_t>((i >> 32) * 0x9e3779b9u)};
}

/// uniformBits(key, i) == uniformBits(runKey(key, i), uint32_t(i)).
EFCOMM_HD inline uint32_t uniformBits(RunKey k, uint32_t i) {
  uint32_t x = (i ^ k.lo) + k.hi;
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

/// 32 uniform bits for element i of draw `key`: a 32-bit integer hash ("lowbias32", Wellons)
/// of the low index bits keyed with key and the high index bits. Cheap enough to vectorize
/// (32-bit multiplies) inside compression kernels.
EFCOMM_HD inline uint32_t uniformBits(uint64_t key, uint64_t i) { return uniformBits(runKey(key, i), static_cast<uint32_t>(i)); }

/// High 64 bits of a * b.
EFCOMM_HD inline uint64_t mulHi64(uint64_t a, uint64_t b) {
#if defined(__CUDA_ARCH__)
  return __umul64hi(a, b);
#else
  return static_cast<uint64_t>((static_cast<unsigned __int128>(a) * b) >> 64);
#endif
}

/// Sequential generator for algorithms that need a stream (index sampling, PowerSGD init).
class SplitMix64 {
 public:
  EFCOMM_HD explicit SplitMix64(uint64_t seed) : s_(seed) {}
  EFCOMM_HD uint64_t next() { return mix64(s_ += kSplitMixGamma); }
  /// Uniform integer in [0, bound) without modulo bias (Lemire 2019): the high half of
  /// next() * bound, redrawn while the low half falls below 2^64 mod bound.
  EFCOMM_HD uint64_t below(uint64_t bound) {
    uint64_t x = next();
    uint64_t l = x * bound;
    if (l < bound) {
      const uint64_t t = (0 - bound) % bound;
      while (l < t) {
        x = next();
        l = x * bound;
      }
    }
    return mulHi64(x, bound);
  }
  /// Uniform double in [0, 1).
  EFCOMM_HD double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t s_;
};

}  // namespace efcomm
