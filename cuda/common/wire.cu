// Device messages: header bytes from Message::build, the payload length patch, the parallel
// chunked CRC32C (hd_crc.hpp) and the receive-side header checks of Message::fromBytes.
#include "common/wire.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <mutex>
#include <vector>

#include "common/bytes.hpp"
#include "common/hd_crc.hpp"
#include "common/kernels.cuh"
#include "common/runtime.hpp"
#include "compress/codec.hpp"
#include "efcomm/error.hpp"

namespace efcomm::cuda {

namespace {

// The CRC constants (hd_crc.hpp). pow2 (crcShift, beyond 1 GiB only) is computed by the
// compiler; the row tables go to constant memory (every block copies them into per-lane shared
// replicas) and the word-shift table x4 to global memory, once per device (prepareDevice).
__device__ const CrcTables kDevCrc = makeCrcTables();
constexpr CrcTables kHostCrc = makeCrcTables();
constexpr CrcRowTables kHostRow = makeCrcRowTables();
__constant__ uint32_t kRowTab[4 * 256];
__device__ uint32_t gX4[kCrcChunkWords + 1];

constexpr int kCrcThreads = 1024;  // 32 warps; one block per multiprocessor (shared tables)
constexpr int kCrcWarps = kCrcThreads / 32;
constexpr size_t kRowTabBytes = sizeof(uint32_t) * 4 * 256 * 32;  // 128 KiB: a replica per lane
constexpr uint64_t kMaxElements = uint64_t{1} << 56;
// Chunk CRCs whose array's CRC the seal kernel's last block finishes (its words fit x4).
constexpr uint64_t kOneLevelChunks = kCrcChunkWords;

// readMessageAsync's copies into the mapped mailbox: the first headCopy bytes and the last 5.
__global__ void copyHeadTailKernel(const uint8_t* msg, uint64_t size, uint32_t headCopy, HostMailbox::Layout* mail) {
  for (uint32_t i = threadIdx.x; i < headCopy; i += blockDim.x) mail->head[i] = msg[i];
  if (threadIdx.x < 5) mail->tail[threadIdx.x] = msg[size - 5 + threadIdx.x];
}

__global__ void patchU64Kernel(uint8_t* dst, uint64_t v) {
  if (threadIdx.x < 8) dst[threadIdx.x] = static_cast<uint8_t>(v >> (8 * threadIdx.x));
}

// How a kernel loads the bytes it checksums: through the read-only cache (bytes no thread of
// the kernel writes), from L2 (bytes other blocks of the kernel wrote), or plainly (bytes this
// block wrote before a __syncthreads).
enum class Ld { kNc, kCg, kPlain };

template <Ld L>
__device__ __forceinline__ uint32_t load4(const uint32_t* p) {
  if constexpr (L == Ld::kNc) return __ldg(p);
  else if constexpr (L == Ld::kCg) return __ldcg(p);
  else return *p;
}
template <Ld L>
__device__ __forceinline__ uint8_t load1(const uint8_t* p) {
  if constexpr (L == Ld::kNc) return __ldg(p);
  else if constexpr (L == Ld::kCg) return __ldcg(p);
  else return *p;
}

// The little-endian word at data + off (off a multiple of 4); mis = data % 4 (kAligned: 0).
// Unaligned words are funnel-shifted from the two aligned words that hold their bytes.
template <bool kAligned, Ld L>
__device__ __forceinline__ uint32_t loadWord(const uint8_t* data, uint64_t off, uint32_t mis) {
  if constexpr (kAligned) {
    return load4<L>(reinterpret_cast<const uint32_t*>(data + off));
  } else {
    const auto* q = reinterpret_cast<const uint32_t*>(data + off - mis);
    if (mis == 0) return load4<L>(q);
    return __funnelshift_r(load4<L>(q), load4<L>(q + 1), 8 * mis);
  }
}

// A lane's chain step through its replica of the row tables (entry e at tab[32 e]).
__device__ __forceinline__ uint32_t rowStep(uint32_t c, uint32_t w, const uint32_t* tab) {
  return crcRowStep(c, w, tab, 32);
}

// One warp work item: lane's contribution to the word register of the chunk at `chunk`
// (n words) from unit s of `rows` rows (a multiple of 16; hd_crc.hpp); the caller XORs the
// lanes. Full units are software-pipelined: the next 16 rows' loads are issued before the
// current 16 rows' chain steps, so 16 to 32 words per lane are in flight.
template <bool kAligned, Ld L>
__device__ __forceinline__ uint32_t segmentContribution(const uint8_t* chunk, uint32_t mis, uint32_t n, uint32_t s,
                                                        uint32_t rows, const uint32_t* tab) {
  const uint32_t lane = threadIdx.x & 31;
  const uint32_t unitWords = kCrcRowWords * rows;
  const uint32_t k0 = s * unitWords + lane;
  uint32_t c = 0, last;
  if ((s + 1) * unitWords <= n) {
    constexpr uint32_t kBatch = 16;
    uint32_t wa[kBatch], wb[kBatch];
#define EFCOMM_CRC_LOAD(w, r0)                                                         \
  _Pragma("unroll") for (uint32_t j = 0; j < kBatch; ++j) w[j] =                       \
      loadWord<kAligned, L>(chunk, 4ull * (k0 + kCrcRowWords * ((r0) + j)), mis);
#define EFCOMM_CRC_STEP(w) _Pragma("unroll") for (uint32_t j = 0; j < kBatch; ++j) c = rowStep(c, w[j], tab);
    EFCOMM_CRC_LOAD(wa, 0)
    for (uint32_t r0 = 0; r0 < rows; r0 += 2 * kBatch) {
      const bool second = r0 + kBatch < rows;
      if (second) { EFCOMM_CRC_LOAD(wb, r0 + kBatch) }
      EFCOMM_CRC_STEP(wa)
      if (second) {
        if (r0 + 2 * kBatch < rows) { EFCOMM_CRC_LOAD(wa, r0 + 2 * kBatch) }
        EFCOMM_CRC_STEP(wb)
      }
    }
#undef EFCOMM_CRC_LOAD
#undef EFCOMM_CRC_STEP
    last = k0 + kCrcRowWords * (rows - 1);
  } else {
    if (k0 >= n) return 0;
    uint32_t k = k0;
    for (; k < n; k += kCrcRowWords) c = rowStep(c, loadWord<kAligned, L>(chunk, 4ull * k, mis), tab);
    last = k - kCrcRowWords;
  }
  return crcMulModP(c, __ldg(gX4 + (n - last)));
}

__device__ __forceinline__ void initRowTables(uint32_t* tab) {
  // Entry e's 32 replicas are the words tab[32 e .. 32 e + 31]: 8 uint4 stores of the same value.
  auto* t4 = reinterpret_cast<uint4*>(tab);
  for (int i = threadIdx.x; i < 4 * 256 * 8; i += blockDim.x) {
    const uint32_t v = kRowTab[i >> 3];
    t4[i] = make_uint4(v, v, v, v);
  }
}

// XOR over the block (all threads call it); the result in every thread of warp 0.
__device__ __forceinline__ uint32_t blockXor(uint32_t v, uint32_t* part) {
  v = __reduce_xor_sync(0xffffffffu, v);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) part[warp] = v;
  __syncthreads();
  uint32_t r = 0;
  if (warp == 0) r = __reduce_xor_sync(0xffffffffu, lane < static_cast<int>(blockDim.x >> 5) ? part[lane] : 0u);
  __syncthreads();
  return r;
}

struct SealArgs {
  const uint8_t* data = nullptr;  // the bytes to checksum
  uint64_t size = 0;
  uint8_t* header = nullptr;      // where block 0 writes the header image first, or nullptr
  uint32_t headerBytes = 0;
  uint32_t* partials = nullptr;   // unitsPerChunk words per chunk: the units' word registers
  uint32_t unitRows = kCrcSegRows;             // rows per unit (crcUnitRows)
  uint32_t unitsPerChunk = kCrcSegsPerChunk;   // kCrcChunkRows / unitRows (a power of 2, >= 4)
  uint32_t unitShift = 2;                      // log2(unitsPerChunk)
  uint32_t* ticket = nullptr;     // zero; the last block resets it
  bool finish = false;            // chunks <= kOneLevelChunks: the last block finishes
  uint32_t fullInit = 0;          // ~0 * x^(8 kCrcChunk)
  uint32_t lastInit = 0;          // ~0 * x^(8 len) for the last chunk's len
  uint32_t arrayInit = 0;         // ~0 * x^(8 * 4 chunks)
  uint8_t* sumOut = nullptr;      // the checksum's 4 bytes (little-endian, any alignment), or nullptr
  HostMailbox::Layout* mail = nullptr;  // the checksum, the first headCopy bytes and `tail`, or nullptr
  uint32_t headCopy = 0;
  const uint8_t* tail = nullptr;  // 5 bytes copied to mail->tail
  uint32_t maxBlocks = 0;         // the grid's cap (0: one block per multiprocessor)
};

// Publishes the checksum (and readMessage's header copy) from the finishing block.
__device__ void publish(const SealArgs& a, uint32_t sum) {
  if (threadIdx.x == 0) {
    if (a.sumOut)
      for (int b = 0; b < 4; ++b) a.sumOut[b] = static_cast<uint8_t>(sum >> (8 * b));
    if (a.mail) {
      a.mail->checksum = sum;
      if (a.tail)
        for (int b = 0; b < 5; ++b) a.mail->tail[b] = a.tail[b];
    }
  }
  if (a.mail)
    for (uint32_t i = threadIdx.x; i < a.headCopy; i += blockDim.x) a.mail->head[i] = a.data[i];
}

// The CRC32C of chunk j of `chunks` from its segments' word registers (written by other blocks
// of this kernel or an earlier one) and, for the last chunk, its tail bytes.
__device__ __forceinline__ uint32_t chunkCrcAt(const SealArgs& a, uint64_t j, uint64_t chunks) {
  const uint32_t* p = a.partials + uint64_t{a.unitsPerChunk} * j;
  uint32_t words = 0;  // all loads in flight at once (predicated, unitsPerChunk <= 32)
#pragma unroll
  for (uint32_t s = 0; s < kCrcChunkRows / kCrcMinUnitRows; ++s)
    if (s < a.unitsPerChunk) words ^= __ldcg(p + s);
  if (j + 1 < chunks) return ~(words ^ a.fullInit);
  const uint64_t start = j * kCrcChunk;
  const uint32_t len = static_cast<uint32_t>(a.size - start), t = len & 3u;
  uint32_t tailRaw = 0;
  for (uint32_t i = len - t; i < len; ++i) tailRaw = crcByte(tailRaw, load1<Ld::kCg>(a.data + start + i));
  return crcFromWordRegister(words, tailRaw, t, a.lastInit);
}

// Word register (hd_crc.hpp) of the `count` (<= kCrcChunkWords) words word(k), computed by the
// whole block: warp w takes a run of rows; the result in warp 0.
template <class Word>
__device__ __forceinline__ uint32_t blockWordRegister(uint64_t count, const uint32_t* tab, uint32_t* part,
                                                      Word word) {
  const uint32_t lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const uint32_t rows = static_cast<uint32_t>((count + kCrcRowWords - 1) / kCrcRowWords);
  const uint32_t per = (rows + kCrcWarps - 1) / kCrcWarps;
  const uint32_t r1 = min(rows, (warp + 1) * per);
  uint32_t c = 0;
  int64_t last = -1;
  for (uint32_t r0 = warp * per; r0 < r1; r0 += 8) {
    uint32_t w[8];
#pragma unroll
    for (uint32_t j = 0; j < 8; ++j) {
      const uint64_t k = uint64_t{kCrcRowWords} * (r0 + j) + lane;
      w[j] = (r0 + j < r1 && k < count) ? word(k) : 0u;
    }
#pragma unroll
    for (uint32_t j = 0; j < 8; ++j) {
      const uint64_t k = uint64_t{kCrcRowWords} * (r0 + j) + lane;
      if (r0 + j < r1 && k < count) {
        c = rowStep(c, w[j], tab);
        last = static_cast<int64_t>(k);
      }
    }
  }
  const uint32_t v = last < 0 ? 0u : crcMulModP(c, __ldg(gX4 + (count - static_cast<uint64_t>(last))));
  return blockXor(v, part);
}

// The checksum kernel: block 0 first writes the header image (compress). Warps take work items
// (unit s of chunk ch, item g = unitsPerChunk ch + s; consecutive items on different
// multiprocessors) and store their word registers; with `finish`, the last block to finish
// computes the checksum (the CRC32C of the chunk-CRC array, or the one chunk's CRC) and
// publishes it.
template <bool kAligned>
__global__ void __launch_bounds__(kCrcThreads, 1) sealKernel(SealArgs a, HeaderImage h) {
  extern __shared__ uint4 rowTabShared[];  // kRowTabBytes
  __shared__ uint32_t part[kCrcWarps];
  __shared__ bool last;
  uint32_t* tab = reinterpret_cast<uint32_t*>(rowTabShared);
  initRowTables(tab);
  const bool writesHeader = a.header && blockIdx.x == 0;
  if (writesHeader)
    for (uint32_t i = threadIdx.x; i < a.headerBytes; i += blockDim.x) a.header[i] = h.b[i];
  __syncthreads();
  const uint32_t* mine = tab + (threadIdx.x & 31);
  const uint32_t warp = threadIdx.x >> 5;
  const uint32_t mis = kAligned ? 0u : static_cast<uint32_t>(reinterpret_cast<uintptr_t>(a.data) & 3u);
  const uint64_t chunks = (a.size + kCrcChunk - 1) / kCrcChunk;
  const uint64_t items = chunks << a.unitShift;
  for (uint64_t g = uint64_t{warp} * gridDim.x + blockIdx.x; g < items; g += uint64_t{gridDim.x} * kCrcWarps) {
    const uint64_t ch = g >> a.unitShift;
    const uint32_t s = static_cast<uint32_t>(g & (a.unitsPerChunk - 1));
    const uint64_t start = ch * kCrcChunk;
    const uint32_t n = static_cast<uint32_t>((a.size - start < kCrcChunk ? a.size - start : kCrcChunk) / 4);
    uint32_t v = (writesHeader && g == 0)
                     ? segmentContribution<kAligned, Ld::kPlain>(a.data + start, mis, n, s, a.unitRows, mine)
                     : segmentContribution<kAligned, Ld::kNc>(a.data + start, mis, n, s, a.unitRows, mine);
    v = __reduce_xor_sync(0xffffffffu, v);
    if ((threadIdx.x & 31) == 0) a.partials[g] = v;
  }
  if (!a.finish) return;
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(a.ticket, 1u) == gridDim.x - 1;
  }
  __syncthreads();
  if (!last) return;
  __threadfence();
  uint32_t sum = 0;
  if (chunks == 1) {
    if (threadIdx.x == 0) sum = chunkCrcAt(a, 0, 1);
  } else if (chunks > 1) {
    const uint32_t words =
        blockWordRegister(chunks, mine, part, [&](uint64_t k) { return chunkCrcAt(a, k, chunks); });
    sum = ~(words ^ a.arrayInit);
  }
  if (threadIdx.x == 0) *a.ticket = 0;
  publish(a, sum);
}

