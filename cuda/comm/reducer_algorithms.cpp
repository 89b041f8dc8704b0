// The Reducer's algorithms on device memory (reducer.hpp, "On a GPU"): the rounds of
// cpp/src/comm/reducer_algorithms.cpp with the workers' state, the messages and the aggregates
// in device memory. Messages are made and decoded by the kernels of cuda.hpp (DeviceFeedback,
// accumulate) and move with the DeviceBackend's collectives; the host sees sizes, 8-byte
// statuses and the allreduce descriptors. Every rank folds the messages in rank order with the
// same kernels, so the aggregate is bit-identical on every rank.
#include <cuda_runtime.h>

#include <exception>
#include <optional>
#include <utility>

#include "comm/backend.hpp"
#include "comm/reducer_algorithms.hpp"
#include "comm/reducer_kernels.hpp"
#include "common/runtime.hpp"
#include "common/wire.hpp"
#include "compress/device_codec.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "feedback/common.hpp"

namespace efcomm::comm {

namespace {

cudaStream_t native(cuda::Stream s) { return cuda::nativeStream(s); }

void uploadSync(const std::vector<uint8_t>& host, void* dev, cudaStream_t s) {
  if (host.empty()) return;
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size(), cudaMemcpyHostToDevice, s));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
}

// The 8-byte status at the start of a device block.
Failure deviceStatus(const uint8_t* block, cudaStream_t s) {
  uint8_t h[kStatusBytes];
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(h, block, kStatusBytes, cudaMemcpyDeviceToHost, s));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
  return readStatus(h);
}

// This rank's contribution: a device message, or its status block when making it failed. An
// algorithm keeps its attempts between calls, so that their buffers are allocated once (a
// cudaFree waits for the whole device).
struct DeviceAttempt {
  cuda::DeviceBuffer buf;
  size_t size = 0;
  Failure failure;
  std::exception_ptr error;

  template <typename F>
  void run(int rank, cudaStream_t s, F&& produce) {
    size = 0;
    failure = Failure{};
    error = nullptr;
    try {
      size = produce(buf);
      return;
    } catch (...) {
      error = std::current_exception();
    }
    failure = failureOf(rank, error);
    buf.resize(kStatusBytes);
    uploadSync(statusBlock(failure), buf.data(), s);
    size = kStatusBytes;
  }
  bool ok() const { return !failure; }
};

// The receiver side (efcomm::Aggregate) with g in device memory: g += sum_i w_i decode(m_i) for
// the EF21 family and EControl, g = sum_i w_i decode(m_i) for EF14 and none, folded in rank
// order. Its state dict is Aggregate's (no broadcast compressor), so host and device reducers
// exchange it.
class DeviceAggregate {
 public:
  DeviceAggregate(const std::string& spec, int n, const std::vector<double>& weights, std::vector<int64_t> shape,
                  DType dtype)
      : host_(spec, n, weights, {0}, dtype),
        additive_(host_.additive()),
        shape_(std::move(shape)),
        dtype_(dtype),
        g_(ConstTensorView{nullptr, dtype, shape_}.nbytes()) {
    if (g_.size() > 0) {
      EFCOMM_CUDA_CHECK(cudaMemset(g_.data(), 0, g_.size()));
      cuda::settleLegacyStream();
    }
  }

  // msgs[i] (sizes[i] bytes) from worker i, null for a worker that did not participate. Every
  // message is read and its checksum verified first (as Aggregate parses them all first), and the
  // round is added into a second buffer swapped in at the end: a message damaged in transit, or a
  // well-formed one whose content breaks the format's rules (a faulty peer), leaves g as it was.
  void update(const std::vector<const uint8_t*>& msgs, const std::vector<size_t>& sizes, cudaStream_t s) {
    std::vector<cuda::DeviceMessageHeader> headers(msgs.size());
    for (size_t i = 0; i < msgs.size(); ++i)
      if (msgs[i]) headers[i] = cuda::readMessage(msgs[i], sizes[i], s);
    spare_.resize(g_.size());
    if (g_.size() > 0) {
      if (additive_)
        cuda::copy(spare_.data(), g_.data(), g_.size(), s);
      else
        EFCOMM_CUDA_CHECK(cudaMemsetAsync(spare_.data(), 0, spare_.size(), s));
    }
    const TensorView next{spare_.data(), dtype_, shape_};
    for (size_t i = 0; i < msgs.size(); ++i)
      if (msgs[i]) cuda::accumulateRead(headers[i], msgs[i], sizes[i], next, host_.weights()[i], s);
    std::swap(g_, spare_);
  }

