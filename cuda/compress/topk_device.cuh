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

#include <cstdint>
#include <cub/device/device_scan.cuh>
#include <string>
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

/// The plain source: a device array of raw values.
template <typename B>
struct PlainSrc {
  using Bits = B;
  const B* x;
  __device__ __forceinline__ B bits(int64_t i) const { return x[i]; }
  __device__ __forceinline__ int64_t index(int64_t i) const { return i; }
};

/// A list of (index, value) entries, in increasing index order.
template <typename B>
struct ListSrc {
  using Bits = B;
  const int64_t* idx;
  const B* val;
  __device__ __forceinline__ B bits(int64_t i) const { return val[i]; }
  __device__ __forceinline__ int64_t index(int64_t i) const { return idx[i]; }
};

// ---- kernels ---------------------------------------------------------------------------

/// Per-chunk histograms of the keys inside the pass's range: hist[b * nbins + bin].
template <class Src>
__global__ void __launch_bounds__(kBlock) histKernel(Src src, int64_t n, int64_t chunk, Pass p, uint32_t* hist) {
  __shared__ uint32_t h[kMaxBins];
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
    for (int s = 0; s < kSteps; ++s) {
      const int64_t i = seg + s * 32 + lane;
      v[s] = i < hi ? src.bits(i) : typename Src::Bits(0);
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t i = seg + s * 32 + lane;
      const long long bin = i < hi ? static_cast<long long>(binOf(magKey(v[s]), p)) : -1LL;
      // Lanes with the same bin add once (runs of equal keys would otherwise serialize).
      const unsigned peers = __match_any_sync(0xffffffffu, bin);
      if (bin >= 0 && lane == __ffs(peers) - 1) atomicAdd(&h[bin], static_cast<uint32_t>(__popc(peers)));
    }
  }
  __syncthreads();
  uint32_t* out = hist + static_cast<int64_t>(blockIdx.x) * nbins;
  for (int j = threadIdx.x; j < nbins; j += kBlock) out[j] = h[j];
}

/// totals[bin] = sum over the chunks, in chunk order.
static __global__ void reduceHistKernel(const uint32_t* hist, int64_t nb, int nbins, unsigned long long* totals) {
  for (int64_t j = globalThread(); j < nbins; j += gridThreads()) {
    unsigned long long s = 0;
    for (int64_t b = 0; b < nb; ++b) s += hist[b * nbins + j];
    totals[j] = s;
  }
}

/// Per chunk (one warp each): above += keys in bins above `bin`; cand = keys in `bin`.
static __global__ void narrowKernel(const uint32_t* hist, int64_t nb, int nbins, int64_t bin, int64_t* above,
                             int64_t* cand) {
  const int lane = threadIdx.x & 31;
  const int64_t b = globalThread() >> 5;
  if (b >= nb) return;
  const uint32_t* h = hist + b * nbins;
  long long s = 0;
  for (int64_t j = bin + 1 + lane; j < nbins; j += 32) s += h[j];
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  if (lane == 0) {
    above[b] += s;
    cand[b] = h[bin];
  }
}

static __global__ void initChunksKernel(int64_t nb, int64_t n, int64_t chunk, int64_t* above, int64_t* cand) {
  for (int64_t b = globalThread(); b < nb; b += gridThreads()) {
    above[b] = 0;
    const int64_t lo = b * chunk, hi = lo + chunk < n ? lo + chunk : n;
    cand[b] = hi - lo;
  }
}

