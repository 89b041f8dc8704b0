// The worker side of error feedback. Every method forms the vector to compress in the per-thread
// workspace, compresses it, and only then updates its state (adding the decoded message with
// efcomm::accumulate, which touches only the kept entries of sparse messages). So a throw from
// the compressor (NonFiniteError) leaves the state untouched, and the state equals the
// reference recursions of docs/algorithms.md operation for operation: g_new = g + C(r) exactly as the
// receiver forms it, not a re-derived g from an in-place r.
#include "efcomm/feedback.hpp"

#include "common/finite.hpp"
#include "compress/common.hpp"
#include "feedback/common.hpp"

namespace efcomm {

using feedback::Config;
using feedback::dispatchFloat;
using feedback::fill;

Feedback::Feedback(std::shared_ptr<Compressor> compressor) : compressor_(std::move(compressor)) {
  EFCOMM_CHECK(compressor_ != nullptr, "feedback: compressor is null");
}

void Feedback::allocate(const std::vector<int64_t>& shape, DType dtype) {
  shape_ = shape;
  dtype_ = dtype;
  const size_t need = feedback::words(static_cast<size_t>(ConstTensorView{nullptr, dtype, shape}.numel()) * itemSize(dtype));
  for (const std::string& n : stateNames()) stateBuffer(n).assign(need, 0.0);
}

Message Feedback::step(const ConstTensorView& v, std::optional<uint64_t> step) {
  const int64_t n = v.numel();  // validates the shape
  feedback::checkFloatDType(v.dtype, name() + ".step");
  EFCOMM_CHECK(v.data != nullptr || n == 0, name(), ".step: input data is null");
  EFCOMM_CHECK(static_cast<int>(v.shape.size()) <= kMaxDims, name(), ".step: ", v.shape.size(),
               "-d input; at most ", kMaxDims, " dimensions are supported");
  if (initialized_) {
    EFCOMM_CHECK(v.shape == shape_ && v.dtype == dtype_, name(), ".step: input is ", dtypeName(v.dtype), " ",
                 shapeString(v.shape), " but the state is ", dtypeName(dtype_), " ", shapeString(shape_),
                 " (fixed by the first step)");
  } else {
    allocate(v.shape, v.dtype);  // not yet a state: a failed first step leaves none
  }
  Message m = doStep(v, step);
  initialized_ = true;
  return m;
}

Message Feedback::compressFormed(const ConstTensorView& v, const ConstTensorView& p, std::optional<uint64_t> step) {
  // Says whether the caller's input was at fault or its combination with the state overflowed.
  const auto blame = [&] {
    throwIfNonFinite(v, spec() + ".step");
    throwIfNonFinite(p, spec() + ".step (the vector to compress: the input combined with the state overflowed)");
  };
  if (!compressor_->readsEveryElement() && anyNonFinite(p)) blame();
  try {
    return compressor_->compress(p, step);
  } catch (const NonFiniteError&) {
    // The compressor names its own input, the formed vector (the error path only: one more scan).
    blame();
    throw;
  }
}

StateDict Feedback::stateDict() const {
  StateDict d;
  d.meta["spec"] = spec();
  d.meta["initialized"] = initialized_ ? "1" : "0";
  if (initialized_) {
    d.meta["dtype"] = dtypeName(dtype_);
    d.meta["shape"] = feedback::shapeText(shape_);
    auto* self = const_cast<Feedback*>(this);  // stateBuffer is non-const; nothing is modified
    for (const std::string& n : stateNames()) d.tensors[n] = StateTensor::fromView(viewOf(self->stateBuffer(n)));
  }
  d.merge(compressor_->stateDict(), "compressor.");
  return d;
}

void Feedback::loadStateDict(const StateDict& state) {
  state.expect("spec", spec(), "the saved feedback spec");
  const uint64_t init = state.integer("initialized");
  EFCOMM_CHECK(init <= 1, "state dict: 'initialized' must be 0 or 1, got ", init);
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<const StateTensor*> arrays;
  if (init) {
    dtype = parseDType(state.text("dtype"));
    feedback::checkFloatDType(dtype, "state dict");
    shape = feedback::parseShape(state.text("shape"));
    for (const std::string& n : stateNames()) arrays.push_back(&feedback::savedArray(state, n, dtype, shape));
  }
  compressor_->loadStateDict(state.sub("compressor."));  // checks fully before changing anything
  initialized_ = init == 1;
  if (!initialized_) return;
  shape_ = shape;
  dtype_ = dtype;
  const std::vector<std::string> names = stateNames();
  for (size_t i = 0; i < names.size(); ++i) feedback::restoreArray(*arrays[i], stateBuffer(names[i]));
}

namespace {

// The first message of init=full methods: the vector itself, uncompressed.
// init=full's first message: the vector itself. A non-finite vector is reported as the feedback
// step's (the user configured a compressor and a method, not `identity`).
Message identityMessage(const ConstTensorView& x, const std::string& spec) {
  try {
    return makeCompressor("identity")->compress(x, 0);
  } catch (const NonFiniteError& e) {
    const std::string what = e.what();
    const size_t colon = what.find(": ");
    throw NonFiniteError(spec + ".step (init=full: the first vector travels whole)" +
                         (colon == std::string::npos ? ": " + what : what.substr(colon)));
  }
}

class NoFeedback final : public Feedback {
 public:
  explicit NoFeedback(std::shared_ptr<Compressor> c) : Feedback(std::move(c)) {}
  std::string name() const override { return "none"; }
  std::string spec() const override { return "none"; }
  ConstTensorView estimate() const override { return {nullptr, DType::kFloat32, {0}}; }

