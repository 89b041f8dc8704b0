#pragma once
/// @file nccl.hpp
/// The NCCL backend: collectives on device memory, on an explicit CUDA stream, between the GPUs
/// of a job (one rank per GPU).
///
/// efcomm does not link NCCL, and needs no `nccl.h` to build: libnccl is loaded at run time
/// (dlopen): the file named by the environment variable `EFCOMM_NCCL_LIBRARY` when it is set (only
/// that one); else a `libnccl.so.2` already loaded in the process (torch's, CuPy's: one NCCL per
/// process), else the `libraryPath` passed here (the Python package passes the `nvidia-nccl-cu13`
/// wheel's `nvidia/nccl/lib/libnccl.so.2` when that wheel is installed), then `libnccl.so.2` on
/// the loader's search path. A build without the CUDA kernels, a machine without
/// a GPU and a missing libnccl all give `BackendUnavailable` saying what was tried and how to fix it
/// (`pip install nvidia-nccl-cu13`).
///
/// Every collective enqueues its work on `stream` and returns a `Work` whose `wait` polls a CUDA
/// event recorded after it (and NCCL's asynchronous error state), with short sleeps: the host
/// never blocks inside CUDA or NCCL. A collective whose work has not finished within its timeout
/// (or within the `timeoutSeconds` given to `wait`) aborts the communicator (`ncclCommAbort`) and
/// fails with `CollectiveTimeout`; NCCL does not tell which ranks are missing, so its `culprits()`
/// is empty. After an abort the communicator is unusable: every pending and later collective of
/// it fails with the same error. Communicator creation is bounded by the default timeout as well
/// (NCCL's nonblocking initialization).
///
/// Differences from the host `Backend` contract (comm.hpp): NCCL does not check that the ranks
/// agree on a collective's kind or sizes, so a disagreement shows as a `CollectiveTimeout` (or an
/// NCCL error) rather than a `MismatchError`; `allreduceSum` sums in NCCL's order (identical on
/// every rank of one communicator, not the rank order of the host backends).
///
/// Buffers are device memory of the communicator's device (or managed memory) and must stay
/// valid, and not be touched by other streams, until the collective's `Work` has completed.
/// Device memory may be reused on `stream` right away: later work on the same stream runs after.
/// One communicator is driven by one thread at a time (its methods lock a mutex, but NCCL
/// requires one order of collectives on every rank).

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/device_comm.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// NCCL's `ncclUniqueId`: 128 opaque bytes made by one rank and given to every rank.
constexpr size_t kNcclUniqueIdBytes = 128;
using NcclUniqueId = std::array<uint8_t, kNcclUniqueIdBytes>;

/// True when the NCCL backend is compiled in (it is with the CUDA kernels).
bool ncclBuilt();

/// The loaded libnccl's version code (NCCL_VERSION_CODE, e.g. 23203 for 2.32.3), loading it if
/// needed (see the file comment for where it is looked for). Throws `BackendUnavailable`.
int ncclVersion(const std::string& libraryPath = std::string());

/// The file libnccl was loaded from ("" before it is loaded).
std::string ncclLibrary();

/// One rank's NCCL communicator, a `DeviceBackend` (the Reducer runs on it). Thread-compatible;
/// see the file comment.
class NcclCommunicator final : public DeviceBackend {
 public:
  /// A new unique id (ncclGetUniqueId), made on one rank (usually 0) and sent to every rank out
  /// of band (MPI, a torch process group, a file). Throws `BackendUnavailable`.
  static NcclUniqueId uniqueId(const std::string& libraryPath = std::string());

  /// Rank `rank` of `size` on CUDA device `device`, joining the other ranks that pass the same
  /// `id`. Collective: every rank calls it, within `defaultTimeoutSeconds` (> 0, also the
  /// timeout of collectives given none), else `CollectiveTimeout`. Throws `BackendUnavailable`
  /// without CUDA kernels, device or libnccl; `InvalidArgument` for a bad rank, size or device.
  NcclCommunicator(int rank, int size, const NcclUniqueId& id, int device,
                   double defaultTimeoutSeconds = kDefaultCollectiveTimeout,
                   const std::string& libraryPath = std::string());
  /// Finalizes the communicator (waits, at most the default timeout, for its pending work; aborts
  /// it if that fails) and frees it.
  ~NcclCommunicator() override;
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const override;
  int size() const override;
  int device() const override;
  double defaultTimeout() const;

  /// In place: `buf` (`count` elements of `dtype`: float32, float64, bfloat16 or float16)
  /// becomes the elementwise sum over ranks (ncclAllReduce, ncclSum). Enqueues only.
  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype, cuda::Stream stream,
                                     std::optional<double> timeoutSeconds = std::nullopt) override;

  /// Copies `bytes` bytes of `buf` on rank `root` into `buf` on every other rank. Enqueues only.
  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, cuda::Stream stream,
                                  std::optional<double> timeoutSeconds = std::nullopt);

  /// The byte counts of every rank: `bytes` of this rank, gathered (block `i` of rank `i`).
  /// Synchronizes (a small NCCL all-gather polled to completion, bounded by the timeout); what
  /// `allgatherv` and a caller that sizes its own receive buffer use.
  std::vector<size_t> exchangeSizes(size_t bytes, cuda::Stream stream,
                                    std::optional<double> timeoutSeconds = std::nullopt);

  /// Every rank contributes `bytes` bytes of device memory (sizes may differ, zero allowed);
  /// every rank receives all contributions in `recv`, block `i` from rank `i`, without padding.
  /// Exchanges the sizes first (`exchangeSizes`: synchronizes), then sizes `recv` and enqueues
  /// the data movement (one ncclBroadcast per rank with data, in one NCCL group).
  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, DeviceByteBlocks& recv, cuda::Stream stream,
                                   std::optional<double> timeoutSeconds = std::nullopt) override;

  /// `allgatherv` when every rank's size is known (`sizes`, the same on every rank, one per rank,
  /// `sizes[rank()]` the bytes of `send`): block `i` lands at `recv + sum(sizes[0..i))`; `recv`
  /// holds sum(sizes) bytes. Enqueues only.
  std::shared_ptr<Work> allgathervInto(const void* send, void* recv, const std::vector<size_t>& sizes,
                                       cuda::Stream stream, std::optional<double> timeoutSeconds = std::nullopt);

  /// Personalized exchange: `send` holds `size()` chunks back to back, chunk `j` of
  /// `sendCounts[j]` bytes for rank `j`. Block `j` of `recv` is the chunk rank `j` addressed to
  /// this rank. Exchanges the counts first (synchronizes), then enqueues grouped
  /// ncclSend/ncclRecv (this rank's own chunk is a device-to-device copy).
  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, DeviceByteBlocks& recv,
                                  cuda::Stream stream, std::optional<double> timeoutSeconds = std::nullopt) override;

  /// Completes once every rank has reached it (an all-reduce of one value). Enqueues only.
  std::shared_ptr<Work> barrier(cuda::Stream stream, std::optional<double> timeoutSeconds = std::nullopt);

  /// Aborts the communicator (ncclCommAbort) and fails every pending and later collective with
  /// `error`. The first abort wins. Thread-safe.
  void abort(const CollectiveTimeout& error);

  /// True after an abort or a timeout.
  bool aborted() const;

  /// Host bytes over this communicator (copied through device memory on the legacy default
  /// stream, synchronizing every call): the Reducer's small control messages.
  Backend& host() override;

  struct State;  // private to nccl.cpp

 private:
  std::shared_ptr<State> state_;
  std::unique_ptr<Backend> host_;
};

}  // namespace efcomm
