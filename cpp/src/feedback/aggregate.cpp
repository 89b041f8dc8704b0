// The receiver side of error feedback (docs/algorithms.md, EF21 and variants): g += sum_i w_i Delta_i
// for the EF21 family and EControl, g = sum_i w_i Delta_i for EF14 and plain compression, and
// EF21-BC's compressed broadcast b += C_M(g - b).
#include <cmath>

#include "efcomm/feedback.hpp"
#include "feedback/common.hpp"

namespace efcomm {

Aggregate::Aggregate(const std::string& spec, int n, std::vector<double> weights, std::vector<int64_t> shape,
                     DType dtype, std::shared_ptr<Compressor> broadcast)
    : n_(n), weights_(std::move(weights)), shape_(std::move(shape)), dtype_(dtype), broadcast_(std::move(broadcast)) {
  const feedback::Config cfg = feedback::parseConfig(spec, /*receiver=*/true);
  spec_ = cfg.canonical;
  additive_ = cfg.additive();
  EFCOMM_CHECK(n_ >= 1, "Aggregate: n must be >= 1, got ", n_);
  // EF21-W's workers send v / (n w_i): only their own weights make the sum a mean.
  EFCOMM_CHECK(cfg.name != "ef21w" || !weights_.empty(), "Aggregate: ef21w needs weights=[w_1, ..., w_n], the weight ",
               "each worker's EF21-W was made with (its workers scale by 1 / (n w_i); 1/n each would be wrong)");
  EFCOMM_CHECK(!cfg.weighted || cfg.n == n_, "Aggregate: spec '", spec, "' is for n=", cfg.n, " workers, the aggregate has ",
               n_);
  if (weights_.empty()) weights_.assign(static_cast<size_t>(n_), 1.0 / n_);
  EFCOMM_CHECK(weights_.size() == static_cast<size_t>(n_), "Aggregate: ", weights_.size(), " weights for ", n_,
               " workers");
  for (double w : weights_) EFCOMM_CHECK(std::isfinite(w), "Aggregate: weight ", w, " is not finite");
  feedback::checkFloatDType(dtype_, "Aggregate");
  EFCOMM_CHECK(static_cast<int>(shape_.size()) <= kMaxDims, "Aggregate: at most ", kMaxDims, " dimensions");
  const size_t words = feedback::words(ConstTensorView{nullptr, dtype_, shape_}.nbytes());
  g_.assign(words, 0.0);
  if (broadcast_) b_.assign(words, 0.0);
}

ConstTensorView Aggregate::update(const std::vector<const Message*>& msgs) {
  EFCOMM_CHECK(msgs.size() == static_cast<size_t>(n_), "Aggregate.update: ", msgs.size(), " messages for ", n_,
               " workers (pass null for a worker that did not participate)");
  const int64_t numel = ConstTensorView{nullptr, dtype_, shape_}.numel();
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (!msgs[i]) continue;
    EFCOMM_CHECK(!msgs[i]->empty(), "Aggregate.update: message ", i, " is empty");
    EFCOMM_CHECK(msgs[i]->dtype() == dtype_ && msgs[i]->numel() == numel, "Aggregate.update: message ", i, " holds ",
                 dtypeName(msgs[i]->dtype()), " ", shapeString(msgs[i]->shape()), "; the aggregate is ",
                 dtypeName(dtype_), " ", shapeString(shape_));
  }
  const TensorView g{g_.data(), dtype_, shape_};
  if (!additive_) std::fill(g_.begin(), g_.end(), 0.0);
  for (size_t i = 0; i < msgs.size(); ++i) {
    if (msgs[i]) accumulate(*msgs[i], g, weights_[i]);
  }
  if (broadcast_) {
    // EF21-BC: the server compresses the change of its estimate; b mirrors what workers hold.
    const TensorView b{b_.data(), dtype_, shape_};
    const TensorView d = feedback::workspace(b);
    feedback::dispatchFloat(dtype_, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* gp = static_cast<const T*>(g.data);
      const T* bp = static_cast<const T*>(b.data);
      feedback::fill(static_cast<T*>(d.data), numel, [&](int64_t i) { return gp[i] - bp[i]; });
    });
    Message m = broadcast_->compress(d);
    accumulate(m, b, 1.0);
    lastBroadcast_ = m;
  }
  return estimate();
}

ConstTensorView Aggregate::estimate() const { return {broadcast_ ? b_.data() : g_.data(), dtype_, shape_}; }

StateDict Aggregate::stateDict() const {
  StateDict d;
  d.meta["spec"] = spec_;
  d.meta["n"] = std::to_string(n_);
  d.meta["dtype"] = dtypeName(dtype_);
  d.meta["shape"] = feedback::shapeText(shape_);
  d.meta["broadcast"] = broadcast_ ? broadcast_->spec() : "";
  d.tensors["weights"] = StateTensor::fromDoubles(weights_);
  d.tensors["g"] = StateTensor::fromView({g_.data(), dtype_, shape_});
  if (broadcast_) {
    d.tensors["b"] = StateTensor::fromView({b_.data(), dtype_, shape_});
    d.merge(broadcast_->stateDict(), "broadcast.");
  }
  return d;
}

void Aggregate::loadStateDict(const StateDict& state) {
  state.expect("spec", spec_, "the saved aggregate spec");
  state.expect("n", std::to_string(n_), "the saved number of workers");
  state.expect("dtype", dtypeName(dtype_), "the saved dtype");
  state.expect("shape", feedback::shapeText(shape_), "the saved shape");
  state.expect("broadcast", broadcast_ ? broadcast_->spec() : "", "the saved broadcast compressor");
  const StateTensor& w = state.tensor("weights", DType::kFloat64, n_);
  EFCOMM_CHECK_T(MismatchError, w.bytes == StateTensor::fromDoubles(weights_).bytes,
                 "state dict: the saved aggregate weights differ from this aggregate's");
  const StateTensor& g = feedback::savedArray(state, "g", dtype_, shape_);
  const StateTensor* b = broadcast_ ? &feedback::savedArray(state, "b", dtype_, shape_) : nullptr;
  if (broadcast_) broadcast_->loadStateDict(state.sub("broadcast."));
  feedback::restoreArray(g, g_);
  if (b) feedback::restoreArray(*b, b_);
  lastBroadcast_ = Message();
}

}  // namespace efcomm
