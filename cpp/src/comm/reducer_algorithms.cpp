#include "comm/reducer_algorithms.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <optional>
#include <utility>

#include "comm/backend.hpp"
#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "common/spec.hpp"
#include "compress/powersgd.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/message.hpp"
#include "feedback/common.hpp"

namespace efcomm::comm {

namespace {

// The outcome of this rank's compression: a message, or the failure and its exception.
struct Attempt {
  std::optional<Message> msg;
  Failure failure;
  std::exception_ptr error;
  std::vector<uint8_t> status;  // what travels instead of msg when it failed

  template <typename F>
  void run(int rank, F&& compress) {
    try {
      msg.emplace(compress());
      return;
    } catch (...) {
      error = std::current_exception();
    }
    failure = failureOf(rank, error);
    status = statusBlock(failure);
  }
  const uint8_t* bytes() const { return msg ? msg->data() : status.data(); }
  size_t size() const { return msg ? msg->size() : status.size(); }
};

// count values of `dtype` at `in` as doubles.
void loadValues(DType dtype, const uint8_t* in, double* out, size_t count) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (size_t i = 0; i < count; ++i) out[i] = Elem<T>::load(loadAs<T>(in + i * sizeof(T)));
  });
}

// count doubles stored as values of `dtype` (rounded).
void storeValues(DType dtype, const double* in, uint8_t* out, size_t count) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (size_t i = 0; i < count; ++i) storeAs<T>(out + i * sizeof(T), roundFromDouble<T>(in[i]));
  });
}

// out = w * in, count values of `dtype` (rounded to it).
void scaleValues(DType dtype, const uint8_t* in, uint8_t* out, size_t count, double w) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    for (size_t i = 0; i < count; ++i) {
      const double v = Elem<T>::load(loadAs<T>(in + i * sizeof(T)));
      storeAs<T>(out + i * sizeof(T), roundFromDouble<T>(v * w));
    }
  });
}

void copyOut(const ConstTensorView& est, const TensorView& out) {
  if (est.nbytes() > 0) std::memmove(out.data, est.data, est.nbytes());
}

// The state of a worker and an aggregate, under "worker." and "aggregate.".
StateDict pairState(const Feedback& worker, const Aggregate& aggregate) {
  StateDict sd;
  sd.merge(worker.stateDict(), "worker.");
  sd.merge(aggregate.stateDict(), "aggregate.");
  return sd;
}

// Loads a pairState into fresh objects, then replaces worker and aggregate (unchanged on a throw).
void loadPair(const StateDict& state, std::unique_ptr<Feedback> freshWorker, Aggregate freshAggregate,
              std::unique_ptr<Feedback>& worker, Aggregate& aggregate) {
  freshWorker->loadStateDict(state.sub("worker."));
  freshAggregate.loadStateDict(state.sub("aggregate."));
  worker = std::move(freshWorker);
  aggregate = std::move(freshAggregate);
}

// ---- allgather -------------------------------------------------------------------------------

