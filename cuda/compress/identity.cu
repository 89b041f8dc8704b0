// Identity on the GPU: the payload is the raw elements (cpp/src/compress/identity.cpp). One
// pass copies and checks finiteness; decode is a device-to-device copy; accumulate adds in place.
// Also the generic accumulate (addScaled) that codecs without their own use.
#include "common/dispatch.hpp"
#include "compress/codec_util.hpp"

namespace efcomm::cuda {

namespace {

// out = in for n elements (streaming in 16-byte units, one per lane per row, kStreamUnroll rows
// per step, loads first: coalesced loads and stores); flag (a mailbox word) when an element is
// NaN or Inf. kVec: both pointers 16-byte aligned.
template <typename T, bool kVec>
__global__ void __launch_bounds__(kThreads) copyCheckKernel(const T* in, T* out, int64_t n, uint32_t* flag) {
  constexpr int U = kStreamUnroll;
  constexpr int kPer = 16 / static_cast<int>(sizeof(T));  // elements per unit
  uint32_t bad = 0;
  int64_t done = 0;
  if constexpr (kVec) {
    const int64_t units = n / kPer;
    const auto* src = reinterpret_cast<const uint4*>(in);
    auto* dst = reinterpret_cast<uint4*>(out);
    const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x * U;
    for (int64_t base = static_cast<int64_t>(blockIdx.x) * blockDim.x * U + threadIdx.x; base < units;
         base += stride) {
      uint4 v[U];
#pragma unroll
      for (int u = 0; u < U; ++u)
        if (base + u * kThreads < units) v[u] = __ldg(src + base + u * kThreads);
#pragma unroll
      for (int u = 0; u < U; ++u) {
        if (base + u * kThreads >= units) break;
        T e[kPer];
        memcpy(e, &v[u], 16);
#pragma unroll
        for (int k = 0; k < kPer; ++k) bad |= nonFiniteBit(e[k]);
        dst[base + u * kThreads] = v[u];
      }
    }
    done = units * kPer;
  }
  for (int64_t i = done + globalThread(); i < n; i += gridThreads()) {
    bad |= nonFiniteBit(in[i]);
    out[i] = in[i];
  }
  raiseMailFlag(flag, bad);
}

// out[i] += w * in[i] (T float or double), the CPU's o[i] += w * d[i] with its contraction.
template <typename T, bool kVec>
__global__ void axpyKernel(const T* in, T* out, int64_t n, T w, bool fused) {
  const int64_t groups = n / 8;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    T v[8], o[8];
    load8<T, kVec>(in, g, v);
    load8<T, kVec>(out, g, o);
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = madd(fused, w, v[k], o[k]);
    store8<T, kVec>(out, g, o);
  }
  for (int64_t i = 8 * groups + globalThread(); i < n; i += gridThreads()) out[i] = madd(fused, w, in[i], out[i]);
}

size_t compressIdentity(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t stream) {
  const int64_t n = x.numel();
  Frame f = beginFrame(out, c, x, {}, x.nbytes(), stream);
  uint32_t* flags = clearMailboxFlags(1);
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({x.data, f.payload}, [&](auto vec) {
      copyCheckKernel<T, decltype(vec)::value><<<streamGrid(static_cast<int64_t>(x.nbytes() / 16) + 1), kThreads, 0, stream>>>(
          static_cast<const T*>(x.data), reinterpret_cast<T*>(f.payload), n, flags);
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  traceMark(stream, "copy");
  uint32_t flag = 0;
  const size_t size = sealAndWait(out, f, x.nbytes(), stream, &flag, 1);
  if (flag) throwNonFinite("identity.compress", x, stream, "non-finite input");
  return size;
}

void checkIdentity(const DeviceMessageHeader& h) {
  EFCOMM_CHECK_MSG(h.params.empty(), "identity: unexpected parameters");
  EFCOMM_CHECK_MSG(h.payloadBytes == static_cast<size_t>(h.numel) * itemSize(h.dtype), "identity: payload of ",
                   h.payloadBytes, " bytes for ", h.numel, " elements");
}

void decodeIdentity(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  checkIdentity(h);
  if (h.payloadBytes)
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(out.data, payloadOf(h, msg), h.payloadBytes, cudaMemcpyDeviceToDevice, stream));
}

void axpy(const void* in, const TensorView& out, double weight, cudaStream_t stream) {
  const int64_t n = out.numel();
  if (n == 0) return;
  const bool fused = cpuContractsFma();
  auto launch = [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({in, out.data}, [&](auto vec) {
      axpyKernel<T, decltype(vec)::value><<<blocksFor(n / 8 + 1), kThreads, 0, stream>>>(
          static_cast<const T*>(in), static_cast<T*>(out.data), n, static_cast<T>(weight), fused);
    });
  };
  if (out.dtype == DType::kFloat64) launch(TypeTag<double>{});
  else launch(TypeTag<float>{});
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

void accumulateIdentity(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                        cudaStream_t stream) {
  checkIdentity(h);
  axpy(payloadOf(h, msg), out, weight, stream);
}

}  // namespace

void addScaled(const void* decoded, const TensorView& out, double weight, cudaStream_t stream) {
  EFCOMM_CHECK(out.dtype == DType::kFloat32 || out.dtype == DType::kFloat64,
               "accumulate: float32 or float64 output required, got ", dtypeName(out.dtype));
  axpy(decoded, out, weight, stream);
}

DeviceCodec identityDeviceCodec() {
  return {CompressorId::kIdentity, compressIdentity, decodeIdentity, accumulateIdentity, true, true};
}

}  // namespace efcomm::cuda
