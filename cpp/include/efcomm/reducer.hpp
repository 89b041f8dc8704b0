#pragma once
/// @file reducer.hpp
/// `Reducer`: compressed allreduce with error feedback over a `Backend` (docs/collectives.md).
///
/// A call first agrees on a small fixed header (key, call number, dtype, shape, specs), so that
/// ranks that disagree fail with `MismatchError` on every rank instead of hanging; then the
/// key's algorithm moves the compressed messages, and every rank folds them in the same order,
/// so the aggregate is bit-identical on every rank.
///
/// Algorithms (per rank, d elements, n ranks, m(d) the message size of d elements):
/// - `allgather`: every rank compresses its vector and gathers every rank's message, without
///   padding; sends (n-1) m(d). Every rank mirrors every worker's estimate.
/// - `reduce_scatter`: two phases. The vector is split into n contiguous chunks; each rank
///   compresses chunk c with its own error feedback and sends it to rank c (alltoallv); rank c
///   folds the n messages of its chunk, re-compresses the aggregate with its own error feedback
///   (EF21-BC's b += C(g - b); plain re-compression for `none`) and every rank gathers the
///   re-compressed chunks. Sends about 2 (n-1) m(d/n): constant in n for sparsifiers.
/// - `allreduce`: for compressors whose payloads add (identity, cast, RandK, whose indices every
///   rank draws from the shared seed and step, and PowerSGD's factors, host only): the weighted
///   payloads are summed with the backend's `allreduceSum`; sends about 2 (n-1)/n of the payload.
/// - `auto`: per key at its first call, the cheapest of the above under an alpha-beta model of
///   the links (alpha seconds per message, beta seconds per byte) measured by the first auto
///   call. The choice is the same on every rank and shows in `stats()`.
///
/// A rank whose compression fails (a non-finite vector) takes no part in that round, as an
/// absent worker under partial participation (docs/algorithms.md, EF21-PP): the other ranks' round
/// completes, the estimates stay consistent, and then every rank throws, naming that rank.
///
/// On a GPU (a reducer made over a `DeviceBackend`: NCCL, device_comm.hpp) the same algorithms
/// run on device memory: x and out are device arrays, the workers' feedback state, the messages
/// and the aggregates stay on the device (cuda.hpp's kernels), and the messages move with the
/// transport's device collectives on the caller's stream; only the agreement header, failure
/// statuses and allreduce descriptors (tens of bytes) pass through the host. PowerSGD's
/// `allreduce` rounds are host-only (use allgather or reduce_scatter there).

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/device_comm.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

namespace comm {
struct SlotSetup;  // private to cpp/src/comm
}  // namespace comm

/// Counters of one key on one rank.
struct ReducerStats {
  /// The key's algorithm ("allgather", "reduce_scatter" or "allreduce"; `auto` resolved).
  std::string algorithm;
  /// Bytes this rank sent in the key's data exchange (compressed messages and the failure
  /// status that travels with them; for `allreduce`, the 2 (n-1)/n share of the summed payload
  /// that a bandwidth-optimal allreduceSum sends).
  uint64_t bytesSent = 0;
  /// Bytes this rank received in the key's data exchange.
  uint64_t bytesReceived = 0;
  /// Bytes of the header agreement sent by this rank (control traffic, not in bytesSent).
  uint64_t controlBytes = 0;
  /// Seconds in compression (the worker's step, and the owner's re-compression).
  double compressSeconds = 0;
  /// Seconds in collectives (header agreement and message exchange).
  double commSeconds = 0;
  /// Seconds decoding received messages into the aggregate.
  double aggregateSeconds = 0;
  /// Successful calls.
  uint64_t calls = 0;
};

/// The links as `auto` sees them: a message of b bytes to one peer takes alpha + beta * b seconds.
struct LinkModel {
  double alphaSeconds = 0;
  double betaSecondsPerByte = 0;
};