  ConstTensorView estimate() const { return {g_.data(), dtype_, shape_}; }

  StateDict stateDict() const {
    StateDict sd = host_.stateDict();
    sd.meta["shape"] = feedback::shapeText(shape_);
    std::vector<uint8_t> g(g_.size());
    if (!g.empty()) EFCOMM_CUDA_CHECK(cudaMemcpy(g.data(), g_.data(), g.size(), cudaMemcpyDeviceToHost));
    sd.tensors["g"] = StateTensor::fromView({g.data(), dtype_, shape_});
    return sd;
  }

  // Validates with a fresh host Aggregate (MismatchError as Aggregate's), then copies g in.
  void loadStateDict(const StateDict& state) {
    Aggregate check(host_.spec(), host_.n(), host_.weights(), shape_, dtype_);
    check.loadStateDict(state);
    const ConstTensorView g = check.estimate();
    if (g.nbytes() > 0) {
      EFCOMM_CUDA_CHECK(cudaMemcpy(g_.data(), g.data, g.nbytes(), cudaMemcpyHostToDevice));
      cuda::settleLegacyStream();
    }
  }

 private:
  // The spec, n and weights, validated, and the state's format: an Aggregate of no elements (a
  // host g of the tensor's size would be a second copy of it, never used).
  Aggregate host_;
  bool additive_;
  std::vector<int64_t> shape_;
  DType dtype_;
  cuda::DeviceBuffer g_, spare_;  // spare_: the next round's g, swapped in when the round is whole
};

void copyOut(const ConstTensorView& est, const TensorView& out, cudaStream_t s) {
  cuda::copy(out.data, est.data, est.nbytes(), s);
}

// The messages of a gathered round: device block pointers (null for a status block) and the
// first failure among the status blocks.
struct Gathered {
  std::vector<const uint8_t*> msgs;
  std::vector<size_t> sizes;
};

Gathered splitBlocks(const DeviceByteBlocks& blocks, int n, int me, Failure& first, ReducerStats& st,
                     cudaStream_t s) {
  Gathered g{std::vector<const uint8_t*>(static_cast<size_t>(n), nullptr), std::vector<size_t>(static_cast<size_t>(n))};
  for (int r = 0; r < n; ++r) {
    const size_t i = static_cast<size_t>(r);
    if (r != me) st.bytesReceived += blocks.blockBytes(i);
    if (blocks.blockBytes(i) == kStatusBytes) {
      keepFirst(first, deviceStatus(blocks.block(i), s));
      continue;
    }
    g.msgs[i] = blocks.block(i);
    g.sizes[i] = blocks.blockBytes(i);
  }
  return g;
}

// A worker and the aggregate it folds into (allgather: of n workers; allreduce: of the one
// summed message): the state of both, as the host algorithms keep it ("worker.", "aggregate.").
class DevicePair : public Algorithm {
 public:
  StateDict stateDict() const override {
    cuda::DeviceGuard guard(s_.device->device());  // the copies out of the backend's device
    StateDict sd;
    sd.merge(worker_->stateDict(), "worker.");
    sd.merge(aggregate_->stateDict(), "aggregate.");
    return sd;
  }

  void loadStateDict(const StateDict& state) override {
    cuda::DeviceGuard guard(s_.device->device());  // the state's allocations on the backend's device
    std::unique_ptr<cuda::DeviceFeedback> worker;
    std::unique_ptr<DeviceAggregate> aggregate;
    build(worker, aggregate);
    worker->loadStateDict(state.sub("worker."));
    aggregate->loadStateDict(state.sub("aggregate."));
    worker_ = std::move(worker);
    aggregate_ = std::move(aggregate);
  }

