// TopK on the device: the selection of cpp/src/compress/topk.cpp (the same kept set: a stable
// sort by |x| descending, ties to the lower index) by the radix/sample select of
// topk_device.cuh, and the same payload: the kept values (raw bits) in increasing index order,
// then the indices as LEB128 gap varints or, when strictly smaller, a bitmap (flags bit 0).
// Decoding parses the varint stream in parallel: a byte below 0x80 ends a varint, a prefix sum
// of those terminators numbers the varints, and a prefix sum of the gaps gives the indices.
#include <cub/device/device_scan.cuh>

#include "common/dispatch.hpp"
#include "common/spec.hpp"
#include "compress/device_codec.hpp"
#include "topk_device.cuh"

namespace efcomm {
int64_t keepCount(int64_t d, double ratio, int64_t k);  // compress/common.hpp
}  // namespace efcomm

namespace efcomm::cuda {

namespace topk {

int64_t keepCountOf(const Compressor& c, int64_t n) {
  SpecParams p = SpecParams::parse(c.spec());
  const std::optional<double> ratio = p.getDouble("ratio");
  const std::optional<int64_t> k = p.getInt("k");
  return keepCount(n, k ? 0.0 : ratio.value_or(0.01), k.value_or(0));
}

namespace {

constexpr uint16_t kBitmapFlag = 1;

// Error codes of the parallel varint parse, packed as (varint ordinal << 3) | code so that an
// atomicMin finds the first violation.
constexpr unsigned long long kErrTooLong = 1, kErrOverflow = 2, kErrRange = 3;

template <typename B>
__device__ __forceinline__ B loadBits(const uint8_t* p, int64_t j) {
  const uint8_t* q = p + j * static_cast<int64_t>(sizeof(B));
  uint64_t v = 0;
#pragma unroll
  for (int i = 0; i < static_cast<int>(sizeof(B)); ++i) v |= static_cast<uint64_t>(q[i]) << (8 * i);
  return static_cast<B>(v);
}

__global__ void terminatorsKernel(const uint8_t* p, int64_t nbytes, long long* term) {
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) term[b] = p[b] < 0x80 ? 1 : 0;
}

// For each terminator byte of one of the first k varints: gaps[j] = value + 1 (checked).
__global__ void varintValuesKernel(const uint8_t* p, int64_t nbytes, const long long* term, const long long* ord,
                                   int64_t k, int64_t n, long long* gaps, unsigned long long* err) {
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) {
    if (!term[b] || ord[b] >= k) continue;
    const long long j = ord[b];
    int64_t start = b;
    while (start > 0 && !term[start - 1] && b - start < 10) --start;
    unsigned long long code = 0;
    uint64_t v = 0;
    if (start > 0 && !term[start - 1]) {
      code = kErrTooLong;
    } else if (!readVarintAt(p, start, b, &v)) {
      code = b - start >= 10 ? kErrTooLong : kErrOverflow;
    } else if (v >= static_cast<uint64_t>(n)) {
      code = kErrRange;
    }
    if (code) {
      atomicMin(err, (static_cast<unsigned long long>(j) << 3) | code);
      v = 0;
    }
    gaps[j] = static_cast<long long>(v) + 1;
  }
}

__global__ void popcountKernel(const uint8_t* p, int64_t nbytes, long long* cnt) {
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) cnt[b] = __popc(static_cast<unsigned>(p[b]));
}

// Decode: out = value at the listed indices (ends[j] - 1 from the gap prefix sums), else 0.
template <typename B>
__global__ void scatterKernel(const long long* ends, const uint8_t* values, int64_t k, B* out) {
  for (int64_t j = globalThread(); j < k; j += gridThreads()) out[ends[j] - 1] = loadBits<B>(values, j);
}

