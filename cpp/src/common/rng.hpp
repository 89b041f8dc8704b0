#pragma once
// Counter-based randomness: every random number is a pure function of (seed, step, index), so
// any rank can replay another rank's draw, kernels can run in any thread order, and no
// generator state is carried between calls.
#include <cstdint>

namespace efcomm {

/// SplitMix64 finalizer (Steele, Lea, Flood 2014): a bijective 64-bit mixer.
inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

/// Key of one draw: mixes the compressor's seed and the step.
inline uint64_t drawKey(uint64_t seed, uint64_t step) {
  return mix64(mix64(seed ^ 0x6a09e667f3bcc909ULL) ^ (step + 0x9e3779b97f4a7c15ULL));
}

/// The part of draw `key` that depends on the high 32 bits of index i. Kernels walking a range
/// of indices with one value of i >> 32 (any range inside an aligned run of 2^32) hoist it out
/// of the loop and iterate a 32-bit index, which vectorizes better.
struct RunKey {
  uint32_t lo, hi;
};
inline RunKey runKey(uint64_t key, uint64_t i) {
  return {static_cast<uint32_t>(key), static_cast<uint32_t>(key >> 32) ^ static_cast<uint32_t>((i >> 32) * 0x9e3779b9u)};
}

/// uniformBits(key, i) == uniformBits(runKey(key, i), uint32_t(i)).
inline uint32_t uniformBits(RunKey k, uint32_t i) {
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
inline uint32_t uniformBits(uint64_t key, uint64_t i) { return uniformBits(runKey(key, i), static_cast<uint32_t>(i)); }

/// Sequential generator for algorithms that need a stream (index sampling, PowerSGD init).
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : s_(seed) {}
  uint64_t next() { return mix64(s_ += 0x9e3779b97f4a7c15ULL); }
  /// Uniform integer in [0, bound) without modulo bias (Lemire 2019).
  uint64_t below(uint64_t bound) {
    __uint128_t m = static_cast<__uint128_t>(next()) * bound;
    uint64_t l = static_cast<uint64_t>(m);
    if (l < bound) {
      const uint64_t t = -bound % bound;
      while (l < t) {
        m = static_cast<__uint128_t>(next()) * bound;
        l = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }
  /// Uniform double in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  uint64_t s_;
};

}  // namespace efcomm
