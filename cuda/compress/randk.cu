// RandK on the GPU (cpp/src/compress/randk.cpp): the same k indices as the CPU for the same
// (seed, step), drawn in parallel (randk_hd.hpp): the Floyd draws t_i, a radix sort of (t_i, i)
// to find repeated draws, the collision chains, then a sort of the kept positions, which gives
// the increasing order in which the values travel. Decoding redraws the indices the same way.
#include <cub/device/device_radix_sort.cuh>

#include <type_traits>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "compress/codec_util.hpp"
#include "compress/randk_hd.hpp"

namespace efcomm::cuda {

namespace {

__global__ void drawKernel(uint64_t s0, uint64_t base, uint64_t k, uint64_t* t, uint64_t* step, uint32_t* rejected) {
  bool rej = false;
  for (int64_t i = globalThread(); i < static_cast<int64_t>(k); i += gridThreads()) {
    t[i] = floydDraw(s0, static_cast<uint64_t>(i), base + i + 1, rej);
    step[i] = static_cast<uint64_t>(i);
  }
  raiseFlag(rejected, rej ? 1u : 0u);
}

// The exact sequential stream, run only when a parallel draw would have rejected.
__global__ void redrawKernel(uint64_t s0, uint64_t base, uint64_t k, uint64_t* t, const uint32_t* rejected) {
  if (*rejected) floydDrawSequential(s0, base, k, t);
}

__global__ void notFirstKernel(const uint64_t* keys, const uint64_t* steps, int64_t k, uint8_t* notFirst) {
  for (int64_t p = globalThread(); p < k; p += gridThreads()) notFirst[steps[p]] = p > 0 && keys[p - 1] == keys[p];
}

__global__ void keptKernel(uint64_t base, int64_t k, const uint64_t* t, const uint8_t* notFirst, uint64_t* kept) {
  for (int64_t i = globalThread(); i < k; i += gridThreads())
    kept[i] = floydKept(static_cast<uint64_t>(i), base, t, notFirst);
}

int bitWidth(uint64_t v) {
  int b = 0;
  while (b < 64 && (v >> b) != 0) ++b;
  return b < 1 ? 1 : b;
}

// The k kept positions of a d-element draw, increasing, in device memory (scratch slot 1;
// CUB's temporary storage in slot 2).
const uint64_t* drawIndices(uint64_t seed, uint64_t step, int64_t d, int64_t k, cudaStream_t stream) {
  const auto ku = static_cast<size_t>(k);
  const uint64_t base = static_cast<uint64_t>(d - k);
  // Arena: t, steps, sorted keys, sorted steps, kept, sorted kept (8 bytes each), notFirst, flag.
  auto* arena = static_cast<uint8_t*>(scratch(48 * ku + ku + 64, 1));
  auto* t = reinterpret_cast<uint64_t*>(arena);
  uint64_t* steps = t + ku;
  uint64_t* keys = steps + ku;
  uint64_t* sortedSteps = keys + ku;
  uint64_t* kept = sortedSteps + ku;
  uint64_t* sortedKept = kept + ku;
  auto* flag = reinterpret_cast<uint32_t*>(sortedKept + ku);
  uint8_t* notFirst = arena + 48 * ku + 16;
  const uint64_t s0 = drawKey(seed, step);
  const int endBit = bitWidth(static_cast<uint64_t>(d));
  size_t tempPairs = 0, tempKeys = 0;
  EFCOMM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, tempPairs, t, keys, steps, sortedSteps, k, 0, endBit, stream));
  EFCOMM_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(nullptr, tempKeys, kept, sortedKept, k, 0, endBit, stream));
  void* temp = scratch(std::max(tempPairs, tempKeys), 2);
  EFCOMM_CUDA_CHECK(cudaMemsetAsync(flag, 0, 4, stream));
  drawKernel<<<blocksFor(k), kThreads, 0, stream>>>(s0, base, ku, t, steps, flag);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  redrawKernel<<<1, 1, 0, stream>>>(s0, base, ku, t, flag);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  EFCOMM_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp, tempPairs, t, keys, steps, sortedSteps, k, 0, endBit, stream));
  notFirstKernel<<<blocksFor(k), kThreads, 0, stream>>>(keys, sortedSteps, k, notFirst);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  keptKernel<<<blocksFor(k), kThreads, 0, stream>>>(base, k, t, notFirst, kept);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  EFCOMM_CUDA_CHECK(cub::DeviceRadixSort::SortKeys(temp, tempKeys, kept, sortedKept, k, 0, endBit, stream));
  return sortedKept;
}

template <typename T>
__global__ void gatherKernel(const T* in, const uint64_t* idx, int64_t k, typename Elem<T>::Compute scale, T* out,
                             uint32_t* flag) {
  uint32_t bad = 0;
  for (int64_t r = globalThread(); r < k; r += gridThreads()) {
    const T v = in[idx[r]];
    out[r] = v;
    bad |= nonFiniteBit(Elem<T>::store(Elem<T>::load(v) * scale));
  }
  raiseFlag(flag, bad);
}

// out[idx[r]] = vals[r] * scale, or (kAxpy) out[idx[r]] += w * (vals[r] * scale).
template <typename T, bool kAxpy>
__global__ void scatterKernel(const T* vals, const uint64_t* idx, int64_t k, typename Elem<T>::Compute scale, T w,
                              bool fused, T* out) {
  for (int64_t r = globalThread(); r < k; r += gridThreads()) {
    const T d = Elem<T>::store(mulRn(Elem<T>::load(vals[r]), scale));
    if constexpr (kAxpy) out[idx[r]] = madd(fused, w, d, out[idx[r]]);
    else out[idx[r]] = d;
  }
}

