#pragma once
// Arithmetic that kernels and host code share (EFCOMM_HD, common/host_device.hpp), so the host
// tests (tests/cpp/test_cuda_host_*.cpp, built with g++) exercise the exact functions the
// kernels run. This header and the other hd_*.hpp headers include no CUDA header.
//
// The bit casts, 16-bit float conversions and Elem<T> the kernels use are common/half.hpp's.
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/half.hpp"
#include "common/host_device.hpp"
#include "common/rng.hpp"

namespace efcomm::cuda {

/// The CPU's deterministic reduction block (common/parallel.hpp kReduceBlock): kernels whose
/// sums must equal the CPU's bit for bit reduce in these blocks, in the CPU's order.
constexpr int64_t kCpuReduceBlock = int64_t{1} << 14;

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

/// Unsigned 64-bit division by a divisor fixed for a whole kernel, as a multiply-high, an add
/// and two shifts: a GPU has no integer divider, and `n / d` with a run-time d is a subroutine of
/// some 70 instructions, too slow inside a per-element loop. Granlund & Montgomery, "Division
/// by invariant integers using multiplication" (PLDI 1994), Figure 4.1: with l = ceil(log2 d),
/// m = floor(2^64 (2^l - d) / d) + 1, t = mulhi(m, n), n / d = (t + ((n - t) >> min(l, 1))) >>
/// max(l - 1, 0), exact for every n < 2^64 and 1 <= d < 2^64.
struct DivisorU64 {
  uint64_t magic = 1;
  uint32_t shift1 = 0, shift2 = 0;
};

/// The divisor d >= 1 (host code: the 128-bit division runs once, before the launch; d = 0
/// divides by zero).
inline DivisorU64 makeDivisorU64(uint64_t d) {
  uint32_t l = 0;
  while (l < 64 && (uint64_t{1} << l) < d) ++l;
  const unsigned __int128 gap = (static_cast<unsigned __int128>(1) << l) - d;  // 2^l - d < d
  DivisorU64 r;
  r.magic = static_cast<uint64_t>((gap << 64) / d) + 1;
  r.shift1 = l < 1 ? l : 1;
  r.shift2 = l > 1 ? l - 1 : 0;
  return r;
}

/// floor(n / d) for the divisor made by makeDivisorU64(d).
EFCOMM_HD inline uint64_t divide(uint64_t n, const DivisorU64& d) {
  const uint64_t t = mulHi64(d.magic, n);
  return (t + ((n - t) >> d.shift1)) >> d.shift2;
}

}  // namespace efcomm::cuda