// Messages beyond 1 GiB: the chunk CRCs into crcs[] (one thread each) ...
__global__ void chunkCrcsKernel(SealArgs a, uint64_t chunks, uint32_t* crcs) {
  for (uint64_t j = blockIdx.x * uint64_t{blockDim.x} + threadIdx.x; j < chunks; j += uint64_t{gridDim.x} * blockDim.x)
    crcs[j] = chunkCrcAt(a, j, chunks);
}

// ... then (sealKernel over the crcs array, without finish) the pieces' word registers, joined
// here: the CRC32C of the `total`-byte array from its pieces of kCrcChunk bytes (whole words).
__global__ void level2FinishKernel(SealArgs pub, const uint32_t* partials, uint32_t unitsPerChunk, uint64_t pieces,
                                   uint64_t total) {
  __shared__ uint32_t part[32];
  uint32_t v = 0;
  for (uint64_t i = threadIdx.x; i < pieces; i += blockDim.x) {
    uint32_t raw = 0;
    for (uint32_t s = 0; s < unitsPerChunk; ++s) raw ^= partials[uint64_t{unitsPerChunk} * i + s];
    const uint64_t end = (i + 1) * kCrcChunk < total ? (i + 1) * kCrcChunk : total;
    v ^= crcShift(raw, total - end, kDevCrc.pow2);
  }
  const uint32_t words = blockXor(v, part);
  publish(pub, ~(words ^ pub.arrayInit));
}