class AllgatherAlgorithm final : public Algorithm {
 public:
  explicit AllgatherAlgorithm(const SlotSetup& s)
      : s_(s),
        worker_(makeFeedback(s.worker, makeCompressor(s.compressor))),
        aggregate_(s.feedback, s.n, s.weights, s.shape, s.dtype) {}

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream) override {
    Attempt mine;
    auto t0 = Clock::now();
    mine.run(s_.rank, [&] { return worker_->step(x, step); });
    st.compressSeconds += secondsSince(t0);

    ByteBlocks gathered;
    t0 = Clock::now();
    backend.allgatherv(mine.bytes(), mine.size(), gathered)->wait();
    st.commSeconds += secondsSince(t0);

    t0 = Clock::now();
    Failure first;
    std::vector<Message> msgs(static_cast<size_t>(s_.n));
    std::vector<const Message*> ptrs(static_cast<size_t>(s_.n), nullptr);
    for (int r = 0; r < s_.n; ++r) {
      const size_t i = static_cast<size_t>(r);
      if (gathered.blockBytes(i) == kStatusBytes) {
        keepFirst(first, readStatus(gathered.block(i)));
        continue;
      }
      msgs[i] = Message::fromBytes(gathered.block(i), gathered.blockBytes(i));
      ptrs[i] = &msgs[i];
      if (r != s_.rank) st.bytesReceived += gathered.blockBytes(i);
    }
    st.bytesSent += mine.size() * static_cast<uint64_t>(s_.n - 1);
    const ConstTensorView est = aggregate_.update(ptrs);
    st.aggregateSeconds += secondsSince(t0);
    if (first) raise(backend, s_.context, first, mine.error);
    copyOut(est, out);
  }

  StateDict stateDict() const override { return pairState(*worker_, aggregate_); }

  void loadStateDict(const StateDict& state) override {
    loadPair(state, makeFeedback(s_.worker, makeCompressor(s_.compressor)),
             Aggregate(s_.feedback, s_.n, s_.weights, s_.shape, s_.dtype), worker_, aggregate_);
  }

 private:
  SlotSetup s_;
  std::unique_ptr<Feedback> worker_;
  Aggregate aggregate_;
};

// ---- reduce_scatter ------------------------------------------------------------------------------

