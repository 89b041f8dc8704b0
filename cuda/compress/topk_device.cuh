#pragma once
// TopK on the device: the selection kernels (templated on a source of values, so that error
// feedback computes the vector to compress on the fly inside the passes), the drivers that run
// topk_select.hpp's control flow on them, and the wire encoding of a selection. Included by
// cuda/compress/topk.cu and cuda/feedback/*.cu.
//
// Source concept: `using Bits` (uint16_t, uint32_t or uint64_t: the raw bits of one value),
// `__device__ Bits bits(int64_t i) const` (value i) and `__device__ int64_t index(int64_t i)
// const` (its flat index in the original vector).
#include <cuda_runtime.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cub/block/block_scan.cuh>
#include <cub/device/device_scan.cuh>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "common/kernels.cuh"
#include "common/runtime.hpp"
#include "common/wire.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/error.hpp"
#include "topk_select.hpp"

namespace efcomm::cuda::topk {

/// Threads per selection block, its warps, and the 32-element steps of one warp per tile: a
/// warp covers a contiguous segment of 32 * kSteps elements, the 8 warps of a block a tile.
constexpr int kBlock = 256;
constexpr int kWarps = kBlock / 32;
constexpr int kSteps = 16;
constexpr int64_t kTile = int64_t{kBlock} * kSteps;

/// Bits of a storage width.
template <int Bytes>
struct BitsOf;
template <>
struct BitsOf<2> {
  using type = uint16_t;
};
template <>
struct BitsOf<4> {
  using type = uint32_t;
};
template <>
struct BitsOf<8> {
  using type = uint64_t;
};

/// The plain source: a device array of raw values. vecOk: x is 16-byte aligned, so the sampled
/// pass reads it with 16-byte loads (loadVec: 16 / sizeof(B) values from i, i a multiple of that).
template <typename B>
struct PlainSrc {
  using Bits = B;
  static constexpr bool kVecLoads = true;
  const B* x;
  bool vecOk = false;
  __device__ __forceinline__ B bits(int64_t i) const { return x[i]; }
  __device__ __forceinline__ int64_t index(int64_t i) const { return i; }
  __device__ __forceinline__ void loadVec(int64_t i, B* v) const {
    const uint4 q = __ldg(reinterpret_cast<const uint4*>(x + i));
    memcpy(v, &q, sizeof q);
  }
};
template <typename B>
PlainSrc<B> plainSrc(const void* x) {
  return PlainSrc<B>{static_cast<const B*>(x), reinterpret_cast<uintptr_t>(x) % 16 == 0};
}

/// Whether a source has loadVec (and a vecOk member saying it may be used).
template <class Src, class = void>
struct HasVecLoads : std::false_type {};
template <class Src>
struct HasVecLoads<Src, std::void_t<decltype(Src::kVecLoads)>> : std::bool_constant<Src::kVecLoads> {};

/// A list of (index, value) entries, in increasing index order.
template <typename B>
struct ListSrc {
  using Bits = B;
  const int64_t* idx;
  const B* val;
  __device__ __forceinline__ B bits(int64_t i) const { return val[i]; }
  __device__ __forceinline__ int64_t index(int64_t i) const { return idx[i]; }
};

// ---- device-driven selection state -------------------------------------------------------
//
// The whole selection runs without a host round trip: single-block kernels read the counts of
// the previous kernel and write the parameters of the next one into this struct, which every
// later kernel reads. `fail` (sampled path only) makes every later kernel of the path return
// at once; the host sees it in the status read after the encoding sizes.

struct SelState {
  // The source being narrowed: n entries in `nb` chunks of `chunk` (chunkGeometry).
  int64_t n, chunk, nb;
  // Radix narrowing: the key range [klo, klo + ksize), the rank `need` inside it, this pass.
  unsigned long long klo, ksize;
  int64_t need;
  Pass pass;
  int64_t bin, binsOfLast;  // the last pass's picked bin and bin count
  int32_t ran;              // whether the last pass ran (ksize was > 1)
  // Sampled path: threshold, candidates appended so far, failure.
  unsigned long long t, total;
  uint32_t fail;
};

/// What the host reads back, once: failure of the sampled path, a non-finite kept value, and the
/// varint stream size.
struct SelStatus {
  uint32_t fail, nonFinite;
  long long varintBytes;
};

/// Radix state for n entries (k-th largest of keyBits-bit keys), chunks' above = 0, cand = len.
__device__ __forceinline__ void setupRadix(SelState* s, int64_t n, int64_t k, int keyBitsOf, int64_t* above,
                                           int64_t* cand) {
  int64_t chunk, nb;
  chunkGeometry(n, &chunk, &nb);
  if (threadIdx.x == 0) {
    s->n = n;
    s->chunk = chunk;
    s->nb = nb;
    s->klo = 0;
    s->ksize = 1ull << keyBitsOf;
    s->need = k;
    s->pass = makePass(0, 1ull << keyBitsOf);
    s->bin = 0;
    s->binsOfLast = 0;
    s->ran = 0;
  }
  for (int64_t b = threadIdx.x; b < nb; b += blockDim.x) {
    above[b] = 0;
    const int64_t lo = b * chunk, hi = lo + chunk < n ? lo + chunk : n;
    cand[b] = hi - lo;
  }
}

// ---- kernels ---------------------------------------------------------------------------

/// The fallback (exact radix over the whole source): state for n entries.
static __global__ void radixInitKernel(SelState* s, int64_t n, int64_t k, int keyBitsOf, int64_t* above,
                                       int64_t* cand) {
  if (threadIdx.x == 0) s->fail = 0;
  setupRadix(s, n, k, keyBitsOf, above, cand);
}

/// Per-chunk histograms of the keys inside the pass's range (hist[b * nbins + bin]), added into
/// totals (integer atomics: the sums do not depend on the order).
template <class Src>
__global__ void __launch_bounds__(kBlock) histKernel(Src src, const SelState* s, uint32_t* hist,
                                                     unsigned long long* totals) {
  __shared__ uint32_t h[kMaxBins];
  if (s->fail || s->ksize <= 1 || blockIdx.x >= s->nb) return;
  const Pass p = s->pass;
  const int64_t n = s->n, chunk = s->chunk;
  const int nbins = static_cast<int>(p.nbins);
  for (int j = threadIdx.x; j < nbins; j += kBlock) h[j] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t hi = lo + chunk < n ? lo + chunk : n;
  for (int64_t tile = lo; tile < hi; tile += kTile) {
    const int64_t seg = tile + static_cast<int64_t>(warp) * 32 * kSteps;
    typename Src::Bits v[kSteps];
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      const int64_t i = seg + s2 * 32 + lane;
      v[s2] = i < hi ? src.bits(i) : typename Src::Bits(0);
    }
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      const int64_t i = seg + s2 * 32 + lane;
      const long long bin = i < hi ? static_cast<long long>(binOf(magKey(v[s2]), p)) : -1LL;
      // Lanes with the same bin add once (runs of equal keys would otherwise serialize).
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&h[bin], static_cast<uint32_t>(__popc(peers)));
    }
  }
  __syncthreads();
  uint32_t* out = hist + static_cast<int64_t>(blockIdx.x) * nbins;
  for (int j = threadIdx.x; j < nbins; j += kBlock) {
    out[j] = h[j];
    if (h[j]) atomicAdd(&totals[j], static_cast<unsigned long long>(h[j]));
  }
}

