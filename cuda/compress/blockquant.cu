// BlockQuant on the GPU (cpp/src/compress/blockquant.cpp): per block of `block` elements the
// (min, max) pair in the compute precision, then b-bit codes round_half_even((x - min) L /
// (max - min)) in one little-endian bit stream. G lanes (a power of two <= 32, <= block/8)
// share a block, each lane 8 elements per step: one read for min/max (warp shuffles), a second
// from cache to quantize. min/max keep the CPU's tie order (the sign of a zero bound).
#include <algorithm>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "compress/blockquant_hd.hpp"
#include "compress/codec_util.hpp"
#include "compress/layouts.hpp"

namespace efcomm::cuda {

namespace {

using compress::blockquant::numBlocks;
using compress::blockquant::paramBytes;
using compress::blockquant::payloadBytes;
using compress::blockquant::scaleBytes;
using QuantParams = compress::blockquant::Layout;

// Lanes per block: the largest power of two <= min(32, block / 8).
int lanesFor(int64_t block) {
  int g = 1;
  while (g < 32 && 2 * g <= block / 8) g *= 2;
  return g;
}

// The fast kernels' layout: one group of 8 per lane (block = 8 lanesFor(block)), float compute.
bool fastLayout(int64_t block, DType dt) { return block == 8 * lanesFor(block) && dt != DType::kFloat64; }

template <typename C>
struct MinMax {
  C lo, hi;
  uint64_t rlo, rhi;
};

template <typename C>
__device__ __forceinline__ void mergeMinMax(MinMax<C>& m, C vlo, uint64_t rlo, C vhi, uint64_t rhi) {
  if (vlo < m.lo || (vlo == m.lo && rlo < m.rlo)) m.lo = vlo, m.rlo = rlo;
  if (vhi > m.hi || (vhi == m.hi && rhi < m.rhi)) m.hi = vhi, m.rhi = rhi;
}

// Reads the 8 elements of group gi of a block (the last group may be short: `count`).
template <typename T, bool kVec>
__device__ __forceinline__ int loadGroup8(const T* blk, int64_t len, int64_t gi, T (&v)[8]) {
  const int count = len - 8 * gi < 8 ? static_cast<int>(len - 8 * gi) : 8;
  if (count == 8) {
    load8<T, kVec>(blk, gi, v);
  } else {
    for (int k = 0; k < 8; ++k) v[k] = k < count ? blk[8 * gi + k] : blk[0];
  }
  return count;
}

template <typename T, bool kVec>
__global__ void encodeKernel(const T* in, int64_t d, int64_t block, int bits, int G, bool fused, uint8_t* scales,
                             uint8_t* codes, uint32_t* flag) {
  using C = typename Elem<T>::Compute;
  const int lane = threadIdx.x & 31, sub = lane & (G - 1);
  const unsigned mask = G == 32 ? 0xffffffffu : ((1u << G) - 1) << (lane & ~(G - 1));
  const int64_t nb = numBlocks(d, block);
  const int64_t perWarp = 32 / G;
  const int64_t warps = gridThreads() / 32;
  uint32_t bad = 0;
  // Every lane of a warp runs the same number of outer iterations (shuffles are group-wide).
  for (int64_t base = (globalThread() / 32) * perWarp; base < nb; base += warps * perWarp) {
    const int64_t b = base + (lane / G);
    const bool live = b < nb;
    const int64_t start = live ? b * block : 0;
    const int64_t len = live ? (d - start < block ? d - start : block) : 0;
    const T* blk = in + start;
    const int64_t groups = (len + 7) / 8;
    MinMax<C> m;
    m.lo = m.hi = live ? Elem<T>::load(blk[0]) : C(0);
    m.rlo = m.rhi = 0;
    for (int64_t gi = sub; gi < groups; gi += G) {
      T v[8];
      const int count = loadGroup8<T, kVec>(blk, len, gi, v);
      for (int k = 0; k < count; ++k) {
        const C x = Elem<T>::load(v[k]);
        bad |= nonFiniteBit(v[k]);
        const uint64_t r = quantRank(8 * gi + k);
        mergeMinMax(m, x, r, x, r);
      }
    }
    for (int o = 1; o < G; o <<= 1) {
      const C olo = __shfl_xor_sync(mask, m.lo, o), ohi = __shfl_xor_sync(mask, m.hi, o);
      const uint64_t orlo = __shfl_xor_sync(mask, m.rlo, o), orhi = __shfl_xor_sync(mask, m.rhi, o);
      mergeMinMax(m, olo, orlo, ohi, orhi);
    }
    if (!live) continue;
    if (sub == 0) {
      C* sc = reinterpret_cast<C*>(scales) + 2 * b;
      sc[0] = m.lo;
      sc[1] = m.hi;
    }
    const QuantAffine<C> f = quantAffine(m.lo, m.hi, (1 << bits) - 1, fused);
    uint8_t* out = codes + start * bits / 8;
    for (int64_t gi = sub; gi < groups; gi += G) {
      T v[8];
      const int count = loadGroup8<T, kVec>(blk, len, gi, v);
      uint64_t word = 0;
      for (int k = 0; k < 8; ++k)
        if (k < count) word |= static_cast<uint64_t>(quantCode(Elem<T>::load(v[k]), f, fused)) << (k * bits);
      uint8_t* dst = out + gi * bits;
      if (count == 8) {
        if (bits == 8) *reinterpret_cast<uint2*>(dst) = make_uint2(static_cast<uint32_t>(word), static_cast<uint32_t>(word >> 32));
        else if (bits == 4) *reinterpret_cast<uint32_t*>(dst) = static_cast<uint32_t>(word);
        else *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(word);
      } else {
        for (int q = 0; q < (count * bits + 7) / 8; ++q) dst[q] = static_cast<uint8_t>(word >> (8 * q));
      }
    }
  }
  raiseMailFlag(flag, bad);
}

// ---- the fast path: one group of 8 per lane (block = 8 G, block <= 256), float compute ----
//
// A warp holds 32 / G quantization blocks per row and kStreamUnroll rows per step, loaded
// before any arithmetic, and keeps them in registers: one read of x. min/max are plain float
// reductions over the G lanes: equal non-zero values have equal bits, so the CPU's tie order
// only matters for zeros, whose sign is then taken from the zero of smallest CPU rank (a second
// reduction, only for blocks whose min or max is zero).

// The CPU's rank of in-block index i (< 2^32) as 32 bits: element 0 first, then by (i % 16, i / 16).
__device__ __forceinline__ uint32_t rank32(uint32_t i) { return (i & 15u) << 28 | i >> 4; }

// One grid-stride step of the fast encoder: warp rows row0 .. row0 + U - 1. kFull: every group
// of the step is whole (8 elements, inside the vector): no bounds checks, no divergent branches
// (every step but the last). kG: the lanes per block when fixed at compile time (32: block
// 256, the default; the shuffle levels unrolled), else 0 and G.
template <typename T, bool kVec, int kG, bool kFull>
__device__ __forceinline__ void encodeFastStep(const T* in, int64_t d, int64_t row0, int G, int bits, bool fused,
                                               uint8_t* scales, uint8_t* codes, uint32_t& bad) {
  constexpr int U = kStreamUnroll;
  const int lanes = kG ? kG : G;
  const int shift = kG ? __ffs(kG) - 1 : __ffs(G) - 1;  // lanes is a power of two: g / lanes = g >> shift
  const int lane = threadIdx.x & 31, sub = lane & (lanes - 1);
  const int64_t groups = (d + 7) / 8;
  T v[U][8];
  int count[U];
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t g = (row0 + u) * 32 + lane;
    if constexpr (kFull) {
      count[u] = 8;
      load8<T, kVec>(in, g, v[u]);
    } else {
      count[u] = g < groups ? (d - 8 * g < 8 ? static_cast<int>(d - 8 * g) : 8) : 0;
      if (count[u] == 8) {
        load8<T, kVec>(in, g, v[u]);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) v[u][k] = k < count[u] ? in[8 * g + k] : T{};
      }
    }
  }
  const int levels = (1 << bits) - 1;
#pragma unroll
  for (int u = 0; u < U; ++u) {
    const int64_t g = (row0 + u) * 32 + lane;
    const int64_t b = g >> shift;  // this lane's quantization block (g = b lanes + sub)
    float lo = INFINITY, hi = -INFINITY;
    float x[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      x[k] = Elem<T>::load(v[u][k]);
      if (kFull || k < count[u]) {
        bad |= nonFiniteBit(v[u][k]);
        lo = fminf(lo, x[k]);
        hi = fmaxf(hi, x[k]);
      }
    }
#pragma unroll
    for (int o = 1; o < lanes; o <<= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, o));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, o));
    }
    // Zeros: the sign of the zero of smallest rank (min over rank << 1 | sign bit).
    if (__any_sync(0xffffffffu, lo == 0.0f || hi == 0.0f)) {
      uint64_t best = ~uint64_t{0};
#pragma unroll
      for (int k = 0; k < 8; ++k)
        if ((kFull || k < count[u]) && x[k] == 0.0f) {
          const uint64_t key = static_cast<uint64_t>(rank32(static_cast<uint32_t>(8 * sub + k))) << 1 |
                               (floatBits(x[k]) >> 31);
          best = key < best ? key : best;
        }
      for (int o = 1; o < lanes; o <<= 1) {
        const uint64_t other = __shfl_xor_sync(0xffffffffu, best, o);
        best = other < best ? other : best;
      }
      const float zero = (best & 1u) ? -0.0f : 0.0f;
      if (lo == 0.0f) lo = zero;
      if (hi == 0.0f) hi = zero;
    }
    if constexpr (!kFull) {
      if (count[u] == 0 && sub == 0) continue;  // a block past the end (this lane's group too)
      if (b >= ((groups + lanes - 1) >> shift)) continue;
    }
    if (sub == 0) *reinterpret_cast<float2*>(scales + 8 * b) = make_float2(lo, hi);
    if (!kFull && count[u] == 0) continue;
    const QuantAffine<float> f = quantAffine(lo, hi, levels, fused);
    uint64_t word = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k)
      if (kFull || k < count[u]) word |= static_cast<uint64_t>(quantCode(x[k], f, fused)) << (k * bits);
    uint8_t* dst = codes + g * bits;
    if (kFull || count[u] == 8) {
      if (bits == 8) *reinterpret_cast<uint2*>(dst) = make_uint2(static_cast<uint32_t>(word), static_cast<uint32_t>(word >> 32));
      else if (bits == 4) *reinterpret_cast<uint32_t*>(dst) = static_cast<uint32_t>(word);
      else *reinterpret_cast<uint16_t*>(dst) = static_cast<uint16_t>(word);
    } else {
      for (int q = 0; q < (count[u] * bits + 7) / 8; ++q) dst[q] = static_cast<uint8_t>(word >> (8 * q));
    }
  }
}