// Rank c owns chunk c. Every rank keeps a worker per chunk (its own error feedback on that part
// of its vector), the owner's aggregate of its own chunk, and a mirror per chunk of what the
// owners broadcast. The owner's second compression feeds its error back too (build()): EF21-BC's
// b += C(g - b) (Gruntkowska et al. 2023; docs/algorithms.md) for the EF21 family and EControl,
// EF14 on the round's sum for EF14, and plain C(g) with `none`.
class ReduceScatterAlgorithm final : public Algorithm {
 public:
  explicit ReduceScatterAlgorithm(const SlotSetup& s) : s_(s) {
    chunks_ = {ConstTensorView{nullptr, s.dtype, s.shape}.numel(), s.n};
    build(workers_, owner_, ownerFeedback_, mirrors_);
  }

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream) override {
    const int n = s_.n;
    const size_t me = static_cast<size_t>(s_.rank);

    // Phase 1: compress every chunk with its worker; chunk c goes to rank c.
    std::vector<Attempt> parts(static_cast<size_t>(n));
    auto t0 = Clock::now();
    for (int c = 0; c < n; ++c) {
      Feedback& worker = *workers_[static_cast<size_t>(c)];
      parts[static_cast<size_t>(c)].run(s_.rank, [&] { return worker.step(chunks_.of(x, c), step); });
    }
    st.compressSeconds += secondsSince(t0);
    std::vector<uint8_t> send;
    std::vector<size_t> counts;
    for (const Attempt& a : parts) {
      send.insert(send.end(), a.bytes(), a.bytes() + a.size());
      counts.push_back(a.size());
    }
    ByteBlocks mine;
    t0 = Clock::now();
    backend.alltoallv(send.data(), counts, mine)->wait();
    st.commSeconds += secondsSince(t0);
    st.bytesSent += send.size() - counts[me];

    // The owner folds its chunk's messages (a rank that failed is absent) and re-compresses.
    t0 = Clock::now();
    Failure first;
    std::vector<Message> msgs(static_cast<size_t>(n));
    std::vector<const Message*> ptrs(static_cast<size_t>(n), nullptr);
    for (size_t r = 0; r < static_cast<size_t>(n); ++r) {
      if (r != me) st.bytesReceived += mine.blockBytes(r);
      if (mine.blockBytes(r) == kStatusBytes) {
        keepFirst(first, readStatus(mine.block(r)));
        continue;
      }
      msgs[r] = Message::fromBytes(mine.block(r), mine.blockBytes(r));
      ptrs[r] = &msgs[r];
    }
    Attempt reduced;
    reduced.run(s_.rank, [&] {
      owner_->update(ptrs);
      return ownerFeedback_ ? ownerFeedback_->step(owner_->estimate(), step) : owner_->lastBroadcast();
    });
    st.aggregateSeconds += secondsSince(t0);

    // Phase 2: every rank gathers the owners' blocks: the first failure the owner saw (or none),
    // then its message unless its own re-compression failed.
    std::vector<uint8_t> block = statusBlock(first);
    if (reduced.msg) {
      block.insert(block.end(), reduced.msg->data(), reduced.msg->data() + reduced.msg->size());
    } else {
      block = statusBlock(reduced.failure);
    }
    ByteBlocks owners;
    t0 = Clock::now();
    backend.allgatherv(block.data(), block.size(), owners)->wait();
    st.commSeconds += secondsSince(t0);
    st.bytesSent += block.size() * static_cast<uint64_t>(n - 1);

    t0 = Clock::now();
    for (int c = 0; c < n; ++c) {
      const size_t i = static_cast<size_t>(c);
      if (i != me) st.bytesReceived += owners.blockBytes(i);
      EFCOMM_CHECK_T(CorruptMessageError, owners.blockBytes(i) >= kStatusBytes, s_.context, ": rank ", c,
                     " sent a ", owners.blockBytes(i), "-byte block");
      keepFirst(first, readStatus(owners.block(i)));
      if (owners.blockBytes(i) == kStatusBytes) continue;  // owner failed: its chunk keeps its value
      const Message m = Message::fromBytes(owners.block(i) + kStatusBytes, owners.blockBytes(i) - kStatusBytes);
      mirrors_[i]->update({&m});
    }
    st.aggregateSeconds += secondsSince(t0);
    if (first) raise(backend, s_.context, first, reduced.error ? reduced.error : firstError(parts));
    for (int c = 0; c < n; ++c) copyOut(mirrors_[static_cast<size_t>(c)]->estimate(), chunks_.of(out, c));
  }

  StateDict stateDict() const override {
    StateDict sd;
    for (size_t c = 0; c < workers_.size(); ++c) {
      sd.merge(workers_[c]->stateDict(), "chunk/" + std::to_string(c) + "/worker.");
      sd.merge(mirrors_[c]->stateDict(), "chunk/" + std::to_string(c) + "/mirror.");
    }
    sd.merge(owner_->stateDict(), "owner.");
    if (ownerFeedback_) sd.merge(ownerFeedback_->stateDict(), "owner_feedback.");
    return sd;
  }

  void loadStateDict(const StateDict& state) override {
    std::vector<std::unique_ptr<Feedback>> workers;
    std::unique_ptr<Aggregate> owner;
    std::unique_ptr<Feedback> ownerFeedback;
    std::vector<std::unique_ptr<Aggregate>> mirrors;
    build(workers, owner, ownerFeedback, mirrors);
    for (size_t c = 0; c < workers.size(); ++c) {
      workers[c]->loadStateDict(state.sub("chunk/" + std::to_string(c) + "/worker."));
      mirrors[c]->loadStateDict(state.sub("chunk/" + std::to_string(c) + "/mirror."));
    }
    owner->loadStateDict(state.sub("owner."));
    if (ownerFeedback) ownerFeedback->loadStateDict(state.sub("owner_feedback."));
    workers_ = std::move(workers);
    owner_ = std::move(owner);
    ownerFeedback_ = std::move(ownerFeedback);
    mirrors_ = std::move(mirrors);
  }

 private:

  static std::exception_ptr firstError(const std::vector<Attempt>& parts) {
    for (const Attempt& a : parts)
      if (a.error) return a.error;
    return nullptr;
  }

  // The owner's re-compression follows the workers' kind of feedback. Where the aggregate is
  // this round's sum (none, EF14), the owner compresses it with the same method: plain C(g), or
  // EF14 on g (error-compensated at the server as at the workers, Tang et al. 2019,
  // "DoubleSqueeze", Algorithm 1), and the mirrors take each broadcast as the chunk's value.
  // Where it is a running estimate (the EF21 family, EControl), EF21-BC tracks it (b += C(g -
  // b)) and the mirrors add the broadcasts. (EF21-BC on a sum that changes every round lags it:
  // EF14's residual was lost, worse than no feedback.)
  void build(std::vector<std::unique_ptr<Feedback>>& workers, std::unique_ptr<Aggregate>& owner,
             std::unique_ptr<Feedback>& ownerFeedback, std::vector<std::unique_ptr<Aggregate>>& mirrors) const {
    const bool perRound = aggregatesPerRound(s_.feedback);
    for (int c = 0; c < s_.n; ++c) {
      workers.push_back(makeFeedback(s_.worker, makeCompressor(chunks_.compressorFor(s_.compressor, c))));
      mirrors.push_back(std::make_unique<Aggregate>(perRound ? "none" : "ef21", 1, std::vector<double>{1.0},
                                                    std::vector<int64_t>{chunks_.length(c)}, s_.dtype));
    }
    const std::vector<int64_t> own{chunks_.length(s_.rank)};
    const std::string ownCompressor = chunks_.compressorFor(s_.compressor, s_.rank);
    if (perRound) {
      owner = std::make_unique<Aggregate>(s_.feedback, s_.n, s_.weights, own, s_.dtype);
      ownerFeedback = makeFeedback(s_.feedback, makeCompressor(ownCompressor));
    } else {
      owner = std::make_unique<Aggregate>(s_.feedback, s_.n, s_.weights, own, s_.dtype,
                                          std::shared_ptr<Compressor>(makeCompressor(ownCompressor)));
    }
  }

  SlotSetup s_;
  Chunks chunks_;
  std::vector<std::unique_ptr<Feedback>> workers_;
  std::unique_ptr<Aggregate> owner_;
  std::unique_ptr<Feedback> ownerFeedback_;  // none, EF14: the owner's re-compression of its sum
  std::vector<std::unique_ptr<Aggregate>> mirrors_;
};

