#pragma once
// 16-bit float storage types and conversions. Arithmetic happens in float (or double for
// float64 inputs); these types only load and store.
#include <cstdint>
#include <cstring>

#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace efcomm {

struct BF16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

inline float bf16ToFloat(uint16_t b) {
  uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

/// Round to nearest even; NaN stays NaN (quiet), overflow rounds to Inf as IEEE requires.
/// Branch-free so that conversion loops vectorize.
inline uint16_t floatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quietNan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quietNan : rounded);
}

inline float f16ToFloat(uint16_t h) {
#if defined(__F16C__)
  return _cvtsh_ss(h);
#else
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      int e = -1;
      do {
        ++e;
        man <<= 1;
      } while (!(man & 0x400u));
      u = sign | ((112u - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

/// Round to nearest even (IEEE); values beyond the range become Inf.
inline uint16_t floatToF16(float f) {
#if defined(__F16C__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return sign | 0x7e00u;
  if (a >= 0x47800000u) return sign | 0x7c00u;  // >= 65536: overflow (65520 rounds to inf below)
  if (a < 0x38800000u) {                          // subnormal or zero in f16
    if (a < 0x33000000u) return sign;             // < 2^-25 rounds to 0
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return sign | static_cast<uint16_t>(r);
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  if (r >= 0x0f800000u) return sign | 0x7c00u;
  return sign | static_cast<uint16_t>(r >> 13);
#endif
}

/// Element access for kernels templated on the storage type T: load() widens to the compute
/// type (double for double, float otherwise), store() narrows with round-to-nearest-even.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using Compute = float;
  static float load(float v) { return v; }
  static float store(float v) { return v; }
};
template <>
struct Elem<double> {
  using Compute = double;
  static double load(double v) { return v; }
  static double store(double v) { return v; }
};
template <>
struct Elem<BF16> {
  using Compute = float;
  static float load(BF16 v) { return bf16ToFloat(v.bits); }
  static BF16 store(float v) { return BF16{floatToBf16(v)}; }
};
template <>
struct Elem<F16> {
  using Compute = float;
  static float load(F16 v) { return f16ToFloat(v.bits); }
  static F16 store(float v) { return F16{floatToF16(v)}; }
};

}  // namespace efcomm
