#pragma once
/// @file message.hpp
/// `Message`: one compressed tensor in efcomm's versioned wire format (docs/wire-format.md).
///
/// Layout (little-endian): a 32-byte fixed header, the shape (8 bytes per dimension), the
/// compressor's parameters, zero padding to a multiple of 16, the payload, and a 4-byte
/// checksum (chunked CRC32C) of everything before it.

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "efcomm/tensor.hpp"

namespace efcomm {

/// Wire identifiers of the compressors. Values are part of the wire format.
enum class CompressorId : uint8_t {
  kIdentity = 1,
  kCast = 2,
  kTopK = 3,
  kRandK = 4,
  kSign = 5,
  kQSGD = 6,
  kNatural = 7,
  kBlockQuant = 8,
  kPowerSGD = 9,
};

/// The wire format version this build writes and reads.
constexpr uint8_t kWireVersion = 1;
/// "EFCM" read as a little-endian uint32.
constexpr uint32_t kWireMagic = 0x4d434645u;
/// Size of the fixed part of the header.
constexpr size_t kFixedHeaderBytes = 32;
/// Largest number of dimensions a message may carry.
constexpr int kMaxDims = 8;

/// An immutable compressed tensor. Copies share the same bytes (cheap). Messages from
/// `fromBytes` and from efcomm's compressors are validated; one made with `build`/`finish` is
/// validated by `decompress`/`accumulate` before they decode it (CorruptMessageError).
/// Thread-safety: const methods may be called concurrently.
class Message {
 public:
  Message() = default;

  /// Copies and validates `size` bytes: magic, version, header and payload sizes, shape, dtype,
  /// compressor id and parameters, checksum, and the compressor's own payload rules (indices in
  /// range and increasing, sizes that match the parameters). Throws `CorruptMessageError`
  /// describing the first violation; never reads outside `[data, data + size)`.
  static Message fromBytes(const void* data, size_t size);

  /// Starts a message for a compressor to fill: writes the header, reserves
  /// `payloadCapacity` bytes of payload. Finish with `finish()`. Throws `InvalidArgument` for an
  /// unknown compressor id or dtype, a negative dimension, more than kMaxDims dimensions,
  /// parameters over 65535 bytes or a capacity beyond 2^62 bytes.
  static Message build(CompressorId id, DType dtype, const std::vector<int64_t>& shape,
                       uint16_t flags, const std::vector<uint8_t>& params, size_t payloadCapacity);
  /// Writable payload of a message under construction (not of a copy of one: InvalidArgument).
  uint8_t* mutablePayload();
  /// Ends construction: sets the payload size (<= capacity) and writes the checksum.
  void finish(size_t payloadSize);
  /// True for messages that passed the compressor's payload rules (fromBytes) or that
  /// efcomm's compressors made.
  bool validated() const { return validated_; }

  /// The whole wire image.
  const uint8_t* data() const { return buf_.get(); }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  uint8_t version() const { return version_; }
  CompressorId compressorId() const { return id_; }
  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int64_t numel() const { return numel_; }
  uint16_t flags() const { return flags_; }
  const uint8_t* params() const { return buf_.get() + paramsOffset_; }
  size_t paramsSize() const { return paramsSize_; }
  const uint8_t* payload() const { return buf_.get() + payloadOffset_; }
  size_t payloadSize() const { return payloadSize_; }
  /// The checksum stored in the trailer.
  uint32_t checksum() const;

 private:
  void parseHeader();  // sets the fields above from buf_; throws CorruptMessageError
  friend class Compressor;  // marks what its compressors make as validated

  std::shared_ptr<uint8_t[]> buf_;
  size_t size_ = 0;
  size_t capacity_ = 0;
  uint8_t version_ = 0;
  CompressorId id_ = CompressorId::kIdentity;
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  int64_t numel_ = 0;
  uint16_t flags_ = 0;
  size_t paramsOffset_ = 0, paramsSize_ = 0, payloadOffset_ = 0, payloadSize_ = 0;
  bool validated_ = false;
};

/// Total wire size of a message with the given header parts and payload size.
size_t messageBytes(int ndim, size_t paramsSize, size_t payloadSize);

/// Chunked CRC32C used as the wire checksum: the CRC32C of each 64 KiB chunk, then the CRC32C of
/// those CRCs (little-endian) — computed in parallel; documented in docs/wire-format.md.
uint32_t wireChecksum(const void* data, size_t size);

}  // namespace efcomm
