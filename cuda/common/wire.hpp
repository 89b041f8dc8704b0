#pragma once
// Device messages in the wire format of Message (docs/wire-format.md), host-side orchestration:
// the header bytes are built on the host by Message::build itself and copied in; the chunked
// CRC32C is computed on the device in parallel (hd_crc.hpp).
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <vector>

#include "efcomm/cuda.hpp"
#include "efcomm/message.hpp"

namespace efcomm::cuda {

/// Headers up to this size travel to the device as a kernel argument.
constexpr size_t kMaxHeaderImage = 384;

/// A message header's bytes, passed by value to the kernel that writes them.
struct HeaderImage {
  uint8_t b[kMaxHeaderImage];
};

struct DeviceMessageLayout {
  size_t headerBytes = 0, payloadCapacity = 0;
  /// The header bytes not yet written to the device (headers up to kMaxHeaderImage bytes):
  /// finishMessage/sealMessage write them together with the checksum, in one kernel.
  bool headerPending = false;
  HeaderImage header{};
};

/// Sizes `out` to headerBytes + payloadCapacity + 4 and prepares the header bytes (exactly
/// those of Message::build with these arguments; payload_len set by finishMessage). The header
/// is written to the device by finishMessage (headers over kMaxHeaderImage bytes: enqueued
/// here), so nothing may read it before. The payload starts at (uint8_t*)out.data() +
/// headerBytes, 16-byte aligned.
DeviceMessageLayout beginMessage(DeviceBuffer& out, CompressorId id, DType dtype,
                                 const std::vector<int64_t>& shape, uint16_t flags,
                                 const std::vector<uint8_t>& params, size_t payloadCapacity,
                                 cudaStream_t stream);

/// Patches payload_len, sets out's size to headerBytes + payloadSize + 4 (payloadSize <=
/// capacity), computes the chunked CRC32C on the device and writes the trailer. Enqueues
/// only (uses scratch slot 7: synchronize the stream before the thread's next message call).
/// Returns the message size.
size_t finishMessage(DeviceBuffer& out, const DeviceMessageLayout& layout, size_t payloadSize,
                     cudaStream_t stream);

/// The same message sealed in one kernel (two beyond 1 GiB): the header (from the layout, with
/// payload_len = payloadSize), the chunked CRC32C and the trailer. Enqueues only (uses scratch
/// slot 7 and ticketWords()[0]). Returns the message size.
size_t sealMessage(DeviceBuffer& out, const DeviceMessageLayout& layout, size_t payloadSize, cudaStream_t stream);

/// Enqueues the wire checksum of the `size` device bytes at `data` into the device word
/// `*result` (4-byte aligned). Uses scratch slot 7.
void deviceWireChecksum(const void* data, size_t size, uint32_t* result, cudaStream_t stream);

struct DeviceMessageHeader {
  CompressorId id = CompressorId::kIdentity;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  int64_t numel = 0;
  uint16_t flags = 0;
  std::vector<uint8_t> params;
  size_t headerBytes = 0, payloadBytes = 0;
  /// The first min(payloadBytes, 16) payload bytes and the last one (0 if empty), copied with
  /// the header: the scalars that lead payloads (norms, scales) and the padding byte.
  uint8_t payloadHead[16] = {};
  uint8_t payloadLast = 0;
};

/// Copies the header of the device message `msg` (`size` bytes) to the host and checks it as
/// Message::fromBytes does (size, magic, version, compressor id registered on the CPU and the
/// GPU, dtype, ndim, header length, payload length, shape, numel, zero padding), then verifies
/// the checksum on the device. Throws CorruptMessageError. Synchronizes `stream`.
DeviceMessageHeader readMessage(const void* msg, size_t size, cudaStream_t stream);

/// readMessage without waiting for the checksum, for decoders that are safe on any payload
/// bytes (DeviceCodec::decodesUnverified): copies the header and the trailer to the host, enqueues
/// the checksum kernel on `stream` and checks the header while it runs, so that a decode enqueued
/// next follows it without a synchronization in between. After the stream's next
/// synchronization, finishMessageRead compares the checksum (CorruptMessageError). Uses the
/// calling thread's mailbox: no other message read on this thread in between.
///
/// With `checksumShare` the checksum kernel is enqueued once the header is read, and where
/// checksumShare(header) is in (0, 1] on the thread's side stream, beside what `stream` does next
/// (the decode), on at most that share of the multiprocessors (the rest are the decode's);
/// joinMessageRead then makes `stream` wait for it, before the synchronization that precedes
/// finishMessageRead (and before any return, errors included).
struct PendingMessage {
  DeviceMessageHeader header;
  uint32_t stored = 0;            // the message's trailer
  cudaEvent_t checked = nullptr;  // with the checksum on the side stream: recorded after it
};
PendingMessage readMessageAsync(const void* msg, size_t size, cudaStream_t stream,
                                const std::function<double(const DeviceMessageHeader&)>& checksumShare = {});
void joinMessageRead(const PendingMessage& pending, cudaStream_t stream);
void finishMessageRead(const PendingMessage& pending);

}  // namespace efcomm::cuda
