// ScaledSign on the GPU (cpp/src/compress/sign.cpp): payload = float64 scale ||x||_1/d, then
// one bit per element (set = negative), LSB first.
//
// One streaming pass reads x once: each thread takes groups of 8 elements (one bitmap byte
// each), kStreamUnroll groups per tile row, and a block covers a tile of kTile elements, whose
// |x| sum (float64, fixed order: the thread's groups in order, then a fixed butterfly over the
// block) goes to partial[tile]. The last block to finish sums the partials in a fixed order
// (thread t: tiles t, t + kThreads, ..., then the block tree) and writes the scale. The order
// depends on n only (not on the grid), so the bytes are the same on every run and device; the
// scale may differ from the CPU's in the last bits (cuda.hpp), the bits never do.
#include <algorithm>
#include <cmath>

#include "common/dispatch.hpp"
#include "compress/codec_util.hpp"

namespace efcomm::cuda {

namespace {

constexpr int kU = kStreamUnroll;
constexpr int64_t kTileGroups = static_cast<int64_t>(kThreads) * kU;
constexpr double kOverflowScale = 0x1p-64;

// Loads group g (elements [8g, 8g + 8)): vectorized when whole and kVec, else element by
// element with zeros (+0: not negative, adds nothing) past n.
template <typename T, bool kVec>
__device__ __forceinline__ void loadGroupPadded(const T* in, int64_t n, int64_t g, T (&v)[8]) {
  if (8 * g + 8 <= n) {
    load8<T, kVec>(in, g, v);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = 8 * g + k < n ? in[8 * g + k] : T{};
  }
}

// flags[0]: non-finite input; flags[1]: the L1 sum is not finite (float64 overflow).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) signKernel(const T* in, int64_t n, double factor, uint8_t* payload,
                                                       double* partial, uint32_t* ticket, uint32_t* flags) {
  __shared__ bool last;
  const int64_t groups = (n + 7) / 8;
  const int64_t tiles = (groups + kTileGroups - 1) / kTileGroups;
  uint8_t* bits = payload + 8;
  uint32_t bad = 0;
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    const int64_t base = tile * kTileGroups + threadIdx.x;
    T v[kU][8];
#pragma unroll
    for (int u = 0; u < kU; ++u)
      if (base + u * kThreads < groups) loadGroupPadded<T, kVec>(in, n, base + u * kThreads, v[u]);
    double acc = 0;
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      if (base + u * kThreads >= groups) break;
      uint32_t byte = 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const auto c = Elem<T>::load(v[u][k]);
        bad |= nonFiniteBit(v[u][k]);
        byte |= static_cast<uint32_t>(c < decltype(c)(0)) << k;
        acc = fma(fabs(static_cast<double>(c)), factor, acc);
      }
      bits[base + u * kThreads] = static_cast<uint8_t>(byte);
    }
    const double sum = blockSum(acc);
    if (threadIdx.x == 0) partial[tile] = sum;
  }
  raiseMailFlag(flags, bad);
  // The last block sums the partials.
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  double acc = 0;
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) acc += __ldcg(partial + t);
  const double total = blockSum(acc);
  if (threadIdx.x == 0) {
    *ticket = 0;
    double scale = 0;
    if (n > 0) {
      if (!isfinite(total)) raiseMailFlag(flags + 1, 1u);
      scale = factor == 1.0 ? total / static_cast<double>(n) : total / static_cast<double>(n) / factor;
    }
    double* dst = reinterpret_cast<double*>(payload);  // the payload is 16-byte aligned
    *dst = scale;
  }
}

// Streaming decode in units of 4 elements (one nibble of the bitmap, one coalesced 16-byte
// store for float32), kStreamUnroll units per thread per step.
template <typename T, bool kVec, bool kAxpy>
__global__ void __launch_bounds__(kThreads) signDecodeKernel(const uint8_t* bits, T* out, int64_t n, T pos, T neg,
                                                             T w, bool fused) {
  const int64_t units = (n + 3) / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * kU;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * kU + threadIdx.x; base < units; base += stride) {
    uint32_t nib[kU];
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t h = base + u * kThreads;
      nib[u] = h < units ? (static_cast<uint32_t>(__ldg(bits + (h >> 1))) >> (4 * (h & 1))) & 15u : 0u;
    }
#pragma unroll
    for (int u = 0; u < kU; ++u) {
      const int64_t h = base + u * kThreads;
      if (h >= units) break;
      T o[4];
      if (4 * h + 4 <= n) {
        if constexpr (kAxpy) load4<T, kVec>(out, h, o);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const T d = (nib[u] >> k & 1u) ? neg : pos;
          if constexpr (kAxpy) o[k] = madd(fused, w, d, o[k]);
          else o[k] = d;
        }
        store4<T, kVec>(out, h, o);
      } else {
        for (int64_t i = 4 * h; i < n; ++i) {
          const T d = (nib[u] >> (i - 4 * h) & 1u) ? neg : pos;
          if constexpr (kAxpy) out[i] = madd(fused, w, d, out[i]);
          else out[i] = d;
        }
      }
    }
  }
}