/// One block of 1024: the bin of the pass holding the need-th largest key (pickBin's rule), then
/// the next pass. Thread g owns bins [4 (1023 - g), 4 (1023 - g) + 4): a prefix sum in thread
/// order is a suffix sum over the bins.
static __global__ void __launch_bounds__(1024) pickKernel(SelState* s, const unsigned long long* totals) {
  using Scan = cub::BlockScan<long long, 1024>;
  __shared__ typename Scan::TempStorage temp;
  if (s->fail) return;
  if (s->ksize <= 1) {
    if (threadIdx.x == 0) s->ran = 0;
    return;
  }
  const Pass p = s->pass;
  const int64_t need = s->need;
  const int g = 1023 - static_cast<int>(threadIdx.x);
  long long c[4], sum = 0;
#pragma unroll
  for (int j = 0; j < 4; ++j) {
    const int64_t bin = 4 * g + j;
    c[j] = bin < p.nbins ? static_cast<long long>(totals[bin]) : 0;
    sum += c[j];
  }
  long long excl;
  Scan(temp).ExclusiveSum(sum, excl);
  // The owner: the bins above hold fewer than need, these reach it; or bin 0 (pickBin's rule).
  if ((excl < need && excl + sum >= need) || (g == 0 && excl + sum < need)) {
    long long over = excl;
    int bin = 4 * g;
    for (int j = 3; j >= 0; --j) {
      if (over + c[j] >= need || j == 0) {
        bin = 4 * g + j;
        break;
      }
      over += c[j];
    }
    s->bin = bin;
    s->binsOfLast = p.nbins;
    s->ran = 1;
    s->need = need - over;
    const unsigned long long klo = s->klo + (static_cast<unsigned long long>(bin) << p.shift);
    const unsigned long long ksize = 1ull << p.shift;
    s->klo = klo;
    s->ksize = ksize;
    if (ksize > 1) s->pass = makePass(klo, ksize);
  }
}

/// Per chunk (one warp each) after a pass: above += keys in bins above the picked bin; cand =
/// keys in it.
static __global__ void narrowKernel(const uint32_t* hist, const SelState* s, int64_t* above, int64_t* cand) {
  if (s->fail || !s->ran) return;
  const int lane = threadIdx.x & 31;
  const int64_t b = globalThread() >> 5;
  if (b >= s->nb) return;
  const int64_t nbins = s->binsOfLast, bin = s->bin;
  const uint32_t* h = hist + b * nbins;
  long long sum = 0;
  for (int64_t j = bin + 1 + lane; j < nbins; j += 32) sum += h[j];
  for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
  if (lane == 0) {
    above[b] += sum;
    cand[b] = h[bin];
  }
}