/// Stable compaction of chunk b into out[base[b], base[b] + cap[b]): keys kept by keepKey in
/// index order (see topk_select.hpp); got[b] = how many the chunk keeps (it writes the first
/// cap[b]). Warps rank their elements with ballots; two block barriers per tile order the warps.
template <class Src>
__global__ void __launch_bounds__(kBlock)
    compactKernel(Src src, int64_t n, int64_t chunk, uint64_t t, bool atLeast, const int64_t* quota,
                  const int64_t* base, const int64_t* cap, int64_t* got, int64_t* outIdx,
                  typename Src::Bits* outBits) {
  __shared__ long long warpTies[kWarps], warpKeep[kWarps];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned below = (1u << lane) - 1u;
  const int64_t lo = static_cast<int64_t>(blockIdx.x) * chunk;
  const int64_t hi = lo + chunk < n ? lo + chunk : n;
  const int64_t q = atLeast ? 0 : quota[blockIdx.x];
  const int64_t b0 = base[blockIdx.x], c = cap[blockIdx.x];
  int64_t kept = 0, ties = 0;  // the chunk's totals over the earlier tiles (block-uniform)
  for (int64_t tile = lo; tile < hi; tile += kTile) {
    const int64_t seg = tile + static_cast<int64_t>(warp) * 32 * kSteps;
    typename Src::Bits v[kSteps];
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t i = seg + s * 32 + lane;
      v[s] = i < hi ? src.bits(i) : typename Src::Bits(0);
    }
    unsigned tieMask[kSteps];
    long long myTies = 0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t i = seg + s * 32 + lane;
      tieMask[s] = __ballot_sync(0xffffffffu, i < hi && isTie(magKey(v[s]), t, atLeast));
      myTies += __popc(tieMask[s]);
    }
    if (lane == 0) warpTies[warp] = myTies;
    __syncthreads();
    long long tieRank = ties, tileTies = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) tieRank += warpTies[w];
      tileTies += warpTies[w];
    }
    unsigned keepMask[kSteps];
    long long myKeep = 0;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      const int64_t i = seg + s * 32 + lane;
      const bool keep = i < hi && keepKey(magKey(v[s]), t, atLeast, tieRank + __popc(tieMask[s] & below), q);
      keepMask[s] = __ballot_sync(0xffffffffu, keep);
      myKeep += __popc(keepMask[s]);
      tieRank += __popc(tieMask[s]);
    }
    if (lane == 0) warpKeep[warp] = myKeep;
    __syncthreads();
    long long pos = kept, tileKept = 0;
    for (int w = 0; w < kWarps; ++w) {
      if (w < warp) pos += warpKeep[w];
      tileKept += warpKeep[w];
    }
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
      if ((keepMask[s] >> lane) & 1u) {
        const long long at = pos + __popc(keepMask[s] & below);
        if (at < c) {
          const int64_t i = seg + s * 32 + lane;
          outIdx[b0 + at] = src.index(i);
          outBits[b0 + at] = v[s];
        }
      }
      pos += __popc(keepMask[s]);
    }
    kept += tileKept;
    ties += tileTies;
    __syncthreads();  // warpTies/warpKeep are rewritten by the next tile
  }
  if (threadIdx.x == 0) got[blockIdx.x] = kept;
}

/// Every element: out = (index, value) for i < n.
template <class Src>
__global__ void takeAllKernel(Src src, int64_t n, int64_t* outIdx, typename Src::Bits* outBits) {
  for (int64_t i = globalThread(); i < n; i += gridThreads()) {
    outIdx[i] = src.index(i);
    outBits[i] = src.bits(i);
  }
}

template <class Src>
__global__ void sampleKernel(Src src, int64_t n, unsigned long long* keys) {
  for (int64_t j = globalThread(); j < kSample; j += gridThreads()) keys[j] = magKey(src.bits(samplePosition(j, n)));
}

/// Moves region b (got[b] entries from base[b]) to dst[b]: one block per region.
template <typename B>
__global__ void gatherRegionsKernel(const int64_t* base, const int64_t* got, const int64_t* dst, const int64_t* inIdx,
                                    const B* inBits, int64_t* outIdx, B* outBits) {
  const int64_t b = blockIdx.x;
  const int64_t from = base[b], to = dst[b], m = got[b];
  for (int64_t j = threadIdx.x; j < m; j += blockDim.x) {
    outIdx[to + j] = inIdx[from + j];
    outBits[to + j] = inBits[from + j];
  }
}

