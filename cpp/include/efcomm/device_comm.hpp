#pragma once
/// @file device_comm.hpp
/// Collectives on device memory: what the Reducer's GPU path needs from a transport. Two
/// implementations: `NcclCommunicator` (nccl.hpp: the GPUs of a job over NCCL) and
/// `stagedDeviceBackend` (a host `Backend` moving device bytes through host memory: GPUs without
/// NCCL, and several ranks sharing one GPU in tests, where NCCL refuses two ranks per device).
///
/// The contract is the host `Backend`'s (comm.hpp) on device buffers: every collective enqueues
/// its data movement on `stream` and returns a `Work`; buffers must stay valid, and not be
/// touched by other streams, until its `Work` has completed; work enqueued later on the same
/// stream runs after it. Small control messages (the Reducer's agreement headers and failure
/// statuses) travel through `host()`, a host `Backend` over the same ranks.

#include <cstddef>
#include <memory>
#include <optional>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// Device memory holding variable-sized byte blocks, one per rank, back to back without
/// padding: block `i` is `data.data() + offsets[i]`, `offsets[i + 1] - offsets[i]` bytes. The
/// device counterpart of `ByteBlocks`; the receive side of `DeviceBackend::allgatherv` and
/// `alltoallv`, sized by the call.
struct DeviceByteBlocks {
  cuda::DeviceBuffer data;
  std::vector<size_t> offsets;

  /// Number of blocks.
  size_t size() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  /// Device pointer to block `i`; InvalidArgument when i >= size().
  const uint8_t* block(size_t i) const { return static_cast<const uint8_t*>(data.data()) + offsets[checked(i)]; }
  uint8_t* block(size_t i) { return static_cast<uint8_t*>(data.data()) + offsets[checked(i)]; }
  /// Length of block `i` in bytes; InvalidArgument when i >= size().
  size_t blockBytes(size_t i) const { return offsets[checked(i) + 1] - offsets[i]; }

 private:
  size_t checked(size_t i) const {
    EFCOMM_CHECK(i < size(), "DeviceByteBlocks: block ", i, " of ", size(), " (blocks are numbered 0 to size() - 1)");
    return i;
  }
};

/// A group of ranks exchanging device memory. Abstract; see the file comment.
class DeviceBackend {
 public:
  virtual ~DeviceBackend() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  /// The CUDA device of this rank's buffers.
  virtual int device() const = 0;

  /// A host `Backend` over the same ranks, for small control messages; its collectives are
  /// ordered with this backend's (one sequence of collectives per rank).
  virtual Backend& host() = 0;

  /// As `Backend::allgatherv`, on device memory: `recv` is sized by the call.
  virtual std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, DeviceByteBlocks& recv,
                                           cuda::Stream stream, std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// As `Backend::alltoallv`, on device memory.
  virtual std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts,
                                          DeviceByteBlocks& recv, cuda::Stream stream,
                                          std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// In place: `buf` (`count` elements of `dtype`) becomes the elementwise sum over ranks, the
  /// same bits on every rank (the summation order is the backend's).
  virtual std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype, cuda::Stream stream,
                                             std::optional<double> timeoutSeconds = std::nullopt) = 0;
};

/// A `DeviceBackend` over the host backend `host`: each collective copies this rank's device
/// bytes to the host, runs `host`'s collective and copies the result back to `device` (the
/// host's rank-order sum for allreduceSum). Synchronizes `stream` in every call (the copies),
/// so its `Work` is complete when returned. Throws `BackendUnavailable` without CUDA kernels or
/// device, `InvalidArgument` for a bad device.
std::shared_ptr<DeviceBackend> stagedDeviceBackend(std::shared_ptr<Backend> host, int device);

}  // namespace efcomm
