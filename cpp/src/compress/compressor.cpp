#include "efcomm/compressor.hpp"

#include "efcomm/error.hpp"

namespace efcomm {

Message Compressor::compress(const ConstTensorView& x, std::optional<uint64_t> step) {
  const int64_t n = x.numel();  // validates the shape
  EFCOMM_CHECK(x.data != nullptr || n == 0, name(), ".compress: input data is null");
  EFCOMM_CHECK(static_cast<int>(x.shape.size()) <= kMaxDims, name(), ".compress: ", x.shape.size(),
               "-d input; at most ", kMaxDims, " dimensions are supported");
  itemSize(x.dtype);  // validates the dtype
  const uint64_t s = resolveStep(step);
  Message m = doCompress(x, s);
  m.validated_ = true;  // efcomm's own codec made it
  advanceStep(s);  // only on success: a failed call leaves the compressor's state unchanged
  return m;
}

void Compressor::decompress(const Message& msg, const TensorView& out) const {
  EFCOMM_CHECK(msg.empty() || msg.compressorId() == id(), name(), ".decompress: message was made by '",
               compressorName(msg.compressorId()), "'");
  efcomm::decompress(msg, out);
}

StateDict Compressor::stateDict() const {
  StateDict d;
  d.meta["spec"] = spec();
  d.meta["step"] = std::to_string(nextStep_);
  saveExtra(d);
  return d;
}

void Compressor::loadStateDict(const StateDict& state) {
  state.expect("spec", spec(), "the saved compressor spec");
  const uint64_t step = state.integer("step");
  loadExtra(state);
  nextStep_ = step;
}

}  // namespace efcomm
