#include "efcomm/message.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <vector>

#include "common/bytes.hpp"
#include "common/crc32c.hpp"
#include "common/parallel.hpp"
#include "compress/codec.hpp"
#include "efcomm/error.hpp"

namespace efcomm {

namespace {

constexpr size_t kChecksumChunk = size_t{1} << 16;
constexpr size_t kHeaderAlign = 16;
// Bound on the product of the non-zero dimensions: keeps every byte count of any dtype far
// below 2^63 so that receivers (and the array libraries they allocate with) never overflow.
constexpr uint64_t kMaxElements = uint64_t{1} << 56;

// Large message buffers are recycled. A fresh multi-megabyte allocation is served by mmap,
// and first-touching its pages (fault + kernel zeroing) costs more than compressing into it;
// a training loop sends same-sized messages every step, so a few cached buffers remove that
// cost. Buffers are uninitialized and 64-byte aligned: compressors overwrite every byte.
class BufferPool {
 public:
  static BufferPool& instance() {
    static BufferPool* pool = new BufferPool;  // never destroyed: messages may outlive statics
    return *pool;
  }

  std::shared_ptr<uint8_t[]> acquire(size_t n) {
    n = std::max<size_t>(n, 1);
    if (n >= kMinPooled) {
      std::lock_guard<std::mutex> lock(mu_);
      size_t best = free_.size();
      for (size_t i = 0; i < free_.size(); ++i) {
        const size_t cap = free_[i].first;
        if (cap >= n && cap <= 2 * n && (best == free_.size() || cap < free_[best].first)) best = i;
      }
      if (best != free_.size()) {
        auto [cap, p] = free_[best];
        free_.erase(free_.begin() + static_cast<std::ptrdiff_t>(best));
        cached_ -= cap;
        return wrap(p, cap);
      }
    }
    return wrap(static_cast<uint8_t*>(::operator new[](n, std::align_val_t{64})), n);
  }

 private:
  static constexpr size_t kMinPooled = size_t{1} << 20;
  static constexpr size_t kMaxCached = size_t{256} << 20;
  static constexpr size_t kMaxEntries = 8;

  std::shared_ptr<uint8_t[]> wrap(uint8_t* p, size_t cap) {
    return std::shared_ptr<uint8_t[]>(p, [this, cap](uint8_t* q) { release(q, cap); });
  }

  void release(uint8_t* p, size_t cap) {
    if (cap >= kMinPooled) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + cap <= kMaxCached && free_.size() < kMaxEntries) {
        free_.emplace_back(cap, p);
        cached_ += cap;
        return;
      }
    }
    ::operator delete[](p, std::align_val_t{64});
  }

  std::mutex mu_;
  std::vector<std::pair<size_t, uint8_t*>> free_;
  size_t cached_ = 0;
};

std::shared_ptr<uint8_t[]> allocate(size_t n) { return BufferPool::instance().acquire(n); }

size_t headerBytes(int ndim, size_t paramsSize) {
  const size_t raw = kFixedHeaderBytes + 8 * static_cast<size_t>(ndim) + paramsSize;
  return (raw + kHeaderAlign - 1) / kHeaderAlign * kHeaderAlign;
}

}  // namespace

size_t messageBytes(int ndim, size_t paramsSize, size_t payloadSize) {
  return headerBytes(ndim, paramsSize) + payloadSize + 4;
}

uint32_t wireChecksum(const void* data, size_t size) {
  if (size <= kChecksumChunk) return crc32c(0, data, size);
  const auto* p = static_cast<const uint8_t*>(data);
  const int64_t chunks = static_cast<int64_t>((size + kChecksumChunk - 1) / kChecksumChunk);
  std::vector<uint32_t> crcs(static_cast<size_t>(chunks));
  // Chunks are independent CRC streams: threads take groups of three so that each core keeps
  // three crc32 instructions in flight (latency 3, throughput 1 per cycle).
  parallelBlocks(chunks, 3, [&](int64_t, int64_t lo, int64_t hi) {
    const uint8_t* starts[3] = {};
    size_t lens[3] = {};
    for (int64_t c = lo; c < hi; ++c) {
      const size_t off = static_cast<size_t>(c) * kChecksumChunk;
      starts[c - lo] = p + off;
      lens[c - lo] = std::min(kChecksumChunk, size - off);
    }
    if (hi - lo == 3 && lens[2] == kChecksumChunk) {
      crc32c3(starts, kChecksumChunk, &crcs[static_cast<size_t>(lo)]);
    } else {
      for (int64_t c = lo; c < hi; ++c) crcs[c] = crc32c(0, starts[c - lo], lens[c - lo]);
    }
  }, /*threshold=*/6);
  return crc32c(0, crcs.data(), crcs.size() * 4);
}