// ---- allreduce ------------------------------------------------------------------------------

// Payloads that add: identity; cast (summed in 16-bit arithmetic, as they travel); RandK, whose
// indices every rank draws from the shared seed and step; PowerSGD in its distributed form
// (compress/powersgd.hpp), whose P every rank shares and whose Q_i add. decode(sum_i w_i
// payload_i) == sum_i w_i decode(msg_i) (for cast up to 16-bit rounding), so the weighted payloads
// (PowerSGD: the Q part) are summed by the backend's allreduceSum and the one resulting message
// folds into a one-worker aggregate.
class AllreduceAlgorithm final : public Algorithm {
 public:
  explicit AllreduceAlgorithm(const SlotSetup& s)
      : s_(s), worker_(makeWorker()), aggregate_(s.feedback, 1, {1.0}, s.shape, s.dtype) {
    weights_ = s.weights.empty() ? std::vector<double>(static_cast<size_t>(s.n), 1.0 / s.n) : s.weights;
  }

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream) override {
    backend_ = &backend;
    stats_ = &st;
    factorSeconds_ = 0;
    const bool wasInitialized = worker_->initialized();
    Attempt mine;
    auto t0 = Clock::now();
    mine.run(s_.rank, [&] { return worker_->step(x, step); });
    st.compressSeconds += secondsSince(t0) - factorSeconds_;
    double comm = factorSeconds_;

    // Round 1: the descriptors (or status blocks), so every rank, a failed one included, knows
    // the round's message layout and checks that the payloads really add.
    const std::vector<uint8_t> desc = mine.msg ? Descriptor::of(*mine.msg).encode() : statusBlock(mine.failure);
    Failure first;
    t0 = Clock::now();
    const std::optional<Descriptor> layout = agreeLayout(backend, desc, s_, st, first);
    comm += secondsSince(t0);

    // Round 2: the weighted payloads (PowerSGD: after the shared P), summed in rank order.
    if (layout) {
      const DType values = payloadDType(*layout, s_);
      const size_t item = itemSize(values);
      const bool factors = layout->id == CompressorId::kPowerSGD;
      const size_t shared = factors ? sharedP_.size() * item : 0;
      EFCOMM_CHECK_T(CorruptMessageError, layout->payloadBytes >= shared && (layout->payloadBytes - shared) % item == 0,
                     s_.context, ": a ", layout->payloadBytes, "-byte payload does not fit the ", dtypeName(s_.dtype),
                     " layout");
      const size_t count = (layout->payloadBytes - shared) / item;
      std::vector<double> sum(count, 0.0);  // count doubles hold count values of either dtype
      if (mine.msg)
        scaleValues(values, mine.msg->payload() + shared, reinterpret_cast<uint8_t*>(sum.data()), count,
                    weights_[static_cast<size_t>(s_.rank)]);
      t0 = Clock::now();
      backend.allreduceSum(sum.data(), count, values)->wait();
      comm += secondsSince(t0);
      const uint64_t traffic = allreduceTraffic(count, item, s_.n, s_.rank);
      st.bytesSent += traffic;
      st.bytesReceived += traffic;

      t0 = Clock::now();
      Message m = Message::build(layout->id, s_.dtype, s_.shape, layout->flags, layout->params, layout->payloadBytes);
      uint8_t* payload = m.mutablePayload();
      storeValues(s_.dtype, sharedP_.data(), payload, sharedP_.size());
      if (count > 0) std::memcpy(payload + shared, sum.data(), count * item);
      m.finish(layout->payloadBytes);
      aggregate_.update({&m});
      if (factors) {
        // Every rank starts the next power iteration from the same summed Q (Algorithm 1).
        const compress::PowerSgdLayout v = compress::powerSgdLayout(layout->params.data(), layout->params.size());
        std::vector<double> q(count);
        loadValues(s_.dtype, payload + shared, q.data(), count);
        compress::setPowerSgdWarmStart(*worker_->compressor(), v.m, v.n, q);
      }
      st.aggregateSeconds += secondsSince(t0);
    }
    st.commSeconds += comm;
    if (first) {
      // A failed first round (init=full: every worker's first message travels whole) never
      // happened, on every rank: the workers that sent theirs would compress from the next round
      // on while the failed one still sends its whole vector, and payloads of two layouts do not
      // add (a PowerSGD worker would also call its P round that the others skip). Every rank
      // starts over; the workers' initialized state is the same on every rank (it was before).
      if (!wasInitialized) {
        try {  // both made before either is replaced; the round's error is the one to report
          std::unique_ptr<Feedback> worker = makeWorker();
          Aggregate aggregate(s_.feedback, 1, {1.0}, s_.shape, s_.dtype);
          worker_ = std::move(worker);
          aggregate_ = std::move(aggregate);
        } catch (const std::exception&) {
        }
      }
      raise(*backend_, s_.context, first, mine.error);
    }
    copyOut(aggregate_.estimate(), out);
  }

  StateDict stateDict() const override { return pairState(*worker_, aggregate_); }

  void loadStateDict(const StateDict& state) override {
    loadPair(state, makeWorker(), Aggregate(s_.feedback, 1, {1.0}, s_.shape, s_.dtype), worker_, aggregate_);
  }

 private:
  std::unique_ptr<Feedback> makeWorker() {
    std::shared_ptr<Compressor> c = makeCompressor(s_.compressor);
    if (c->name() == "powersgd") {
      compress::setPowerSgdRounds(*c, {[this](std::vector<double>& p, bool finite) { sumFactor(p, finite); },
                                       [this](const std::vector<double>& p) { sharedP_ = p; }});
    }
    return makeFeedback(s_.worker, c);
  }

  // PowerSGD's P round: the weighted sum of the P_i, with one flag per rank for a non-finite P
  // so that every rank learns who failed (and none waits for a rank that gave up).
  void sumFactor(std::vector<double>& p, bool finite) {
    const size_t count = p.size() + static_cast<size_t>(s_.n);
    std::vector<double> buf(count, 0.0);
    std::vector<double> local(count, 0.0);
    if (finite) {
      const double w = weights_[static_cast<size_t>(s_.rank)];
      for (size_t i = 0; i < p.size(); ++i) local[i] = p[i] * w;
    }
    local[p.size() + static_cast<size_t>(s_.rank)] = finite ? 0.0 : 1.0;
    storeValues(s_.dtype, local.data(), reinterpret_cast<uint8_t*>(buf.data()), count);
    const auto t0 = Clock::now();
    backend_->allreduceSum(buf.data(), count, s_.dtype)->wait();
    factorSeconds_ += secondsSince(t0);
    const uint64_t traffic = allreduceTraffic(count, itemSize(s_.dtype), s_.n, s_.rank);
    stats_->bytesSent += traffic;
    stats_->bytesReceived += traffic;
    loadValues(s_.dtype, reinterpret_cast<const uint8_t*>(buf.data()), local.data(), count);
    for (int r = 0; r < s_.n; ++r) {
      if (local[p.size() + static_cast<size_t>(r)] == 0.0) continue;
      const std::string what = s_.context + ": rank " + std::to_string(r) +
                               " has a non-finite vector to compress (PowerSGD's P round); every rank skips this round";
      backend_->report("nonfinite", {r}, what);
      throw NonFiniteError(what);
    }
    std::copy(local.begin(), local.begin() + static_cast<std::ptrdiff_t>(p.size()), p.begin());
  }

  SlotSetup s_;
  std::vector<double> weights_;
  std::unique_ptr<Feedback> worker_;
  Aggregate aggregate_;
  // Set for the duration of run(): PowerSGD's P round runs inside the worker's step.
  Backend* backend_ = nullptr;
  ReducerStats* stats_ = nullptr;
  double factorSeconds_ = 0;
  std::vector<double> sharedP_;  // PowerSGD: the P of the current round
};

}  // namespace