template <typename T, bool kVec, int kG>
__global__ void __launch_bounds__(kThreads) encodeFastKernel(const T* in, int64_t d, int G, int bits, bool fused,
                                                             uint8_t* scales, uint8_t* codes, uint32_t* flag) {
  constexpr int U = kStreamUnroll;
  const int64_t groups = (d + 7) / 8, wholeGroups = d / 8;
  const int64_t warp = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * blockDim.x / 32;
  uint32_t bad = 0;
  // Step s covers warp rows [s U, s U + U) of 32 groups each: group index row * 32 + lane.
  for (int64_t row0 = warp * U; row0 * 32 < groups; row0 += warps * U) {
    if ((row0 + U) * 32 <= wholeGroups) encodeFastStep<T, kVec, kG, true>(in, d, row0, G, bits, fused, scales, codes, bad);
    else encodeFastStep<T, kVec, kG, false>(in, d, row0, G, bits, fused, scales, codes, bad);
  }
  raiseMailFlag(flag, bad);
}

// A block's bounds are usable: finite, ordered, and within T's range once rounded to it
// (decoded values lie in [lo, hi]: no valid message decodes to Inf; blockquant.cpp validate).
template <typename T>
__device__ __forceinline__ bool validScales(float lo, float hi) {
  return isfinite(lo) && isfinite(hi) && lo <= hi && isfinite(static_cast<float>(Elem<T>::load(Elem<T>::store(lo)))) &&
         isfinite(static_cast<float>(Elem<T>::load(Elem<T>::store(hi))));
}