uint64_t chunkCount(uint64_t size) { return (size + kCrcChunk - 1) / kCrcChunk; }

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

// The tables in device memory and the kernels' shared memory limit, once per device.
void prepareDevice() {
  static std::mutex mu;
  static std::vector<char> ready;
  const int dev = currentDevice();
  std::lock_guard<std::mutex> lock(mu);
  if (static_cast<size_t>(dev) < ready.size() && ready[dev]) return;
  static const std::vector<uint32_t> x4 = [] {
    std::vector<uint32_t> v(kCrcChunkWords + 1);
    crcX4Table(v.data(), static_cast<uint32_t>(v.size()));
    return v;
  }();
  EFCOMM_CUDA_CHECK(cudaMemcpyToSymbol(kRowTab, &kHostRow.t[0][0], sizeof(kRowTab)));
  EFCOMM_CUDA_CHECK(cudaMemcpyToSymbol(gX4, x4.data(), sizeof(gX4)));
  // Pageable copies may return before the DMA lands: wait for them once.
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy));
  EFCOMM_CUDA_CHECK(
      cudaFuncSetAttribute(sealKernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(kRowTabBytes)));
  EFCOMM_CUDA_CHECK(cudaFuncSetAttribute(sealKernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                         static_cast<int>(kRowTabBytes)));
  if (ready.size() <= static_cast<size_t>(dev)) ready.resize(static_cast<size_t>(dev) + 1, 0);
  ready[dev] = 1;
}

