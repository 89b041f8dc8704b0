#pragma once
// The Reducer's algorithms (reducer.hpp describes them): one object per key and rank holding
// that key's error-feedback state, plus the alpha-beta cost model of `auto`. The host algorithms
// are in reducer_algorithms.cpp, their device counterparts (the same rounds on device memory) in
// cuda/comm/reducer_algorithms.cpp; the round's wire pieces they share are declared here.

#include <cstdint>
#include <exception>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/device_comm.hpp"
#include "efcomm/message.hpp"
#include "efcomm/reducer.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::comm {

/// What a key's algorithm is built from.
struct SlotSetup {
  std::string compressor, feedback;  // canonical specs; `feedback` is the ranks' common (receiver) spec
  std::string worker;                // this rank's worker feedback spec (ef21w: with its weight and n)
  std::vector<double> weights;       // empty: 1/n each
  int rank = 0, n = 1;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  std::string context;  // names the call in error messages: "Reducer.allreduce(key 'w')"
  DeviceBackend* device = nullptr;  // the device reducer's transport; null on the host
};

class Algorithm {
 public:
  virtual ~Algorithm() = default;
  /// One round: reduces x into out (flat, the slot's dtype and size). `step` is the key's call
  /// number, passed to the workers' compressors so every rank draws the same random numbers.
  /// `backend` carries host bytes (on a device reducer: its transport's host()); `stream` is the
  /// device reducer's CUDA stream (unused on the host).
  virtual void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step,
                   ReducerStats& stats, cuda::Stream stream) = 0;
  virtual StateDict stateDict() const = 0;
  /// Throws before changing anything if the state does not fit (see Reducer::loadStateDict).
  virtual void loadStateDict(const StateDict& state) = 0;
};

/// name: "allgather", "reduce_scatter" or "allreduce"; on setup.device the device algorithm.
std::unique_ptr<Algorithm> makeAlgorithm(const std::string& name, const SlotSetup& setup);
/// The device algorithms (cuda/comm/reducer_algorithms.cpp; BackendUnavailable without CUDA).
std::unique_ptr<Algorithm> makeDeviceAlgorithm(const std::string& name, const SlotSetup& setup);

/// Why `compressorSpec` cannot use the allreduce algorithm (on a device reducer when `device`);
/// empty when it can (its payloads add).
std::string allreduceUnsupported(const std::string& compressorSpec, bool device = false);

// ---- the round's wire pieces, shared by the host and device algorithms ----------------------

/// A rank that could not produce a message sends a status block instead: the ErrorCode and its
/// rank, 8 bytes. A message is never that short (its fixed header alone is 32 bytes).
constexpr size_t kStatusBytes = 8;

struct Failure {
  int rank = -1;
  uint32_t code = 0;  // an ErrorCode; 0: no failure
  explicit operator bool() const { return code != 0; }
};

std::vector<uint8_t> statusBlock(const Failure& f);
Failure readStatus(const uint8_t* p);
/// Keeps the failure of the lowest rank.
void keepFirst(Failure& first, const Failure& f);
/// The failure of this rank's attempt that threw `e` (an efcomm::Error or anything else).
Failure failureOf(int rank, const std::exception_ptr& e);

/// Raises a round's failure on every rank: a rank that failed rethrows its own error, the others
/// name the first rank that failed. Non-finite input is also reported to the backend (a health
/// monitor attributes it to its rank).
[[noreturn]] void raise(Backend& backend, const std::string& context, const Failure& f, std::exception_ptr own);

/// The part of a message that every rank's message of one allreduce round shares when payloads
/// add: the compressor id, flags and parameters (RandK: k, seed, step; equal because every rank
/// passes the same step), and the payload length. Travels after a zero status.
struct Descriptor {
  CompressorId id = CompressorId::kIdentity;
  uint16_t flags = 0;
  std::vector<uint8_t> params;
  uint64_t payloadBytes = 0;

  static Descriptor of(const Message& m);
  std::vector<uint8_t> encode() const;
  static Descriptor decode(const uint8_t* p, size_t n);
  bool operator==(const Descriptor& o) const {
    return id == o.id && flags == o.flags && params == o.params && payloadBytes == o.payloadBytes;
  }
};

/// Round 1 of the allreduce algorithm: gathers every rank's descriptor (`desc`, or this rank's
/// status block), counting the bytes in `st`; returns the common layout (empty when every rank
/// failed) and keeps the first failure in `first`. MismatchError when layouts differ.
std::optional<Descriptor> agreeLayout(Backend& backend, const std::vector<uint8_t>& desc, const SlotSetup& s,
                                      ReducerStats& st, Failure& first);

/// The element type of an allreduce payload: the input's, but cast's target type for cast.
DType payloadDType(const Descriptor& d, const SlotSetup& s);

/// Elements [begin, begin + len) of the flat view x, as a 1-d view.
ConstTensorView flatPart(const ConstTensorView& x, int64_t begin, int64_t len);
TensorView flatPart(const TensorView& x, int64_t begin, int64_t len);

/// reduce_scatter's split of d elements into n contiguous chunks (partBegin): chunk c is
/// [begin(c), begin(c) + length(c)), owned by rank c.
struct Chunks {
  int64_t d = 0;
  int n = 1;
  int64_t begin(int c) const;
  int64_t length(int c) const { return begin(c + 1) - begin(c); }
  ConstTensorView of(const ConstTensorView& x, int c) const { return flatPart(x, begin(c), length(c)); }
  TensorView of(const TensorView& x, int c) const { return flatPart(x, begin(c), length(c)); }
  /// The compressor spec for chunk c: an explicit TopK/RandK `k` counts coordinates of the whole
  /// vector, so a chunk keeps its share, max(1, round(k length(c) / d)) (the chunks together keep
  /// about k, as `ratio` does; k on every chunk would send n times the bytes). Others: `spec`.
  std::string compressorFor(const std::string& spec, int c) const;
};

/// True when the receivers' aggregate of `feedbackSpec` is each round's sum (none, EF14), not a
/// running estimate (the EF21 family, EControl): reduce_scatter's owners then re-compress it
/// with that method, else with EF21-BC.
bool aggregatesPerRound(const std::string& feedbackSpec);

/// What a rank sends in a bandwidth-optimal allreduceSum of `count` values of `item` bytes over
/// n ranks (a reduce-scatter into n parts and an allgather of the parts): the parts it does not
/// own, then its own part to n - 1 peers.
uint64_t allreduceTraffic(size_t count, size_t item, int n, int rank);

/// Predicted seconds of one round of `algorithm` on d elements under `link` (data exchange only;
/// the header agreement is the same for every algorithm).
double predictSeconds(const std::string& algorithm, const LinkModel& link, const std::string& compressorSpec, int n,
                      int64_t d, DType dtype);

/// Measures alpha and beta with small and 1 MiB allgathers; collective, and the result is the
/// mean over ranks, so every rank gets the same model.
LinkModel measureLink(Backend& backend);

}  // namespace efcomm::comm