ConstTensorView flatPart(const ConstTensorView& x, int64_t begin, int64_t len) {
  return {static_cast<const uint8_t*>(x.data) + begin * static_cast<int64_t>(itemSize(x.dtype)), x.dtype, {len}};
}

TensorView flatPart(const TensorView& x, int64_t begin, int64_t len) {
  return {static_cast<uint8_t*>(x.data) + begin * static_cast<int64_t>(itemSize(x.dtype)), x.dtype, {len}};
}

std::vector<uint8_t> statusBlock(const Failure& f) {
  std::vector<uint8_t> b(kStatusBytes);
  storeAs<uint32_t>(b.data(), f.code);
  storeAs<uint32_t>(b.data() + 4, static_cast<uint32_t>(f.rank));
  return b;
}

Failure readStatus(const uint8_t* p) { return {static_cast<int>(loadAs<uint32_t>(p + 4)), loadAs<uint32_t>(p)}; }

void keepFirst(Failure& first, const Failure& f) {
  if (f && (!first || f.rank < first.rank)) first = f;
}

Failure failureOf(int rank, const std::exception_ptr& e) {
  try {
    std::rethrow_exception(e);
  } catch (const Error& err) {
    return {rank, static_cast<uint32_t>(err.code())};
  } catch (...) {
    return {rank, static_cast<uint32_t>(ErrorCode::kInternal)};
  }
}