void launchSeal(const SealArgs& a, const HeaderImage& h, bool aligned, uint64_t chunks, cudaStream_t stream) {
  const uint64_t items = chunks * a.unitsPerChunk;
  const uint64_t blocks = a.maxBlocks ? std::min<uint64_t>(a.maxBlocks, smCount()) : smCount();
  const unsigned grid = static_cast<unsigned>(std::max<uint64_t>(1, std::min<uint64_t>(items, blocks)));
  if (aligned) sealKernel<true><<<grid, kCrcThreads, kRowTabBytes, stream>>>(a, h);
  else sealKernel<false><<<grid, kCrcThreads, kRowTabBytes, stream>>>(a, h);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

// Enqueues the seal kernel (and beyond 1 GiB the second level) over a.data[0, a.size), with
// a.partials, a.ticket, a.finish and the init constants filled in here.
// The unit layout (hd_crc.hpp, crcUnitRows) for `size` bytes on this device.
void setUnits(SealArgs& a) {
  a.unitRows = crcUnitRows(a.size, static_cast<uint64_t>(smCount()) * kCrcWarps);
  a.unitsPerChunk = kCrcChunkRows / a.unitRows;
  a.unitShift = 0;
  while ((1u << a.unitShift) < a.unitsPerChunk) ++a.unitShift;
}

void enqueueChecksum(SealArgs a, const HeaderImage* h, cudaStream_t stream) {
  prepareDevice();
  setUnits(a);
  const uint64_t chunks = chunkCount(a.size);
  const bool twoLevels = chunks > kOneLevelChunks;
  const uint64_t pieces = twoLevels ? chunkCount(4 * chunks) : 0;
  SealArgs l2;
  l2.size = 4 * chunks;
  setUnits(l2);
  // partials | (two levels) chunk CRCs | the pieces' partials
  auto* words = static_cast<uint32_t*>(scratch(
      4 * (uint64_t{a.unitsPerChunk} * chunks + (twoLevels ? chunks + uint64_t{l2.unitsPerChunk} * pieces : 0) + 1),
      7));
  const uint32_t* pow2 = kHostCrc.pow2;
  a.partials = words;
  a.ticket = ticketWords();
  a.finish = !twoLevels;
  a.fullInit = crcShift(0xffffffffu, kCrcChunk, pow2);
  a.lastInit = chunks ? crcShift(0xffffffffu, a.size - (chunks - 1) * kCrcChunk, pow2) : 0;
  a.arrayInit = crcShift(0xffffffffu, 4 * chunks, pow2);
  SealArgs pub = a;
  if (twoLevels) {  // the first level only; publication after the second
    a.sumOut = nullptr;
    a.mail = nullptr;
  }
  static const HeaderImage kNoHeader{};
  const HeaderImage& hi = h ? *h : kNoHeader;
  if (!h) a.header = nullptr;
  launchSeal(a, hi, isAligned(a.data, 4), chunks, stream);
  if (twoLevels) {
    uint32_t* crcs = words + uint64_t{a.unitsPerChunk} * chunks;
    uint32_t* partials2 = crcs + chunks;
    const unsigned g = static_cast<unsigned>(std::min<uint64_t>((chunks + 255) / 256, 4 * static_cast<uint64_t>(smCount())));
    chunkCrcsKernel<<<g, 256, 0, stream>>>(a, chunks, crcs);
    EFCOMM_CUDA_CHECK(cudaGetLastError());
    l2.data = reinterpret_cast<const uint8_t*>(crcs);
    l2.partials = partials2;
    l2.ticket = a.ticket;
    l2.finish = false;
    launchSeal(l2, kNoHeader, true, pieces, stream);
    level2FinishKernel<<<1, 1024, 0, stream>>>(pub, partials2, l2.unitsPerChunk, pieces, 4 * chunks);
    EFCOMM_CUDA_CHECK(cudaGetLastError());
  }
}

}  // namespace

