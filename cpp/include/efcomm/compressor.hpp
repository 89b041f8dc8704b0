#pragma once
/// @file compressor.hpp
/// Gradient compressors and their spec-string registry.
///
/// A compressor maps a dense float tensor to a `Message` and back. Build one with
/// `makeCompressor("topk:ratio=0.01")`; every compressor's `spec()` round-trips through it.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "efcomm/message.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm {

/// Base of all compressors. Not thread-safe: use one object per tensor slot per thread
/// (stateful compressors such as PowerSGD keep a warm start; randomized ones a step counter).
class Compressor {
 public:
  virtual ~Compressor() = default;

  /// Registry name ("topk").
  virtual std::string name() const = 0;
  /// Canonical spec string with every parameter ("topk:ratio=0.01").
  virtual std::string spec() const = 0;
  virtual CompressorId id() const = 0;
  /// True when E[C(x)] != x in general.
  virtual bool biased() const = 0;
  /// True when the output depends on a random draw from (seed, step).
  virtual bool randomized() const { return false; }
  /// False when compress reads only some elements of x (RandK: the k it sends), so that a NaN
  /// or Inf among the others raises nothing. Error feedback then checks the whole vector itself,
  /// since every element of it enters its state.
  virtual bool readsEveryElement() const { return true; }
  /// Contraction constant for dimension d: E||C(x)-x||^2 <= (1-alpha)||x||^2. For unbiased
  /// compressors, the alpha of the 1/(1+omega)-scaled version. 0 means no guarantee.
  virtual double alpha(int64_t d) const = 0;
  /// Variance constant of unbiased compressors (E||C(x)-x||^2 <= omega||x||^2); nullopt if biased.
  virtual std::optional<double> omega(int64_t d) const = 0;
  /// Bytes on the wire for an input of `shape` and `dtype`: exact where the size is
  /// deterministic, otherwise an upper bound (TopK's index encoding depends on the data). The
  /// shape counts: the header holds it, and PowerSGD views a matrix as its rows.
  virtual size_t wireBytes(const std::vector<int64_t>& shape, DType dtype) const = 0;
  /// As above for a 1-d input of d elements.
  size_t wireBytes(int64_t d, DType dtype = DType::kFloat32) const { return wireBytes(std::vector<int64_t>{d}, dtype); }

  /// Compresses `x` (any shape, contiguous). `step` selects the random draw of randomized
  /// compressors; when absent an internal counter (starting at 0) is used. A successful call
  /// sets the counter to step + 1; a call that throws leaves it unchanged.
  /// Throws `NonFiniteError` if x holds NaN or Inf (detected inside the compression pass) and
  /// `InvalidArgument` for a bad view.
  Message compress(const ConstTensorView& x, std::optional<uint64_t> step = std::nullopt);

  /// Decodes `msg` into `out`: same dtype and element count as the compressed input (C++ callers
  /// may decode into a flat buffer; the Python API also requires the same shape).
  /// Throws `InvalidArgument` if `msg` was made by another kind of compressor or `out` does
  /// not match.
  void decompress(const Message& msg, const TensorView& out) const;

  /// The state a restored compressor needs to continue bit-identically: meta "spec" and "step"
  /// (the internal step counter), plus compressor-specific entries (PowerSGD's warm start).
  StateDict stateDict() const;
  /// Restores a `stateDict()`. Throws `MismatchError` if it was saved by another spec and
  /// `InvalidArgument` if an entry is missing or malformed; on a throw nothing is changed.
  /// Entries it does not read are ignored (`loadStateDictStrict` refuses them).
  void loadStateDict(const StateDict& state);

  /// For other implementations of `compress` (the GPU path, efcomm/cuda.hpp): the step a call
  /// with `step` uses (the internal counter when absent), and marking `step` done (the counter
  /// becomes step + 1) once such a call has succeeded.
  uint64_t resolveStep(std::optional<uint64_t> step) const { return step ? *step : nextStep_; }
  void advanceStep(uint64_t step) { nextStep_ = step + 1; }

 protected:
  /// The compressor-specific part of `compress`: x is validated, step resolved.
  virtual Message doCompress(const ConstTensorView& x, uint64_t step) = 0;
  /// Compressor-specific state beyond the step counter (default: none).
  virtual void saveExtra(StateDict&) const {}
  /// Restores what saveExtra wrote; must check it fully before changing anything.
  virtual void loadExtra(const StateDict&) {}

 private:
  uint64_t nextStep_ = 0;
};

/// Builds a compressor from a spec string "name[:key=value,...]". Throws `InvalidArgument`
/// naming the problem (unknown name, unknown or malformed parameter, value out of range).
std::unique_ptr<Compressor> makeCompressor(const std::string& spec);

/// Names of the registered compressors.
std::vector<std::string> compressorNames();

/// Decodes any message into `out`, dispatching on the compressor id in its header.
void decompress(const Message& msg, const TensorView& out);

/// out += weight * decode(msg), without a full-size temporary where the format allows (sparse
/// messages touch only their k entries). `out` must have the message's dtype (float32 or
/// float64) and element count; throws `InvalidArgument` otherwise.
void accumulate(const Message& msg, const TensorView& out, double weight);

/// Registry name of a compressor id ("topk"); throws CorruptMessageError for unknown ids.
std::string compressorName(CompressorId id);

}  // namespace efcomm