/// sizes[j] = varint bytes of the j-th gap code; flags[0] |= 1 for a non-finite kept value.
template <typename B>
__global__ void codeSizesKernel(const int64_t* idx, const B* bits, int64_t k, uint64_t inf, long long* sizes,
                                uint32_t* flags) {
  uint32_t bad = 0;
  for (int64_t j = globalThread(); j < k; j += gridThreads()) {
    sizes[j] = varintBytes(gapCode(idx, j));
    bad |= magKey(bits[j]) >= inf ? 1u : 0u;
  }
  bad = __reduce_or_sync(0xffffffffu, bad);
  if (bad && (threadIdx.x & 31) == 0) atomicOr(flags, bad);
}

/// Writes the varint stream: code j at ends[j] - sizes[j].
static __global__ void writeVarintsKernel(const int64_t* idx, int64_t k, const long long* sizes, const long long* ends,
                                   uint8_t* out) {
  for (int64_t j = globalThread(); j < k; j += gridThreads()) writeVarint(out + (ends[j] - sizes[j]), gapCode(idx, j));
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

/// The scratch arrays of one selection (scratch slot 4), sized up front for n and k.
template <typename B>
struct Workspace {
  uint32_t* hist;
  unsigned long long *totals, *sample;
  int64_t *above, *cand, *quota, *base, *cap, *got, *dst;
  int64_t *listIdx, *list2Idx, *selIdx;
  B *listBits, *list2Bits, *selBits;
  long long *sizes, *ends;
  void* cubTemp;
  size_t cubBytes;
  int64_t listCap;

  void carve(Carver& c, int64_t n, int64_t k) {
    const Chunks ch = makeChunks(n);
    const int64_t nb = std::max<int64_t>(ch.count, 1);
    hist = c.take<uint32_t>(static_cast<size_t>(nb * kMaxBins));
    totals = c.take<unsigned long long>(kMaxBins);
    sample = c.take<unsigned long long>(kSample);
    above = c.take<int64_t>(nb);
    cand = c.take<int64_t>(nb);
    quota = c.take<int64_t>(nb);
    base = c.take<int64_t>(nb);
    cap = c.take<int64_t>(nb);
    got = c.take<int64_t>(nb);
    dst = c.take<int64_t>(nb);
    // Lists: the collect list holds at most k + max(kCandidateLimit, n/16) entries; the sampled
    // regions at most the sum of their capacities (bounded by regionCapacity at r = kSample).
    listCap = k + std::max(kCandidateLimit, n / 16);
    if (n >= kSampleMinElements && k <= n / 8) {
      const double expect = static_cast<double>(kSample) * static_cast<double>(k) / static_cast<double>(n);
      const int64_t r = std::min(kSample, static_cast<int64_t>(std::ceil(expect + 4 * std::sqrt(expect))) + 8);
      int64_t regions = 0;
      for (int64_t b = 0; b < ch.count; ++b) regions += regionCapacity(ch.length(b), r);
      listCap = std::max(listCap, regions);
    }
    listCap = std::min(listCap, n);
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

/// narrowRange's backend on device arrays.
template <class Src>
struct DeviceBackend {
  Src src;
  int64_t n;
  Chunks ch;
  uint32_t* hist;
  unsigned long long* totals;
  int64_t *above, *cand;
  cudaStream_t st;

  std::vector<uint64_t> histogram(const Pass& p) {
    histKernel<<<static_cast<unsigned>(ch.count), kBlock, 0, st>>>(src, n, ch.size, p, hist);
    launchCheck();
    const int nbins = static_cast<int>(p.nbins);
    reduceHistKernel<<<(nbins + 255) / 256, 256, 0, st>>>(hist, ch.count, nbins, totals);
    launchCheck();
    const std::vector<unsigned long long> t = readBack(totals, static_cast<size_t>(nbins), st);
    return std::vector<uint64_t>(t.begin(), t.end());
  }
  void narrow(const Pass& p, int64_t bin) {
    const int64_t threads = ch.count * 32;
    narrowKernel<<<static_cast<unsigned>((threads + 255) / 256), 256, 0, st>>>(hist, ch.count, static_cast<int>(p.nbins),
                                                                                bin, above, cand);
    launchCheck();
  }
};

/// The k (0 < k <= n) largest magnitudes of src[0, n) by the radix path, ties to the lower
/// index, into outIdx/outBits (increasing index order). On a list (`onList`) the narrowing goes
/// down to a single key, so no second list is needed.
template <class Src>
void selectRadix(const Src& src, int64_t n, int64_t k, bool onList, Workspace<typename Src::Bits>& ws,
                 int64_t* outIdx, typename Src::Bits* outBits, cudaStream_t st) {
  using B = typename Src::Bits;
  if (k == n) {
    takeAllKernel<<<gridFor(n), kThreads, 0, st>>>(src, n, outIdx, outBits);
    launchCheck();
    return;
  }
  const Chunks ch = makeChunks(n);
  initChunksKernel<<<gridFor(ch.count), kThreads, 0, st>>>(ch.count, n, ch.size, ws.above, ws.cand);
  launchCheck();
  DeviceBackend<Src> be{src, n, ch, ws.hist, ws.totals, ws.above, ws.cand, st};
  const Narrowed r = narrowRange(be, n, k, keyBits(static_cast<int>(sizeof(B))), onList);
  const std::vector<int64_t> above = readBack(ws.above, static_cast<size_t>(ch.count), st);
  const std::vector<int64_t> cand = readBack(ws.cand, static_cast<size_t>(ch.count), st);
  const CompactPlan plan = planCompaction(r, above, cand);
  upload(ws.quota, plan.quota, st);
  upload(ws.base, std::vector<int64_t>(plan.offset.begin(), plan.offset.end() - 1), st);
  upload(ws.cap, plan.count, st);
  if (r.exact()) {
    compactKernel<<<static_cast<unsigned>(ch.count), kBlock, 0, st>>>(src, n, ch.size, plan.t, false, ws.quota, ws.base,
                                                                      ws.cap, ws.got, outIdx, outBits);
    launchCheck();
    return;
  }
  EFCOMM_CHECK_T(Error, !onList && plan.offset.back() <= ws.listCap, "topk: candidate list of ", plan.offset.back(),
                 " entries exceeds its capacity ", ws.listCap, " (internal error)");
  compactKernel<<<static_cast<unsigned>(ch.count), kBlock, 0, st>>>(src, n, ch.size, plan.t, true, ws.quota, ws.base,
                                                                    ws.cap, ws.got, ws.listIdx, ws.listBits);
  launchCheck();
  selectRadix(ListSrc<B>{ws.listIdx, ws.listBits}, plan.offset.back(), k, true, ws, outIdx, outBits, st);
}

/// The sampled one-pass path; false when the sample misleads (the caller runs the radix path).
template <class Src>
bool selectBySample(const Src& src, int64_t n, int64_t k, Workspace<typename Src::Bits>& ws, int64_t* outIdx,
                    typename Src::Bits* outBits, cudaStream_t st) {
  using B = typename Src::Bits;
  sampleKernel<<<gridFor(kSample), kThreads, 0, st>>>(src, n, ws.sample);
  launchCheck();
  const std::vector<unsigned long long> raw = readBack(ws.sample, static_cast<size_t>(kSample), st);
  std::vector<uint64_t> keys(raw.begin(), raw.end());
  const SampleCut cut = sampleThreshold(keys, n, k);
  if (cut.t == 0) return false;  // a heavily tied zero key: the radix path handles it
  const Chunks ch = makeChunks(n);
  std::vector<int64_t> cap(static_cast<size_t>(ch.count)), base(static_cast<size_t>(ch.count));
  int64_t at = 0;
  for (int64_t b = 0; b < ch.count; ++b) {
    base[b] = at;
    cap[b] = regionCapacity(ch.length(b), cut.r);
    at += cap[b];
  }
  if (at > ws.listCap) return false;
  upload(ws.base, base, st);
  upload(ws.cap, cap, st);
  compactKernel<<<static_cast<unsigned>(ch.count), kBlock, 0, st>>>(src, n, ch.size, cut.t, true, ws.quota, ws.base,
                                                                    ws.cap, ws.got, ws.listIdx, ws.listBits);
  launchCheck();
  const std::vector<int64_t> got = readBack(ws.got, static_cast<size_t>(ch.count), st);
  std::vector<int64_t> dst(static_cast<size_t>(ch.count));
  int64_t total = 0;
  for (int64_t b = 0; b < ch.count; ++b) {
    if (got[b] > cap[b]) return false;  // a region overflowed: entries were dropped
    dst[b] = total;
    total += got[b];
  }
  if (total < k) return false;
  upload(ws.dst, dst, st);
  gatherRegionsKernel<B><<<static_cast<unsigned>(ch.count), 256, 0, st>>>(ws.base, ws.got, ws.dst, ws.listIdx,
                                                                           ws.listBits, ws.list2Idx, ws.list2Bits);
  launchCheck();
  selectRadix(ListSrc<B>{ws.list2Idx, ws.list2Bits}, total, k, true, ws, outIdx, outBits, st);
  return true;
}

/// The increasing flat indices of the k largest magnitudes of src[0, n) and their raw values,
/// ties to the lower index (topk.cpp's set), into ws.selIdx / ws.selBits.
template <class Src>
void selectTopK(const Src& src, int64_t n, int64_t k, Workspace<typename Src::Bits>& ws, cudaStream_t st) {
  if (k == 0) return;
  if (n >= kSampleMinElements && k <= n / 8 && selectBySample(src, n, k, ws, ws.selIdx, ws.selBits, st)) return;
  selectRadix(src, n, k, false, ws, ws.selIdx, ws.selBits, st);
}

/// Index coding sizes of the selection in ws and the non-finite check of its values:
/// returns the varint stream's size, or -1 if a kept value is NaN/Inf (the largest magnitudes
/// are kept, so this sees any non-finite input). Synchronizes.
template <typename B>
int64_t codeSizes(Workspace<B>& ws, int64_t k, uint64_t inf, cudaStream_t st) {
  if (k == 0) return 0;
  uint32_t* flags = resetFlags(st, 1);
  codeSizesKernel<B><<<gridFor(k), kThreads, 0, st>>>(ws.selIdx, ws.selBits, k, inf, ws.sizes, flags);
  launchCheck();
  size_t bytes = ws.cubBytes;
  EFCOMM_CUDA_CHECK(cub::DeviceScan::InclusiveSum(ws.cubTemp, bytes, ws.sizes, ws.ends, k, st));
  const std::vector<long long> last = readBack(ws.ends + (k - 1), 1, st);
  if (readFlags(st, 1)[0]) return -1;
  return last[0];
}

/// The TopK message of the selection in ws (varint size from codeSizes) into out; returns its
/// size. Enqueues only.
template <typename B>
size_t encodeTopK(Workspace<B>& ws, int64_t n, int64_t k, int64_t varintSize, DType dtype,
                  const std::vector<int64_t>& shape, DeviceBuffer& out, cudaStream_t st) {
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
  return finishMessage(out, layout, payload, st);
}

/// k for a TopK compressor on n elements, from its spec (topk:ratio=r or topk:k=m).
int64_t keepCountOf(const Compressor& c, int64_t n);

}  // namespace efcomm::cuda::topk