void deviceWireChecksum(const void* data, size_t size, uint32_t* result, cudaStream_t stream) {
  SealArgs a;
  a.data = static_cast<const uint8_t*>(data);
  a.size = size;
  a.sumOut = reinterpret_cast<uint8_t*>(result);
  enqueueChecksum(a, nullptr, stream);
}

DeviceMessageLayout beginMessage(DeviceBuffer& out, CompressorId id, DType dtype, const std::vector<int64_t>& shape,
                                 uint16_t flags, const std::vector<uint8_t>& params, size_t payloadCapacity,
                                 cudaStream_t stream) {
  const Message m = Message::build(id, dtype, shape, flags, params, 0);  // validates; header only
  const size_t hdr = static_cast<size_t>(m.payload() - m.data());
  out.resize(hdr + payloadCapacity + 4);
  DeviceMessageLayout layout;
  layout.headerBytes = hdr;
  layout.payloadCapacity = payloadCapacity;
  if (hdr <= kMaxHeaderImage) {
    std::memcpy(layout.header.b, m.data(), hdr);
    layout.headerPending = true;
  } else {
    copyToDeviceKeepingSource(out.data(), std::vector<uint8_t>(m.data(), m.data() + hdr), stream);
  }
  return layout;
}

size_t sealMessage(DeviceBuffer& out, const DeviceMessageLayout& layout, size_t payloadSize, cudaStream_t stream) {
  EFCOMM_CHECK_T(Error, payloadSize <= layout.payloadCapacity, "payload of ", payloadSize,
                 " bytes exceeds the reserved capacity ", layout.payloadCapacity);
  const size_t size = layout.headerBytes + payloadSize + 4;
  EFCOMM_CHECK_T(Error, out.capacity() >= size, "message buffer smaller than the message");
  out.resize(size);
  auto* b = static_cast<uint8_t*>(out.data());
  SealArgs a;
  a.data = b;
  a.size = size - 4;
  a.sumOut = b + size - 4;
  if (layout.headerPending) {
    HeaderImage h = layout.header;
    for (int i = 0; i < 8; ++i) h.b[24 + i] = static_cast<uint8_t>(static_cast<uint64_t>(payloadSize) >> (8 * i));
    a.header = b;
    a.headerBytes = static_cast<uint32_t>(layout.headerBytes);
    enqueueChecksum(a, &h, stream);
  } else {
    patchU64Kernel<<<1, 32, 0, stream>>>(b + 24, payloadSize);
    EFCOMM_CUDA_CHECK(cudaGetLastError());
    enqueueChecksum(a, nullptr, stream);
  }
  traceMark(stream, "seal");
  return size;
}

