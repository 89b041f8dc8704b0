// ScaledSign on the GPU (cpp/src/compress/sign.cpp): payload = float64 scale ||x||_1/d, then
// one bit per element (set = negative), LSB first.
//
// The L1 sum follows the CPU's order exactly, so the scale is bit-identical: blocks of
// kReduceBlock elements, each summed by 8 accumulators (element lo + 8j + k into accumulator
// k, in order of j; fused as the CPU contracts), combined ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)), and the block partials added
// in block order. A group of 8 lanes runs one block's 8 accumulators (one lane each) and packs
// the block's sign bits with a warp ballot; a single thread then adds the partials in order.
#include <cmath>

#include "common/dispatch.hpp"
#include "compress/codec_util.hpp"

namespace efcomm::cuda {

namespace {

constexpr int64_t kBlock = kCpuReduceBlock;
constexpr int kRows = static_cast<int>(kBlock / 8);
constexpr int kUnroll = 32;               // rows loaded ahead per lane
constexpr double kOverflowScale = 0x1p-64;
static_assert(kRows % kUnroll == 0, "rows per block");

// partial[b] = the CPU's l1AndSigns sum of block b (times factor); bits = the sign bits.
template <typename T>
__global__ void signPassKernel(const T* in, int64_t n, double factor, bool fused, uint8_t* bits, double* partial,
                               uint32_t* flag) {
  const int lane = threadIdx.x & 31, k = lane & 7;
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 8;
  const int64_t lo = b * kBlock;
  const int64_t hi = lo < n ? (n - lo < kBlock ? n : lo + kBlock) : lo;
  // Rows this group needs; the warp runs the most any of its groups needs (ballots are warp-wide).
  const int rows = static_cast<int>((hi - lo + 7) / 8);
  const int warpRows = static_cast<int>(__reduce_max_sync(0xffffffffu, static_cast<unsigned>(rows)));
  double acc = 0;
  uint32_t bad = 0, word = 0;
  const int shift = 8 * ((lane >> 3) & 3);
  for (int j0 = 0; j0 < warpRows; j0 += kUnroll) {
    T v[kUnroll];
#pragma unroll
    for (int r = 0; r < kUnroll; ++r) {
      const int64_t i = lo + 8 * static_cast<int64_t>(j0 + r) + k;
      v[r] = i < hi ? in[i] : T{};
    }
#pragma unroll
    for (int r = 0; r < kUnroll; ++r) {
      const int64_t i = lo + 8 * static_cast<int64_t>(j0 + r) + k;
      const bool live = i < hi;
      const auto c = DElem<T>::load(v[r]);
      if (live) {
        acc = madd(fused, fabs(static_cast<double>(c)), factor, acc);
        bad |= nonFinite(v[r]);
      }
      const uint32_t mask = __ballot_sync(0xffffffffu, live && c < decltype(c)(0));
      word |= ((mask >> shift) & 0xffu) << (8 * (r & 3));
      if ((r & 3) == 3) {
        // Rows j0 + r - 3 .. j0 + r: bytes lo/8 + j0 + r - 3 .. of the bitmap, one word.
        const int first = j0 + r - 3;
        if (k == 0 && first < rows) {
          uint8_t* dst = bits + lo / 8 + first;
          if (first + 4 <= rows) {
            *reinterpret_cast<uint32_t*>(dst) = word;
          } else {
            for (int q = 0; first + q < rows; ++q) dst[q] = static_cast<uint8_t>(word >> (8 * q));
          }
        }
        word = 0;
      }
    }
  }
  acc = addRn(acc, __shfl_xor_sync(0xffffffffu, acc, 1));
  acc = addRn(acc, __shfl_xor_sync(0xffffffffu, acc, 2));
  acc = addRn(acc, __shfl_xor_sync(0xffffffffu, acc, 4));
  if (k == 0 && lo < n) partial[b] = acc;
  raiseFlag(flag, bad);
}

// scale = (sum of partials in order) / n / factor; flag 2 when the sum is not finite.
__global__ void signScaleKernel(const double* partial, int64_t blocks, int64_t n, double factor, uint8_t* payload,
                                uint32_t* flag) {
  __shared__ double tile[2048];
  double total = 0;
  for (int64_t t0 = 0; t0 < blocks; t0 += 2048) {
    const int64_t m = blocks - t0 < 2048 ? blocks - t0 : 2048;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) tile[i] = partial[t0 + i];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int64_t i = 0; i < m; ++i) total = addRn(total, tile[i]);
  }
  if (threadIdx.x == 0) {
    double scale = 0;
    if (n > 0) {
      if (!isfinite(total)) atomicOr(flag, 2u);
      scale = factor == 1.0 ? total / static_cast<double>(n) : total / static_cast<double>(n) / factor;
    }
    *reinterpret_cast<double*>(payload) = scale;
  }
}

