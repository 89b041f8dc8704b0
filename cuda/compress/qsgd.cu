// QSGD on the GPU (cpp/src/compress/qsgd.cpp): payload = float64 ||x||_2, then codes
// s + sign(x_j) xi_j packed at w bits. The sum of squares follows the CPU's order (blocks of
// kCpuReduceBlock, 8 accumulators, the same tree, partials in block order; fused as the CPU
// contracts), so the norm and every draw match the CPU's bit for bit. The host reads the sum
// back (one synchronization) to take the CPU's rescaling decisions, then one pass draws,
// quantizes and packs 8 codes per thread.
#include <cmath>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "common/rng.hpp"
#include "compress/codec_util.hpp"
#include "compress/layouts.hpp"
#include "compress/qsgd_hd.hpp"

namespace efcomm::cuda {

namespace {

using compress::qsgd::codeWidth;
using compress::qsgd::kMaxLevels;
using compress::qsgd::kNormBytes;
using compress::qsgd::payloadBytes;
constexpr double kOverflowScale = 0x1p-600;
constexpr double kUnderflowScale = 0x1p600;
constexpr double kTinySum = 0x1p-900;

// partial[b] = the CPU's sumSquares of block b with `factor`.
template <typename T>
__global__ void sumSquaresKernel(const T* in, int64_t n, double factor, bool fused, double* partial) {
  const int k = threadIdx.x & 7;
  const int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 8;
  const int64_t lo = b * kCpuReduceBlock;
  if (lo >= n) return;  // whole 8-lane groups leave together: the shuffles below stay in-group
  const int64_t hi = n - lo < kCpuReduceBlock ? n : lo + kCpuReduceBlock;
  double acc = 0;
  const int rows = static_cast<int>((hi - lo + 7) / 8);
#pragma unroll 16
  for (int j = 0; j < rows; ++j) {
    const int64_t i = lo + 8 * static_cast<int64_t>(j) + k;
    if (i < hi) {
      const double v = mulRn(static_cast<double>(Elem<T>::load(in[i])), factor);
      acc = madd(fused, v, v, acc);
    }
  }
  const unsigned group = 0xffu << (threadIdx.x & 24);
  acc = addRn(acc, __shfl_xor_sync(group, acc, 1));
  acc = addRn(acc, __shfl_xor_sync(group, acc, 2));
  acc = addRn(acc, __shfl_xor_sync(group, acc, 4));
  if (k == 0) partial[b] = acc;
}

__global__ void sumInOrderKernel(const double* partial, int64_t blocks, double* total) {
  __shared__ double tile[2048];
  double t = 0;
  for (int64_t t0 = 0; t0 < blocks; t0 += 2048) {
    const int64_t m = blocks - t0 < 2048 ? blocks - t0 : 2048;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < m; i += blockDim.x) tile[i] = partial[t0 + i];
    __syncthreads();
    if (threadIdx.x == 0)
      for (int64_t i = 0; i < m; ++i) t = addRn(t, tile[i]);
  }
  if (threadIdx.x == 0) *total = t;
}

// Draws, quantizes and packs; flag[0] = the largest |level| drawn.
template <typename T>
__global__ void quantizeKernel(const T* in, int64_t n, double pre, double r, int s, int w, uint64_t key, bool fused,
                               double norm, uint8_t* payload, uint32_t* flag) {
  uint8_t* packed = payload + kNormBytes;
  if (globalThread() == 0) *reinterpret_cast<double*>(payload) = norm;
  const int64_t groups = (n + 7) / 8;
  int maxLevel = 0;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    PackedGroup pg;
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    for (int k = 0; k < count; ++k) {
      const int64_t i = 8 * g + k;
      const double v = static_cast<double>(Elem<T>::load(in[i]));
      const int level = qsgdLevel(v, pre, r, s, fused, key, static_cast<uint64_t>(i));
      maxLevel = level > maxLevel ? level : maxLevel;
      packCode(pg, k, w, qsgdCode(v, level, s));
    }
    storeGroup(packed + g * w, pg, static_cast<int>(packedBytes(count, w)));
  }
  if (maxLevel) atomicMax(flag, static_cast<uint32_t>(maxLevel));
}

// flag[0] = largest code, flag[1] = largest |code - s|.
__global__ void scanCodesKernel(const uint8_t* packed, int64_t n, int s, int w, uint32_t* flag) {
  const int64_t groups = (n + 7) / 8;
  int maxCode = 0, maxLevel = 0;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    const PackedGroup pg = loadGroup(packed + g * w, static_cast<int>(packedBytes(count, w)));
    for (int k = 0; k < count; ++k) {
      const int c = static_cast<int>(unpackCode(pg, k, w));
      maxCode = c > maxCode ? c : maxCode;
      const int l = c > s ? c - s : s - c;
      maxLevel = l > maxLevel ? l : maxLevel;
    }
  }
  if (maxCode) atomicMax(flag, static_cast<uint32_t>(maxCode));
  if (maxLevel) atomicMax(flag + 1, static_cast<uint32_t>(maxLevel));
}

template <typename T, bool kVec>
__global__ void dequantizeKernel(const uint8_t* packed, int64_t n, int s, int w, double scale, T* out) {
  const int64_t groups = (n + 7) / 8;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    const PackedGroup pg = loadGroup(packed + g * w, static_cast<int>(packedBytes(count, w)));
    T o[8];
#pragma unroll
    for (int k = 0; k < 8; ++k)
      o[k] = roundFromDouble<T>(mulRn(static_cast<double>(static_cast<int>(unpackCode(pg, k, w)) - s), scale));
    if (count == 8) {
      store8<T, kVec>(out, g, o);
    } else {
      for (int k = 0; k < count; ++k) out[8 * g + k] = o[k];
    }
  }
}

