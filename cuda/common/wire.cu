// Device messages: header bytes from Message::build, the payload length patch, the parallel
// chunked CRC32C (hd_crc.hpp) and the receive-side header checks of Message::fromBytes.
#include "common/wire.hpp"

#include <algorithm>
#include <cstring>

#include "common/bytes.hpp"
#include "common/hd_crc.hpp"
#include "common/kernels.cuh"
#include "common/runtime.hpp"
#include "compress/codec.hpp"
#include "efcomm/error.hpp"

namespace efcomm::cuda {

namespace {

// The CRC constants, computed by the compiler (constexpr) for host and device alike.
__device__ const CrcTables kDevCrc = makeCrcTables();

constexpr int kCrcThreads = static_cast<int>(kCrcSlicesPerChunk);  // one thread per slice
constexpr size_t kMaxParamHeader = 384;  // headers up to this size travel as a kernel argument
constexpr uint64_t kMaxElements = uint64_t{1} << 56;

struct HeaderBytes {
  uint8_t b[kMaxParamHeader];
};

__global__ void writeHeaderKernel(uint8_t* dst, HeaderBytes h, uint32_t n) {
  for (uint32_t i = threadIdx.x; i < n; i += blockDim.x) dst[i] = h.b[i];
}

__global__ void patchU64Kernel(uint8_t* dst, uint64_t v) {
  if (threadIdx.x < 8) dst[threadIdx.x] = static_cast<uint8_t>(v >> (8 * threadIdx.x));
}

__device__ __forceinline__ uint32_t blockXor512(uint32_t v, uint32_t* part) {
  v = __reduce_xor_sync(0xffffffffu, v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  uint32_t r = 0;
  if (warp == 0) {
    r = lane < (kCrcThreads / 32) ? part[lane] : 0u;
    r = __reduce_xor_sync(0xffffffffu, r);
  }
  __syncthreads();  // part[] is reused by the next call
  return r;         // valid in warp 0
}

// Raw register (from 0) of `len` bytes at p through the lane's nibble table replica
// (entry e at tab[32 e]); kAligned: p is 16-byte aligned and len a multiple of 16.
template <bool kAligned>
__device__ __forceinline__ uint32_t sliceRaw(const uint8_t* p, uint32_t len, const uint32_t* tab) {
  uint32_t c = 0;
  auto word = [&](uint32_t w) { c = crcWord(c, w, tab, 32); };
  uint32_t i = 0;
  if (kAligned) {
    const uint4* q = reinterpret_cast<const uint4*>(p);
    for (; i + 16 <= len; i += 16) {
      const uint4 v = __ldg(q + i / 16);
      word(v.x);
      word(v.y);
      word(v.z);
      word(v.w);
    }
  }
  for (; i + 4 <= len; i += 4)
    word(static_cast<uint32_t>(p[i]) | static_cast<uint32_t>(p[i + 1]) << 8 |
         static_cast<uint32_t>(p[i + 2]) << 16 | static_cast<uint32_t>(p[i + 3]) << 24);
  for (; i < len; ++i) c = crcByte(c, p[i]);
  return c;
}

// out[c] = CRC32C of chunk c (kCrcChunk bytes, the last one shorter) of data[0, size).
// One block of kCrcThreads threads per chunk (grid-stride over chunks), one thread per slice.
template <bool kAligned>
__global__ void __launch_bounds__(kCrcThreads) crcChunksKernel(const uint8_t* data, uint64_t size, uint32_t* out) {
  __shared__ uint32_t tab[8 * 16 * 32];  // nibble tables, one replica per lane (no bank conflicts)
  __shared__ uint32_t part[2][kCrcThreads / 32];
  for (int e = threadIdx.x; e < 8 * 16 * 32; e += blockDim.x) tab[e] = kDevCrc.nib[e / 512][(e / 32) % 16];
  __syncthreads();
  const uint32_t* mine = tab + (threadIdx.x & 31);
  const uint64_t chunks = (size + kCrcChunk - 1) / kCrcChunk;
  for (uint64_t ch = blockIdx.x; ch < chunks; ch += gridDim.x) {
    const uint64_t start = ch * kCrcChunk;
    const uint32_t len = static_cast<uint32_t>(size - start < kCrcChunk ? size - start : kCrcChunk);
    const uint32_t q = len / kCrcSlice, r = len % kCrcSlice, i = threadIdx.x;
    uint32_t x = 0, partial = 0;
    const uint8_t* p = data + start + static_cast<uint64_t>(i) * kCrcSlice;
    if (i < q) {
      x = crcMulModP(sliceRaw<kAligned>(p, kCrcSlice, mine), kDevCrc.slice[q - 1 - i]);
    } else if (i == q && r) {
      partial = sliceRaw<false>(p, r, mine);
    }
    x = blockXor512(x, part[0]);
    partial = blockXor512(partial, part[1]);
    if (threadIdx.x == 0) out[ch] = crcChunkFinish(x, partial, len, kDevCrc.pow2);
  }
}

// The CRC32C of a buffer of `total` bytes from the CRCs of its `count` chunks (kCrcChunk bytes
// each, the last one shorter), written little-endian to dst[0..4).
__global__ void crcFinishKernel(const uint32_t* crcs, uint64_t count, uint64_t total, uint8_t* dst) {
  __shared__ uint32_t part[32];
  uint32_t v = 0;
  for (uint64_t j = threadIdx.x; j < count; j += blockDim.x) {
    const uint64_t end = (j + 1) * kCrcChunk < total ? (j + 1) * kCrcChunk : total;
    v ^= crcShift(crcs[j], total - end, kDevCrc.pow2);
  }
  v = __reduce_xor_sync(0xffffffffu, v);
  if ((threadIdx.x & 31) == 0) part[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    uint32_t r = 0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) r ^= part[w];
    for (int b = 0; b < 4; ++b) dst[b] = static_cast<uint8_t>(r >> (8 * b));
  }
}

uint64_t chunkCount(uint64_t size) { return (size + kCrcChunk - 1) / kCrcChunk; }

void launchChunks(const uint8_t* data, uint64_t size, uint32_t* out, cudaStream_t stream) {
  const uint64_t chunks = chunkCount(size);
  if (chunks == 0) return;
  const int grid = static_cast<int>(std::min<uint64_t>(chunks, 4 * static_cast<uint64_t>(smCount())));
  if (isAligned(data, 16)) {
    crcChunksKernel<true><<<grid, kCrcThreads, 0, stream>>>(data, size, out);
  } else {
    crcChunksKernel<false><<<grid, kCrcThreads, 0, stream>>>(data, size, out);
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

size_t headerBytesFor(int ndim, size_t paramsSize) {
  return (kFixedHeaderBytes + 8 * static_cast<size_t>(ndim) + paramsSize + 15) / 16 * 16;
}

// Enqueues a host-to-device copy of `bytes` whose source stays alive until the copy has run.
void copyToDeviceKeepingSource(void* dst, std::vector<uint8_t> bytes, cudaStream_t stream) {
  auto* keep = new std::vector<uint8_t>(std::move(bytes));
  const cudaError_t err = cudaMemcpyAsync(dst, keep->data(), keep->size(), cudaMemcpyHostToDevice, stream);
  if (err != cudaSuccess) {
    delete keep;
    EFCOMM_CUDA_CHECK(err);
  }
  EFCOMM_CUDA_CHECK(cudaLaunchHostFunc(
      stream, [](void* p) { delete static_cast<std::vector<uint8_t>*>(p); }, keep));
}

}  // namespace

namespace {

// The wire checksum of data[0, size) into the 4 bytes at dst (any alignment); nullptr: into a
// word of scratch slot 7, whose address is returned.
uint8_t* checksumInto(const void* data, size_t size, uint8_t* dst, cudaStream_t stream) {
  const auto* p = static_cast<const uint8_t*>(data);
  const uint64_t chunks = chunkCount(size);
  const uint64_t level2 = chunks > 1 ? chunkCount(4 * chunks) : 0;
  auto* crcs = static_cast<uint32_t*>(scratch(4 * (chunks + level2 + 1), 7));
  if (!dst) dst = reinterpret_cast<uint8_t*>(crcs + chunks + level2);
  launchChunks(p, size, crcs, stream);
  if (chunks <= 1) {
    // Up to one chunk the checksum is the plain CRC32C (0 for no bytes).
    crcFinishKernel<<<1, 32, 0, stream>>>(crcs, chunks, size, dst);
  } else {
    // The CRC32C of the little-endian u32 array of chunk CRCs, itself computed by chunks.
    launchChunks(reinterpret_cast<const uint8_t*>(crcs), 4 * chunks, crcs + chunks, stream);
    crcFinishKernel<<<1, 256, 0, stream>>>(crcs + chunks, level2, 4 * chunks, dst);
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  return dst;
}

}  // namespace

void deviceWireChecksum(const void* data, size_t size, uint32_t* result, cudaStream_t stream) {
  checksumInto(data, size, reinterpret_cast<uint8_t*>(result), stream);
}

DeviceMessageLayout beginMessage(DeviceBuffer& out, CompressorId id, DType dtype, const std::vector<int64_t>& shape,
                                 uint16_t flags, const std::vector<uint8_t>& params, size_t payloadCapacity,
                                 cudaStream_t stream) {
  const Message m = Message::build(id, dtype, shape, flags, params, 0);  // validates; header only
  const size_t hdr = static_cast<size_t>(m.payload() - m.data());
  out.resize(hdr + payloadCapacity + 4);
  auto* dst = static_cast<uint8_t*>(out.data());
  if (hdr <= kMaxParamHeader) {
    HeaderBytes h{};
    std::memcpy(h.b, m.data(), hdr);
    writeHeaderKernel<<<1, 128, 0, stream>>>(dst, h, static_cast<uint32_t>(hdr));
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  } else {
    copyToDeviceKeepingSource(dst, std::vector<uint8_t>(m.data(), m.data() + hdr), stream);
  }
  return {hdr, payloadCapacity};
}

size_t finishMessage(DeviceBuffer& out, const DeviceMessageLayout& layout, size_t payloadSize, cudaStream_t stream) {
  EFCOMM_CHECK_T(Error, payloadSize <= layout.payloadCapacity, "payload of ", payloadSize,
                 " bytes exceeds the reserved capacity ", layout.payloadCapacity);
  const size_t size = layout.headerBytes + payloadSize + 4;
  EFCOMM_CHECK_T(Error, out.capacity() >= size, "message buffer smaller than the message");
  out.resize(size);
  auto* b = static_cast<uint8_t*>(out.data());
  patchU64Kernel<<<1, 32, 0, stream>>>(b + 24, payloadSize);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  deviceWireChecksum(b, size - 4, reinterpret_cast<uint32_t*>(b + size - 4), stream);
  return size;
}

DeviceMessageHeader readMessage(const void* msg, size_t size, cudaStream_t stream) {
  EFCOMM_CHECK_MSG(size >= kFixedHeaderBytes + 4, "message of ", size,
                   " bytes is shorter than the smallest valid message (", kFixedHeaderBytes + 4, ")");
  EFCOMM_CHECK(msg != nullptr && isDevicePointer(msg),
               "message is not in device memory: pass a CUDA buffer, or use efcomm::Message for host bytes");
  const auto* dmsg = static_cast<const uint8_t*>(msg);
  // Enqueue everything at once and synchronize once: the checksum over [0, size - 4) (safe on
  // any bytes), the header prefix, the trailer and the last payload byte.
  const uint8_t* sum = checksumInto(dmsg, size - 4, nullptr, stream);
  std::vector<uint8_t> head(std::min<size_t>(size, 512));
  uint8_t tail[5];
  uint32_t computed = 0;
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(head.data(), dmsg, head.size(), cudaMemcpyDeviceToHost, stream));
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(tail, dmsg + size - 5, 5, cudaMemcpyDeviceToHost, stream));
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(&computed, sum, 4, cudaMemcpyDeviceToHost, stream));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));

  // The checks of Message::parseHeader, in its order.
  const uint8_t* b = head.data();
  EFCOMM_CHECK_MSG(loadAs<uint32_t>(b) == kWireMagic, "bad magic: not an efcomm message");
  EFCOMM_CHECK_MSG(b[4] == kWireVersion, "unsupported wire format version ", int(b[4]), "; this build reads version ",
                   int(kWireVersion));
  const Codec* codec = codecByIdOrNull(b[5]);
  EFCOMM_CHECK_MSG(codec != nullptr, "unknown compressor id ", int(b[5]));
  EFCOMM_CHECK_MSG(isValidDType(b[6]), "unknown dtype code ", int(b[6]));
  const int ndim = b[7];
  EFCOMM_CHECK_MSG(ndim <= kMaxDims, "message claims ", ndim, " dimensions (at most ", kMaxDims, ")");
  DeviceMessageHeader h;
  h.id = codec->id;
  h.dtype = static_cast<DType>(b[6]);
  h.flags = loadAs<uint16_t>(b + 8);
  const size_t paramsSize = loadAs<uint16_t>(b + 10);
  const uint32_t hdr = loadAs<uint32_t>(b + 12);
  EFCOMM_CHECK_MSG(hdr == headerBytesFor(ndim, paramsSize), "header length ", hdr, " does not match ", ndim,
                   " dimensions and ", paramsSize, " parameter bytes");
  const uint64_t numel = loadAs<uint64_t>(b + 16);
  const uint64_t payload = loadAs<uint64_t>(b + 24);
  EFCOMM_CHECK_MSG(hdr <= size - 4 && payload == size - 4 - hdr, "payload length ", payload,
                   " does not match the message size ", size);
  if (head.size() < std::min<size_t>(size, hdr + 16)) {  // a long parameter block: fetch the rest
    head.resize(std::min<size_t>(size, hdr + 16));
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(head.data(), dmsg, head.size(), cudaMemcpyDeviceToHost, stream));
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
    b = head.data();
  }
  h.shape.assign(static_cast<size_t>(ndim), 0);
  uint64_t nonzero = 1;
  bool empty = false;
  for (int i = 0; i < ndim; ++i) {
    const int64_t s = loadAs<int64_t>(b + kFixedHeaderBytes + 8 * i);
    EFCOMM_CHECK_MSG(s >= 0, "negative dimension ", s);
    EFCOMM_CHECK_MSG(s == 0 || nonzero <= kMaxElements / static_cast<uint64_t>(s), "shape ", shapeString(h.shape),
                     "... exceeds 2^56 elements");
    if (s == 0) empty = true;
    else nonzero *= static_cast<uint64_t>(s);
    h.shape[i] = s;
  }
  const uint64_t prod = empty ? 0 : nonzero;
  EFCOMM_CHECK_MSG(prod == numel, "element count ", numel, " does not match shape ", shapeString(h.shape));
  h.numel = static_cast<int64_t>(numel);
  const size_t paramsOffset = kFixedHeaderBytes + 8 * static_cast<size_t>(ndim);
  h.params.assign(b + paramsOffset, b + paramsOffset + paramsSize);
  for (size_t i = paramsOffset + paramsSize; i < hdr; ++i) EFCOMM_CHECK_MSG(b[i] == 0, "non-zero header padding");
  h.headerBytes = hdr;
  h.payloadBytes = payload;
  std::memcpy(h.payloadHead, b + hdr, std::min<size_t>(payload, 16));
  h.payloadLast = payload ? tail[0] : 0;

  const uint32_t stored = loadAs<uint32_t>(tail + 1);
  EFCOMM_CHECK_MSG(stored == computed, "checksum mismatch (stored ", stored, ", computed ", computed,
                   "): the payload was damaged in transit");
  return h;
}

}  // namespace efcomm::cuda