template <typename T>
__global__ void scatterAddKernel(const long long* ends, const uint8_t* values, int64_t k, T w, T* out) {
  using B = typename BitsOf<sizeof(T)>::type;
  for (int64_t j = globalThread(); j < k; j += gridThreads()) {
    const B bits = loadBits<B>(values, j);
    T v;
    memcpy(&v, &bits, sizeof(T));
    const int64_t i = ends[j] - 1;
    out[i] += w * v;
  }
}

// Bitmap decode: one thread per bitmap byte; rank = set bits before the byte.
template <typename B>
__global__ void expandBitmapKernel(const uint8_t* bits, const long long* rank, const uint8_t* values, int64_t n,
                                   B* out) {
  const int64_t nbytes = (n + 7) / 8;
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) {
    const unsigned byte = bits[b];
    long long r = rank[b];
    for (int bit = 0; bit < 8 && 8 * b + bit < n; ++bit) {
      const bool set = (byte >> bit) & 1u;
      out[8 * b + bit] = set ? loadBits<B>(values, r) : B(0);
      r += set;
    }
  }
}

template <typename T>
__global__ void addBitmapKernel(const uint8_t* bits, const long long* rank, const uint8_t* values, int64_t n, T w,
                                T* out) {
  using B = typename BitsOf<sizeof(T)>::type;
  const int64_t nbytes = (n + 7) / 8;
  for (int64_t b = globalThread(); b < nbytes; b += gridThreads()) {
    unsigned byte = bits[b];
    long long r = rank[b];
    while (byte) {
      const int bit = __ffs(byte) - 1;
      byte &= byte - 1;
      const B vb = loadBits<B>(values, r++);
      T v;
      memcpy(&v, &vb, sizeof(T));
      out[8 * b + bit] += w * v;
    }
  }
}

// The parts of a message every reader checks on the host: parameters, flags and sizes
// (topk.cpp layoutOf, the same messages).
struct Layout {
  int64_t k;
  bool bitmap;
  size_t valueBytes, indexBytes;
};

Layout layoutOf(const DeviceMessageHeader& h) {
  EFCOMM_CHECK_MSG(h.params.size() == 8, "topk parameters: ", h.params.size(), " bytes, expected 8");
  uint64_t k = 0;
  for (int i = 0; i < 8; ++i) k |= static_cast<uint64_t>(h.params[i]) << (8 * i);
  const auto n = static_cast<uint64_t>(h.numel);
  EFCOMM_CHECK_MSG((h.flags & ~kBitmapFlag) == 0, "topk: unknown flags ", h.flags);
  EFCOMM_CHECK_MSG(k <= n && (k == 0) == (n == 0), "topk: k = ", k, " for ", n, " elements");
  const size_t item = itemSize(h.dtype);
  EFCOMM_CHECK_MSG(k <= h.payloadBytes / item, "topk: payload of ", h.payloadBytes, " bytes cannot hold ", k,
                   " values");
  Layout l;
  l.k = static_cast<int64_t>(k);
  l.bitmap = (h.flags & kBitmapFlag) != 0;
  l.valueBytes = static_cast<size_t>(k) * item;
  l.indexBytes = h.payloadBytes - l.valueBytes;
  EFCOMM_CHECK_MSG(!l.bitmap || l.indexBytes == static_cast<size_t>((h.numel + 7) / 8), "topk: bitmap of ",
                   l.indexBytes, " bytes for ", n, " elements");
  if (l.bitmap && h.numel % 8 != 0 && l.indexBytes > 0) {
    EFCOMM_CHECK_MSG((h.payloadLast >> (h.numel % 8)) == 0, "topk: bitmap bits set past the end");
  }
  return l;
}

// The decoded positions of a checked message: for varints, ends[j] - 1 is index j; for a
// bitmap, rank[b] is the number of set bits before byte b. Synchronizes; throws
// CorruptMessageError before anything is written.
struct Positions {
  const long long* ends = nullptr;
  const long long* rank = nullptr;
};