/// One block of 1024 (nb <= kMaxChunks): tie quotas (tieQuotas), counts and output offsets of
/// the exact compaction at the single key klo.
static __global__ void __launch_bounds__(1024) planKernel(SelState* s, const int64_t* above, const int64_t* cand,
                                                          int64_t* quota, int64_t* base, int64_t* cap) {
  using Scan = cub::BlockScan<long long, 1024>;
  __shared__ typename Scan::TempStorage temp;
  if (s->fail) return;
  const int64_t nb = s->nb, need = s->need;
  const int b = threadIdx.x;
  const long long cb = b < nb ? cand[b] : 0, ab = b < nb ? above[b] : 0;
  long long before;
  Scan(temp).ExclusiveSum(cb, before);
  __syncthreads();
  long long q = need - before;
  q = q < 0 ? 0 : (q > cb ? cb : q);
  long long at;
  Scan(temp).ExclusiveSum(ab + q, at);
  if (b < nb) {
    quota[b] = q;
    base[b] = at;
    cap[b] = ab + q;
  }
  if (b == 0) s->t = s->klo;
}

/// Warp `warp`'s place in the block: `base` plus the counts the lower warps posted in `perWarp`
/// (read after a barrier); `total` gets the sum over all warps.
__device__ __forceinline__ long long warpOffset(const long long* perWarp, int warp, long long base, long long& total) {
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) base += perWarp[w];
    total += perWarp[w];
  }
  return base;
}

/// Stable exact compaction of chunk b into out[base[b], base[b] + cap[b]): keys above t = klo
/// and the first quota[b] ties of the chunk, in index order (see topk_select.hpp). Warps rank
/// their elements with ballots; two block barriers per tile order the warps.
template <class Src>
__global__ void __launch_bounds__(kBlock)
    compactKernel(Src src, const SelState* s, const int64_t* quota, const int64_t* base, const int64_t* cap,
                  int64_t* outIdx, typename Src::Bits* outBits) {
  __shared__ long long warpTies[kWarps], warpKeep[kWarps];
  if (s->fail || blockIdx.x >= s->nb) return;
  const bool atLeast = false;
  const uint64_t t = s->t;
  const int64_t n = s->n, chunk = s->chunk;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned below = (1u << lane) - 1u;
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t hi = lo + chunk < n ? lo + chunk : n;
  const int64_t q = quota[blockIdx.x];
  const int64_t b0 = base[blockIdx.x], c = cap[blockIdx.x];
  int64_t kept = 0, ties = 0;  // the chunk's totals over the earlier tiles (block-uniform)
  for (int64_t tile = lo; tile < hi; tile += kTile) {
    const int64_t seg = tile + static_cast<int64_t>(warp) * 32 * kSteps;
    typename Src::Bits v[kSteps];
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      const int64_t i = seg + s2 * 32 + lane;
      v[s2] = i < hi ? src.bits(i) : typename Src::Bits(0);
    }
    unsigned tieMask[kSteps];
    long long myTies = 0;
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      const int64_t i = seg + s2 * 32 + lane;
      tieMask[s2] = __ballot_sync(0xffffffffu, i < hi && isTie(magKey(v[s2]), t, atLeast));
      myTies += __popc(tieMask[s2]);
    }
    if (lane == 0) warpTies[warp] = myTies;
    __syncthreads();
    long long tileTies;
    long long tieRank = warpOffset(warpTies, warp, ties, tileTies);
    unsigned keepMask[kSteps];
    long long myKeep = 0;
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      const int64_t i = seg + s2 * 32 + lane;
      const bool keep = i < hi && keepKey(magKey(v[s2]), t, atLeast, tieRank + __popc(tieMask[s2] & below), q);
      keepMask[s2] = __ballot_sync(0xffffffffu, keep);
      myKeep += __popc(keepMask[s2]);
      tieRank += __popc(tieMask[s2]);
    }
    if (lane == 0) warpKeep[warp] = myKeep;
    __syncthreads();
    long long tileKept;
    long long pos = warpOffset(warpKeep, warp, kept, tileKept);
#pragma unroll
    for (int s2 = 0; s2 < kSteps; ++s2) {
      if ((keepMask[s2] >> lane) & 1u) {
        const long long at = pos + __popc(keepMask[s2] & below);
        if (at < c) {
          const int64_t i = seg + s2 * 32 + lane;
          outIdx[b0 + at] = src.index(i);
          outBits[b0 + at] = v[s2];
        }
      }
      pos += __popc(keepMask[s2]);
    }
    kept += tileKept;
    ties += tileTies;
    __syncthreads();  // warpTies/warpKeep are rewritten by the next tile
  }
}

/// Every element: out = (index, value) for i < n.
template <class Src>
__global__ void takeAllKernel(Src src, int64_t n, int64_t* outIdx, typename Src::Bits* outBits) {
  for (int64_t i = globalThread(); i < n; i += gridThreads()) {
    outIdx[i] = src.index(i);
    outBits[i] = src.bits(i);
  }
}