Message Message::build(CompressorId id, DType dtype, const std::vector<int64_t>& shape, uint16_t flags,
                       const std::vector<uint8_t>& params, size_t payloadCapacity) {
  EFCOMM_CHECK(static_cast<int>(shape.size()) <= kMaxDims, "tensor has ", shape.size(),
               " dimensions; the wire format carries at most ", kMaxDims);
  EFCOMM_CHECK(params.size() <= 0xffff, "compressor parameters too large");
  EFCOMM_CHECK(codecByIdOrNull(static_cast<uint8_t>(id)) != nullptr, "Message.build: unknown compressor id ",
               static_cast<int>(id));
  EFCOMM_CHECK(isValidDType(static_cast<uint8_t>(dtype)), "Message.build: unknown dtype code ",
               static_cast<int>(dtype));
  shapeNumel(shape);  // InvalidArgument for a negative dimension or an element count beyond 2^56
  EFCOMM_CHECK(payloadCapacity <= (size_t{1} << 62), "Message.build: a payload capacity of ", payloadCapacity,
               " bytes is beyond any message");
  Message m;
  const size_t hdr = headerBytes(static_cast<int>(shape.size()), params.size());
  m.capacity_ = hdr + payloadCapacity + 4;
  m.buf_ = allocate(m.capacity_);
  uint8_t* b = m.buf_.get();
  std::memset(b, 0, hdr);
  int64_t numel = 1;
  for (int64_t s : shape) numel *= s;
  storeAs<uint32_t>(b, kWireMagic);
  b[4] = kWireVersion;
  b[5] = static_cast<uint8_t>(id);
  b[6] = static_cast<uint8_t>(dtype);
  b[7] = static_cast<uint8_t>(shape.size());
  storeAs<uint16_t>(b + 8, flags);
  storeAs<uint16_t>(b + 10, static_cast<uint16_t>(params.size()));
  storeAs<uint32_t>(b + 12, static_cast<uint32_t>(hdr));
  storeAs<uint64_t>(b + 16, static_cast<uint64_t>(numel));
  storeAs<uint64_t>(b + 24, 0);
  for (size_t i = 0; i < shape.size(); ++i) storeAs<int64_t>(b + kFixedHeaderBytes + 8 * i, shape[i]);
  if (!params.empty()) std::memcpy(b + kFixedHeaderBytes + 8 * shape.size(), params.data(), params.size());
  m.version_ = kWireVersion;
  m.id_ = id;
  m.dtype_ = dtype;
  m.shape_ = shape;
  m.numel_ = numel;
  m.flags_ = flags;
  m.paramsOffset_ = kFixedHeaderBytes + 8 * shape.size();
  m.paramsSize_ = params.size();
  m.payloadOffset_ = hdr;
  m.payloadSize_ = payloadCapacity;
  m.size_ = 0;  // not finished
  return m;
}

uint8_t* Message::mutablePayload() {
  EFCOMM_CHECK(size_ == 0 && buf_, "Message.mutablePayload: the message is finished (or was never built)");
  EFCOMM_CHECK(buf_.use_count() == 1, "Message.mutablePayload: a copy of a message under construction shares its "
               "bytes; fill and finish the one built");
  return buf_.get() + payloadOffset_;
}

void Message::finish(size_t payloadSize) {
  EFCOMM_CHECK(size_ == 0 && buf_, "Message.finish: the message is finished (or was never built)");
  EFCOMM_CHECK(buf_.use_count() == 1, "Message.finish: a copy of a message under construction shares its bytes; "
               "finish the one built");
  EFCOMM_CHECK(payloadOffset_ + payloadSize + 4 <= capacity_, "Message.finish: a payload of ", payloadSize,
               " bytes exceeds the reserved capacity of ", capacity_ - payloadOffset_ - 4);
  payloadSize_ = payloadSize;
  size_ = payloadOffset_ + payloadSize + 4;
  storeAs<uint64_t>(buf_.get() + 24, payloadSize);
  storeAs<uint32_t>(buf_.get() + size_ - 4, wireChecksum(buf_.get(), size_ - 4));
}