template <typename T, bool kVec, bool kAxpy>
__global__ void signDecodeKernel(const uint8_t* bits, T* out, int64_t n, T pos, T neg, T w, bool fused) {
  const int64_t groups = (n + 7) / 8;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const uint32_t byte = bits[g];
    T o[8];
    if (8 * g + 8 <= n) {
      if constexpr (kAxpy) load8<T, kVec>(out, g, o);
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const T d = (byte >> k & 1u) ? neg : pos;
        if constexpr (kAxpy) o[k] = madd(fused, w, d, o[k]);
        else o[k] = d;
      }
      store8<T, kVec>(out, g, o);
    } else {
      for (int64_t i = 8 * g; i < n; ++i) {
        const T d = (byte >> (i - 8 * g) & 1u) ? neg : pos;
        if constexpr (kAxpy) out[i] = madd(fused, w, d, out[i]);
        else out[i] = d;
      }
    }
  }
}

size_t payloadBytes(int64_t n) { return 8 + static_cast<size_t>((n + 7) / 8); }

// The pass and the scale with the given factor (1, or 2^-64 after an overflow).
void enqueuePass(const ConstTensorView& x, double factor, uint8_t* payload, uint32_t* flags, cudaStream_t stream) {
  const int64_t n = x.numel();
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  auto* partial = static_cast<double*>(scratch(8 * static_cast<size_t>(blocks + 1), 0));
  if (blocks > 0) {
    const int64_t threads = 8 * blocks;
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      signPassKernel<T><<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x.data), n, factor, cpuContractsFma(), payload + 8, partial, flags);
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
  signScaleKernel<<<1, kThreads, 0, stream>>>(partial, blocks, n, factor, payload, flags);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

size_t compressSign(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  const int64_t n = x.numel();
  const size_t bytes = payloadBytes(n);
  Frame f = beginFrame(out, c, x, {}, bytes, stream);
  uint32_t* flags = resetFlags(stream, 1);
  enqueuePass(x, 1.0, f.payload, flags, stream);
  size_t size = finishMessage(out, f.layout, bytes, stream);
  const uint32_t flag = readFlags(stream, 1)[0];
  if (flag & 1u) throwNonFinite("sign.compress", x, stream, "non-finite input");
  if (flag & 2u) {
    // Finite float64 inputs whose L1 sum overflows: summed again scaled down, as on the CPU.
    flags = resetFlags(stream, 1);
    enqueuePass(x, kOverflowScale, f.payload, flags, stream);
    size = finishMessage(out, f.layout, bytes, stream);
    EFCOMM_CHECK_T(Error, readFlags(stream, 1)[0] == 0, "sign.compress: rescaled L1 sum overflowed");
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
    using C = typename Elem<T>::Compute;
    EFCOMM_CHECK_MSG(std::isfinite(static_cast<double>(Elem<T>::load(Elem<T>::store(static_cast<C>(scale))))),
                     "sign: scale ", scale, " overflows ", dtypeName(h.dtype));
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
    using C = typename Elem<T>::Compute;
    if constexpr (!kAxpy || std::is_floating_point_v<T>) {
      const T pos = Elem<T>::store(static_cast<C>(scale)), neg = Elem<T>::store(static_cast<C>(-scale));
      T w{};
      if constexpr (std::is_floating_point_v<T>) w = static_cast<T>(weight);
      withAlignment({out.data}, [&](auto vec) {
        signDecodeKernel<T, decltype(vec)::value, kAxpy><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(
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

DeviceCodec signDeviceCodec() { return {CompressorId::kSign, compressSign, decodeSign, accumulateSign}; }

}  // namespace efcomm::cuda