 protected:
  DevicePair(const SlotSetup& s, int workers, std::vector<double> weights)
      : s_(s), workers_(workers), weights_(std::move(weights)) {
    build(worker_, aggregate_);
  }

  // A fresh worker and aggregate (a failed first round of the allreduce algorithm): both made
  // before either is replaced; the round's error is the one to report.
  void restart() {
    try {
      std::unique_ptr<cuda::DeviceFeedback> worker;
      std::unique_ptr<DeviceAggregate> aggregate;
      build(worker, aggregate);
      worker_ = std::move(worker);
      aggregate_ = std::move(aggregate);
    } catch (const std::exception&) {
    }
  }

  SlotSetup s_;
  std::unique_ptr<cuda::DeviceFeedback> worker_;
  std::unique_ptr<DeviceAggregate> aggregate_;

 private:
  void build(std::unique_ptr<cuda::DeviceFeedback>& worker, std::unique_ptr<DeviceAggregate>& aggregate) const {
    cuda::DeviceGuard guard(s_.device->device());
    worker = std::make_unique<cuda::DeviceFeedback>(s_.worker, s_.compressor);
    aggregate = std::make_unique<DeviceAggregate>(s_.feedback, workers_, weights_, s_.shape, s_.dtype);
  }

  int workers_;
  std::vector<double> weights_;
};

// ---- allgather -------------------------------------------------------------------------------

class DeviceAllgather final : public DevicePair {
 public:
  explicit DeviceAllgather(const SlotSetup& s) : DevicePair(s, s.n, s.weights) {}

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream stream) override {
    cuda::DeviceGuard guard(s_.device->device());
    const cudaStream_t s = native(stream);
    auto t0 = Clock::now();
    mine_.run(s_.rank, s, [&](cuda::DeviceBuffer& b) { return worker_->step(x, b, step, stream); });
    st.compressSeconds += secondsSince(t0);

    t0 = Clock::now();
    s_.device->allgatherv(mine_.buf.data(), mine_.size, gathered_, stream)->wait();
    st.commSeconds += secondsSince(t0);
    st.bytesSent += mine_.size * static_cast<uint64_t>(s_.n - 1);

    t0 = Clock::now();
    Failure first;
    const Gathered g = splitBlocks(gathered_, s_.n, s_.rank, first, st, s);
    aggregate_->update(g.msgs, g.sizes, s);
    st.aggregateSeconds += secondsSince(t0);
    if (first) {
      EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));  // no copy into the kept buffers outlives the call
      raise(backend, s_.context, first, mine_.error);
    }
    copyOut(aggregate_->estimate(), out, s);
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

 private:
  DeviceAttempt mine_;
  DeviceByteBlocks gathered_;
};

// ---- reduce_scatter --------------------------------------------------------------------------