struct RandkParams {
  int64_t k;
  uint64_t seed, step;
  bool scaled;
};

int64_t keepCountOf(int64_t d, double ratio, int64_t k) {
  if (d <= 0) return 0;
  if (k > 0) return std::min(d, k);
  const double r = static_cast<double>(std::llround(ratio * static_cast<double>(d)));
  return std::min<int64_t>(d, std::max<int64_t>(1, static_cast<int64_t>(r)));
}

size_t compressRandk(Compressor& c, const ConstTensorView& x, uint64_t step, DeviceBuffer& out, cudaStream_t stream) {
  SpecParams sp = specOf(c);
  const std::optional<double> ratio = sp.getDouble("ratio");
  const std::optional<int64_t> kk = sp.getInt("k");
  const auto seed = static_cast<uint64_t>(sp.getInt("seed").value_or(0));
  const bool scaled = sp.getBool("scaled").value_or(true);
  const int64_t n = x.numel();
  const int64_t k = keepCountOf(n, kk ? 0.0 : ratio.value_or(0.01), kk.value_or(0));
  const std::vector<uint8_t> params = ByteWriter()
                                          .put<uint64_t>(static_cast<uint64_t>(k))
                                          .put<uint64_t>(seed)
                                          .put<uint64_t>(step)
                                          .put<uint8_t>(scaled)
                                          .bytes();
  const size_t bytes = static_cast<size_t>(k) * itemSize(x.dtype);
  Frame f = beginFrame(out, c, x, params, bytes, stream);
  uint32_t* flags = resetFlags(stream, 1);
  double scaleShown = 1;
  if (k > 0) {
    const uint64_t* idx = drawIndices(seed, step, n, k, stream);
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = typename Elem<T>::Compute;
      const C scale = scaled ? C(static_cast<double>(n) / static_cast<double>(k)) : C(1);
      scaleShown = static_cast<double>(scale);
      gatherKernel<T><<<blocksFor(k), kThreads, 0, stream>>>(static_cast<const T*>(x.data), idx, k, scale,
                                                             reinterpret_cast<T*>(f.payload), flags);
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
  const size_t size = finishMessage(out, f.layout, bytes, stream);
  if (readFlags(stream, 1)[0]) {
    throwNonFinite("randk.compress", x, stream,
                   "a sent value times d/k = " + std::to_string(scaleShown) + " overflows " + dtypeName(x.dtype) +
                       "; scale the input down or use scaled=false");
  }
  return size;
}

RandkParams paramsOf(const DeviceMessageHeader& h) {
  ByteReader r(h.params.data(), h.params.size(), "randk parameters");
  const uint64_t k = r.get<uint64_t>();
  const uint64_t seed = r.get<uint64_t>(), step = r.get<uint64_t>();
  const uint8_t scaled = r.get<uint8_t>();
  r.expectEnd();
  const auto n = static_cast<uint64_t>(h.numel);
  EFCOMM_CHECK_MSG(h.flags == 0, "randk: unknown flags ", h.flags);
  EFCOMM_CHECK_MSG(k <= n && (k == 0) == (n == 0), "randk: k = ", k, " for ", n, " elements");
  EFCOMM_CHECK_MSG(scaled <= 1, "randk: bad scaled flag ", int(scaled));
  const size_t item = itemSize(h.dtype);
  EFCOMM_CHECK_MSG(h.payloadBytes % item == 0 && h.payloadBytes / item == k, "randk: payload of ", h.payloadBytes,
                   " bytes for ", k, " values");
  return {static_cast<int64_t>(k), seed, step, scaled == 1};
}

template <bool kAxpy>
void launchScatter(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                   cudaStream_t stream) {
  const RandkParams p = paramsOf(h);
  const int64_t n = h.numel;
  if (!kAxpy && out.nbytes()) EFCOMM_CUDA_CHECK(cudaMemsetAsync(out.data, 0, out.nbytes(), stream));
  if (p.k == 0) return;
  const uint64_t* idx = drawIndices(p.seed, p.step, n, p.k, stream);
  const bool fused = cpuContractsFma();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = typename Elem<T>::Compute;
    if constexpr (!kAxpy || std::is_floating_point_v<T>) {
      const C scale = p.scaled ? C(static_cast<double>(n) / static_cast<double>(p.k)) : C(1);
      T w{};
      if constexpr (std::is_floating_point_v<T>) w = static_cast<T>(weight);
      scatterKernel<T, kAxpy><<<blocksFor(p.k), kThreads, 0, stream>>>(
          reinterpret_cast<const T*>(payloadOf(h, msg)), idx, p.k, scale, w, fused, static_cast<T*>(out.data));
    }
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

void decodeRandk(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  launchScatter<false>(h, msg, out, 0.0, stream);
}
void accumulateRandk(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                     cudaStream_t stream) {
  launchScatter<true>(h, msg, out, weight, stream);
}

}  // namespace

DeviceCodec randkDeviceCodec() { return {CompressorId::kRandK, compressRandk, decodeRandk, accumulateRandk, false, true}; }

}  // namespace efcomm::cuda
