#pragma once
/// @file feedback.hpp
/// Error feedback (docs/algorithms.md): the worker side `Feedback`, which owns its state and wraps a
/// compressor, and the receiver side `Aggregate`, which mirrors the workers' estimates.
///
/// Build a worker with `makeFeedback("ef21:init=compressed", compressor)`. Specs and parameters:
///   none                                   plain compression
///   ef14                                   classic error feedback: p = v + e, send C(p), e = p - C(p)
///   ef21[:init=full|compressed]            g += C(v - g)
///   ef21w:weight=w,n=N[,init=...]          EF21-W: g += C(v / (N w) - g)
///   ef21sgdm[:momentum=0.1,init=...]       u = (1-m) u + m v, m = momentum (u = v at the first step); g += C(u - g)
///   econtrol[:eta=0.1,init=...]            Delta = C(eta e + v - h); e += v - h - Delta; h += Delta
/// init=full (default) sends the first vector uncompressed (an identity message) and starts the
/// estimate there; init=compressed starts from zero and compresses from the first step.
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "efcomm/compressor.hpp"
#include "efcomm/message.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// One worker's error feedback for one tensor slot. Not thread-safe: one object per slot per
/// thread. The first successful `step` fixes the shape and dtype (float32 or float64); the
/// state is kept in that dtype.
class Feedback {
 public:
  virtual ~Feedback() = default;
  /// Registry name ("ef21").
  virtual std::string name() const = 0;
  /// Canonical spec with every parameter ("ef21:init=full"); round-trips through makeFeedback.
  virtual std::string spec() const = 0;
  /// The wrapped compressor (shared: its step counter and warm start are part of this state).
  const std::shared_ptr<Compressor>& compressor() const { return compressor_; }

  /// Consumes this round's vector v and returns what the worker sends. `step` is passed to the
  /// compressor (random draw); default: its internal counter. Throws `InvalidArgument` for a
  /// dtype other than float32/float64 or a shape/dtype other than the first step's, and
  /// `NonFiniteError` when the vector to compress is not finite. On any throw the state is
  /// unchanged. Uses a per-thread workspace of v's size (reused across calls and objects).
  Message step(const ConstTensorView& v, std::optional<uint64_t> step = std::nullopt);

  /// The worker's estimate: g_i for the EF21 family, h_i for EControl, the error e for EF14.
  /// An empty view (numel 0) for `none` and before the first step. Valid until the next
  /// non-const call.
  virtual ConstTensorView estimate() const = 0;
  /// True once a step has succeeded (shape and dtype are fixed).
  bool initialized() const { return initialized_; }

  /// Everything a restored object needs to continue bit-identically: meta "spec",
  /// "compressor", "initialized", the method's arrays and the compressor's state ("compressor."
  /// prefix).
  StateDict stateDict() const;
  /// Restores a stateDict(). Throws `MismatchError` if it was saved by another spec or
  /// compressor spec, `InvalidArgument` if malformed; on a throw nothing is changed. Entries it
  /// does not read are ignored (`loadStateDictStrict` refuses them).
  void loadStateDict(const StateDict& state);

 protected:
  explicit Feedback(std::shared_ptr<Compressor> compressor);
  /// The method's update for a checked input; must leave the state unchanged if it throws.
  virtual Message doStep(const ConstTensorView& v, std::optional<uint64_t> step) = 0;
  /// compressor()->compress(p, step) of the vector p the method formed from the input v and its
  /// state. Every element of p enters the state (e = p - C(p), g + C(p), ...), so p must be
  /// finite where the compressor does not look (RandK): then NonFiniteError names the element
  /// of v, or the one of p that overflowed.
  Message compressFormed(const ConstTensorView& v, const ConstTensorView& p, std::optional<uint64_t> step);
  /// Names of the method's state arrays (saved as tensors; all of the input's shape and dtype).
  virtual std::vector<std::string> stateNames() const = 0;
  /// The storage of a state array named by stateNames(), allocated on the first step.
  virtual std::vector<double>& stateBuffer(const std::string& name) = 0;
  /// Shape and dtype of the state (valid once initialized).
  std::vector<int64_t> shape_;
  DType dtype_ = DType::kFloat32;
  /// Sizes every state buffer for shape/dtype and zero-fills it.
  void allocate(const std::vector<int64_t>& shape, DType dtype);
  TensorView viewOf(std::vector<double>& buf) const { return {buf.data(), dtype_, shape_}; }
  ConstTensorView viewOf(const std::vector<double>& buf) const { return {buf.data(), dtype_, shape_}; }