// As the host ReduceScatterAlgorithm: rank c owns chunk c; a worker per chunk, the owner's
// aggregate of its chunk, and a mirror per chunk of what the owners broadcast. The owner's
// re-compression is EF21-BC's b += C(g - b) (Gruntkowska et al. 2023) for the EF21 family and
// EControl, here an EF21 worker started from zero (ef21:init=compressed) stepping on the owner's
// g, whose estimate is b; for EF14 (the round's sum) EF14 on g, and with `none` plain C(g), both
// broadcast as the chunk's value. Its state dict keeps the device layout ("owner_broadcast.").
class DeviceReduceScatter final : public Algorithm {
 public:
  explicit DeviceReduceScatter(const SlotSetup& s) : s_(s), perRound_(aggregatesPerRound(s.feedback)) {
    chunks_ = {ConstTensorView{nullptr, s.dtype, s.shape}.numel(), s.n};
    build(parts_);
  }

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream stream) override {
    cuda::DeviceGuard guard(s_.device->device());
    const cudaStream_t s = native(stream);
    const int n = s_.n;
    const size_t me = static_cast<size_t>(s_.rank);

    // Phase 1: compress every chunk with its worker; chunk c goes to rank c.
    std::vector<DeviceAttempt>& parts = attempts_;
    parts.resize(static_cast<size_t>(n));
    auto t0 = Clock::now();
    for (int c = 0; c < n; ++c) {
      cuda::DeviceFeedback& worker = *parts_.workers[static_cast<size_t>(c)];
      parts[static_cast<size_t>(c)].run(s_.rank, s, [&](cuda::DeviceBuffer& b) {
        return worker.step(chunks_.of(x, c), b, step, stream);
      });
    }
    st.compressSeconds += secondsSince(t0);
    std::vector<size_t> counts;
    size_t total = 0;
    for (const DeviceAttempt& a : parts) {
      counts.push_back(a.size);
      total += a.size;
    }
    send_.resize(total);
    for (size_t c = 0, at = 0; c < parts.size(); at += parts[c].size, ++c)
      cuda::copy(static_cast<uint8_t*>(send_.data()) + at, parts[c].buf.data(), parts[c].size, s);
    t0 = Clock::now();
    s_.device->alltoallv(send_.data(), counts, received_, stream)->wait();
    st.commSeconds += secondsSince(t0);
    st.bytesSent += total - counts[me];

    // The owner folds its chunk's messages (a rank that failed is absent) and re-compresses.
    t0 = Clock::now();
    Failure first;
    const Gathered g = splitBlocks(received_, n, s_.rank, first, st, s);
    DeviceAttempt& reduced = reduced_;
    reduced.run(s_.rank, s, [&](cuda::DeviceBuffer& b) {
      parts_.owner->update(g.msgs, g.sizes, s);
      return parts_.ownerFeedback->step(parts_.owner->estimate(), b, perRound_ ? std::optional<uint64_t>(step)
                                                                                : std::nullopt, stream);
    });
    st.aggregateSeconds += secondsSince(t0);

    // Phase 2: every rank gathers the owners' blocks: the first failure the owner saw (or none),
    // then its message unless its own re-compression failed.
    size_t blockBytes = reduced.size;
    if (reduced.ok()) {
      blockBytes = kStatusBytes + reduced.size;
      block_.resize(blockBytes);
      uploadSync(statusBlock(first), block_.data(), s);
      cuda::copy(static_cast<uint8_t*>(block_.data()) + kStatusBytes, reduced.buf.data(), reduced.size, s);
    } else {
      block_.resize(blockBytes);
      cuda::copy(block_.data(), reduced.buf.data(), blockBytes, s);
    }
    DeviceByteBlocks& owners = owners_;
    t0 = Clock::now();
    s_.device->allgatherv(block_.data(), blockBytes, owners, stream)->wait();
    st.commSeconds += secondsSince(t0);
    st.bytesSent += blockBytes * static_cast<uint64_t>(n - 1);

    t0 = Clock::now();
    for (int c = 0; c < n; ++c) {
      const size_t i = static_cast<size_t>(c);
      if (i != me) st.bytesReceived += owners.blockBytes(i);
      EFCOMM_CHECK_T(CorruptMessageError, owners.blockBytes(i) >= kStatusBytes, s_.context, ": rank ", c, " sent a ",
                     owners.blockBytes(i), "-byte block");
      keepFirst(first, deviceStatus(owners.block(i), s));
      if (owners.blockBytes(i) == kStatusBytes) continue;  // owner failed: its chunk keeps its value
      parts_.mirrors[i]->update({owners.block(i) + kStatusBytes}, {owners.blockBytes(i) - kStatusBytes}, s);
    }
    st.aggregateSeconds += secondsSince(t0);
    if (first) {
      EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));  // no copy into the kept buffers outlives the call
      raise(backend, s_.context, first, reduced.error ? reduced.error : firstError(parts));
    }
    for (int c = 0; c < n; ++c) copyOut(parts_.mirrors[static_cast<size_t>(c)]->estimate(), chunks_.of(out, c), s);
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

  StateDict stateDict() const override {
    cuda::DeviceGuard guard(s_.device->device());  // the copies out of the backend's device
    StateDict sd;
    for (size_t c = 0; c < parts_.workers.size(); ++c) {
      sd.merge(parts_.workers[c]->stateDict(), "chunk/" + std::to_string(c) + "/worker.");
      sd.merge(parts_.mirrors[c]->stateDict(), "chunk/" + std::to_string(c) + "/mirror.");
    }
    sd.merge(parts_.owner->stateDict(), "owner.");
    sd.merge(parts_.ownerFeedback->stateDict(), "owner_broadcast.");
    return sd;
  }

  void loadStateDict(const StateDict& state) override {
    cuda::DeviceGuard guard(s_.device->device());  // the state's allocations on the backend's device
    Parts p;
    build(p);
    for (size_t c = 0; c < p.workers.size(); ++c) {
      p.workers[c]->loadStateDict(state.sub("chunk/" + std::to_string(c) + "/worker."));
      p.mirrors[c]->loadStateDict(state.sub("chunk/" + std::to_string(c) + "/mirror."));
    }
    p.owner->loadStateDict(state.sub("owner."));
    p.ownerFeedback->loadStateDict(state.sub("owner_broadcast."));
    parts_ = std::move(p);
  }

 private:
  struct Parts {
    std::vector<std::unique_ptr<cuda::DeviceFeedback>> workers;
    std::unique_ptr<DeviceAggregate> owner;
    std::unique_ptr<cuda::DeviceFeedback> ownerFeedback;
    std::vector<std::unique_ptr<DeviceAggregate>> mirrors;
  };

  static std::exception_ptr firstError(const std::vector<DeviceAttempt>& parts) {
    for (const DeviceAttempt& a : parts)
      if (a.error) return a.error;
    return nullptr;
  }

  void build(Parts& p) const {
    cuda::DeviceGuard guard(s_.device->device());
    const std::string mirror = perRound_ ? "none" : "ef21";
    for (int c = 0; c < s_.n; ++c) {
      p.workers.push_back(std::make_unique<cuda::DeviceFeedback>(s_.worker, chunks_.compressorFor(s_.compressor, c)));
      p.mirrors.push_back(std::make_unique<DeviceAggregate>(mirror, 1, std::vector<double>{1.0},
                                                            std::vector<int64_t>{chunks_.length(c)}, s_.dtype));
    }
    const std::vector<int64_t> own{chunks_.length(s_.rank)};
    p.owner = std::make_unique<DeviceAggregate>(s_.feedback, s_.n, s_.weights, own, s_.dtype);
    p.ownerFeedback =
        std::make_unique<cuda::DeviceFeedback>(perRound_ ? s_.feedback : "ef21:init=compressed",
                                               chunks_.compressorFor(s_.compressor, s_.rank));
  }

  SlotSetup s_;
  bool perRound_;  // the aggregate is the round's sum (none, EF14), not a running estimate
  Chunks chunks_;
  Parts parts_;
  // Kept between calls (allocated once): the chunks' attempts, the owner's, the exchanges.
  std::vector<DeviceAttempt> attempts_;
  DeviceAttempt reduced_;
  DeviceByteBlocks received_, owners_;
  cuda::DeviceBuffer send_, block_;
};