 protected:
  Message doStep(const ConstTensorView& v, std::optional<uint64_t> step) override {
    return compressor()->compress(v, step);
  }
  std::vector<std::string> stateNames() const override { return {}; }
  std::vector<double>& stateBuffer(const std::string&) override { throw Error("none has no state"); }
};

// EF14 (Seide et al. 2014; Stich et al. 2018): p = v + e; Delta = C(p); e = p - Delta.
class EF14 final : public Feedback {
 public:
  explicit EF14(std::shared_ptr<Compressor> c) : Feedback(std::move(c)) {}
  std::string name() const override { return "ef14"; }
  std::string spec() const override { return "ef14"; }
  ConstTensorView estimate() const override {
    return initialized() ? viewOf(e_) : ConstTensorView{nullptr, DType::kFloat32, {0}};
  }

 protected:
  Message doStep(const ConstTensorView& v, std::optional<uint64_t> step) override {
    const TensorView p = feedback::workspace(v);
    dispatchFloat(v.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(v.data);
      const T* e = reinterpret_cast<const T*>(e_.data());
      fill(static_cast<T*>(p.data), v.numel(), [&](int64_t i) { return x[i] + e[i]; });
    });
    Message m = compressFormed(v, p, step);
    feedback::copy(p, viewOf(e_));
    accumulate(m, viewOf(e_), -1.0);
    return m;
  }
  std::vector<std::string> stateNames() const override { return {"e"}; }
  std::vector<double>& stateBuffer(const std::string&) override { return e_; }

 private:
  std::vector<double> e_;
};

// EF21 (Richtarik, Sokolov, Fatkhullin 2021): g += C(a v - g), a = 1; EF21-W ("Error Feedback
// Reloaded"): a = 1 / (n w_i); EF21-SGDM (Fatkhullin et al. 2023): v is replaced by the momentum
// u = (1 - eta) u + eta v, with u = v at the first step (so eta = 1 is EF21 exactly).
class EF21 final : public Feedback {
 public:
  EF21(std::shared_ptr<Compressor> c, Config cfg) : Feedback(std::move(c)), cfg_(std::move(cfg)) {
    scale_ = cfg_.name == "ef21w" ? 1.0 / (static_cast<double>(cfg_.n) * cfg_.weight) : 1.0;
    sgdm_ = cfg_.name == "ef21sgdm";
  }
  std::string name() const override { return cfg_.name; }
  std::string spec() const override { return cfg_.canonical; }
  ConstTensorView estimate() const override {
    return initialized() ? viewOf(g_) : ConstTensorView{nullptr, DType::kFloat32, {0}};
  }

 protected:
  Message doStep(const ConstTensorView& v, std::optional<uint64_t> step) override {
    const bool first = !initialized();
    const bool plainV = !sgdm_ || first || cfg_.momentum == 1;  // the target is a v (u = v)
    const TensorView ws = feedback::workspace(v);
    if (first && cfg_.initFull) {
      // g^0 = a v^0 sent uncompressed (the EF21 reference code's initialization).
      const ConstTensorView target = scale_ == 1 ? v : ConstTensorView(ws);
      if (scale_ != 1) formTarget(v, ws, /*minusG=*/false, plainV);
      Message m = identityMessage(target, spec());
      feedback::copy(target, viewOf(g_));
      if (sgdm_) feedback::copy(v, viewOf(u_));
      return m;
    }
    formTarget(v, ws, /*minusG=*/true, plainV);  // r = target - g
    Message m = compressFormed(v, ws, step);
    if (sgdm_) {
      if (plainV) {
        feedback::copy(v, viewOf(u_));
      } else {
        dispatchFloat(v.dtype, [&](auto tag) {  // the same expression formTarget evaluated
          using T = typename decltype(tag)::type;
          T* u = reinterpret_cast<T*>(u_.data());
          const T* x = static_cast<const T*>(v.data);
          const T keep = static_cast<T>(1 - cfg_.momentum), take = static_cast<T>(cfg_.momentum);
          fill(u, v.numel(), [&](int64_t i) { return keep * u[i] + take * x[i]; });
        });
      }
    }
    accumulate(m, viewOf(g_), 1.0);
    return m;
  }
  std::vector<std::string> stateNames() const override {
    return sgdm_ ? std::vector<std::string>{"g", "u"} : std::vector<std::string>{"g"};
  }
  std::vector<double>& stateBuffer(const std::string& n) override { return n == "u" ? u_ : g_; }