size_t finishMessage(DeviceBuffer& out, const DeviceMessageLayout& layout, size_t payloadSize, cudaStream_t stream) {
  return sealMessage(out, layout, payloadSize, stream);
}

namespace {

void checkMessageArgs(const void* msg, size_t size) {
  EFCOMM_CHECK_MSG(size >= kFixedHeaderBytes + 4, "message of ", size,
                   " bytes is shorter than the smallest valid message (", kFixedHeaderBytes + 4, ")");
  EFCOMM_CHECK(msg != nullptr && isDevicePointer(msg),
               "message is not in device memory: pass a CUDA buffer, or use efcomm::Message for host bytes");
}

// The header of the device message dmsg (`size` bytes) from copies of its first bytes (`head`)
// and its last 5 (`tail`: the last payload byte, then the stored checksum).
DeviceMessageHeader parseHeader(std::vector<uint8_t> head, const uint8_t* tail, const uint8_t* dmsg, size_t size,
                                cudaStream_t stream) {
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

  return h;
}

void checkChecksum(uint32_t stored, uint32_t computed) {
  EFCOMM_CHECK_MSG(stored == computed, "checksum mismatch (stored ", stored, ", computed ", computed,
                   "): the payload was damaged in transit");
}

}  // namespace

DeviceMessageHeader readMessage(const void* msg, size_t size, cudaStream_t stream) {
  checkMessageArgs(msg, size);
  const auto* dmsg = static_cast<const uint8_t*>(msg);
  // One kernel and one synchronization: the checksum over [0, size - 4) (safe on any bytes),
  // the header prefix, the trailer and the last payload byte, all into the mapped mailbox.
  const HostMailbox mail = mailbox();
  SealArgs a;
  a.data = dmsg;
  a.size = size - 4;
  a.mail = mail.device;
  a.headCopy = static_cast<uint32_t>(std::min<size_t>(size, HostMailbox::kHeadBytes));
  a.tail = dmsg + size - 5;
  enqueueChecksum(a, nullptr, stream);
  traceMark(stream, "verify");
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  traceMark(stream, "verify-sync");
  uint8_t tail[5];
  std::memcpy(tail, mail.host->tail, 5);
  const uint32_t computed = mail.host->checksum;
  const DeviceMessageHeader h =
      parseHeader(std::vector<uint8_t>(mail.host->head, mail.host->head + a.headCopy), tail, dmsg, size, stream);
  checkChecksum(loadAs<uint32_t>(tail + 1), computed);
  return h;
}