/// One block of 1024: the r-th largest of the kSample sample keys (sampleThreshold's t), by
/// 8-bit digits from the top (pickDigit); t = 0 fails the sampled path (a heavily tied zero key:
/// the radix path handles it). Resets the candidate counter.
template <class Src>
__global__ void __launch_bounds__(1024) sampleSelectKernel(Src src, int64_t n, int64_t r, int keyBitsOf,
                                                           SelState* s) {
  constexpr int kPer = static_cast<int>(kSample / 1024);
  __shared__ uint32_t hist[256];
  __shared__ unsigned long long sPrefix;
  __shared__ long long sNeed;
  uint64_t key[kPer];
#pragma unroll
  for (int j = 0; j < kPer; ++j) key[j] = magKey(src.bits(samplePosition(threadIdx.x + j * 1024, n)));
  unsigned long long prefix = 0, mask = 0;
  long long need = r;
  for (int shift = (keyBitsOf + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
    if (threadIdx.x < 256) hist[threadIdx.x] = 0;
    __syncthreads();
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      if ((key[j] & mask) == prefix) atomicAdd(&hist[(key[j] >> shift) & 255u], 1u);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t over = 0;
      const int d = pickDigit(hist, need, &over);
      sPrefix = prefix | (static_cast<unsigned long long>(d) << shift);
      sNeed = need - over;
    }
    __syncthreads();
    prefix = sPrefix;
    need = sNeed;
    mask |= 255ull << shift;
  }
  if (threadIdx.x == 0) {
    s->t = prefix;
    s->total = 0;
    s->fail = prefix == 0 ? 1u : 0u;
  }
}

/// Elements per thread and step of the sampled pass: one 16-byte load.
template <typename B>
constexpr int vecOf() {
  return static_cast<int>(16 / sizeof(B));
}
constexpr int kCollectSteps = 4;  // kCollectSteps * kWarps == 32: one lane per (step, warp)

/// Loads V consecutive values from i (the source's loadVec when it has one: a 16-byte load).
template <class Src, int V>
__device__ __forceinline__ void loadRun(const Src& src, int64_t i, int64_t n, typename Src::Bits (&v)[V]) {
  if constexpr (HasVecLoads<Src>::value) {
    if (i + V <= n && src.vecOk) {
      src.loadVec(i, v);
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < V; ++e) v[e] = i + e < n ? src.bits(i + e) : typename Src::Bits(0);
}

/// The sampled pass: every key >= t (the sample threshold) is appended to the candidate list,
/// one contiguous run per tile in index order, at an offset taken with one atomic per tile
/// (tileOff[tile], tileCnt[tile]; listTileOrder puts the runs in tile order). Entries past
/// listCap are not written (the count goes on: the path fails).
template <class Src>
__global__ void __launch_bounds__(kBlock, 4)
    collectKernel(Src src, int64_t n, SelState* s, long long* tileCnt, unsigned long long* tileOff, int64_t listCap,
                  int64_t* outIdx, typename Src::Bits* outBits) {
  using B = typename Src::Bits;
  constexpr int V = vecOf<B>(), S = kCollectSteps;
  constexpr int64_t kTileElems = int64_t{kBlock} * V * S;
  static_assert(S * kWarps == 32, "one lane per (step, warp)");
  __shared__ long long warpCount[2][32];
  __shared__ unsigned long long tileBase[2];
  if (s->fail) return;
  const uint64_t t = s->t;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t tiles = (n + kTileElems - 1) / kTileElems;
  int par = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x, par ^= 1) {
    const int64_t first = tile * kTileElems;
    B v[S][V];
#pragma unroll
    for (int st = 0; st < S; ++st) loadRun<Src, V>(src, first + (int64_t{st} * kBlock + threadIdx.x) * V, n, v[st]);
    unsigned keep[S];
    int mine[S];  // this lane's kept elements before it in its warp, per step
#pragma unroll
    for (int st = 0; st < S; ++st) {
      const int64_t i0 = first + (int64_t{st} * kBlock + threadIdx.x) * V;
      unsigned m = 0;
#pragma unroll
      for (int e = 0; e < V; ++e) m |= (i0 + e < n && magKey(v[st][e]) >= t) ? (1u << e) : 0u;
      keep[st] = m;
      const int c = __popc(m);
      int incl = c;
#pragma unroll
      for (int o = 1; o < 32; o <<= 1) {
        const int y = __shfl_up_sync(0xffffffffu, incl, o);
        if (lane >= o) incl += y;
      }
      mine[st] = incl - c;
      if (lane == 31) warpCount[par][st * kWarps + warp] = incl;
    }
    __syncthreads();
    // Lane j of every warp: (step, warp) group j; an exclusive scan in index order.
    const long long x = warpCount[par][lane];
    long long incl = x;
#pragma unroll
    for (int o = 1; o < 32; o <<= 1) {
      const long long y = __shfl_up_sync(0xffffffffu, incl, o);
      if (lane >= o) incl += y;
    }
    const long long tileTotal = __shfl_sync(0xffffffffu, incl, 31);
    const long long groupStart = incl - x;
    if (threadIdx.x == 0) {
      const unsigned long long at = tileTotal ? atomicAdd(&s->total, static_cast<unsigned long long>(tileTotal)) : 0;
      tileBase[par] = at;
      tileCnt[tile] = tileTotal;
      tileOff[tile] = at;
    }
    __syncthreads();
    const unsigned long long at0 = tileBase[par];
#pragma unroll
    for (int st = 0; st < S; ++st) {
      const long long start = __shfl_sync(0xffffffffu, groupStart, st * kWarps + warp);
      unsigned m = keep[st];
      long long pos = static_cast<long long>(at0) + start + mine[st];
      const int64_t i0 = first + (int64_t{st} * kBlock + threadIdx.x) * V;
      while (m) {
        const int e = __ffs(m) - 1;
        m &= m - 1;
        if (pos < listCap) {
          outIdx[pos] = src.index(i0 + e);
          outBits[pos] = v[st][e];
        }
        ++pos;
      }
    }
  }
}