// Fast decode (float compute, any block): units of 4 elements (a block is a multiple of 8, so
// a unit never straddles two), each lane one unit per row: its 4 codes, its block's (min, max),
// one coalesced 16-byte store (float32). A block with invalid scales sets `flag` (a deferred
// check) and is not written.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) decodeFastKernel(const uint8_t* scales, const uint8_t* codes, int64_t d,
                                                             DivisorU64 unitsPerBlock, int bits, bool fused, T* out,
                                                             uint32_t* flag) {
  constexpr int U = kStreamUnroll;
  const int64_t units = (d + 3) / 4;
  const uint32_t cmask = (1u << bits) - 1;
  uint32_t bad = 0;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * U;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; base < units; base += stride) {
    uint32_t word[U];
    float2 sc[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t h = base + u * kThreads;
      word[u] = 0;
      sc[u] = make_float2(0.f, 0.f);
      if (h < units) {
        if (4 * h + 4 <= d) {
          if (bits == 8) word[u] = __ldg(reinterpret_cast<const uint32_t*>(codes) + h);
          else if (bits == 4) word[u] = __ldg(reinterpret_cast<const uint16_t*>(codes) + h);
          else word[u] = __ldg(codes + h);
        } else {
          // The last, short unit: its codes start at bit 4 h bits (a whole byte: 4 bits is even).
          const int count = static_cast<int>(d - 4 * h);
          const uint8_t* p = codes + (4 * h * bits) / 8;
          for (int q = 0; q < (count * bits + 7) / 8; ++q) word[u] |= static_cast<uint32_t>(p[q]) << (8 * q);
        }
        sc[u] = __ldg(reinterpret_cast<const float2*>(scales) + divide(static_cast<uint64_t>(h), unitsPerBlock));
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t h = base + u * kThreads;
      if (h >= units) break;
      const float lo = sc[u].x, hi = sc[u].y;
      if (!validScales<T>(lo, hi)) {
        bad = 1;
        continue;
      }
      const QuantAffine<float> f = quantAffine(lo, hi, static_cast<int>(cmask), fused);
      T o[4];
#pragma unroll
      for (int k = 0; k < 4; ++k) o[k] = Elem<T>::store(quantValue((word[u] >> (k * bits)) & cmask, f, fused));
      if (4 * h + 4 <= d) {
        store4<T, kVec>(out, h, o);
      } else {
#pragma unroll
        for (int k = 0; k < 4; ++k)  // constant indices: o stays in registers
          if (4 * h + k < d) out[4 * h + k] = o[k];
      }
    }
  }
  raiseMailFlag(flag, bad);
}

