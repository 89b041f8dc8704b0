#pragma once
// The Reducer's algorithms (reducer.hpp describes them): one object per key and rank holding
// that key's error-feedback state, plus the alpha-beta cost model of `auto`.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/reducer.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::comm {

/// What a key's algorithm is built from.
struct SlotSetup {
  std::string compressor, feedback;  // canonical specs
  std::vector<double> weights;       // empty: 1/n each
  int rank = 0, n = 1;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  std::string context;  // names the call in error messages: "Reducer.allreduce(key 'w')"
};

class Algorithm {
 public:
  virtual ~Algorithm() = default;
  /// One round: reduces x into out (flat, the slot's dtype and size). `step` is the key's call
  /// number, passed to the workers' compressors so every rank draws the same random numbers.
  virtual void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step,
                   ReducerStats& stats) = 0;
  virtual StateDict stateDict() const = 0;
  /// Throws before changing anything if the state does not fit (see Reducer::loadStateDict).
  virtual void loadStateDict(const StateDict& state) = 0;
};

/// name: "allgather", "reduce_scatter" or "allreduce".
std::unique_ptr<Algorithm> makeAlgorithm(const std::string& name, const SlotSetup& setup);

/// Why `compressorSpec` cannot use the allreduce algorithm; empty when it can (its payloads add).
std::string allreduceUnsupported(const std::string& compressorSpec);

/// Predicted seconds of one round of `algorithm` on d elements under `link` (data exchange only;
/// the header agreement is the same for every algorithm).
double predictSeconds(const std::string& algorithm, const LinkModel& link, const std::string& compressorSpec, int n,
                      int64_t d, DType dtype);

/// Measures alpha and beta with small and 1 MiB allgathers; collective, and the result is the
/// mean over ranks, so every rank gets the same model.
LinkModel measureLink(Backend& backend);

}  // namespace efcomm::comm
