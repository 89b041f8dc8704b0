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

namespace efcomm::cuda {

namespace {

constexpr int64_t kMaxBlock = 0xfffffff8;

struct QuantParams {
  int bits;
  int64_t block;
};

size_t scaleBytes(DType dt) { return dt == DType::kFloat64 ? 8 : 4; }
int64_t numBlocks(int64_t d, int64_t block) { return (d + block - 1) / block; }
size_t payloadBytes(int64_t d, const QuantParams& p, DType dt) {
  return static_cast<size_t>(numBlocks(d, p.block)) * 2 * scaleBytes(dt) + hdPackedBytes(d, p.bits);
}

// Lanes per block: the largest power of two <= min(32, block / 8).
int lanesFor(int64_t block) {
  int g = 1;
  while (g < 32 && 2 * g <= block / 8) g *= 2;
  return g;
}

__device__ __forceinline__ int64_t numBlocksDev(int64_t d, int64_t block) { return (d + block - 1) / block; }

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
  using C = typename DElem<T>::Compute;
  const int lane = threadIdx.x & 31, sub = lane & (G - 1);
  const unsigned mask = G == 32 ? 0xffffffffu : ((1u << G) - 1) << (lane & ~(G - 1));
  const int64_t nb = numBlocksDev(d, block);
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
    m.lo = m.hi = live ? DElem<T>::load(blk[0]) : C(0);
    m.rlo = m.rhi = 0;
    for (int64_t gi = sub; gi < groups; gi += G) {
      T v[8];
      const int count = loadGroup8<T, kVec>(blk, len, gi, v);
      for (int k = 0; k < count; ++k) {
        const C x = DElem<T>::load(v[k]);
        bad |= nonFinite(v[k]);
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
        if (k < count) word |= static_cast<uint64_t>(quantCode(DElem<T>::load(v[k]), f, fused)) << (k * bits);
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
  raiseFlag(flag, bad);
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
  using C = typename DElem<T>::Compute;
  const int lane = threadIdx.x & 31, sub = lane & (G - 1);
  const int64_t nb = numBlocksDev(d, block);
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
      for (int k = 0; k < 8; ++k) v[k] = DElem<T>::store(quantValue(static_cast<uint32_t>(word >> (k * bits)) & cmask, f, fused));
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

std::vector<uint8_t> paramBytes(const QuantParams& p) {
  return ByteWriter().put<uint8_t>(static_cast<uint8_t>(p.bits)).put<uint32_t>(static_cast<uint32_t>(p.block)).bytes();
}

size_t compressQuant(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  const QuantParams p = specParams(c);
  const int64_t d = x.numel();
  const size_t bytes = payloadBytes(d, p, x.dtype);
  Frame f = beginFrame(out, c, x, paramBytes(p), bytes, stream);
  const int64_t nb = numBlocks(d, p.block);
  uint8_t* codes = f.payload + static_cast<size_t>(nb) * 2 * scaleBytes(x.dtype);
  uint32_t* flags = resetFlags(stream, 1);
  const int G = lanesFor(p.block);
  if (nb > 0) {
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      withAlignment({x.data}, [&](auto vec) {
        encodeKernel<T, decltype(vec)::value><<<blocksFor(nb * G), kThreads, 0, stream>>>(
            static_cast<const T*>(x.data), d, p.block, p.bits, G, cpuContractsFma(), f.payload, codes, flags);
      });
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
  const size_t size = finishMessage(out, f.layout, bytes, stream);
  if (readFlags(stream, 1)[0]) throwNonFinite("quant.compress", x, stream, "non-finite input");
  return size;
}

QuantParams parseLayout(const DeviceMessageHeader& h) {
  ByteReader r(h.params.data(), h.params.size(), "quant parameters");
  const int bits = r.get<uint8_t>();
  const int64_t block = r.get<uint32_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(bits == 2 || bits == 4 || bits == 8, "quant: bits must be 2, 4 or 8, got ", bits);
  EFCOMM_CHECK_MSG(block >= 8 && block % 8 == 0 && block <= kMaxBlock,
                   "quant: block must be a multiple of 8 and >= 8, got ", block);
  const QuantParams p{bits, block};
  const size_t want = payloadBytes(h.numel, p, h.dtype);
  EFCOMM_CHECK_MSG(h.payloadBytes == want, "quant: payload of ", h.payloadBytes, " bytes; ", h.numel,
                   " elements in blocks of ", block, " at ", bits, " bits need ", want);
  return p;
}

void decodeQuant(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  const QuantParams p = parseLayout(h);
  const int64_t d = h.numel;
  const int64_t nb = numBlocks(d, p.block);
  if (nb == 0) return;
  const uint8_t* scales = payloadOf(h, msg);
  const uint8_t* codes = scales + static_cast<size_t>(nb) * 2 * scaleBytes(h.dtype);
  uint32_t* flags = resetFlags(stream, 1);
  if (h.dtype == DType::kFloat64) {
    checkScalesKernel<double><<<blocksFor(nb), kThreads, 0, stream>>>(reinterpret_cast<const double*>(scales), nb, flags);
  } else {
    checkScalesKernel<float><<<blocksFor(nb), kThreads, 0, stream>>>(reinterpret_cast<const float*>(scales), nb, flags);
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  EFCOMM_CHECK_MSG(readFlags(stream, 1)[0] == 0, "quant: a block has invalid scales (not finite, or min > max)");
  const int G = lanesFor(p.block);
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

DeviceCodec blockquantDeviceCodec() { return {CompressorId::kBlockQuant, compressQuant, decodeQuant, nullptr}; }

}  // namespace efcomm::cuda