template <typename C>
__global__ void checkScalesKernel(const C* scales, int64_t nb, uint32_t* flag) {
  uint32_t bad = 0;
  for (int64_t b = globalThread(); b < nb; b += gridThreads()) {
    const C lo = scales[2 * b], hi = scales[2 * b + 1];
    bad |= !(isfinite(lo) && isfinite(hi) && lo <= hi);
  }
  raiseFlag(flag, bad);
}

template <typename T, bool kVec>
__global__ void decodeKernel(const uint8_t* scales, const uint8_t* codes, int64_t d, int64_t block, int bits, int G,
                             bool fused, T* out) {
  using C = typename Elem<T>::Compute;
  const int lane = threadIdx.x & 31, sub = lane & (G - 1);
  const int64_t nb = numBlocks(d, block);
  const int64_t perWarp = 32 / G;
  const int64_t warps = gridThreads() / 32;
  const uint32_t cmask = (1u << bits) - 1;
  for (int64_t base = (globalThread() / 32) * perWarp; base < nb; base += warps * perWarp) {
    const int64_t b = base + (lane / G);
    if (b >= nb) continue;
    const int64_t start = b * block;
    const int64_t len = d - start < block ? d - start : block;
    const C* sc = reinterpret_cast<const C*>(scales) + 2 * b;
    const QuantAffine<C> f = quantAffine(sc[0], sc[1], (1 << bits) - 1, fused);
    const uint8_t* src = codes + start * bits / 8;
    T* o = out + start;
    for (int64_t gi = sub; gi < (len + 7) / 8; gi += G) {
      const int count = len - 8 * gi < 8 ? static_cast<int>(len - 8 * gi) : 8;
      const uint8_t* p = src + gi * bits;
      uint64_t word = 0;
      if (count == 8) {
        if (bits == 8) {
          const uint2 w2 = *reinterpret_cast<const uint2*>(p);
          word = w2.x | static_cast<uint64_t>(w2.y) << 32;
        } else if (bits == 4) {
          word = *reinterpret_cast<const uint32_t*>(p);
        } else {
          word = *reinterpret_cast<const uint16_t*>(p);
        }
      } else {
        for (int q = 0; q < (count * bits + 7) / 8; ++q) word |= static_cast<uint64_t>(p[q]) << (8 * q);
      }
      T v[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) v[k] = Elem<T>::store(quantValue(static_cast<uint32_t>(word >> (k * bits)) & cmask, f, fused));
      if (count == 8) {
        store8<T, kVec>(o, gi, v);
      } else {
        for (int k = 0; k < count; ++k) o[8 * gi + k] = v[k];
      }
    }
  }
}

