#pragma once
// The CUDA runtime glue of the GPU path (host code): error checking, the device check, per-thread
// scratch memory and the flag words through which kernels report data-dependent errors
// (non-finite input, corrupt payload) to the host.
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <vector>

#include "efcomm/cuda.hpp"
#include "efcomm/error.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::cuda {

/// Throws for a failed CUDA call: BackendUnavailable when there is no usable device or driver
/// (cudaErrorNoDevice, cudaErrorInsufficientDriver, ...), else efcomm::Error (kInternal),
/// naming the call, file:line and cudaGetErrorString.
[[noreturn]] void throwCudaError(cudaError_t err, const char* expr, const char* file, int line);

}  // namespace efcomm::cuda

/// Checks a CUDA runtime call; `EFCOMM_CUDA_CHECK(cudaGetLastError())` after every launch.
#define EFCOMM_CUDA_CHECK(expr)                                                       \
  do {                                                                                \
    const cudaError_t efcommCudaErr_ = (expr);                                        \
    if (efcommCudaErr_ != cudaSuccess)                                                \
      ::efcomm::cuda::throwCudaError(efcommCudaErr_, #expr, __FILE__, __LINE__);      \
  } while (0)

namespace efcomm::cuda {

inline cudaStream_t nativeStream(Stream s) { return static_cast<cudaStream_t>(s); }

/// Throws BackendUnavailable(unavailableReason()) unless available().
void requireDevice();

/// Checks that v is a usable device array: numel() >= 0 (validated shape), at most kMaxDims
/// dimensions, a valid dtype, and a non-null pointer to device or managed memory unless empty.
/// Throws InvalidArgument "<what> is host memory: pass a CUDA tensor ..." otherwise.
void checkDeviceView(const ConstTensorView& v, const char* what);

/// Multiprocessors of the current device (cached per device).
int smCount();

/// Per-thread, per-device growing device scratch: slot 0..7, at least `bytes` (>= 1) bytes,
/// 256-byte aligned. The memory stays valid until the next call with the same slot on the
/// same thread (which may reallocate: growing synchronizes the device through cudaFree). Calls
/// that use scratch synchronize their stream before returning, so no work outlives them.
/// Slots: 0-3 codecs (A), 4-5 feedback and topk (B), 6 accumulate's decode buffer, 7 the wire
/// checksum (which, with the checksum beside the decode, is in use on the side stream until
/// decompress joins it, as is ticket 0).
void* scratch(size_t bytes, int slot);

/// Per-thread device flag words (and their pinned host mirror) for kernels to report errors:
/// kernels OR or max into them; the host reads them after one stream synchronization.
struct DeviceFlags {
  uint32_t* device;
};
/// Zeroes `count` (<= 8) flag words on `stream` and returns their device address.
uint32_t* resetFlags(cudaStream_t stream, int count = 8);
/// Copies the flag words back after synchronizing `stream`.
std::vector<uint32_t> readFlags(cudaStream_t stream, int count = 8);

/// True when the CPU path's build contracts a * b + c into fused multiply-adds (gcc does when
/// -march enables FMA): kernels that must reproduce its values bit for bit follow it (madd).
bool cpuContractsFma();


/// The current device (cudaGetDevice).
int currentDevice();

/// Per-thread, per-device pinned host memory mapped into the device's address space, through
/// which kernels report to the host without a copy: kernels store plain words into it (error
/// flags, the computed checksum, a copy of a message header); the host reads them after its
/// one stream synchronization. `host` and `device` address the same bytes.
struct HostMailbox {
  static constexpr int kFlagWords = 16;
  static constexpr int kHeadBytes = 1024;
  struct Layout {
    uint32_t flags[kFlagWords];  // error flags of codec kernels (the host zeroes them)
    uint32_t checksum;           // the checksum readMessage's kernel computed
    uint32_t pad[3];
    uint8_t tail[16];            // the last 5 bytes of a message (last payload byte, trailer)
    uint8_t head[kHeadBytes];    // the first bytes of a message (its header)
  };
  Layout* host;
  Layout* device;
};
/// The calling thread's mailbox on the current device (allocated once: cudaHostAlloc mapped).
HostMailbox mailbox();
/// The calling thread's event on the current device for waiting on part of a stream (created
/// once, without timing).
cudaEvent_t mailEvent();
/// The calling thread's second stream on the current device (non-blocking, created once) and
/// an event for joining it back: work that runs beside a call's main stream (the checksum
/// beside a decode), always joined before the call returns.
cudaStream_t sideStream();
cudaEvent_t sideEvent();
/// Zeroes the first `count` flag words of the mailbox (host stores; call with no kernel of
/// this thread in flight that writes them) and returns their device address.
uint32_t* clearMailboxFlags(int count = HostMailbox::kFlagWords);

/// Per-thread, per-device device words for kernels' "last block done" tickets: zero between
/// kernels (each kernel's last block resets its ticket). Slot 0: the wire checksum; 1-3: codecs.
uint32_t* ticketWords();

/// Opt-in per-phase timing (environment EFCOMM_CUDA_TRACE=1, read once): traceBegin starts a
/// call's trace, traceMark records a cudaEvent after the work enqueued so far, traceEnd
/// (after the call's last synchronization) prints one line to stderr with the time between
/// marks. All are no-ops (one branch) when tracing is off.
bool traceEnabled();
void traceBegin(cudaStream_t stream, const char* call, const char* codec, int64_t numel);
void traceMark(cudaStream_t stream, const char* phase);
void traceEnd(size_t messageBytes);

/// Waits for the legacy default stream, where cudaMemset and pageable cudaMemcpy run: it does
/// not order with non-blocking streams (torch's side streams, the NCCL tests'), so device words
/// and state written there must be complete before a kernel on another stream reads them.
void settleLegacyStream();

}  // namespace efcomm::cuda
