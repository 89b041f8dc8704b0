#pragma once
// Arithmetic that kernels and host code share (EFCOMM_HD, common/host_device.hpp), so the host
// tests (tests/cpp/test_cuda_host_*.cpp, built with g++) exercise the exact functions the
// kernels run. This header and the other hd_*.hpp headers include no CUDA header.
//
// Here: bit casts and the 16-bit float conversions of cpp/src/common/half.hpp (the same
// rounding: nearest even, NaN quieted, overflow to Inf), plus DElem<T>, the device twin of
// Elem<T> (load widens T to its compute type, store narrows).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/half.hpp"  // the storage types BF16 and F16 (host functions are not used here)
#include "common/host_device.hpp"

namespace efcomm::cuda {

/// The CPU's deterministic reduction block (common/parallel.hpp kReduceBlock): kernels whose
/// sums must equal the CPU's bit for bit reduce in these blocks, in the CPU's order.
constexpr int64_t kCpuReduceBlock = int64_t{1} << 14;

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


/// Arithmetic with explicit rounding, so that the compiler cannot contract a multiply and an
/// add into an FMA (nvcc does by default) and kernels can follow the CPU exactly: `fused`
/// selects a fused multiply-add where the CPU build contracts (cpuContractsFma()).
EFCOMM_HD inline float mulRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
EFCOMM_HD inline double mulRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
EFCOMM_HD inline float addRn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
EFCOMM_HD inline double addRn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
EFCOMM_HD inline float fmaRn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
EFCOMM_HD inline double fmaRn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
/// a * b + c as the CPU computes it: fused when its build contracts, else two roundings.
template <typename C>
EFCOMM_HD inline C madd(bool fused, C a, C b, C c) {
  return fused ? fmaRn(a, b, c) : addRn(mulRn(a, b), c);
}

/// bfloat16 bits -> float (exact).
EFCOMM_HD inline float hdBf16ToFloat(uint16_t b) { return bitsFloat(static_cast<uint32_t>(b) << 16); }

/// float -> bfloat16 bits: round to nearest even, NaN stays NaN (quiet), overflow to Inf
/// (half.hpp floatToBf16, bit for bit).
EFCOMM_HD inline uint16_t hdFloatToBf16(float f) {
  const uint32_t u = floatBits(f);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const uint32_t quietNan = (u >> 16) | 0x40u;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? quietNan : rounded);
}

/// float16 bits -> float (exact; subnormals normalized).
EFCOMM_HD inline float hdF16ToFloat(uint16_t h) {
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

/// float -> float16 bits: round to nearest even (IEEE), beyond the range to Inf, NaN quiet.
EFCOMM_HD inline uint16_t hdFloatToF16(float f) {
  const uint32_t u = floatBits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);
  if (a >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);
  if (a < 0x38800000u) {                                  // subnormal or zero in f16
    if (a < 0x33000000u) return sign;                     // < 2^-25 rounds to 0
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

/// Element access for kernels templated on the storage type T (float, double, BF16, F16):
/// Compute is double for double and float otherwise; store rounds to nearest even.
template <typename T>
struct DElem;
template <>
struct DElem<float> {
  using Compute = float;
  EFCOMM_HD static float load(float v) { return v; }
  EFCOMM_HD static float store(float v) { return v; }
};
template <>
struct DElem<double> {
  using Compute = double;
  EFCOMM_HD static double load(double v) { return v; }
  EFCOMM_HD static double store(double v) { return v; }
};
template <>
struct DElem<BF16> {
  using Compute = float;
  EFCOMM_HD static float load(BF16 v) { return hdBf16ToFloat(v.bits); }
  EFCOMM_HD static BF16 store(float v) { return BF16{hdFloatToBf16(v)}; }
};
template <>
struct DElem<F16> {
  using Compute = float;
  EFCOMM_HD static float load(F16 v) { return hdF16ToFloat(v.bits); }
  EFCOMM_HD static F16 store(float v) { return F16{hdFloatToF16(v)}; }
};

/// 1 when v is NaN or ±Inf (all-ones exponent), as compress/common.hpp nonFiniteBit.
EFCOMM_HD inline uint32_t nonFinite(float v) { return (floatBits(v) & 0x7f800000u) == 0x7f800000u; }
EFCOMM_HD inline uint32_t nonFinite(double v) {
  return (doubleBits(v) & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
}
EFCOMM_HD inline uint32_t nonFinite(BF16 v) { return (v.bits & 0x7f80u) == 0x7f80u; }
EFCOMM_HD inline uint32_t nonFinite(F16 v) { return (v.bits & 0x7c00u) == 0x7c00u; }

}  // namespace efcomm::cuda