size_t payloadBytes(int64_t n) { return 8 + static_cast<size_t>((n + 7) / 8); }

// The pass with the given factor (1, or 2^-64 after an overflow).
void enqueuePass(const ConstTensorView& x, double factor, uint8_t* payload, uint32_t* flags, cudaStream_t stream) {
  const int64_t n = x.numel();
  const int64_t groups = (n + 7) / 8;
  const int64_t tiles = (groups + kTileGroups - 1) / kTileGroups;
  auto* partial = static_cast<double*>(scratch(8 * static_cast<size_t>(tiles + 1), 0));
  const int grid = static_cast<int>(std::min<int64_t>(tiles < 1 ? 1 : tiles, 8 * static_cast<int64_t>(smCount())));
  uint32_t* ticket = ticketWords() + 1;
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({x.data}, [&](auto vec) {
      signKernel<T, decltype(vec)::value><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x.data), n, factor,
                                                                         payload, partial, ticket, flags);
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  traceMark(stream, "sign");
}

size_t compressSign(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  const int64_t n = x.numel();
  const size_t bytes = payloadBytes(n);
  Frame f = beginFrame(out, c, x, {}, bytes, stream);
  uint32_t* flags = clearMailboxFlags(2);
  enqueuePass(x, 1.0, f.payload, flags, stream);
  uint32_t flag[2];
  size_t size = sealAndWait(out, f, bytes, stream, flag, 2);
  if (flag[0]) throwNonFinite("sign.compress", x, stream, "non-finite input");
  if (flag[1]) {
    // Finite float64 inputs whose L1 sum overflows: summed again scaled down, as on the CPU.
    flags = clearMailboxFlags(2);
    enqueuePass(x, kOverflowScale, f.payload, flags, stream);
    size = sealAndWait(out, f, bytes, stream, flag, 2);
    EFCOMM_CHECK_T(Error, flag[0] == 0 && flag[1] == 0, "sign.compress: rescaled L1 sum overflowed");
  }
  return size;
}

// The checks of sign.cpp validate(), all on the header copy; returns the scale.
double checkSign(const DeviceMessageHeader& h) {
  EFCOMM_CHECK_MSG(h.params.empty(), "sign: unexpected parameters");
  EFCOMM_CHECK_MSG(h.flags == 0, "sign: unknown flags ", h.flags);
  const int64_t n = h.numel;
  EFCOMM_CHECK_MSG(h.payloadBytes == payloadBytes(n), "sign: payload of ", h.payloadBytes, " bytes for ", n,
                   " elements (expected ", payloadBytes(n), ")");
  const double scale = hostLoad<double>(h.payloadHead);
  EFCOMM_CHECK_MSG(std::isfinite(scale) && scale >= 0, "sign: bad scale ", scale);
  dispatchDType(h.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    EFCOMM_CHECK_MSG(std::isfinite(static_cast<double>(Elem<T>::load(roundFromDouble<T>(scale)))), "sign: scale ",
                     scale, " overflows ", dtypeName(h.dtype));
  });
  if (n % 8) EFCOMM_CHECK_MSG((h.payloadLast >> (n % 8)) == 0, "sign: non-zero padding bits");
  return scale;
}

template <bool kAxpy>
void launchSignDecode(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                      cudaStream_t stream) {
  const double scale = checkSign(h);
  const int64_t n = h.numel;
  if (n == 0) return;
  const uint8_t* bits = payloadOf(h, msg) + 8;
  const bool fused = cpuContractsFma();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!kAxpy || std::is_floating_point_v<T>) {
      const T pos = roundFromDouble<T>(scale), neg = roundFromDouble<T>(-scale);
      T w{};
      if constexpr (std::is_floating_point_v<T>) w = static_cast<T>(weight);
      withAlignment({out.data}, [&](auto vec) {
        signDecodeKernel<T, decltype(vec)::value, kAxpy><<<streamGrid((n + 3) / 4), kThreads, 0, stream>>>(
            bits, static_cast<T*>(out.data), n, pos, neg, w, fused);
      });
    }
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

void decodeSign(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  launchSignDecode<false>(h, msg, out, 0.0, stream);
}
void accumulateSign(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                    cudaStream_t stream) {
  launchSignDecode<true>(h, msg, out, weight, stream);
}

}  // namespace

DeviceCodec signDeviceCodec() { return {CompressorId::kSign, compressSign, decodeSign, accumulateSign, true, true}; }

}  // namespace efcomm::cuda
