// Cast on the GPU: each element rounded to bfloat16 or float16, nearest even
// (cpp/src/compress/cast.cpp; conversions of common/hd.hpp). A result with an all-ones exponent
// is a NaN/Inf input or an overflow of the 16-bit range: flagged, then told apart on the host.
#include <type_traits>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "compress/codec_util.hpp"
#include "compress/layouts.hpp"

namespace efcomm::cuda {

namespace {

template <bool kBf16>
__device__ __forceinline__ uint16_t narrow(float v) {
  return kBf16 ? floatToBf16(v) : floatToF16(v);
}
__device__ __forceinline__ float widen(uint16_t b, bool bf16) { return bf16 ? bf16ToFloat(b) : f16ToFloat(b); }

// One streaming pass: kStreamUnroll groups of 8 per thread per step, loads first (16-byte
// vector loads when kVec, 16-byte stores: the payload is 16-byte aligned); flag (a mailbox word)
// when a result has an all-ones exponent.
template <typename T, bool kBf16, bool kVec>
__global__ void __launch_bounds__(kThreads) castKernel(const T* in, uint16_t* out, int64_t n, uint32_t* flag) {
  constexpr int U = kStreamUnroll;
  uint32_t bad = 0;
  const int64_t groups = n / 8;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * U;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; base < groups; base += stride) {
    T v[U][8];
#pragma unroll
    for (int u = 0; u < U; ++u)
      if (base + u * kThreads < groups) load8<T, kVec>(in, base + u * kThreads, v[u]);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * kThreads >= groups) break;
      uint16_t o[8];
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        o[k] = narrow<kBf16>(floatForNarrowing(Elem<T>::load(v[u][k])));
        bad |= compress::cast::decodesNonFinite<T, kBf16>(o[k]);
      }
      store8<uint16_t, true>(out, base + u * kThreads, o);
    }
  }
  for (int64_t i = 8 * groups + globalThread(); i < n; i += gridThreads()) {
    const uint16_t b = narrow<kBf16>(floatForNarrowing(Elem<T>::load(in[i])));
    bad |= compress::cast::decodesNonFinite<T, kBf16>(b);
    out[i] = b;
  }
  raiseMailFlag(flag, bad);
}

// out = widen(payload) (kAxpy: out += w * widen(payload), out float32/float64), in units of 4
// elements: an 8-byte load of codes, a coalesced 16-byte store (float32) per lane.
template <typename T, bool kVec, bool kAxpy>
__global__ void __launch_bounds__(kThreads) uncastKernel(const uint16_t* in, T* out, int64_t n, bool bf16, T w,
                                                         bool fused) {
  constexpr int U = kStreamUnroll;
  const int64_t units = n / 4;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * U;
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; base < units; base += stride) {
    uint16_t c[U][4];
    T o[U][4];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * kThreads < units) {
        load4<uint16_t, true>(in, base + u * kThreads, c[u]);
        if constexpr (kAxpy) load4<T, kVec>(out, base + u * kThreads, o[u]);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (base + u * kThreads >= units) break;
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        const T d = Elem<T>::store(widen(c[u][k], bf16));
        if constexpr (kAxpy) o[u][k] = madd(fused, w, d, o[u][k]);
        else o[u][k] = d;
      }
      store4<T, kVec>(out, base + u * kThreads, o[u]);
    }
  }
  for (int64_t i = 4 * units + globalThread(); i < n; i += gridThreads()) {
    const T d = Elem<T>::store(widen(in[i], bf16));
    if constexpr (kAxpy) out[i] = madd(fused, w, d, out[i]);
    else out[i] = d;
  }
}

DType targetOf(const std::vector<uint8_t>& params) {
  ByteReader r(params.data(), params.size(), "cast parameters");
  const uint8_t t = r.get<uint8_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(t == uint8_t(DType::kBFloat16) || t == uint8_t(DType::kFloat16), "cast: bad target dtype ", int(t));
  return static_cast<DType>(t);
}

size_t compressCast(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  SpecParams sp = specOf(c);
  const DType target = parseDType(sp.getString("dtype").value_or("bf16"));
  const int64_t n = x.numel();
  Frame f = beginFrame(out, c, x, ByteWriter().put<uint8_t>(uint8_t(target)).bytes(), 2 * static_cast<size_t>(n),
                       stream);
  uint32_t* flags = clearMailboxFlags(1);
  auto* o = reinterpret_cast<uint16_t*>(f.payload);
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* in = static_cast<const T*>(x.data);
    withAlignment({x.data}, [&](auto vec) {
      constexpr bool kVec = decltype(vec)::value;
      if (target == DType::kBFloat16) {
        castKernel<T, true, kVec><<<streamGrid(n / 8 + 1), kThreads, 0, stream>>>(in, o, n, flags);
      } else {
        castKernel<T, false, kVec><<<streamGrid(n / 8 + 1), kThreads, 0, stream>>>(in, o, n, flags);
      }
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  traceMark(stream, "cast");
  uint32_t flag = 0;
  const size_t size = sealAndWait(out, f, 2 * static_cast<size_t>(n), stream, &flag, 1);
  if (flag) throwNonFinite("cast.compress", x, stream, compress::cast::overflowReason(x.dtype, target));
  return size;
}

DType checkCast(const DeviceMessageHeader& h) {
  const DType target = targetOf(h.params);
  EFCOMM_CHECK_MSG(h.payloadBytes == 2 * static_cast<size_t>(h.numel), "cast: payload of ", h.payloadBytes,
                   " bytes for ", h.numel, " elements");
  return target;
}

template <bool kAxpy>
void launchUncast(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                  cudaStream_t stream) {
  const bool bf16 = checkCast(h) == DType::kBFloat16;
  const int64_t n = h.numel;
  const auto* in = reinterpret_cast<const uint16_t*>(payloadOf(h, msg));
  const bool fused = cpuContractsFma();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!kAxpy || std::is_floating_point_v<T>) {
      T w{};
      if constexpr (std::is_floating_point_v<T>) w = static_cast<T>(weight);
      withAlignment({out.data}, [&](auto vec) {
        uncastKernel<T, decltype(vec)::value, kAxpy><<<streamGrid(n / 4 + 1), kThreads, 0, stream>>>(
            in, static_cast<T*>(out.data), n, bf16, w, fused);
      });
    }
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

void decodeCast(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  launchUncast<false>(h, msg, out, 0.0, stream);
}
void accumulateCast(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                    cudaStream_t stream) {
  launchUncast<true>(h, msg, out, weight, stream);
}

}  // namespace

DeviceCodec castDeviceCodec() { return {CompressorId::kCast, compressCast, decodeCast, accumulateCast, true, true}; }

}  // namespace efcomm::cuda