// ---- allreduce ------------------------------------------------------------------------------

// As the host AllreduceAlgorithm for identity, cast and RandK: the descriptors agree through the
// host, the weighted payloads are summed by the device backend's allreduceSum, and the one
// resulting message (this rank's header with the summed payload, sealed on the device) folds
// into a one-worker aggregate.
class DeviceAllreduce final : public DevicePair {
 public:
  explicit DeviceAllreduce(const SlotSetup& s)
      : DevicePair(s, 1, {1.0}),
        weights_(s.weights.empty() ? std::vector<double>(static_cast<size_t>(s.n), 1.0 / s.n) : s.weights) {}

  void run(Backend& backend, const ConstTensorView& x, const TensorView& out, uint64_t step, ReducerStats& st,
           cuda::Stream stream) override {
    cuda::DeviceGuard guard(s_.device->device());
    const cudaStream_t s = native(stream);
    DeviceAttempt& mine = mine_;
    std::optional<Descriptor> own;
    size_t headerBytes = 0;
    const bool wasInitialized = worker_->initialized();
    auto t0 = Clock::now();
    mine.run(s_.rank, s, [&](cuda::DeviceBuffer& b) {
      const size_t size = worker_->step(x, b, step, stream);
      const cuda::DeviceMessageHeader h = cuda::readMessage(b.data(), size, s);
      own = Descriptor{h.id, h.flags, h.params, h.payloadBytes};
      headerBytes = h.headerBytes;
      return size;
    });
    st.compressSeconds += secondsSince(t0);

    // Round 1: the descriptors (or status blocks) through the host.
    const std::vector<uint8_t> desc = mine.ok() ? own->encode() : statusBlock(mine.failure);
    Failure first;
    t0 = Clock::now();
    const std::optional<Descriptor> layout = agreeLayout(backend, desc, s_, st, first);
    double comm = secondsSince(t0);

    // Round 2: the weighted payloads, summed on the device.
    if (layout) {
      const DType values = payloadDType(*layout, s_);
      const size_t item = itemSize(values);
      EFCOMM_CHECK_T(CorruptMessageError, layout->payloadBytes % item == 0, s_.context, ": a ", layout->payloadBytes,
                     "-byte payload does not fit the ", dtypeName(values), " layout");
      const size_t count = layout->payloadBytes / item;
      sum_.resize(layout->payloadBytes);
      if (mine.ok()) {
        cuda::scaleValues(static_cast<const uint8_t*>(mine.buf.data()) + headerBytes, sum_.data(), count, values,
                          weights_[static_cast<size_t>(s_.rank)], s);
      } else if (count > 0) {
        EFCOMM_CUDA_CHECK(cudaMemsetAsync(sum_.data(), 0, sum_.size(), s));
      }
      t0 = Clock::now();
      s_.device->allreduceSum(sum_.data(), count, values, stream)->wait();
      comm += secondsSince(t0);
      const uint64_t traffic = allreduceTraffic(count, item, s_.n, s_.rank);
      st.bytesSent += traffic;
      st.bytesReceived += traffic;

      t0 = Clock::now();
      const cuda::DeviceMessageLayout ml =
          cuda::beginMessage(msg_, layout->id, s_.dtype, s_.shape, layout->flags, layout->params, count * item, s);
      cuda::copy(static_cast<uint8_t*>(msg_.data()) + ml.headerBytes, sum_.data(), count * item, s);
      const size_t size = cuda::sealMessage(msg_, ml, count * item, s);
      aggregate_->update({static_cast<const uint8_t*>(msg_.data())}, {size}, s);
      st.aggregateSeconds += secondsSince(t0);
    }
    st.commSeconds += comm;
    if (first) {
      EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));  // no copy into the kept buffers outlives the call
      if (!wasInitialized) restart();  // a failed first round never happened (the host's run says why)
      raise(backend, s_.context, first, mine.error);
    }
    copyOut(aggregate_->estimate(), out, s);
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
  }

 private:
  std::vector<double> weights_;  // the ranks' weights on their payloads
  DeviceAttempt mine_;
  cuda::DeviceBuffer sum_, msg_;
};

}  // namespace

std::unique_ptr<Algorithm> makeDeviceAlgorithm(const std::string& name, const SlotSetup& setup) {
  if (name == "allgather") return std::make_unique<DeviceAllgather>(setup);
  if (name == "reduce_scatter") return std::make_unique<DeviceReduceScatter>(setup);
  if (name == "allreduce") {
    const std::string why = allreduceUnsupported(setup.compressor, true);
    EFCOMM_CHECK(why.empty(), setup.context, ": ", why);
    return std::make_unique<DeviceAllreduce>(setup);
  }
  throw InvalidArgument("Reducer: unknown algorithm '" + name +
                        "'; expected allgather, reduce_scatter, allreduce or auto");
}

}  // namespace efcomm::comm