/// One block of 1024 after the sampled pass: fails the path unless k <= total <= listCap, puts
/// the tiles' runs in tile order (tileDst = exclusive sums of tileCnt) and sets up the exact
/// radix on the ordered list of `total` entries.
static __global__ void __launch_bounds__(1024) listInitKernel(SelState* s, const long long* tileCnt, int64_t tiles,
                                                              long long* tileDst, int64_t k, int64_t listCap,
                                                              int keyBitsOf, int64_t* above, int64_t* cand) {
  using Scan = cub::BlockScan<long long, 1024>;
  __shared__ typename Scan::TempStorage temp;
  if (s->fail) return;
  const auto total = static_cast<int64_t>(s->total);
  if (total < k || total > listCap) {
    if (threadIdx.x == 0) s->fail = 1;
    return;
  }
  const int64_t per = (tiles + 1023) / 1024;
  const int64_t lo = per * threadIdx.x, hi = lo + per < tiles ? lo + per : tiles;
  long long sum = 0;
  for (int64_t j = lo; j < hi; ++j) sum += tileCnt[j];
  long long at;
  Scan(temp).ExclusiveSum(sum, at);
  for (int64_t j = lo; j < hi; ++j) {
    tileDst[j] = at;
    at += tileCnt[j];
  }
  setupRadix(s, total, k, keyBitsOf, above, cand);
}

/// Moves each tile's run (one warp per tile) to its place in index order.
template <typename B>
__global__ void gatherTilesKernel(const SelState* s, const long long* tileCnt, const unsigned long long* tileOff,
                                  const long long* tileDst, int64_t tiles, const int64_t* inIdx, const B* inBits,
                                  int64_t* outIdx, B* outBits) {
  if (s->fail) return;
  const int lane = threadIdx.x & 31;
  for (int64_t tile = globalThread() >> 5; tile < tiles; tile += gridThreads() >> 5) {
    const long long m = tileCnt[tile];
    const auto from = static_cast<int64_t>(tileOff[tile]);
    const int64_t to = tileDst[tile];
    for (long long j = lane; j < m; j += 32) {
      outIdx[to + j] = inIdx[from + j];
      outBits[to + j] = inBits[from + j];
    }
  }
}

/// sizes[j] = varint bytes of the j-th gap code; status->nonFinite |= 1 for a non-finite kept
/// value (skipped when the sampled path failed: the selection is not there).
template <typename B>
__global__ void codeSizesKernel(const SelState* s, const int64_t* idx, const B* bits, int64_t k, uint64_t inf,
                                long long* sizes, SelStatus* status) {
  if (s->fail) return;
  uint32_t bad = 0;
  for (int64_t j = globalThread(); j < k; j += gridThreads()) {
    sizes[j] = varintSize(gapCode(idx, j));
    bad |= magKey(bits[j]) >= inf ? 1u : 0u;
  }
  bad = __reduce_or_sync(0xffffffffu, bad);
  if (bad && (threadIdx.x & 31) == 0) atomicOr(&status->nonFinite, bad);
}

/// The status word the host reads: failure and the varint stream size (ends[k - 1]).
static __global__ void statusKernel(const SelState* s, const long long* ends, int64_t k, SelStatus* status) {
  status->fail = s->fail;
  status->varintBytes = s->fail || k == 0 ? 0 : ends[k - 1];
}

/// Writes the varint stream: code j at ends[j] - sizes[j].
static __global__ void writeVarintsKernel(const int64_t* idx, int64_t k, const long long* sizes, const long long* ends,
                                   uint8_t* out) {
  for (int64_t j = globalThread(); j < k; j += gridThreads()) putVarint(out + (ends[j] - sizes[j]), gapCode(idx, j));
}

static __global__ void writeBitmapKernel(const int64_t* idx, int64_t k, int64_t nbytes, uint8_t* out) {
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) out[b] = bitmapByte(idx, k, b);
}

// ---- host side -------------------------------------------------------------------------

inline void launchCheck() { EFCOMM_CUDA_CHECK(cudaGetLastError()); }

template <typename T>
std::vector<T> readBack(const T* d, size_t count, cudaStream_t st) {
  std::vector<T> h(count);
  if (count) EFCOMM_CUDA_CHECK(cudaMemcpyAsync(h.data(), d, count * sizeof(T), cudaMemcpyDeviceToHost, st));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  return h;
}
template <typename T>
void upload(T* d, const std::vector<T>& h, cudaStream_t st) {
  // From pageable memory: returns once the bytes are staged, so h may go away.
  if (!h.empty()) EFCOMM_CUDA_CHECK(cudaMemcpyAsync(d, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice, st));
}

/// Carves 256-byte aligned arrays out of one allocation; with base == nullptr it only sums.
struct Carver {
  uint8_t* base = nullptr;
  size_t used = 0;
  template <typename T>
  T* take(size_t count) {
    used = (used + 255) / 256 * 256;
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += count * sizeof(T) + 1;
    return p;
  }
};

