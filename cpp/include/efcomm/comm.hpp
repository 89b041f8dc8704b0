#pragma once
/// @file comm.hpp
/// Transports: a `Backend` moves raw bytes between the ranks of a group and knows nothing of
/// tensors, compressors or feedback (PyTorch c10d's ProcessGroup, gloo's type-erased collectives).
/// Every collective is asynchronous and returns a `Work`; errors raised while it runs are stored
/// and rethrown by `Work::wait`.
///
/// Contract shared by every backend:
/// - All ranks issue the same collectives in the same order. The i-th collective of one rank is
///   matched with the i-th collective of every other rank (a per-rank sequence number), so
///   consecutive collectives never mix, even when several are in flight.
/// - Ranks that disagree on the kind of the i-th collective, or on its agreed parameters (the
///   root and byte count of `broadcast`, the count and dtype of `allreduceSum`), get
///   `MismatchError` from `wait` on every rank.
/// - A collective whose participants do not all arrive within its timeout fails with
///   `CollectiveTimeout` whose `culprits()` are the ranks that had not arrived; it never hangs.
///   A failed collective fails on every rank, including ranks that arrive after the failure.
/// - Buffers passed to a collective are owned by the caller and must stay valid, and must not be
///   read or written by the caller, until its `Work` has completed (`wait` returned or threw).
/// - One `Backend` object is driven by one thread at a time; different ranks' backends may be
///   used concurrently from different threads.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "efcomm/error.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

namespace comm {
struct InProcessState;  // the shared rendezvous; private to inproc.cpp
}  // namespace comm

/// Timeout of a collective when none is given: long enough for any real step, finite so that a
/// missing rank is reported instead of hanging the job. Seconds.
constexpr double kDefaultCollectiveTimeout = 300.0;

/// Where the time of one collective went on one rank, as far as its backend measures it (the
/// flight recorder's per-peer transfer times, `efcomm::health`).
struct WorkTiming {
  /// Seconds from this rank issuing the collective to every rank having arrived at it (as this
  /// rank learned it); negative when not measured or not reached.
  double readySeconds = -1;
  /// Per peer rank: seconds from `readySeconds` until this rank held that peer's data; negative
  /// for this rank itself, for peers that sent nothing, and when not measured. Empty when the
  /// backend does not measure per-peer times.
  std::vector<double> peerSeconds;
};

/// Handle of one in-flight collective on one rank (PyTorch c10d `Work`). Shared: the backend
/// keeps its own reference while the operation runs. Thread-safe.
class Work {
 public:
  virtual ~Work() = default;

  /// Blocks until the collective has completed on this rank. Throws the error the collective
  /// failed with (`MismatchError`, `CollectiveTimeout`, ...), every time it is called.
  /// `timeoutSeconds` (>= 0) bounds this wait in addition to the collective's own timeout; when
  /// it runs out first, the collective is aborted on every rank and `CollectiveTimeout` naming
  /// the ranks that have not arrived is thrown (the caller may then free its buffers).
  virtual void wait(std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// True once the collective has finished, successfully or not (then `wait` throws).
  /// Never blocks.
  virtual bool completed() const = 0;

  /// The collective's timing once it has completed (see `WorkTiming`); the default measures
  /// nothing.
  virtual WorkTiming timing() const { return {}; }
};

/// Variable-sized byte blocks, one per rank, stored back to back without padding: block `i` is
/// `data[offsets[i] .. offsets[i+1])`. `offsets` has `size() + 1` entries, `offsets[0] == 0`.
/// The receive side of `allgatherv` and `alltoallv`; the backend sizes it.
struct ByteBlocks {
  std::vector<uint8_t> data;
  std::vector<size_t> offsets;

  /// Number of blocks.
  size_t size() const { return offsets.empty() ? 0 : offsets.size() - 1; }
  /// Pointer to block `i` (valid while `data` is not modified); InvalidArgument when i >= size().
  const uint8_t* block(size_t i) const { return data.data() + offsets[checked(i)]; }
  /// Length of block `i` in bytes; InvalidArgument when i >= size().
  size_t blockBytes(size_t i) const { return offsets[checked(i) + 1] - offsets[i]; }
  /// Copy of block `i`.
  std::vector<uint8_t> copyBlock(size_t i) const { return {block(i), block(i) + blockBytes(i)}; }

 private:
  size_t checked(size_t i) const {
    EFCOMM_CHECK(i < size(), "ByteBlocks: block ", i, " of ", size(), " (blocks are numbered 0 to size() - 1)");
    return i;
  }
};

/// A group of `size()` ranks that exchange raw bytes. Abstract; see the file comment for the
/// contract every implementation keeps. `timeoutSeconds` of every collective: seconds (> 0) to
/// wait for all ranks to arrive; `std::nullopt` means the backend's default timeout.
/// Arguments are validated in the call and reported with `InvalidArgument` before anything is
/// sent.
class Backend {
 public:
  virtual ~Backend() = default;