 private:
  // out = target (minus g when minusG): target = a v, or the momentum update when !plainV.
  void formTarget(const ConstTensorView& v, const TensorView& out, bool minusG, bool plainV) const {
    dispatchFloat(v.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(v.data);
      const T* g = reinterpret_cast<const T*>(g_.data());
      T* o = static_cast<T*>(out.data);
      const int64_t n = v.numel();
      if (!plainV) {
        const T* u = reinterpret_cast<const T*>(u_.data());
        const T keep = static_cast<T>(1 - cfg_.momentum), take = static_cast<T>(cfg_.momentum);
        fill(o, n, [&](int64_t i) { return (keep * u[i] + take * x[i]) - g[i]; });
      } else if (scale_ == 1) {
        fill(o, n, [&](int64_t i) { return x[i] - g[i]; });
      } else {
        const T a = static_cast<T>(scale_);
        if (minusG) {
          fill(o, n, [&](int64_t i) { return a * x[i] - g[i]; });
        } else {
          fill(o, n, [&](int64_t i) { return a * x[i]; });
        }
      }
    });
  }

  Config cfg_;
  double scale_;
  bool sgdm_;
  std::vector<double> g_, u_;
};

// EControl (Gao, Islamov, Stich): Delta = C(eta e + v - h); e = e + v - h - Delta; h = h + Delta.
// e^0 = 0 and h^0 = v^0 (init=full, sent uncompressed) or h^0 = C(v^0) (init=compressed: eta = 0
// is EF21 with compressed init, operation for operation); the first round leaves e at 0 either
// way (ALGORITHMS.md: e^0 = 0; the initial message's error is not fed back).
class EControl final : public Feedback {
 public:
  EControl(std::shared_ptr<Compressor> c, Config cfg) : Feedback(std::move(c)), cfg_(std::move(cfg)) {}
  std::string name() const override { return "econtrol"; }
  std::string spec() const override { return cfg_.canonical; }
  ConstTensorView estimate() const override {
    return initialized() ? viewOf(h_) : ConstTensorView{nullptr, DType::kFloat32, {0}};
  }

 protected:
  Message doStep(const ConstTensorView& v, std::optional<uint64_t> step) override {
    if (!initialized() && cfg_.initFull) {
      Message m = identityMessage(v, spec());
      feedback::copy(v, viewOf(h_));
      return m;
    }
    const TensorView ws = feedback::workspace(v);
    dispatchFloat(v.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* x = static_cast<const T*>(v.data);
      const T* e = reinterpret_cast<const T*>(e_.data());
      const T* h = reinterpret_cast<const T*>(h_.data());
      T* r = static_cast<T*>(ws.data);
      if (cfg_.eta == 0) {
        fill(r, v.numel(), [&](int64_t i) { return x[i] - h[i]; });
      } else {
        const T eta = static_cast<T>(cfg_.eta);
        fill(r, v.numel(), [&](int64_t i) { return (eta * e[i] + x[i]) - h[i]; });
      }
    });
    const bool first = !initialized();  // h^0 = C(v^0), e^0 = 0
    Message m = compressFormed(v, ws, step);
    if (!first) {
      dispatchFloat(v.dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* x = static_cast<const T*>(v.data);
        const T* h = reinterpret_cast<const T*>(h_.data());
        T* e = reinterpret_cast<T*>(e_.data());
        fill(e, v.numel(), [&](int64_t i) { return (e[i] + x[i]) - h[i]; });
      });
      accumulate(m, viewOf(e_), -1.0);
    }
    accumulate(m, viewOf(h_), 1.0);
    return m;
  }
  std::vector<std::string> stateNames() const override { return {"e", "h"}; }
  std::vector<double>& stateBuffer(const std::string& n) override { return n == "e" ? e_ : h_; }

 private:
  Config cfg_;
  std::vector<double> e_, h_;
};

}  // namespace

std::unique_ptr<Feedback> makeFeedback(const std::string& spec, std::shared_ptr<Compressor> compressor) {
  Config cfg = feedback::parseConfig(spec);
  EFCOMM_CHECK(compressor != nullptr, "makeFeedback('", spec, "'): compressor is null");
  if (cfg.name == "none") return std::make_unique<NoFeedback>(std::move(compressor));
  if (cfg.name == "ef14") return std::make_unique<EF14>(std::move(compressor));
  if (cfg.name == "econtrol") return std::make_unique<EControl>(std::move(compressor), std::move(cfg));
  return std::make_unique<EF21>(std::move(compressor), std::move(cfg));
}

std::vector<std::string> feedbackNames() { return feedback::methodNames(); }

}  // namespace efcomm