uint32_t Message::checksum() const { return size_ >= 4 ? loadAs<uint32_t>(buf_.get() + size_ - 4) : 0; }

void Message::parseHeader() {
  const uint8_t* b = buf_.get();
  EFCOMM_CHECK_MSG(size_ >= kFixedHeaderBytes + 4, "message of ", size_,
                   " bytes is shorter than the smallest valid message (", kFixedHeaderBytes + 4, ")");
  EFCOMM_CHECK_MSG(loadAs<uint32_t>(b) == kWireMagic, "bad magic: not an efcomm message");
  version_ = b[4];
  EFCOMM_CHECK_MSG(version_ == kWireVersion, "unsupported wire format version ", int(version_),
                   "; this build reads version ", int(kWireVersion));
  const Codec* codec = codecByIdOrNull(b[5]);
  EFCOMM_CHECK_MSG(codec != nullptr, "unknown compressor id ", int(b[5]));
  id_ = codec->id;
  EFCOMM_CHECK_MSG(isValidDType(b[6]), "unknown dtype code ", int(b[6]));
  dtype_ = static_cast<DType>(b[6]);
  const int ndim = b[7];
  EFCOMM_CHECK_MSG(ndim <= kMaxDims, "message claims ", ndim, " dimensions (at most ", kMaxDims, ")");
  flags_ = loadAs<uint16_t>(b + 8);
  paramsSize_ = loadAs<uint16_t>(b + 10);
  const uint32_t hdr = loadAs<uint32_t>(b + 12);
  EFCOMM_CHECK_MSG(hdr == headerBytes(ndim, paramsSize_), "header length ", hdr,
                   " does not match ", ndim, " dimensions and ", paramsSize_, " parameter bytes");
  const uint64_t numel = loadAs<uint64_t>(b + 16);
  const uint64_t payload = loadAs<uint64_t>(b + 24);
  EFCOMM_CHECK_MSG(hdr <= size_ - 4 && payload == size_ - 4 - hdr, "payload length ", payload,
                   " does not match the message size ", size_);
  shape_.assign(static_cast<size_t>(ndim), 0);
  // The product of the non-zero dimensions is bounded too: an empty shape such as (0, 2^62)
  // would otherwise pass, and no array library could allocate its output.
  uint64_t nonzero = 1;
  bool empty = false;
  for (int i = 0; i < ndim; ++i) {
    const int64_t s = loadAs<int64_t>(b + kFixedHeaderBytes + 8 * i);
    EFCOMM_CHECK_MSG(s >= 0, "negative dimension ", s);
    EFCOMM_CHECK_MSG(s == 0 || nonzero <= kMaxElements / static_cast<uint64_t>(s),
                     "shape ", shapeString(shape_), "... exceeds 2^56 elements");
    if (s == 0) empty = true;
    else nonzero *= static_cast<uint64_t>(s);
    shape_[i] = s;
  }
  const uint64_t prod = empty ? 0 : nonzero;
  EFCOMM_CHECK_MSG(prod == numel, "element count ", numel, " does not match shape ", shapeString(shape_));
  numel_ = static_cast<int64_t>(numel);
  paramsOffset_ = kFixedHeaderBytes + 8 * static_cast<size_t>(ndim);
  for (size_t i = paramsOffset_ + paramsSize_; i < hdr; ++i)
    EFCOMM_CHECK_MSG(b[i] == 0, "non-zero header padding");
  payloadOffset_ = hdr;
  payloadSize_ = payload;
}

Message Message::fromBytes(const void* data, size_t size) {
  EFCOMM_CHECK_MSG(data != nullptr || size == 0, "null buffer");
  Message m;
  m.buf_ = allocate(size);
  if (size) std::memcpy(m.buf_.get(), data, size);
  m.size_ = m.capacity_ = size;
  m.parseHeader();
  const uint32_t stored = loadAs<uint32_t>(m.buf_.get() + size - 4);
  const uint32_t actual = wireChecksum(m.buf_.get(), size - 4);
  EFCOMM_CHECK_MSG(stored == actual, "checksum mismatch (stored ", stored, ", computed ", actual,
                   "): the payload was damaged in transit");
  codecById(m.id_).validate(m);
  m.validated_ = true;
  return m;
}

}  // namespace efcomm