void raise(Backend& backend, const std::string& context, const Failure& f, std::exception_ptr own) {
  if (f.code == static_cast<uint32_t>(ErrorCode::kNonFinite))
    backend.report("nonfinite", {f.rank}, context + ": rank " + std::to_string(f.rank) +
                                              " has a non-finite vector to compress; every rank skipped the round");
  if (own) {
    try {
      std::rethrow_exception(own);
    } catch (const NonFiniteError& e) {  // the call and key, as the other ranks' errors name them
      throw NonFiniteError(context + ": rank " + std::to_string(backend.rank()) +
                           " (this rank) has a non-finite vector to compress; every rank skipped the round: " + e.what());
    }
  }
  EFCOMM_CHECK_T(NonFiniteError, f.code != static_cast<uint32_t>(ErrorCode::kNonFinite), context, ": rank ", f.rank,
                 " has a non-finite vector to compress and skipped this round");
  throw Error(context + ": rank " + std::to_string(f.rank) + " failed to compress (error code " +
              std::to_string(f.code) + ") and skipped this round");
}

Descriptor Descriptor::of(const Message& m) {
  return {m.compressorId(), m.flags(), std::vector<uint8_t>(m.params(), m.params() + m.paramsSize()), m.payloadSize()};
}

std::vector<uint8_t> Descriptor::encode() const {
  ByteWriter w;
  w.put<uint32_t>(0).put<uint32_t>(0);  // the status slot: a descriptor follows a zero status
  w.put<uint8_t>(static_cast<uint8_t>(id)).put<uint16_t>(flags).put<uint64_t>(payloadBytes);
  std::vector<uint8_t> bytes = w.bytes();
  bytes.insert(bytes.end(), params.begin(), params.end());
  return bytes;
}