/// Opt-in per-phase trace (EFCOMM_CUDA_TRACE=1): cudaEvents between the phases of one
/// compress or feedback step, printed as one line to stderr when done. Unset: nothing is
/// created or recorded.
class Trace {
 public:
  Trace(const char* what, int64_t n, int64_t k, cudaStream_t st) : st_(st), what_(what), n_(n), k_(k) {
    on_ = enabled();
    if (on_) {
      t0_ = std::chrono::steady_clock::now();
      mark("start");
    }
  }
  Trace(const Trace&) = delete;
  Trace& operator=(const Trace&) = delete;
  ~Trace() {
    for (auto& e : events_) cudaEventDestroy(e.second);
  }
  static bool enabled() {
    static const bool on = [] {
      const char* v = std::getenv("EFCOMM_CUDA_TRACE");
      return v && v[0] == '1' && v[1] == 0;
    }();
    return on;
  }
  bool on() const { return on_; }
  /// Records the end of the phase `name` (the time since the previous mark).
  void mark(const char* name) {
    if (!on_) return;
    cudaEvent_t e;
    if (cudaEventCreate(&e) != cudaSuccess) return;
    cudaEventRecord(e, st_);
    events_.emplace_back(name, e);
  }
  /// Host time spent waiting in a synchronizing read.
  void addSyncWait(double us) { syncUs_ += us; ++syncs_; }
  void note(const char* text) {
    if (on_) notes_ += text;
  }
  /// Waits for the last mark and prints the line.
  void print() {
    if (!on_ || events_.empty()) return;
    cudaEventSynchronize(events_.back().second);
    const double hostMs =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0_).count();
    std::string line = "efcomm-trace " + what_ + " n=" + std::to_string(n_) + " k=" + std::to_string(k_) + ":";
    float total = 0;
    for (size_t i = 1; i < events_.size(); ++i) {
      float ms = 0;
      cudaEventElapsedTime(&ms, events_[i - 1].second, events_[i].second);
      total += ms;
      char buf[96];
      std::snprintf(buf, sizeof buf, " %s %.4f ms |", events_[i].first, static_cast<double>(ms));
      line += buf;
    }
    char buf[160];
    std::snprintf(buf, sizeof buf, " gpu total %.4f ms | host syncs %d waiting %.4f ms | host wall %.4f ms", total,
                  syncs_, syncUs_ / 1000.0, hostMs);
    line += buf;
    if (!notes_.empty()) line += " | " + notes_;
    std::fprintf(stderr, "%s\n", line.c_str());
    on_ = false;
  }

 private:
  bool on_ = false;
  cudaStream_t st_;
  std::string what_;
  int64_t n_, k_;
  std::vector<std::pair<const char*, cudaEvent_t>> events_;
  std::chrono::steady_clock::time_point t0_;
  double syncUs_ = 0;
  int syncs_ = 0;
  std::string notes_;
};

inline void traceMark(Trace* tr, const char* name) {
  if (tr) tr->mark(name);
}

/// Whether the selection of k of n tries the sampled one-pass path first.
inline bool useSample(int64_t n, int64_t k) { return n >= kSampleMinElements && k <= n / 8; }

/// Histogram passes of the exact radix on keyBits-bit keys (12 bits each: 31 -> 3, 63 -> 6).
inline int radixPasses(int keyBitsOf) { return (keyBitsOf + kRadixBits - 1) / kRadixBits; }

/// The scratch arrays of one selection (scratch slot 4), sized up front for n and k.
template <typename B>
struct Workspace {
  SelState* state;
  SelStatus* status;
  uint32_t* hist;
  unsigned long long* totals;  // radixPasses x kMaxBins
  int64_t *above, *cand, *quota, *base, *cap;
  long long *tileCnt, *tileDst;
  unsigned long long* tileOff;
  int64_t *listIdx, *list2Idx, *selIdx;
  B *listBits, *list2Bits, *selBits;
  long long *sizes, *ends;
  void* cubTemp;
  size_t cubBytes;
  int64_t listCap = 0, tiles = 0, r = 0;

  void carve(Carver& c, int64_t n, int64_t k) {
    state = c.take<SelState>(1);
    status = c.take<SelStatus>(1);
    const int64_t rows = std::max<int64_t>(chunksWanted(std::max<int64_t>(n, 1)), 1);
    hist = c.take<uint32_t>(static_cast<size_t>(rows * kMaxBins));
    totals = c.take<unsigned long long>(static_cast<size_t>(radixPasses(keyBits(sizeof(B))) * kMaxBins));
    above = c.take<int64_t>(kMaxChunks);
    cand = c.take<int64_t>(kMaxChunks);
    quota = c.take<int64_t>(kMaxChunks);
    base = c.take<int64_t>(kMaxChunks);
    cap = c.take<int64_t>(kMaxChunks);
    if (useSample(n, k)) {
      r = sampleRank(kSample, n, k);
      listCap = sampleListCapacity(n, r);
      const int64_t tileElems = int64_t{kBlock} * vecOf<B>() * kCollectSteps;
      tiles = (n + tileElems - 1) / tileElems;
    }
    tileCnt = c.take<long long>(static_cast<size_t>(tiles));
    tileDst = c.take<long long>(static_cast<size_t>(tiles));
    tileOff = c.take<unsigned long long>(static_cast<size_t>(tiles));
    listIdx = c.take<int64_t>(static_cast<size_t>(listCap));
    listBits = c.take<B>(static_cast<size_t>(listCap));
    list2Idx = c.take<int64_t>(static_cast<size_t>(listCap));
    list2Bits = c.take<B>(static_cast<size_t>(listCap));
    selIdx = c.take<int64_t>(static_cast<size_t>(k));
    selBits = c.take<B>(static_cast<size_t>(k));
    sizes = c.take<long long>(static_cast<size_t>(k));
    ends = c.take<long long>(static_cast<size_t>(k));
    cubBytes = 0;
    cub::DeviceScan::InclusiveSum(nullptr, cubBytes, static_cast<long long*>(nullptr),
                                  static_cast<long long*>(nullptr), static_cast<int64_t>(std::max<int64_t>(k, 1)));
    cubTemp = c.take<uint8_t>(cubBytes);
  }