QuantParams specParams(const Compressor& c) {
  SpecParams sp = specOf(c);
  return {static_cast<int>(sp.getInt("bits").value_or(8)), sp.getInt("block").value_or(256)};
}

size_t compressQuant(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  const QuantParams p = specParams(c);
  const int64_t d = x.numel();
  const size_t bytes = payloadBytes(d, p, x.dtype);
  Frame f = beginFrame(out, c, x, paramBytes(p), bytes, stream);
  const int64_t nb = numBlocks(d, p.block);
  uint8_t* codes = f.payload + static_cast<size_t>(nb) * 2 * scaleBytes(x.dtype);
  uint32_t* flags = clearMailboxFlags(1);
  const int G = lanesFor(p.block);
  if (nb > 0) {
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      withAlignment({x.data}, [&](auto vec) {
        constexpr bool kVec = decltype(vec)::value;
        if (fastLayout(p.block, x.dtype)) {
          const auto* in = static_cast<const T*>(x.data);
          if (G == 32) {
            encodeFastKernel<T, kVec, 32><<<streamGrid((d + 7) / 8), kThreads, 0, stream>>>(
                in, d, G, p.bits, cpuContractsFma(), f.payload, codes, flags);
          } else {
            encodeFastKernel<T, kVec, 0><<<streamGrid((d + 7) / 8), kThreads, 0, stream>>>(
                in, d, G, p.bits, cpuContractsFma(), f.payload, codes, flags);
          }
        } else {
          encodeKernel<T, kVec><<<blocksFor(nb * G), kThreads, 0, stream>>>(
              static_cast<const T*>(x.data), d, p.block, p.bits, G, cpuContractsFma(), f.payload, codes, flags);
        }
      });
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
  traceMark(stream, "quant");
  uint32_t flag = 0;
  const size_t size = sealAndWait(out, f, bytes, stream, &flag, 1);
  if (flag) throwNonFinite("quant.compress", x, stream, "non-finite input");
  return size;
}

QuantParams parseLayout(const DeviceMessageHeader& h) {
  return compress::blockquant::parseLayout(h.params.data(), h.params.size(), h.numel, h.dtype, h.payloadBytes);
}

void decodeQuant(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  const QuantParams p = parseLayout(h);
  const int64_t d = h.numel;
  const int64_t nb = numBlocks(d, p.block);
  if (nb == 0) return;
  const uint8_t* scales = payloadOf(h, msg);
  const uint8_t* codes = scales + static_cast<size_t>(nb) * 2 * scaleBytes(h.dtype);
  const int G = lanesFor(p.block);
  const char* invalid = "quant: a block has invalid scales (not finite, min > max, or beyond the output dtype's range)";
  if (h.dtype != DType::kFloat64) {
    // The scale check inside the decoding kernel, reported after decompress's synchronization.
    uint32_t* flag = deferDecodeCheck(invalid);
    dispatchDType(out.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      withAlignment({out.data}, [&](auto vec) {
        decodeFastKernel<T, decltype(vec)::value><<<streamGrid((d + 3) / 4), kThreads, 0, stream>>>(
            scales, codes, d, makeDivisorU64(static_cast<uint64_t>(p.block / 4)), p.bits, cpuContractsFma(),
            static_cast<T*>(out.data), flag);
      });
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
    return;
  }
  uint32_t* flags = resetFlags(stream, 1);
  if (h.dtype == DType::kFloat64) {
    checkScalesKernel<double><<<blocksFor(nb), kThreads, 0, stream>>>(reinterpret_cast<const double*>(scales), nb, flags);
  } else {
    checkScalesKernel<float><<<blocksFor(nb), kThreads, 0, stream>>>(reinterpret_cast<const float*>(scales), nb, flags);
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  EFCOMM_CHECK_MSG(readFlags(stream, 1)[0] == 0, invalid);
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({out.data}, [&](auto vec) {
      decodeKernel<T, decltype(vec)::value><<<blocksFor(nb * G), kThreads, 0, stream>>>(
          scales, codes, d, p.block, p.bits, G, cpuContractsFma(), static_cast<T*>(out.data));
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

DeviceCodec blockquantDeviceCodec() {
  return {CompressorId::kBlockQuant, compressQuant, decodeQuant, nullptr, true, true};
}

}  // namespace efcomm::cuda