Descriptor Descriptor::decode(const uint8_t* p, size_t n) {
  ByteReader r(p + kStatusBytes, n - kStatusBytes, "allreduce descriptor");
  Descriptor d;
  d.id = static_cast<CompressorId>(r.get<uint8_t>());
  d.flags = r.get<uint16_t>();
  d.payloadBytes = r.get<uint64_t>();
  const size_t rest = r.remaining();
  d.params.assign(p + n - rest, p + n);
  return d;
}

std::optional<Descriptor> agreeLayout(Backend& backend, const std::vector<uint8_t>& desc, const SlotSetup& s,
                                      ReducerStats& st, Failure& first) {
  ByteBlocks descs;
  backend.allgatherv(desc.data(), desc.size(), descs)->wait();
  st.bytesSent += desc.size() * static_cast<uint64_t>(s.n - 1);
  std::optional<Descriptor> layout;
  for (int r = 0; r < s.n; ++r) {
    const size_t i = static_cast<size_t>(r);
    if (r != s.rank) st.bytesReceived += descs.blockBytes(i);
    EFCOMM_CHECK_T(CorruptMessageError, descs.blockBytes(i) >= kStatusBytes, s.context, ": rank ", r, " sent a ",
                   descs.blockBytes(i), "-byte descriptor");
    const Failure f = readStatus(descs.block(i));
    if (f) {
      keepFirst(first, f);
      continue;
    }
    const Descriptor d = Descriptor::decode(descs.block(i), descs.blockBytes(i));
    if (!layout) layout = d;
    EFCOMM_CHECK_T(MismatchError, d == *layout, s.context, ": rank ", r,
                   "'s message layout differs from the other ranks' (the allreduce algorithm needs payloads "
                   "that add: the same compressor, parameters and step on every rank)");
  }
  return layout;
}

DType payloadDType(const Descriptor& d, const SlotSetup& s) {
  if (d.id != CompressorId::kCast) return s.dtype;
  EFCOMM_CHECK_T(CorruptMessageError, d.params.size() == 1 && isValidDType(d.params[0]), s.context,
                 ": bad cast parameters");
  return static_cast<DType>(d.params[0]);
}

int64_t Chunks::begin(int c) const { return static_cast<int64_t>(partBegin(static_cast<size_t>(d), n, c)); }

bool aggregatesPerRound(const std::string& feedbackSpec) {
  return !feedback::parseConfig(feedbackSpec, /*receiver=*/true).additive();
}

std::string Chunks::compressorFor(const std::string& spec, int c) const {
  SpecParams sp = SpecParams::parse(spec);
  if ((sp.name() != "topk" && sp.name() != "randk") || !sp.has("k") || d == 0) return spec;
  const int64_t k = *sp.getInt("k");
  const auto share = static_cast<int64_t>(std::llround(static_cast<double>(k) * static_cast<double>(length(c)) /
                                                       static_cast<double>(d)));
  // The canonical spec is name:key=value,...: replace the k=... parameter.
  const size_t colon = spec.find(':');
  std::string out = spec.substr(0, colon + 1);
  size_t at = colon + 1;
  while (at <= spec.size()) {
    const size_t end = std::min(spec.find(',', at), spec.size());
    const std::string item = spec.substr(at, end - at);
    out += (at > colon + 1 ? "," : "") + (item.rfind("k=", 0) == 0 ? "k=" + std::to_string(std::max<int64_t>(1, share)) : item);
    at = end + 1;
  }
  return out;
}