  /// This rank, in `[0, size())`.
  virtual int rank() const = 0;
  /// Number of ranks in the group (>= 1).
  virtual int size() const = 0;

  /// Every rank contributes `bytes` bytes (sizes may differ between ranks, zero allowed); every
  /// rank receives all contributions, block `i` from rank `i`, in `recv` (resized by the call).
  virtual std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                           std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// Personalized exchange: `send` holds `size()` chunks back to back, chunk `j` of
  /// `sendCounts[j]` bytes (zero allowed) is for rank `j`. Block `j` of `recv` (resized by the
  /// call) is the chunk rank `j` addressed to this rank.
  virtual std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts,
                                          ByteBlocks& recv,
                                          std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// Copies `bytes` bytes of `buf` on rank `root` into `buf` on every other rank. All ranks pass
  /// the same `bytes` and `root`.
  virtual std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root,
                                          std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// In place: `buf` (`count` elements of `dtype`: float32, float64, bfloat16 or float16)
  /// becomes the elementwise sum over ranks, accumulated in rank order, ((x0 + x1) + x2) + ...,
  /// in `dtype` arithmetic (16-bit types: each addition in float32, rounded to the type), so the
  /// result is bit-identical on every rank and reproducible from the inputs alone.
  /// All ranks pass the same `count` and `dtype`.
  virtual std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype,
                                             std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// Completes once every rank has entered the barrier.
  virtual std::shared_ptr<Work> barrier(std::optional<double> timeoutSeconds = std::nullopt) = 0;

  /// Fails every pending and every later collective of this rank with `error`, at once: for a
  /// health monitor that learned out of band (a dead or stopped peer) that they cannot complete.
  /// The first abort wins; later ones are ignored. Thread-safe: may be called from any thread,
  /// also while another thread waits on a collective of this backend (whose `wait` then throws
  /// `error`). The backend is unusable afterwards, as after a timeout.
  virtual void abort(const CollectiveTimeout& error) = 0;

  /// Names the collectives this rank issues next: the Reducer `key` and `algorithm` they carry
  /// ("" once the call has ended), for a flight recorder, and for a backend that sizes its
  /// blocks by the call (the torch backend). Backends that need neither ignore it; a backend
  /// that wraps another passes it on, so that every rank's inner backend sees the same labels.
  virtual void label(const std::string& key, const std::string& algorithm) {
    (void)key;
    (void)algorithm;
  }

  /// Reports a fault the caller found in the ranks' data, for a health monitor: `kind` (e.g.
  /// "nonfinite"), the `ranks` at fault and a `detail` sentence. Backends that record nothing
  /// ignore it.
  virtual void report(const std::string& kind, const std::vector<int>& ranks, const std::string& detail) {
    (void)kind;
    (void)ranks;
    (void)detail;
  }
};

/// The in-process backend: `size` ranks in one process, one per thread, sharing a rendezvous in
/// memory. Used by the C++ tests, `ef.testing.run_ranks` and the simulator. The collective's data
/// movement runs on the thread of the last rank to arrive.
class InProcessGroup {
 public:
  /// A group of `size` >= 1 ranks; `defaultTimeoutSeconds` (> 0) for collectives given none.
  explicit InProcessGroup(int size, double defaultTimeoutSeconds = kDefaultCollectiveTimeout);
  ~InProcessGroup();
  InProcessGroup(const InProcessGroup&) = delete;
  InProcessGroup& operator=(const InProcessGroup&) = delete;

  /// Number of ranks.
  int size() const;
  /// The backend of rank `rank`; the group and the returned pointer share ownership of the
  /// rendezvous, so the backend stays usable if the group is destroyed first.
  std::shared_ptr<Backend> backend(int rank) const;

  /// Fails every pending and every later collective of the group with `CollectiveTimeout`
  /// naming `culprit` and carrying `reason`: used when a rank stops taking part (its thread
  /// raised), so that the others fail at once instead of at their timeout.
  void abort(int culprit, const std::string& reason);
  /// Rank `rank` has finished (its function returned): every pending or later collective it has
  /// not reached fails at once with `CollectiveTimeout` naming it, instead of at the timeout.
  void leave(int rank);

 private:
  std::shared_ptr<comm::InProcessState> state_;
  std::vector<std::shared_ptr<Backend>> backends_;
};

/// Runs `fn(backend)` for every rank of a fresh `InProcessGroup` of `n` ranks, each on its own
/// thread, and returns when all have returned. If any `fn` throws, the group is aborted (the
/// other ranks' pending collectives fail at once) and the first exception thrown is rethrown
/// here after all threads have finished.
void runRanks(int n, const std::function<void(Backend&)>& fn,
              double defaultTimeoutSeconds = kDefaultCollectiveTimeout);

}  // namespace efcomm
