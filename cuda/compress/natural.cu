// Natural compression on the GPU (cpp/src/compress/natural.cpp): 9-bit codes sign << 8 | c
// packed 8 per 9 bytes, the same draws (uniformBits(key, j) >> 9, or two draws for float64) and
// so the same codes as the CPU. float64 first finds its exponent window (one max pass whose
// result the host reads: the window base travels in the header).
#include <algorithm>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "common/rng.hpp"
#include "compress/codec_util.hpp"
#include "compress/natural_hd.hpp"

namespace efcomm::cuda {

namespace {

template <typename T>
__global__ void encodeKernel(const T* in, int64_t n, uint64_t key, uint32_t base, uint8_t* packed, uint32_t* flag) {
  const int64_t groups = (n + 7) / 8;
  uint32_t bad = 0;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    PackedGroup pg;
    for (int k = 0; k < count; ++k) {
      const int64_t i = 8 * g + k;
      packCode(pg, k, kNaturalWidth, naturalCode(in[i], key, static_cast<uint64_t>(i), base, bad));
    }
    storeGroup(packed + g * kNaturalWidth, pg, static_cast<int>(packedBytes(count, kNaturalWidth)));
  }
  raiseFlag(flag, bad);
}

__global__ void maxMagnitudeKernel(const double* in, int64_t n, unsigned long long* top) {
  unsigned long long m = 0;
  for (int64_t i = globalThread(); i < n; i += gridThreads()) {
    const unsigned long long b = doubleBits(in[i]) & ~(1ull << 63);
    m = b > m ? b : m;
  }
  if (m) atomicMax(top, m);
}

template <typename T>
__global__ void checkCodesKernel(const uint8_t* packed, int64_t n, uint32_t* flag) {
  const int64_t groups = (n + 7) / 8;
  uint32_t bad = 0;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    const PackedGroup pg = loadGroup(packed + g * kNaturalWidth, static_cast<int>(packedBytes(count, kNaturalWidth)));
    for (int k = 0; k < count; ++k) bad |= naturalCodeInvalid<T>(unpackCode(pg, k, kNaturalWidth));
  }
  raiseFlag(flag, bad);
}

template <typename T, bool kVec>
__global__ void decodeKernel(const uint8_t* packed, int64_t n, uint32_t base, T* out) {
  const int64_t groups = (n + 7) / 8;
  for (int64_t g = globalThread(); g < groups; g += gridThreads()) {
    const int count = n - 8 * g < 8 ? static_cast<int>(n - 8 * g) : 8;
    const PackedGroup pg = loadGroup(packed + g * kNaturalWidth, static_cast<int>(packedBytes(count, kNaturalWidth)));
    T o[8];
#pragma unroll
    for (int k = 0; k < 8; ++k) o[k] = naturalValue<T>(unpackCode(pg, k, kNaturalWidth), base);
    if (count == 8) {
      store8<T, kVec>(out, g, o);
    } else {
      for (int k = 0; k < count; ++k) out[8 * g + k] = o[k];
    }
  }
}

std::vector<uint8_t> naturalParams(DType dt, uint32_t base) {
  if (dt != DType::kFloat64) return {};
  return ByteWriter().put<uint16_t>(static_cast<uint16_t>(base)).bytes();
}

size_t compressNatural(Compressor& c, const ConstTensorView& x, uint64_t step, DeviceBuffer& out, cudaStream_t stream) {
  SpecParams sp = specOf(c);
  const auto seed = static_cast<uint64_t>(sp.getInt("seed").value_or(0));
  const int64_t n = x.numel();
  const size_t bytes = compress::natural::payloadBytes(n);
  const uint64_t key = drawKey(seed, step);
  uint32_t base = 0;
  if (x.dtype == DType::kFloat64) {
    // The window pass: the largest |x_j| as bits (integer max: order-free, deterministic).
    auto* top = static_cast<unsigned long long*>(scratch(8, 0));
    EFCOMM_CUDA_CHECK(cudaMemsetAsync(top, 0, 8, stream));
    if (n > 0) {
      maxMagnitudeKernel<<<blocksFor(n), kThreads, 0, stream>>>(static_cast<const double*>(x.data), n, top);
      EFCOMM_CUDA_CHECK(cudaGetLastError());
    }
    unsigned long long bits = 0;
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(&bits, top, 8, cudaMemcpyDeviceToHost, stream));
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
    base = naturalWindowBase(static_cast<uint32_t>(bits >> 52));
    if ((bits >> 52) == 2047) throwIfNonFinite("natural.compress", x, stream);
  }
  Frame f = beginFrame(out, c, x, naturalParams(x.dtype, base), bytes, stream);
  uint32_t* flags = resetFlags(stream, 1);
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    encodeKernel<T><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(static_cast<const T*>(x.data), n, key, base,
                                                                     f.payload, flags);
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  const size_t size = finishMessage(out, f.layout, bytes, stream);
  if (readFlags(stream, 1)[0]) throwNonFinite("natural.compress", x, stream, "non-finite input");
  return size;
}

uint32_t baseOf(const DeviceMessageHeader& h) {
  ByteReader r(h.params.data(), h.params.size(), "natural parameters");
  uint32_t base = 0;
  if (h.dtype == DType::kFloat64) {
    base = r.get<uint16_t>();
    EFCOMM_CHECK_MSG(base <= kNaturalMaxBase, "natural: float64 window base ", base, " above ", kNaturalMaxBase);
  }
  r.expectEnd();
  return base;
}

void decodeNatural(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream) {
  const uint32_t base = baseOf(h);
  EFCOMM_CHECK_MSG(h.flags == 0, "natural: unknown flags ", h.flags);
  const int64_t n = h.numel;
  EFCOMM_CHECK_MSG(h.payloadBytes == compress::natural::payloadBytes(n), "natural: payload of ", h.payloadBytes,
                   " bytes for ", n, " elements (expected ", compress::natural::payloadBytes(n), ")");
  const int64_t bits = n * kNaturalWidth;
  if (bits % 8) EFCOMM_CHECK_MSG((h.payloadLast >> (bits % 8)) == 0, "natural: non-zero padding bits");
  if (n == 0) return;
  const uint8_t* packed = payloadOf(h, msg);
  uint32_t* flags = resetFlags(stream, 1);
  dispatchDType(h.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    checkCodesKernel<T><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(packed, n, flags);
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  EFCOMM_CHECK_MSG(readFlags(stream, 1)[0] == 0, "natural: exponent code outside the range of ", dtypeName(h.dtype));
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    withAlignment({out.data}, [&](auto vec) {
      decodeKernel<T, decltype(vec)::value><<<blocksFor((n + 7) / 8), kThreads, 0, stream>>>(
          packed, n, base, static_cast<T*>(out.data));
    });
  });
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace

DeviceCodec naturalDeviceCodec() { return {CompressorId::kNatural, compressNatural, decodeNatural, nullptr, false, true}; }

}  // namespace efcomm::cuda