uint64_t allreduceTraffic(size_t count, size_t item, int n, int rank) {
  const size_t own = partBegin(count, n, rank + 1) - partBegin(count, n, rank);
  return ((count - own) + own * static_cast<uint64_t>(n - 1)) * item;
}

std::unique_ptr<Algorithm> makeAlgorithm(const std::string& name, const SlotSetup& setup) {
  if (setup.device != nullptr) return makeDeviceAlgorithm(name, setup);
  if (name == "allgather") return std::make_unique<AllgatherAlgorithm>(setup);
  if (name == "reduce_scatter") return std::make_unique<ReduceScatterAlgorithm>(setup);
  if (name == "allreduce") {
    const std::string why = allreduceUnsupported(setup.compressor);
    EFCOMM_CHECK(why.empty(), setup.context, ": ", why);
    return std::make_unique<AllreduceAlgorithm>(setup);
  }
  throw InvalidArgument("Reducer: unknown algorithm '" + name +
                        "'; expected allgather, reduce_scatter, allreduce or auto");
}

std::string allreduceUnsupported(const std::string& compressorSpec, bool device) {
  const std::string name = makeCompressor(compressorSpec)->name();
  if (name == "powersgd" && device)
    return "PowerSGD's factor rounds of the allreduce algorithm run on the host only; on a device use algorithm "
           "allgather, reduce_scatter or auto";
  if (name == "identity" || name == "cast" || name == "randk" || name == "powersgd") return {};
  return "the allreduce algorithm needs a compressor whose payloads add (identity, cast, randk, powersgd); '" + name +
         "' payloads do not: use algorithm allgather, reduce_scatter or auto";
}

double predictSeconds(const std::string& algorithm, const LinkModel& link, const std::string& compressorSpec, int n,
                      int64_t d, DType dtype) {
  if (n <= 1) return 0;
  const auto c = makeCompressor(compressorSpec);
  const double peers = n - 1;
  auto send = [&](double bytes) { return link.alphaSeconds + link.betaSecondsPerByte * bytes; };
  if (algorithm == "allgather") return peers * send(static_cast<double>(c->wireBytes(d, dtype)));
  const double part = static_cast<double>(c->wireBytes((d + n - 1) / n, dtype));
  if (algorithm == "reduce_scatter") return 2 * peers * send(part + kStatusBytes);
  // allreduce: the descriptor round, then a reduce-scatter and an allgather of the payload.
  return peers * send(64) + 2 * peers * send(part);
}

LinkModel measureLink(Backend& backend) {
  const int n = backend.size();
  if (n <= 1) return {};
  auto fastest = [&](size_t bytes, int repeats) {
    std::vector<uint8_t> buf(bytes, 0);
    ByteBlocks recv;
    double best = 0;
    for (int i = 0; i < repeats; ++i) {
      const auto t0 = Clock::now();
      backend.allgatherv(buf.data(), buf.size(), recv)->wait();
      const double t = secondsSince(t0);
      best = i == 0 ? t : std::min(best, t);
    }
    return best;
  };
  constexpr size_t kBig = size_t{1} << 20;
  const double small = fastest(8, 5);
  const double big = fastest(kBig, 3);
  double model[2] = {small / (n - 1), std::max(big - small, 0.0) / ((n - 1) * static_cast<double>(kBig))};
  backend.allreduceSum(model, 2, DType::kFloat64)->wait();  // the mean: the same model on every rank
  return {model[0] / n, model[1] / n};
}

}  // namespace efcomm::comm
