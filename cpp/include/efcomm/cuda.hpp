#pragma once
/// @file cuda.hpp
/// The GPU path: compressors and error feedback on device memory, with an explicit stream.
///
/// The kernels are compiled when `nvcc` is found (CMake option EFCOMM_CUDA) into the
/// `efcomm_cuda` target; without them every function here except `built`, `deviceCount` and
/// `available` throws `BackendUnavailable`. This header needs no CUDA header: a stream is passed
/// as `Stream` (a `cudaStream_t` cast to `void*`; nullptr is the legacy default stream).
///
/// Device messages use the wire format of `Message` (docs/wire-format.md) byte for byte: a
/// message made on the GPU decodes on the CPU (`Message::fromBytes` of its bytes) and a CPU
/// message copied to the device decodes there. Randomized compressors make the same draw as on
/// the CPU for the same seed and step (RandK: the same indices). Values may differ from the
/// CPU's in the last bits where a reduction sums in another order (the scale of `sign`).
///
/// Views (`ConstTensorView`/`TensorView`) passed here hold device pointers of the current
/// device. Calls that must report a data-dependent error (non-finite input, corrupt message) or
/// return a data-dependent size synchronize `stream` before returning; the rest only enqueue.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "efcomm/compressor.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::cuda {

/// A `cudaStream_t`, type-erased so that this header needs no CUDA header.
using Stream = void*;

/// True when the CUDA kernels are compiled into this build.
bool built();
/// Number of CUDA devices usable by this process; 0 without kernels, driver or device. Never
/// throws.
int deviceCount();
/// built() && deviceCount() > 0.
bool available();
/// True when p points to device or managed memory (of any device); false without kernels or
/// device. Never throws.
bool isDevicePointer(const void* p);
/// True when p is device memory of CUDA device `device`, or managed memory. Never throws.
bool isDevicePointer(const void* p, int device);
/// Why `available()` is false ("efcomm was built without CUDA (nvcc not found)", "no CUDA
/// device: <driver's message>"); empty when available.
std::string unavailableReason();

/// Makes `device` the calling thread's current CUDA device for good (cudaSetDevice), for a
/// thread of its own that works on one device: a DeviceGuard there would restore device 0 on
/// exit, which creates a context on GPU 0.
void setDevice(int device);

/// Makes `device` the calling thread's current CUDA device (cudaSetDevice) until destroyed, then
/// restores the previous one: allocations and launches in its scope go to `device`.
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int device_;
  int previous_ = 0;
};

/// Owned device memory (cudaMalloc/cudaFree). Move-only. `resize` keeps the allocation when it
/// is large enough and otherwise reallocates (contents are then not kept).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes) { resize(bytes); }
  ~DeviceBuffer();
  DeviceBuffer(DeviceBuffer&& other) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  /// Makes size() `bytes`: keeps the allocation when capacity() suffices, else frees it and
  /// allocates `bytes` (contents lost). BackendUnavailable without a usable device; Error with
  /// CUDA's message when the allocation fails.
  void resize(size_t bytes);
  /// The device pointer (null while capacity() is 0).
  void* data() { return ptr_; }
  const void* data() const { return ptr_; }
  /// Bytes in use (the last resize), and bytes allocated.
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0, capacity_ = 0;
};

/// Compresses the device array `x` with `c` into `out` (resized to the message's size, which is
/// returned): the complete wire image, header, payload and checksum, in device memory. `step` as
/// for `Compressor::compress` (the compressor's step counter and PowerSGD's warm start advance as
/// on the CPU). Synchronizes `stream`. Throws `NonFiniteError` for NaN/Inf in x, `InvalidArgument`
/// for a bad view; on a throw the compressor is unchanged.
size_t compress(Compressor& c, const ConstTensorView& x, DeviceBuffer& out,
                std::optional<uint64_t> step = std::nullopt, Stream stream = nullptr);

/// Decodes the device message `msg` (`size` bytes) into the device array `out` (same dtype and
/// element count). Validates the message as `Message::fromBytes` does (header, parameters,
/// checksum, payload rules) and throws `CorruptMessageError` naming the first violation; a
/// damaged payload may be found only after `out` was written (all codecs but TopK decode right
/// behind the checksum kernel, without waiting for its result), so `out` is undefined after any
/// `CorruptMessageError`. Synchronizes `stream`.
void decompress(const void* msg, size_t size, const TensorView& out, Stream stream = nullptr);

/// out += weight * decode(msg) on the device; sparse messages touch only their k entries.
/// Validation and synchronization as for `decompress`, but the whole message is checked before
/// `out` changes: on a throw `out` is unchanged.
void accumulate(const void* msg, size_t size, const TensorView& out, double weight,
                Stream stream = nullptr);

/// Enqueues a copy of `bytes` bytes between device arrays on `stream`.
void copy(void* dst, const void* src, size_t bytes, Stream stream = nullptr);
/// Waits until the work enqueued on `stream` has finished.
void synchronize(Stream stream = nullptr);

/// Copies a device message to the host and validates it (`Message::fromBytes`).
Message toHost(const void* msg, size_t size, Stream stream = nullptr);
/// Copies a host message into `out` on the device (resized). Enqueues only.
void toDevice(const Message& msg, DeviceBuffer& out, Stream stream = nullptr);

/// One worker's error feedback for one tensor slot with its state in device memory: the GPU
/// counterpart of `Feedback` (same specs, same update rules, docs/algorithms.md), each step one
/// fused pass over the state where the compressor allows. Not thread-safe.
class DeviceFeedback {
 public:
  /// feedbackSpec as for `makeFeedback`, compressorSpec as for `makeCompressor`.
  DeviceFeedback(const std::string& feedbackSpec, const std::string& compressorSpec);
  ~DeviceFeedback();
  DeviceFeedback(const DeviceFeedback&) = delete;
  DeviceFeedback& operator=(const DeviceFeedback&) = delete;

  std::string spec() const;
  const Compressor& compressor() const;

  /// Consumes the device vector v and writes what the worker sends into `out`; returns its size.
  /// Errors as `Feedback::step` (state unchanged on a throw). Synchronizes `stream`.
  size_t step(const ConstTensorView& v, DeviceBuffer& out, std::optional<uint64_t> step = std::nullopt,
              Stream stream = nullptr);

  /// The estimate (device memory), as `Feedback::estimate`.
  ConstTensorView estimate() const;
  bool initialized() const;

  /// The same state dictionary as `Feedback::stateDict` (host copies): a CPU `Feedback` of the
  /// same specs loads it and continues, and this object loads a CPU one's.
  StateDict stateDict() const;
  void loadStateDict(const StateDict& state);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace efcomm::cuda