Positions parseIndices(const DeviceMessageHeader& h, const uint8_t* index, const Layout& l, cudaStream_t st) {
  const int64_t nbytes = static_cast<int64_t>(l.indexBytes), k = l.k, n = h.numel;
  Positions pos;
  if (!l.bitmap && nbytes == 0) {
    EFCOMM_CHECK_MSG(k == 0, "topk: index stream truncated inside a varint");
    return pos;
  }
  Carver sizing;
  const auto plan = [&](Carver& c, long long*& a, long long*& b, long long*& gaps, long long*& ends,
                        unsigned long long*& err, void*& temp, size_t& tempBytes) {
    a = c.take<long long>(static_cast<size_t>(nbytes));
    b = c.take<long long>(static_cast<size_t>(nbytes));
    gaps = c.take<long long>(static_cast<size_t>(std::max<int64_t>(k, 1)));
    ends = c.take<long long>(static_cast<size_t>(std::max<int64_t>(k, 1)));
    err = c.take<unsigned long long>(1);
    tempBytes = 0;
    size_t t2 = 0;
    cub::DeviceScan::ExclusiveSum(nullptr, tempBytes, a, b, nbytes);
    cub::DeviceScan::InclusiveSum(nullptr, t2, gaps, ends, std::max<int64_t>(k, 1));
    tempBytes = std::max(tempBytes, t2);
    temp = c.take<uint8_t>(tempBytes);
  };
  long long *a, *b, *gaps, *ends;
  unsigned long long* err;
  void* temp;
  size_t tempBytes;
  plan(sizing, a, b, gaps, ends, err, temp, tempBytes);
  Carver real;
  real.base = static_cast<uint8_t*>(scratch(sizing.used, 4));
  plan(real, a, b, gaps, ends, err, temp, tempBytes);

  if (l.bitmap) {
    popcountKernel<<<gridFor(nbytes), kThreads, 0, st>>>(index, nbytes, a);
    launchCheck();
    size_t tb = tempBytes;
    EFCOMM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, tb, a, b, nbytes, st));
    const long long lastCount = readBack(a + (nbytes - 1), 1, st)[0];
    const long long lastRank = readBack(b + (nbytes - 1), 1, st)[0];
    EFCOMM_CHECK_MSG(lastCount + lastRank == k, "topk: bitmap does not hold ", k, " indices");
    pos.rank = b;
    return pos;
  }
  terminatorsKernel<<<gridFor(nbytes), kThreads, 0, st>>>(index, nbytes, a);
  launchCheck();
  size_t tb = tempBytes;
  EFCOMM_CUDA_CHECK(cub::DeviceScan::ExclusiveSum(temp, tb, a, b, nbytes, st));
  const long long lastTerm = readBack(a + (nbytes - 1), 1, st)[0];
  const long long varints = readBack(b + (nbytes - 1), 1, st)[0] + lastTerm;
  if (k > 0) {
    EFCOMM_CUDA_CHECK(cudaMemsetAsync(err, 0xff, sizeof(unsigned long long), st));
    varintValuesKernel<<<gridFor(nbytes), kThreads, 0, st>>>(index, nbytes, a, b, k, n, gaps, err);
    launchCheck();
    const unsigned long long e = readBack(err, 1, st)[0];
    if (e != ~0ull && static_cast<long long>(e >> 3) < std::min<long long>(varints, k)) {
      const long long j = static_cast<long long>(e >> 3);
      const unsigned long long code = e & 7;
      EFCOMM_CHECK_MSG(code != kErrTooLong, "varint longer than 10 bytes (index ", j, ")");
      EFCOMM_CHECK_MSG(code != kErrOverflow, "varint overflows 64 bits (index ", j, ")");
      EFCOMM_CHECK_MSG(false, "topk: index ", j, " out of range");
    }
  }
  EFCOMM_CHECK_MSG(varints >= k, "topk: index stream truncated inside a varint");
  EFCOMM_CHECK_MSG(varints == k && lastTerm == 1, "topk: bytes after the index stream");
  if (k == 0) return pos;
  size_t tb2 = tempBytes;
  EFCOMM_CUDA_CHECK(cub::DeviceScan::InclusiveSum(temp, tb2, gaps, ends, k, st));
  const long long lastIndex = readBack(ends + (k - 1), 1, st)[0] - 1;
  EFCOMM_CHECK_MSG(lastIndex < n, "topk: index ", k - 1, " out of range");
  pos.ends = ends;
  return pos;
}