/// Settings of a `Reducer` beyond its compressor and feedback.
struct ReducerOptions {
  /// "allgather", "reduce_scatter", "allreduce" or "auto".
  std::string algorithm = "auto";
  /// Empty for 1/n each (the mean), else one finite value per rank. With `ef21w` feedback they
  /// are the EF21-W weights w_i: rank i's worker is made with weight=weights[i] and n=size (the
  /// feedback spec then gives neither, or the same).
  std::vector<double> weights;
  /// `allreduceCoalesced` fuses consecutive tensors into buckets of at most this many input
  /// bytes (a larger tensor is a bucket of its own). > 0.
  size_t bucketBytes = size_t{25} << 20;
  /// The link model for `auto`; measured by the first auto call when absent.
  std::optional<LinkModel> link;
};

/// Compressed allreduce with per-key error-feedback state. One object per rank. The blocking
/// calls are driven by one thread at a time (a call made while another thread's runs throws
/// `InvalidArgument`; stats, state and rebind wait for it); `allreduceAsync` runs calls on a worker thread of
/// the reducer, in the order they were made (then the backend is driven from that thread; with an
/// MPI below MPI_THREAD_SERIALIZED the call runs at once instead). All
/// ranks must call with the same keys, shapes and dtypes in the same order.
class Reducer {
 public:
  /// compressorSpec / feedbackSpec as for makeCompressor / makeFeedback. Throws
  /// `InvalidArgument` for a bad spec, algorithm, weights or bucket size (`allreduce` with a
  /// compressor whose payloads do not add), before any communication.
  explicit Reducer(std::shared_ptr<Backend> backend, std::string compressorSpec = "topk:ratio=0.01",
                   std::string feedbackSpec = "ef21", ReducerOptions options = {});
  /// The reducer of device arrays over `device` (see the file comment); the same checks, and
  /// `InvalidArgument` for `allreduce` with PowerSGD.
  explicit Reducer(std::shared_ptr<DeviceBackend> device, std::string compressorSpec = "topk:ratio=0.01",
                   std::string feedbackSpec = "ef21", ReducerOptions options = {});
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  /// Writes the aggregated estimate of the ranks' `x` into `out` (same dtype, float32 or
  /// float64, and element count as x; may alias x). The state of `key` is created on its first
  /// call and fixes its shape, dtype and algorithm. Collective. Throws, on every rank:
  /// - `MismatchError` when ranks disagree on the key, call order, dtype, shape or specs
  ///   (no state changed);
  /// - `InvalidArgument` on the rank whose arguments are bad (the others: `MismatchError`
  ///   naming that rank; no state changed);
  /// - `NonFiniteError` when a rank's vector to compress is not finite, naming it (that rank
  ///   skipped the round, see the file comment);
  /// - the backend's `CollectiveTimeout` when a rank does not arrive.
  /// On a device reducer x and out are device arrays used on `stream` (ignored on the host);
  /// the call returns once out holds the aggregate.
  void allreduce(const ConstTensorView& x, const TensorView& out, const std::string& key,
                 cuda::Stream stream = nullptr);

  /// `allreduce` on the reducer's worker thread; x and out must stay valid and untouched until
  /// the returned Work has completed. Calls (async or not) run in the order they were made.
  std::shared_ptr<Work> allreduceAsync(const ConstTensorView& x, const TensorView& out, const std::string& key,
                                       cuda::Stream stream = nullptr);

  /// Reduces many tensors (float32/float64; outs[i] like xs[i], may alias) fused into buckets
  /// of at most `bucketBytes` (consecutive tensors of one dtype); bucket j is reduced as key
  /// "<key>#<j>" with its own state. The same non-empty list on every rank, every call: lists that
  /// differ (in their number of buckets too) raise `MismatchError` on every rank at the first
  /// bucket. On a device reducer the tensors are device arrays, fused in device memory on `stream`.
  void allreduceCoalesced(const std::vector<ConstTensorView>& xs, const std::vector<TensorView>& outs,
                          const std::string& key, cuda::Stream stream = nullptr);

  /// A call whose arguments could not even be made into views (a binding's conversion failed:
  /// an integer array, a key that is not a string): takes part in the call under `key`, in order
  /// with the calls made before it, as a rank that rejected its arguments, so that the other
  /// ranks raise `MismatchError` naming this rank instead of waiting for it; then throws
  /// `InvalidArgument(error)`. Collective.
  [[noreturn]] void reject(const std::string& key, const std::string& error);

