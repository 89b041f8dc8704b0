#pragma once
// 16-bit float storage types and conversions. Arithmetic happens in float (or double for
// float64 inputs); these types only load and store. The CUDA kernels run these same functions
// (EFCOMM_HD): on the device, and on a host without F16C, the portable float16 conversions.
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/host_device.hpp"

#if defined(__F16C__) && !defined(__CUDA_ARCH__)
#include <immintrin.h>
#endif

namespace efcomm {

struct BF16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

/// The bits of a float / double and back (bit casts).
EFCOMM_HD inline uint32_t floatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
EFCOMM_HD inline float bitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}
EFCOMM_HD inline uint64_t doubleBits(double d) {
#if defined(__CUDA_ARCH__)
  return static_cast<uint64_t>(__double_as_longlong(d));
#else
  uint64_t u;
  std::memcpy(&u, &d, 8);
  return u;
#endif
}
EFCOMM_HD inline double bitsDouble(uint64_t u) {
#if defined(__CUDA_ARCH__)
  return __longlong_as_double(static_cast<long long>(u));
#else
  double d;
  std::memcpy(&d, &u, 8);
  return d;
#endif
}

/// bfloat16 bits -> float (exact).
EFCOMM_HD inline float bf16ToFloat(uint16_t b) { return bitsFloat(static_cast<uint32_t>(b) << 16); }

/// Round to nearest even; NaN stays NaN (quiet), overflow rounds to Inf as IEEE requires.
/// Branch-free so that conversion loops vectorize.
EFCOMM_HD inline uint16_t floatToBf16(float f) {
  const uint32_t u = floatBits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quietNan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quietNan : rounded);
}

/// float16 bits -> float (exact; subnormals normalized), without F16C.
EFCOMM_HD inline float f16ToFloatPortable(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);
  } else if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else {  // subnormal: normalize
      uint32_t e = 0;
      man <<= 1;
      while (!(man & 0x400u)) {
        ++e;
        man <<= 1;
      }
      u = sign | ((112u - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  }
  return bitsFloat(u);
}

/// float -> float16 bits without F16C: round to nearest even (IEEE), beyond the range to Inf,
/// NaN quiet.
EFCOMM_HD inline uint16_t floatToF16Portable(float f) {
  const uint32_t u = floatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65536 (65520 rounds up below)
  if (a < 0x38800000u) {                                                // subnormal or zero in f16
    if (a < 0x33000000u) return sign;                                   // < 2^-25 rounds to 0
    const uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
    const uint32_t shift = 126 - e;  // 14..24
    uint32_t r = m >> shift;
    const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1u))) ++r;
    return static_cast<uint16_t>(sign | r);
  }
  uint32_t r = a - 0x38000000u;  // rebias exponent 127 -> 15
  r += 0xfffu + ((r >> 13) & 1u);
  if (r >= 0x0f800000u) return static_cast<uint16_t>(sign | 0x7c00u);
  return static_cast<uint16_t>(sign | (r >> 13));
}

EFCOMM_HD inline float f16ToFloat(uint16_t h) {
#if defined(__F16C__) && !defined(__CUDA_ARCH__)
  return _cvtsh_ss(h);
#else
  return f16ToFloatPortable(h);
#endif
}

/// Round to nearest even (IEEE); values beyond the range become Inf.
EFCOMM_HD inline uint16_t floatToF16(float f) {
#if defined(__F16C__) && !defined(__CUDA_ARCH__)
  return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
  return floatToF16Portable(f);
#endif
}

/// d rounded to float by round-to-odd: truncated, then the last significand bit set when inexact.
/// Rounding that float to nearest even in a format of at most 22 significand bits (bfloat16,
/// float16) equals rounding d there directly, which rounding d to the nearest float first does
/// not (the first rounding can make a tie: 1 + 2^-8 + 2^-30 became bfloat16 1, not 1 + 2^-7).
/// Boldo & Melquiond, "Emulation of FMA and correctly rounded sums: proved algorithms using
/// rounding to odd", IEEE Trans. Computers 57(4), 2008, Theorem 1 (p >= 2 q + 2: 24 >= 2 * 11 + 2).
EFCOMM_HD inline float roundToOddFloat(double d) {
  const float f = static_cast<float>(d);  // nearest even
  const double back = static_cast<double>(f);
  if (d != d || back == d) return f;  // NaN, exact, ±Inf
  uint32_t u = floatBits(f);
  if (d > 0 ? back > d : back < d) --u;  // rounded away from zero (to Inf too): the float below
  return bitsFloat(u | 1u);
}
/// The float that a 16-bit conversion rounds: v itself, or a float64 rounded to odd.
EFCOMM_HD inline float floatForNarrowing(float v) { return v; }
EFCOMM_HD inline float floatForNarrowing(double v) { return roundToOddFloat(v); }

/// 1 when v is NaN or ±Inf (all-ones exponent), else 0. Integer-only, so an OR-reduction of it
/// vectorizes, unlike a floating-point accumulation that the compiler must keep in order.
EFCOMM_HD inline uint32_t nonFiniteBit(float v) { return (floatBits(v) & 0x7f800000u) == 0x7f800000u; }
EFCOMM_HD inline uint32_t nonFiniteBit(double v) {
  return (doubleBits(v) & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}
EFCOMM_HD inline uint32_t nonFiniteBit(BF16 v) { return (v.bits & 0x7f80u) == 0x7f80u; }
EFCOMM_HD inline uint32_t nonFiniteBit(F16 v) { return (v.bits & 0x7c00u) == 0x7c00u; }

/// Element access for kernels templated on the storage type T: load() widens to the compute
/// type (double for double, float otherwise), store() narrows with round-to-nearest-even.
template <typename T>
struct Elem;
template <>
struct Elem<float> {
  using Compute = float;
  EFCOMM_HD static float load(float v) { return v; }
  EFCOMM_HD static float store(float v) { return v; }
};
template <>
struct Elem<double> {
  using Compute = double;
  EFCOMM_HD static double load(double v) { return v; }
  EFCOMM_HD static double store(double v) { return v; }
};
template <>
struct Elem<BF16> {
  using Compute = float;
  EFCOMM_HD static float load(BF16 v) { return bf16ToFloat(v.bits); }
  EFCOMM_HD static BF16 store(float v) { return BF16{floatToBf16(v)}; }
};
template <>
struct Elem<F16> {
  using Compute = float;
  EFCOMM_HD static float load(F16 v) { return f16ToFloat(v.bits); }
  EFCOMM_HD static F16 store(float v) { return F16{floatToF16(v)}; }
};

/// v rounded once, to nearest even, to T (a 16-bit T through floatForNarrowing).
template <typename T>
EFCOMM_HD inline T roundFromDouble(double v) {
  if constexpr (std::is_same_v<T, double>) return v;
  else if constexpr (std::is_same_v<T, float>) return static_cast<float>(v);
  else return Elem<T>::store(roundToOddFloat(v));
}

}  // namespace efcomm
