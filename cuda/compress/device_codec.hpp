#pragma once
// The GPU compressor registry: one DeviceCodec per compressor id, the device twin of
// cpp/src/compress/codec.hpp. efcomm::cuda::compress/decompress/accumulate (device_codec.cpp)
// validate arguments and messages and dispatch here.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <string>

#include "common/wire.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::cuda {

struct DeviceCodec {
  CompressorId id;
  /// x: a checked device view (dtype valid, ndim <= 8, device pointer unless empty); step
  /// resolved. Fills `out` with a finished message and returns its size; synchronizes `stream`
  /// where it must read a data-dependent result. Throws NonFiniteError for NaN/Inf in x (the
  /// compressor unchanged; the caller advances the step only on success). Parameters: parse
  /// c.spec() with SpecParams (or the CPU class where its header is visible).
  size_t (*compress)(Compressor& c, const ConstTensorView& x, uint64_t step, DeviceBuffer& out,
                     cudaStream_t stream);
  /// Decodes the device message `msg` (16-byte aligned; header already read) into `out` (same
  /// dtype and numel, device memory). The checksum is verified first, except for codecs with
  /// `decodesUnverified`, whose decode must check every length against `h.payloadBytes` before
  /// launching. Checks the parameters and the payload's content rules first (CorruptMessageError)
  /// and only then writes `out`.
  void (*decode)(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t stream);
  /// out += weight * decode(msg) for float32/float64 `out`, with decode's checks first.
  /// nullptr: decode into scratch slot 6, then add (accumulateDecoded).
  void (*accumulate)(const DeviceMessageHeader& h, const void* msg, const TensorView& out, double weight,
                     cudaStream_t stream) = nullptr;
  /// True when compress always synchronizes `stream` after its last kernel (compress() then
  /// adds no synchronization of its own).
  bool compressSynchronizes = false;
  /// True when decode stays inside `out` and the payload whatever the payload bytes (no indices
  /// read from the payload): decompress then enqueues the decode right behind the checksum kernel
  /// on the same stream, without a synchronization in between (readMessageAsync; the host checks
  /// the header meanwhile), and throws after the decode if the checksum does not match.
  bool decodesUnverified = false;
};

/// accumulate() of a message whose header readMessage returned (its checksum verified), for
/// callers that verify a round's messages before changing anything: the header's checks against
/// `out`, then out += weight * decode(msg). `out` a checked device view. Synchronizes `stream`.
void accumulateRead(const DeviceMessageHeader& h, const void* msg, size_t size, const TensorView& out, double weight,
                    cudaStream_t stream);

/// For decoders that check payload content inside the decoding kernel instead of a separate
/// check kernel and synchronization: returns the device address of a zeroed mailbox flag word
/// for the kernel to set (a plain store of 1); decompress throws CorruptMessageError(message)
/// after its final synchronization when it is set. `out` may then hold partial results (the
/// checksum was valid: only a crafted message gets there). Not for accumulate, whose output
/// must stay unchanged: accumulate paths check before they add.
uint32_t* deferDecodeCheck(const char* message);

/// The codec of `id`; throws CorruptMessageError if no GPU codec is registered for it.
const DeviceCodec& deviceCodec(CompressorId id);
/// nullptr if none is registered.
const DeviceCodec* deviceCodecOrNull(CompressorId id);

/// out[i] += weight * decoded[i] (the generic accumulate; weight rounded to out's dtype first,
/// as the CPU does). `decoded` and `out` are device arrays of out.dtype (float32/float64).
void addScaled(const void* decoded, const TensorView& out, double weight, cudaStream_t stream);

/// Copies x to the host (synchronizing `stream`) and throws NonFiniteError naming its first
/// NaN/Inf and flat index, as the CPU's throwIfNonFinite; returns if every element is finite.
void throwIfNonFinite(const std::string& who, const ConstTensorView& x, cudaStream_t stream);

/// The slow path after a fused check flagged x: copies x to the host (synchronizing `stream`)
/// and throws NonFiniteError naming the first NaN/Inf and its flat index, as the CPU's
/// throwIfNonFinite does; if every element is finite (a derived value overflowed instead),
/// throws NonFiniteError(who + ": " + otherwise).
[[noreturn]] void throwNonFinite(const std::string& who, const ConstTensorView& x, cudaStream_t stream,
                                 const std::string& otherwise);

// Each compressor's .cu file defines its codec.
DeviceCodec identityDeviceCodec();     // cuda/compress/identity.cu    (A)
DeviceCodec castDeviceCodec();         // cuda/compress/cast.cu        (A)
DeviceCodec signDeviceCodec();         // cuda/compress/sign.cu        (A)
DeviceCodec qsgdDeviceCodec();         // cuda/compress/qsgd.cu        (A)
DeviceCodec naturalDeviceCodec();      // cuda/compress/natural.cu     (A)
DeviceCodec randkDeviceCodec();        // cuda/compress/randk.cu       (A)
DeviceCodec blockquantDeviceCodec();   // cuda/compress/blockquant.cu  (A)
DeviceCodec topkDeviceCodec();         // cuda/compress/topk.cu        (B)
DeviceCodec powersgdDeviceCodec();     // cuda/compress/powersgd.cu    (B)

}  // namespace efcomm::cuda
