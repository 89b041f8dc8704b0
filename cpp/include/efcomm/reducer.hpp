#pragma once
/// @file reducer.hpp
/// `Reducer`: compressed allreduce with error feedback over a `Backend` (SPEC.md, "Collectives").
///
/// Every rank keeps, per key, its own `Feedback` worker and an `Aggregate` mirror of all ranks'
/// estimates. A call first agrees on a small fixed header (key, call number, dtype, shape, specs),
/// so that ranks that disagree fail with `MismatchError` on every rank instead of hanging; then
/// every rank compresses, the messages are allgathered without padding, and every rank folds them
/// into its mirror in rank order, so the aggregate is bit-identical on every rank.
///
/// Algorithm in this version: `allgather` (per-rank traffic grows linearly with the ranks).

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// Counters of one key on one rank.
struct ReducerStats {
  /// Message bytes this rank contributed (the sum of its compressed message sizes).
  uint64_t bytesSent = 0;
  /// Message bytes this rank received from the other ranks.
  uint64_t bytesReceived = 0;
  /// Bytes of the header agreement sent by this rank (control traffic, not in bytesSent).
  uint64_t controlBytes = 0;
  /// Seconds in the worker's compression step.
  double compressSeconds = 0;
  /// Seconds in collectives (header agreement and message exchange).
  double commSeconds = 0;
  /// Seconds decoding the gathered messages into the aggregate.
  double aggregateSeconds = 0;
  /// Successful calls.
  uint64_t calls = 0;
};

/// Compressed allreduce with per-key error-feedback state. Not thread-safe; one object per rank,
/// driven by the thread that drives its backend. All ranks must call `allreduce` with the same
/// keys, shapes and dtypes in the same order.
class Reducer {
 public:
  /// compressorSpec / feedbackSpec as for makeCompressor / makeFeedback. weights: empty for 1/n
  /// each (the mean), else one finite value per rank. Throws `InvalidArgument` for a bad spec or
  /// weights, before any communication.
  explicit Reducer(std::shared_ptr<Backend> backend, std::string compressorSpec = "topk:ratio=0.01",
                   std::string feedbackSpec = "ef21", std::vector<double> weights = {});
  ~Reducer();
  Reducer(const Reducer&) = delete;
  Reducer& operator=(const Reducer&) = delete;

  /// Writes the aggregated estimate of the ranks' `x` into `out` (same dtype, float32 or
  /// float64, and element count as x; may alias x). The state of `key` is created on its first
  /// call and fixes its shape and dtype. Collective: every rank calls it with the same key.
  /// Throws, on every rank and with no state changed:
  /// - `MismatchError` when ranks disagree on the key, call order, dtype, shape or specs;
  /// - `InvalidArgument` on the rank whose arguments are bad (the others: `MismatchError`
  ///   naming that rank);
  /// - `NonFiniteError` when a rank's vector to compress is not finite (on every rank, naming it);
  /// - the backend's `CollectiveTimeout` when a rank does not arrive.
  void allreduce(const ConstTensorView& x, const TensorView& out, const std::string& key);

  /// Counters per key (keys that have completed at least one call or failed after agreement).
  std::map<std::string, ReducerStats> stats() const;

  int rank() const;
  int size() const;
  const std::string& compressorSpec() const { return compressorSpec_; }
  const std::string& feedbackSpec() const { return feedbackSpec_; }
  const std::string& algorithm() const { return algorithm_; }

  /// Meta "reducer.compressor", "reducer.feedback", "reducer.algorithm", "reducer.rank",
  /// "reducer.size", "reducer.calls", "reducer.keys"; per key i (in key order) "slot/<i>/key",
  /// "slot/<i>/shape" and "slot/<i>/dtype", the
  /// worker's state under "slot/<i>/worker." and the aggregate's under "slot/<i>/aggregate.".
  StateDict stateDict() const;
  /// Restores a stateDict() saved by the same rank of a reducer with the same specs, size and
  /// weights; the keys it holds replace all current keys. Throws `MismatchError` for state of
  /// another configuration or rank, `InvalidArgument` if malformed; nothing changes on a throw.
  void loadStateDict(const StateDict& state);

 private:
  struct Slot;
  Slot& slot(const std::string& key, const ConstTensorView& x);

  std::shared_ptr<Backend> backend_;
  std::string compressorSpec_, feedbackSpec_, algorithm_ = "allgather";
  std::vector<double> weights_;
  uint64_t specHash_;
  uint64_t calls_ = 0;  // header agreements performed: the call number every rank must agree on
  std::map<std::string, std::unique_ptr<Slot>> slots_;
  std::map<std::string, ReducerStats> stats_;
};

}  // namespace efcomm