  /// Counters per key (keys that have completed at least one call or failed after agreement).
  std::map<std::string, ReducerStats> stats() const;
  /// The link model `auto` uses (measured or given); empty before the first auto call.
  std::optional<LinkModel> link() const;

  int rank() const;
  int size() const;
  /// True for a reducer of device arrays.
  bool onDevice() const { return device_ != nullptr; }
  const std::string& compressorSpec() const { return compressorSpec_; }
  const std::string& feedbackSpec() const { return feedbackSpec_; }
  /// The configured algorithm ("auto" included); per key, see stats().
  const std::string& algorithm() const { return options_.algorithm; }

  /// Later calls run over `backend`, which must have this reducer's rank and size (a wrapper of
  /// the current one, such as a `health::Monitor`'s, or the one it wraps); waits for queued calls
  /// first. Not for a device reducer. Throws `InvalidArgument` otherwise.
  void rebind(std::shared_ptr<Backend> backend);

  /// Meta "reducer.compressor", "reducer.feedback", "reducer.algorithm", "reducer.rank",
  /// "reducer.size", "reducer.calls", "reducer.keys"; per key i (in key order) "slot/<i>/key",
  /// "slot/<i>/shape", "slot/<i>/dtype", "slot/<i>/algorithm", "slot/<i>/step" and the
  /// algorithm's state (workers, aggregates) under "slot/<i>/".
  StateDict stateDict() const;
  /// Restores a stateDict() saved by the same rank of a reducer with the same specs, algorithm,
  /// size and weights; the keys it holds replace all current keys. Throws `MismatchError` for
  /// state of another configuration or rank, `InvalidArgument` if malformed; nothing changes on
  /// a throw. Entries it does not read (a slot beyond `reducer.keys`) are ignored
  /// (`loadStateDictStrict` refuses them).
  void loadStateDict(const StateDict& state);

  /// One key's state and algorithm; defined in reducer.cpp.
  struct Slot;

 private:
  struct Job;
  // Runs a call on the caller's thread, or behind the queued calls while the worker thread runs.
  void runInOrder(const std::shared_ptr<Job>& job);
  std::shared_ptr<Work> enqueue(const std::shared_ptr<Job>& job);
  void reduceNow(const Job& job);
  void drain() const;  // waits until the worker thread has run every queued call
  // callMutex_ for a call on the caller's thread; InvalidArgument naming `what` when another
  // thread is inside a call (two threads driving one reducer would race on its state).
  std::unique_lock<std::mutex> claim(const std::string& what) const;
  std::string chooseAlgorithm(const ConstTensorView& x);
  // ef21w: this rank's worker spec from options_.weights (filled with 1/n when empty).
  void weighWorker(const std::string& spec, const std::shared_ptr<Compressor>& compressor);
  comm::SlotSetup setupFor(const std::string& key, const std::vector<int64_t>& shape, DType dtype) const;

  std::shared_ptr<DeviceBackend> device_;  // null on the host
  std::shared_ptr<Backend> backend_;       // the host bytes (a device reducer: device_->host())
  std::string compressorSpec_, feedbackSpec_;  // feedbackSpec_: what every rank has in common
  std::string workerSpec_;                      // this rank's worker (ef21w: its weight and n)
  ReducerOptions options_;
  uint64_t specHash_;
  uint64_t calls_ = 0;  // header agreements performed: the call number every rank must agree on
  std::map<std::string, std::unique_ptr<Slot>> slots_;
  std::map<std::string, ReducerStats> stats_;

  // Held through every call that reads or changes the state (the worker thread waits for it).
  mutable std::mutex callMutex_;
  // The worker thread of allreduceAsync, started by its first call.
  mutable std::mutex mutex_;
  std::condition_variable wake_;
  mutable std::condition_variable idle_;
  std::deque<std::shared_ptr<Job>> queue_;
  bool busy_ = false, stopping_ = false;
  std::thread thread_;
};

}  // namespace efcomm