 private:
  std::shared_ptr<Compressor> compressor_;
  bool initialized_ = false;
};

/// Builds a feedback method from its spec (see the file comment) around `compressor`. Throws
/// `InvalidArgument` for an unknown name, unknown or out-of-range parameter, or a null compressor.
std::unique_ptr<Feedback> makeFeedback(const std::string& spec, std::shared_ptr<Compressor> compressor);
/// Names of the feedback methods.
std::vector<std::string> feedbackNames();

/// The receiver's mirror of n workers' estimates for one tensor slot.
///
/// For the EF21 family and EControl: g += sum over the present workers of w_i * decoded(msg_i)
/// (EF21-PP: an absent worker keeps its g_i, so its share of g is unchanged). For ef14 and
/// none: g = sum over the present workers of w_i * decoded(msg_i) (an absent worker contributes
/// nothing; the weights are not renormalized). Weights default to 1/n (the mean); for EF21-W
/// pass the w_i. With a broadcast compressor C_M (EF21-BC) the aggregate also keeps b, sends
/// C_M(g - b), sets b += C_M(g - b) and returns b; a worker mirrors b with an
/// Aggregate("ef21", 1, {1}, ...) fed the broadcast messages. Not thread-safe.
class Aggregate {
 public:
  /// spec: a feedback spec (its parameters are checked, only the method matters here; ef21w
  /// needs no weight and n: pass the w_i as `weights`).
  /// weights: empty for 1/n each (not for ef21w: its workers' w_i are required), else n finite
  /// values. Throws `InvalidArgument` for a bad spec, n < 1, wrong or missing weights, or a
  /// dtype other than float32/float64.
  Aggregate(const std::string& spec, int n, std::vector<double> weights, std::vector<int64_t> shape,
            DType dtype, std::shared_ptr<Compressor> broadcast = nullptr);

  /// Folds in one round; msgs.size() == n, nullptr for a worker that did not participate.
  /// Returns estimate(). Throws `InvalidArgument` (nothing changed) for a wrong count or a
  /// message of another dtype or size; with a broadcast compressor, a `NonFiniteError` from
  /// C_M leaves g updated and b unchanged.
  ConstTensorView update(const std::vector<const Message*>& msgs);
  /// The aggregate estimate: b with a broadcast compressor, else g.
  ConstTensorView estimate() const;
  /// The last broadcast message C_M(g - b); empty before the first update or without C_M.
  const Message& lastBroadcast() const { return lastBroadcast_; }

  const std::string& spec() const { return spec_; }
  int n() const { return n_; }
  const std::vector<double>& weights() const { return weights_; }
  const std::shared_ptr<Compressor>& broadcast() const { return broadcast_; }
  /// True for the EF21 family and EControl (update adds to g), false for ef14 and none (update
  /// replaces g).
  bool additive() const { return additive_; }

  /// State as for Feedback: meta "spec", "n", "broadcast", "dtype"; tensors "weights", "g"
  /// (and "b", and the broadcast compressor's state under "broadcast.").
  StateDict stateDict() const;
  /// Throws `MismatchError` if saved by an aggregate of another spec, n, weights, shape, dtype
  /// or broadcast compressor; nothing is changed on a throw.
  void loadStateDict(const StateDict& state);

 private:
  std::string spec_;
  bool additive_;  // EF21 family and EControl: g accumulates
  int n_;
  std::vector<double> weights_;
  std::vector<int64_t> shape_;
  DType dtype_;
  std::shared_ptr<Compressor> broadcast_;
  std::vector<double> g_, b_;
  Message lastBroadcast_;
};

}  // namespace efcomm