  static Workspace make(int64_t n, int64_t k) {
    Workspace w{};
    Carver sizing;
    w.carve(sizing, n, k);
    Carver real;
    real.base = static_cast<uint8_t*>(scratch(sizing.used, 4));
    w.carve(real, n, k);
    return w;
  }
};

/// Enqueues the exact radix narrowing (radixPasses passes of hist, pick, narrow) and the
/// compaction of the k entries of `src` (whose length, chunking and radix state are already in
/// ws.state) into outIdx/outBits. `grid`: an upper bound of the chunk count.
template <class Src>
void enqueueRadix(const Src& src, int64_t grid, Workspace<typename Src::Bits>& ws, int64_t* outIdx,
                  typename Src::Bits* outBits, cudaStream_t st) {
  using B = typename Src::Bits;
  const int passes = radixPasses(keyBits(static_cast<int>(sizeof(B))));
  EFCOMM_CUDA_CHECK(cudaMemsetAsync(ws.totals, 0, sizeof(unsigned long long) * passes * kMaxBins, st));
  const auto g = static_cast<unsigned>(std::max<int64_t>(grid, 1));
  for (int p = 0; p < passes; ++p) {
    unsigned long long* totals = ws.totals + static_cast<int64_t>(p) * kMaxBins;
    histKernel<<<g, kBlock, 0, st>>>(src, ws.state, ws.hist, totals);
    launchCheck();
    pickKernel<<<1, 1024, 0, st>>>(ws.state, totals);
    launchCheck();
    narrowKernel<<<static_cast<unsigned>((grid * 32 + 255) / 256), 256, 0, st>>>(ws.hist, ws.state, ws.above,
                                                                                   ws.cand);
    launchCheck();
  }
  planKernel<<<1, 1024, 0, st>>>(ws.state, ws.above, ws.cand, ws.quota, ws.base, ws.cap);
  launchCheck();
  compactKernel<<<g, kBlock, 0, st>>>(src, ws.state, ws.quota, ws.base, ws.cap, outIdx, outBits);
  launchCheck();
}

/// The exact radix path over all of src (no host round trip).
template <class Src>
void enqueueExact(const Src& src, int64_t n, int64_t k, Workspace<typename Src::Bits>& ws, cudaStream_t st) {
  using B = typename Src::Bits;
  if (k == n) {
    takeAllKernel<<<gridFor(n), kThreads, 0, st>>>(src, n, ws.selIdx, ws.selBits);
    launchCheck();
    return;
  }
  radixInitKernel<<<1, 1024, 0, st>>>(ws.state, n, k, keyBits(static_cast<int>(sizeof(B))), ws.above, ws.cand);
  launchCheck();
  enqueueRadix(src, makeChunks(n).count, ws, ws.selIdx, ws.selBits, st);
}

/// The sampled one-pass path (no host round trip): sample threshold, one pass listing the keys
/// at or above it, the list in index order, the exact radix on the list. Fails on the device
/// (state->fail) when the sample misleads; the status read tells.
template <class Src>
void enqueueSampled(const Src& src, int64_t n, int64_t k, Workspace<typename Src::Bits>& ws, cudaStream_t st,
                    Trace* tr) {
  using B = typename Src::Bits;
  const int kb = keyBits(static_cast<int>(sizeof(B)));
  sampleSelectKernel<<<1, 1024, 0, st>>>(src, n, ws.r, kb, ws.state);
  launchCheck();
  traceMark(tr, "sample");
  const int64_t grid = std::min<int64_t>(ws.tiles, int64_t{4} * smCount());
  collectKernel<<<static_cast<unsigned>(std::max<int64_t>(grid, 1)), kBlock, 0, st>>>(
      src, n, ws.state, ws.tileCnt, ws.tileOff, ws.listCap, ws.listIdx, ws.listBits);
  launchCheck();
  traceMark(tr, "full-pass");
  listInitKernel<<<1, 1024, 0, st>>>(ws.state, ws.tileCnt, ws.tiles, ws.tileDst, k, ws.listCap, kb, ws.above,
                                     ws.cand);
  launchCheck();
  const int64_t gatherBlocks = std::min<int64_t>((ws.tiles + 7) / 8, int64_t{8} * smCount());
  gatherTilesKernel<B><<<static_cast<unsigned>(std::max<int64_t>(gatherBlocks, 1)), 256, 0, st>>>(
      ws.state, ws.tileCnt, ws.tileOff, ws.tileDst, ws.tiles, ws.listIdx, ws.listBits, ws.list2Idx, ws.list2Bits);
  launchCheck();
  traceMark(tr, "order-list");
  enqueueRadix(ListSrc<B>{ws.list2Idx, ws.list2Bits}, chunksWanted(std::max<int64_t>(ws.listCap, 1)), ws,
               ws.selIdx, ws.selBits, st);
  traceMark(tr, "select-list");
}