// The CPU's sum of squares of x times factor (synchronizes).
double sumSquares(const ConstTensorView& x, double factor, cudaStream_t stream) {
  const int64_t n = x.numel();
  const int64_t blocks = (n + kCpuReduceBlock - 1) / kCpuReduceBlock;
  auto* partial = static_cast<double*>(scratch(8 * static_cast<size_t>(blocks + 1), 0));
  if (blocks > 0) {
    const int64_t threads = 8 * blocks;
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      sumSquaresKernel<T><<<static_cast<unsigned>((threads + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
          static_cast<const T*>(x.data), n, factor, cpuContractsFma(), partial);
    });
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
  sumInOrderKernel<<<1, kThreads, 0, stream>>>(partial, blocks, partial + blocks);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  double sum = 0;
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(&sum, partial + blocks, 8, cudaMemcpyDeviceToHost, stream));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return sum;
}

size_t compressQsgd(Compressor& c, const ConstTensorView& x, uint64_t step, DeviceBuffer& out, cudaStream_t stream) {
  SpecParams sp = specOf(c);
  const int s = static_cast<int>(sp.getInt("levels").value_or(16));
  const auto seed = static_cast<uint64_t>(sp.getInt("seed").value_or(0));
  const int w = codeWidth(s);
  const int64_t n = x.numel();
  const size_t bytes = payloadBytes(n, s);
  // Pass 1 and the CPU's decisions (qsgd.cpp doCompress) on the host.
  double factor = 1.0, sum = sumSquares(x, factor, stream);
  if (!std::isfinite(sum)) {
    throwIfNonFinite("qsgd.compress", x, stream);
    factor = kOverflowScale;
    sum = sumSquares(x, factor, stream);
  } else if (x.dtype == DType::kFloat64 && sum < kTinySum) {
    factor = kUnderflowScale;
    sum = sumSquares(x, factor, stream);
  }
  const double norm = std::sqrt(sum) / factor;
  EFCOMM_CHECK_T(NonFiniteError, std::isfinite(norm), "qsgd.compress: the 2-norm of the input exceeds the float64 range");
  const double r = sum > 0 ? s / std::sqrt(sum) : 0.0;
  // Pass 2: draw, quantize, pack.
  Frame f = beginFrame(out, c, x, ByteWriter().put<uint32_t>(uint32_t(s)).bytes(), bytes, stream);
  uint32_t* flags = resetFlags(stream, 1);
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    quantizeKernel<T><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(
        static_cast<const T*>(x.data), n, factor, r, s, w, drawKey(seed, step), cpuContractsFma(), norm, f.payload,
        flags);
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  const size_t size = finishMessage(out, f.layout, bytes, stream);
  const auto top = static_cast<int>(readFlags(stream, 1)[0]);
  if (!fits(x.dtype, s * (norm / s))) {
    EFCOMM_CHECK_T(NonFiniteError, fits(x.dtype, top * (norm / s)), "qsgd.compress: a decoded value (",
                   top * (norm / s), ") would overflow ", dtypeName(x.dtype),
                   "; scale the input down or use fewer levels");
  }
  return size;
}

int levelsOf(const DeviceMessageHeader& h) {
  ByteReader r(h.params.data(), h.params.size(), "qsgd parameters");
  const uint32_t s = r.get<uint32_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(s >= 1 && s <= kMaxLevels, "qsgd: levels ", s, " outside [1, ", kMaxLevels, "]");
  return static_cast<int>(s);
}

// The checks of qsgd.cpp validate(): header ones on the host, the code range on the device.
// Returns the decode scale norm / s.
double checkQsgd(const DeviceMessageHeader& h, const uint8_t* payload, cudaStream_t stream) {
  const int s = levelsOf(h);
  EFCOMM_CHECK_MSG(h.flags == 0, "qsgd: unknown flags ", h.flags);
  const int64_t n = h.numel;
  const int w = codeWidth(s);
  EFCOMM_CHECK_MSG(h.payloadBytes == payloadBytes(n, s), "qsgd: payload of ", h.payloadBytes, " bytes for ", n,
                   " elements at ", s, " levels (expected ", payloadBytes(n, s), ")");
  const double norm = hostLoad<double>(h.payloadHead);
  EFCOMM_CHECK_MSG(std::isfinite(norm) && norm >= 0, "qsgd: bad norm ", norm);
  const int64_t bits = n * w;
  if (bits % 8) EFCOMM_CHECK_MSG((h.payloadLast >> (bits % 8)) == 0, "qsgd: non-zero padding bits");
  uint32_t* flags = resetFlags(stream, 2);
  scanCodesKernel<<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(payload + kNormBytes, n, s, w, flags);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  const std::vector<uint32_t> range = readFlags(stream, 2);
  EFCOMM_CHECK_MSG(static_cast<int>(range[0]) <= 2 * s, "qsgd: code ", range[0], " outside [0, ", 2 * s, "]");
  EFCOMM_CHECK_MSG(fits(h.dtype, range[1] * (norm / s)), "qsgd: decoded values overflow ", dtypeName(h.dtype));
  return norm / s;
}

void decodeQsgd(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  const uint8_t* payload = payloadOf(h, msg);
  const double scale = checkQsgd(h, payload, stream);
  const int s = levelsOf(h), w = codeWidth(s);
  const int64_t n = h.numel;
  if (n == 0) return;
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({out.data}, [&](auto vec) {
      dequantizeKernel<T, decltype(vec)::value><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(
          payload + kNormBytes, n, s, w, scale, static_cast<T*>(out.data));
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

DeviceCodec qsgdDeviceCodec() { return {CompressorId::kQSGD, compressQsgd, decodeQsgd, nullptr, false, true}; }

}  // namespace efcomm::cuda