PendingMessage readMessageAsync(const void* msg, size_t size, cudaStream_t stream,
                                const std::function<double(const DeviceMessageHeader&)>& checksumShare) {
  checkMessageArgs(msg, size);
  const auto* dmsg = static_cast<const uint8_t*>(msg);
  // The header prefix and the last 5 bytes into the mailbox, then the checksum kernel; the host
  // waits for the copies only and checks the header while the kernel runs. With checksumShare,
  // the kernel waits for the header instead (its stream and grid depend on the codec).
  const HostMailbox mail = mailbox();
  const size_t headCopy = std::min<size_t>(size, HostMailbox::kHeadBytes);
  copyHeadTailKernel<<<1, 256, 0, stream>>>(dmsg, size, static_cast<uint32_t>(headCopy), mail.device);
  EFCOMM_CUDA_CHECK(cudaGetLastError());
  PendingMessage p;
  cudaStream_t checksumStream = stream;
  SealArgs a;
  a.data = dmsg;
  a.size = size - 4;
  a.mail = mail.device;  // the checksum only (headCopy 0, no tail)
  try {  // from here on a kernel of this call may be in flight
    const cudaEvent_t copied = mailEvent();
    EFCOMM_CUDA_CHECK(cudaEventRecord(copied, stream));
    if (!checksumShare) {
      enqueueChecksum(a, nullptr, stream);
      traceMark(stream, "verify");
    }
    EFCOMM_CUDA_CHECK(cudaEventSynchronize(copied));
    p.header = parseHeader(std::vector<uint8_t>(mail.host->head, mail.host->head + headCopy), mail.host->tail, dmsg,
                           size, stream);
    if (checksumShare) {
      const double share = checksumShare(p.header);
      if (share > 0) {
        // The side stream starts after the copies, and so after whatever wrote the message.
        checksumStream = sideStream();
        EFCOMM_CUDA_CHECK(cudaStreamWaitEvent(checksumStream, copied, 0));
        const double sms = smCount();
        a.maxBlocks = static_cast<uint32_t>(std::clamp(std::ceil(share * sms), 1.0, sms));
      }
      enqueueChecksum(a, nullptr, checksumStream);
      if (checksumStream != stream) {
        p.checked = sideEvent();
        EFCOMM_CUDA_CHECK(cudaEventRecord(p.checked, checksumStream));
      }
      traceMark(stream, "verify");
    }
  } catch (...) {
    // No kernel outlives the call (scratch, ticket, mailbox).
    (void)cudaStreamSynchronize(stream);
    if (checksumStream != stream) (void)cudaStreamSynchronize(checksumStream);
    throw;
  }
  p.stored = loadAs<uint32_t>(mail.host->tail + 1);
  return p;
}

void joinMessageRead(const PendingMessage& p, cudaStream_t stream) {
  if (p.checked) EFCOMM_CUDA_CHECK(cudaStreamWaitEvent(stream, p.checked, 0));
}

void finishMessageRead(const PendingMessage& p) { checkChecksum(p.stored, mailbox().host->checksum); }

}  // namespace efcomm::cuda