/// Enqueues the coding sizes of the selection and reads the status back (the one host round
/// trip of a selection).
template <typename B>
SelStatus sizesAndStatus(Workspace<B>& ws, int64_t k, uint64_t inf, cudaStream_t st, Trace* tr) {
  EFCOMM_CUDA_CHECK(cudaMemsetAsync(ws.status, 0, sizeof(SelStatus), st));
  if (k > 0) {
    codeSizesKernel<B><<<gridFor(k), kThreads, 0, st>>>(ws.state, ws.selIdx, ws.selBits, k, inf, ws.sizes, ws.status);
    launchCheck();
    size_t bytes = ws.cubBytes;
    EFCOMM_CUDA_CHECK(cub::DeviceScan::InclusiveSum(ws.cubTemp, bytes, ws.sizes, ws.ends, k, st));
  }
  statusKernel<<<1, 1, 0, st>>>(ws.state, ws.ends, k, ws.status);
  launchCheck();
  traceMark(tr, "code-sizes");
  const auto t0 = std::chrono::steady_clock::now();
  const SelStatus s = readBack(ws.status, 1, st)[0];
  if (tr) tr->addSyncWait(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count());
  traceMark(tr, "status-read");
  return s;
}

/// The increasing flat indices of the k largest magnitudes of src[0, n) and their raw values,
/// ties to the lower index (topk.cpp's set), into ws.selIdx / ws.selBits, and the coding sizes:
/// returns the varint stream's size, or -1 if a kept value is NaN/Inf (the largest magnitudes
/// are kept, so this sees any non-finite input). One host round trip (two when the sample
/// misleads).
template <class Src>
int64_t selectTopK(const Src& src, int64_t n, int64_t k, Workspace<typename Src::Bits>& ws, uint64_t inf,
                   cudaStream_t st, Trace* tr = nullptr) {
  using B = typename Src::Bits;
  // A fresh state: fail = 0 before anything reads it (the exact path sets it too).
  EFCOMM_CUDA_CHECK(cudaMemsetAsync(ws.state, 0, sizeof(SelState), st));
  if (k == 0) return 0;
  if (useSample(n, k)) {
    enqueueSampled(src, n, k, ws, st, tr);
    const SelStatus s = sizesAndStatus<B>(ws, k, inf, st, tr);
    if (!s.fail) return s.nonFinite ? -1 : s.varintBytes;
    if (tr) tr->note("sampled path failed: exact radix over the input");
  }
  enqueueExact(src, n, k, ws, st);
  traceMark(tr, "select-exact");
  const SelStatus s = sizesAndStatus<B>(ws, k, inf, st, tr);
  EFCOMM_CHECK_T(Error, !s.fail, "topk: the exact selection failed (internal error)");
  return s.nonFinite ? -1 : s.varintBytes;
}

/// The TopK message of the selection in ws (varint size from selectTopK) into out; returns its
/// size. Enqueues only.
template <typename B>
size_t encodeTopK(Workspace<B>& ws, int64_t n, int64_t k, int64_t varintSize, DType dtype,
                  const std::vector<int64_t>& shape, DeviceBuffer& out, cudaStream_t st, Trace* tr = nullptr) {
  const int64_t bitmapSize = (n + 7) / 8;
  const bool bitmap = bitmapSize < varintSize;
  const size_t valueBytes = static_cast<size_t>(k) * sizeof(B);
  const size_t payload = valueBytes + static_cast<size_t>(bitmap ? bitmapSize : varintSize);
  std::vector<uint8_t> params(8);
  for (int i = 0; i < 8; ++i) params[i] = static_cast<uint8_t>(static_cast<uint64_t>(k) >> (8 * i));
  const DeviceMessageLayout layout =
      beginMessage(out, CompressorId::kTopK, dtype, shape, bitmap ? 1 : 0, params, payload, st);
  uint8_t* p = static_cast<uint8_t*>(out.data()) + layout.headerBytes;
  if (k > 0) {
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(p, ws.selBits, valueBytes, cudaMemcpyDeviceToDevice, st));
    if (bitmap) {
      writeBitmapKernel<<<gridFor(bitmapSize), kThreads, 0, st>>>(ws.selIdx, k, bitmapSize, p + valueBytes);
    } else {
      writeVarintsKernel<<<gridFor(k), kThreads, 0, st>>>(ws.selIdx, k, ws.sizes, ws.ends, p + valueBytes);
    }
    launchCheck();
  }
  traceMark(tr, "encode");
  const size_t size = finishMessage(out, layout, payload, st);
  traceMark(tr, "checksum");
  return size;
}

/// k for a TopK compressor on n elements, from its spec (topk:ratio=r or topk:k=m).
int64_t keepCountOf(const Compressor& c, int64_t n);

}  // namespace efcomm::cuda::topk