size_t compress(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t st) {
  const int64_t n = x.numel();
  const int64_t k = keepCountOf(c, n);
  const auto run = [&](auto tag) -> size_t {
    using B = typename decltype(tag)::type;
    Trace tr("topk.compress", n, k, st);
    Trace* trp = tr.on() ? &tr : nullptr;
    Workspace<B> ws = Workspace<B>::make(n, k);
    const int64_t varints = selectTopK(plainSrc<B>(x.data), n, k, ws, infKey(x.dtype), st, trp);
    if (varints < 0) throwNonFinite("topk.compress", x, st, "a kept value is not finite");
    const size_t size = encodeTopK(ws, n, k, varints, x.dtype, x.shape, out, st, trp);
    tr.print();
    return size;
  };
  switch (itemSize(x.dtype)) {
    case 2: return run(TypeTag<uint16_t>{});
    case 4: return run(TypeTag<uint32_t>{});
    default: return run(TypeTag<uint64_t>{});
  }
}

void decode(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t st) {
  const Layout l = layoutOf(h);
  const uint8_t* values = static_cast<const uint8_t*>(msg) + h.headerBytes;
  const uint8_t* index = values + l.valueBytes;
  const Positions pos = parseIndices(h, index, l, st);
  const int64_t n = h.numel;
  if (n == 0) return;
  const auto run = [&](auto tag) {
    using B = typename decltype(tag)::type;
    B* o = static_cast<B*>(out.data);
    if (l.bitmap) {
      expandBitmapKernel<B><<<gridFor((n + 7) / 8), kThreads, 0, st>>>(index, pos.rank, values, n, o);
    } else {
      EFCOMM_CUDA_CHECK(cudaMemsetAsync(o, 0, static_cast<size_t>(n) * sizeof(B), st));
      scatterKernel<B><<<gridFor(l.k), kThreads, 0, st>>>(pos.ends, values, l.k, o);
    }
    launchCheck();
  };
  switch (itemSize(h.dtype)) {
    case 2: run(TypeTag<uint16_t>{}); break;
    case 4: run(TypeTag<uint32_t>{}); break;
    default: run(TypeTag<uint64_t>{}); break;
  }
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));  // the scratch holding the positions is reused
}

void accumulate(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                cudaStream_t st) {
  const Layout l = layoutOf(h);
  EFCOMM_CHECK(out.dtype == DType::kFloat32 || out.dtype == DType::kFloat64,
               "accumulate: float32 or float64 output required, got ", dtypeName(out.dtype));
  const uint8_t* values = static_cast<const uint8_t*>(msg) + h.headerBytes;
  const uint8_t* index = values + l.valueBytes;
  const Positions pos = parseIndices(h, index, l, st);
  const int64_t n = h.numel;
  if (n == 0 || l.k == 0) return;
  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.data);
    const T w = static_cast<T>(weight);
    if (l.bitmap) {
      addBitmapKernel<T><<<gridFor((n + 7) / 8), kThreads, 0, st>>>(index, pos.rank, values, n, w, o);
    } else {
      scatterAddKernel<T><<<gridFor(l.k), kThreads, 0, st>>>(pos.ends, values, l.k, w, o);
    }
    launchCheck();
  };
  if (out.dtype == DType::kFloat64) run(TypeTag<double>{});
  else run(TypeTag<float>{});
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace
}  // namespace topk

DeviceCodec topkDeviceCodec() { return {CompressorId::kTopK, topk::compress, topk::decode, topk::accumulate}; }

}  // namespace efcomm::cuda
