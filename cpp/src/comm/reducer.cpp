#include "efcomm/reducer.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <functional>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <utility>

#include "comm/backend.hpp"
#include "comm/reducer_algorithms.hpp"
#include "common/bytes.hpp"
#include "common/spec.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/message.hpp"
#include "efcomm/mpi.hpp"
#include "feedback/common.hpp"

namespace efcomm {

struct Reducer::Slot {
  std::string algorithm;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  uint64_t step = 0;  // calls of this key: the compressors' step, equal on every rank
  std::unique_ptr<comm::Algorithm> impl;
};

// One allreduceAsync call, queued for the worker thread.
struct Reducer::Job final : Work {
  ConstTensorView x;
  TensorView out;
  std::string key;
  cuda::Stream stream;
  std::string rejected;  // a call made by Reducer::reject
  uint64_t buckets = 0;  // a bucket of an allreduceCoalesced call of this many buckets (0: none)
  std::string layout;    // its tensors' shapes: lists that differ but fuse alike must not agree
  // Aborts the reducer's communicator (set by enqueue: the reducer outlives its unfinished jobs).
  std::function<void(const CollectiveTimeout&)> abortCall;
  mutable std::mutex mutex;
  std::condition_variable done;
  bool finished = false;
  std::exception_ptr error;

  Job(const ConstTensorView& x_, const TensorView& out_, std::string key_, cuda::Stream stream_)
      : x(x_), out(out_), key(std::move(key_)), stream(stream_) {}

  void finish(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    error = std::move(e);
    finished = true;
    done.notify_all();
  }
  // A timeout here does what Work promises: the call is aborted (the reducer's communicator
  // fails its pending and later collectives, as after any collective timeout) and has ended
  // before wait throws, so the caller may free its buffers.
  void wait(std::optional<double> timeoutSeconds) override {
    std::unique_lock<std::mutex> lock(mutex);
    if (timeoutSeconds) {
      EFCOMM_CHECK(std::isfinite(*timeoutSeconds) && *timeoutSeconds >= 0,
                   "Work.wait: the timeout must be finite and >= 0 seconds, got ", *timeoutSeconds);
      if (!done.wait_until(lock, comm::deadlineAfter(*timeoutSeconds), [&] { return finished; })) {
        const CollectiveTimeout timedOut("Reducer.allreduce_async(key '" + key + "'): not completed within " +
                                             detail::concat(*timeoutSeconds) +
                                             " s; the call and the reducer's communicator are aborted",
                                         {});
        lock.unlock();
        if (abortCall) abortCall(timedOut);
        lock.lock();
        done.wait(lock, [&] { return finished; });  // its collectives now fail at once
        if (!error) return;  // it completed meanwhile
        throw timedOut;
      }
    } else {
      done.wait(lock, [&] { return finished; });
    }
    if (error) std::rethrow_exception(error);
  }
  bool completed() const override {
    std::lock_guard<std::mutex> lock(mutex);
    return finished;
  }
};

namespace {

// The agreement header: fixed size so the exchange is one small allgatherv whatever the shape.
// Fields are little-endian uint64. Shapes with more than kHeaderDims dimensions are compared
// through the shape hash; the listed dims only serve the error message.
constexpr uint64_t kHeaderMagic = 0x31524455444346ull;  // "FCDUDR1"
constexpr size_t kHeaderDims = 8;
enum HeaderField : size_t {
  kMagic, kKeyHash, kCall, kSpecHash, kStatus, kDType, kNdim, kNumel, kShapeHash, kDims,
  kFieldCount = kDims + kHeaderDims
};
constexpr size_t kHeaderBytes = kFieldCount * sizeof(uint64_t);

// The weights as saved in a state dict: each the shortest text that reads back to it, comma-separated.
std::string weightsText(const std::vector<double>& weights) {
  std::string s;
  for (const double w : weights) s += (s.empty() ? "" : ",") + formatDouble(w);
  return s;
}

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

uint64_t hashString(const std::string& s) { return fnv1a(s.data(), s.size()); }

using Header = std::vector<uint64_t>;

Header readHeader(const ByteBlocks& blocks, size_t rank) {
  EFCOMM_CHECK_T(MismatchError, blocks.blockBytes(rank) == kHeaderBytes, "Reducer.allreduce: rank ",
                 rank, " sent a ", blocks.blockBytes(rank), "-byte header, expected ", kHeaderBytes,
                 " (another collective in this slot?)");
  Header h(kFieldCount);
  for (size_t f = 0; f < kFieldCount; ++f) h[f] = loadAs<uint64_t>(blocks.block(rank) + f * sizeof(uint64_t));
  EFCOMM_CHECK_T(MismatchError, h[kMagic] == kHeaderMagic, "Reducer.allreduce: rank ", rank,
                 " is not in a Reducer call (bad header magic)");
  return h;
}

// keyHash: what this rank's header carries for `key` (hashString(key), salted in coalesced calls).
std::string describe(const Header& h, const std::string& key, uint64_t keyHash) {
  std::ostringstream os;
  if (h[kKeyHash] == keyHash) {
    os << "key '" << key << "'";
  } else {
    os << "key hash 0x" << std::hex << h[kKeyHash] << std::dec;
  }
  os << ", call #" << h[kCall] << ", ";
  if (h[kDType] <= static_cast<uint64_t>(DType::kFloat16)) os << dtypeName(static_cast<DType>(h[kDType]));
  os << " [";
  const uint64_t nd = h[kNdim];
  for (uint64_t d = 0; d < nd && d < kHeaderDims; ++d) os << (d ? "," : "") << static_cast<int64_t>(h[kDims + d]);
  if (nd > kHeaderDims) os << ",...";
  os << "] (" << h[kNumel] << " elements)";
  return os.str();
}

// Why x/out cannot be reduced under `key` on this rank; empty when they can.
// `device`: the backend's CUDA device on a device reducer, else -1.
std::string checkArgs(const ConstTensorView& x, const TensorView& out, const std::vector<int64_t>* slotShape,
                      DType slotDType, int device) {
  try {
    if (x.dtype != DType::kFloat32 && x.dtype != DType::kFloat64)
      return "dtype must be float32 or float64, got " + dtypeName(x.dtype);
    if (out.dtype != x.dtype) return "out has dtype " + dtypeName(out.dtype) + ", x has " + dtypeName(x.dtype);
    if (out.numel() != x.numel())
      return "out has " + std::to_string(out.numel()) + " elements, x has " + std::to_string(x.numel());
    if ((x.data == nullptr || out.data == nullptr) && x.numel() > 0) return "null data pointer";
    if (device >= 0 && x.numel() > 0 &&
        !(cuda::isDevicePointer(x.data, device) && cuda::isDevicePointer(out.data, device))) {
      if (!(cuda::isDevicePointer(x.data) && cuda::isDevicePointer(out.data)))
        return "x and out must be device memory on a device reducer (CUDA arrays: torch CUDA tensors, CuPy arrays)";
      return "x and out must be on the communicator's CUDA device " + std::to_string(device) +
             " (torch.cuda.set_device / tensor.to('cuda:" + std::to_string(device) + "'))";
    }
    if (slotShape != nullptr && (*slotShape != x.shape || slotDType != x.dtype))
      return "the key was first reduced as " + dtypeName(slotDType) + " " + shapeString(*slotShape) +
             ", now " + dtypeName(x.dtype) + " " + shapeString(x.shape);
  } catch (const Error& e) {
    return e.what();
  }
  return {};
}

std::vector<uint8_t> encodeHeader(uint64_t keyHash, uint64_t call, uint64_t specHash, bool ok,
                                  const ConstTensorView& x) {
  Header h(kFieldCount, 0);
  h[kMagic] = kHeaderMagic;
  h[kKeyHash] = keyHash;
  h[kCall] = call;
  h[kSpecHash] = specHash;
  h[kStatus] = ok ? 0 : 1;
  if (ok) {
    h[kDType] = static_cast<uint64_t>(x.dtype);
    h[kNdim] = x.shape.size();
    h[kNumel] = static_cast<uint64_t>(x.numel());
    h[kShapeHash] = fnv1a(x.shape.data(), x.shape.size() * sizeof(int64_t));
    for (size_t d = 0; d < x.shape.size() && d < kHeaderDims; ++d) h[kDims + d] = static_cast<uint64_t>(x.shape[d]);
  }
  std::vector<uint8_t> bytes(kHeaderBytes);
  for (size_t f = 0; f < kFieldCount; ++f) storeAs<uint64_t>(bytes.data() + f * sizeof(uint64_t), h[f]);
  return bytes;
}

}  // namespace

Reducer::Reducer(std::shared_ptr<DeviceBackend> device, std::string compressorSpec, std::string feedbackSpec,
                 ReducerOptions options)
    : Reducer(device ? std::shared_ptr<Backend>(device, &device->host()) : nullptr, std::move(compressorSpec),
              std::move(feedbackSpec), std::move(options)) {
  device_ = std::move(device);
  if (options_.algorithm == "allreduce") {
    const std::string why = comm::allreduceUnsupported(compressorSpec_, true);
    EFCOMM_CHECK(why.empty(), "Reducer: ", why);
  }
}

Reducer::Reducer(std::shared_ptr<Backend> backend, std::string compressorSpec, std::string feedbackSpec,
                 ReducerOptions options)
    : backend_(std::move(backend)), options_(std::move(options)) {
  EFCOMM_CHECK(backend_ != nullptr, "Reducer: null backend");
  std::shared_ptr<Compressor> c = makeCompressor(compressorSpec);
  compressorSpec_ = c->spec();
  const bool ef21w = feedback::parseConfig(feedbackSpec, /*receiver=*/true).name == "ef21w";
  if (!ef21w) workerSpec_ = feedbackSpec_ = makeFeedback(feedbackSpec, c)->spec();
  const std::string& alg = options_.algorithm;
  EFCOMM_CHECK(alg == "allgather" || alg == "reduce_scatter" || alg == "allreduce" || alg == "auto",
               "Reducer: unknown algorithm '", alg, "'; expected allgather, reduce_scatter, allreduce or auto");
  if (alg == "allreduce") {
    const std::string why = comm::allreduceUnsupported(compressorSpec_);
    EFCOMM_CHECK(why.empty(), "Reducer: ", why);
  }
  EFCOMM_CHECK(options_.weights.empty() || options_.weights.size() == static_cast<size_t>(backend_->size()),
               "Reducer: ", options_.weights.size(), " weights for ", backend_->size(), " ranks");
  if (ef21w) weighWorker(feedbackSpec, c);
  Aggregate check(feedbackSpec_, backend_->size(), options_.weights, {0}, DType::kFloat32);  // validates weights
  EFCOMM_CHECK(options_.bucketBytes > 0, "Reducer: bucketBytes must be > 0");
  if (options_.link) {
    const LinkModel& l = *options_.link;
    EFCOMM_CHECK(std::isfinite(l.alphaSeconds) && l.alphaSeconds >= 0 && std::isfinite(l.betaSecondsPerByte) &&
                     l.betaSecondsPerByte >= 0,
                 "Reducer: link model needs finite alpha, beta >= 0");
  }
  specHash_ = hashString(compressorSpec_ + "|" + feedbackSpec_ + "|" + alg);
  specHash_ = fnv1a(options_.weights.data(), options_.weights.size() * sizeof(double), specHash_);
}

void Reducer::weighWorker(const std::string& spec, const std::shared_ptr<Compressor>& compressor) {
  // EF21-W (docs/algorithms.md): worker i sends C(v / (n w_i) - g_i) and the receiver sums
  // w_i g_i, so a rank's worker needs its own weight: weights[rank] (1/n each by default) and n the
  // communicator's size. Only the method and init are common to all ranks (hashed, saved).
  const int n = size();
  if (options_.weights.empty()) options_.weights.assign(static_cast<size_t>(n), 1.0 / n);
  const double w = options_.weights[static_cast<size_t>(rank())];
  const feedback::Config given = feedback::parseConfig(spec, /*receiver=*/true);
  const std::string init = given.initFull ? "full" : "compressed";
  if (given.weighted) {
    EFCOMM_CHECK(given.n == n && std::abs(given.weight - w) <= 1e-12 * w, "Reducer: '", spec, "' gives weight ",
                 given.weight, " and n ", given.n, ", but rank ", rank(), " of ", n, " has weights[", rank(), "] = ", w,
                 "; pass 'ef21w:init=", init, "' and weights=[...]: the Reducer gives each rank's worker its weight");
  }
  workerSpec_ = makeFeedback("ef21w:weight=" + formatDouble(w) + ",n=" + std::to_string(n) + ",init=" + init,
                             compressor)
                    ->spec();
  feedbackSpec_ = "ef21w:init=" + init;
}

Reducer::~Reducer() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    wake_.notify_all();
  }
  if (thread_.joinable()) thread_.join();
}

int Reducer::rank() const { return backend_->rank(); }
int Reducer::size() const { return backend_->size(); }

std::string Reducer::chooseAlgorithm(const ConstTensorView& x) {
  if (options_.algorithm != "auto") return options_.algorithm;
  if (!options_.link) options_.link = comm::measureLink(*backend_);
  std::string best = "allgather";
  double bestSeconds = comm::predictSeconds(best, *options_.link, compressorSpec_, size(), x.numel(), x.dtype);
  for (const char* alg : {"reduce_scatter", "allreduce"}) {
    if (std::string(alg) == "allreduce" && !comm::allreduceUnsupported(compressorSpec_, onDevice()).empty()) continue;
    const double t = comm::predictSeconds(alg, *options_.link, compressorSpec_, size(), x.numel(), x.dtype);
    if (t < bestSeconds) {
      best = alg;
      bestSeconds = t;
    }
  }
  return best;
}

void Reducer::allreduce(const ConstTensorView& x, const TensorView& out, const std::string& key,
                        cuda::Stream stream) {
  runInOrder(std::make_shared<Job>(x, out, key, stream));
}

void Reducer::runInOrder(const std::shared_ptr<Job>& job) {
  bool queued;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queued = thread_.joinable() && std::this_thread::get_id() != thread_.get_id();
  }
  if (queued) {
    enqueue(job)->wait();
  } else {
    const auto call = claim("Reducer.allreduce(key '" + job->key + "')");
    reduceNow(*job);
  }
}

std::unique_lock<std::mutex> Reducer::claim(const std::string& what) const {
  std::unique_lock<std::mutex> call(callMutex_, std::try_to_lock);
  EFCOMM_CHECK(call.owns_lock(), what,
               ": another thread is inside a call of this Reducer; a Reducer's blocking calls are made by one "
               "thread at a time (serialize them, use one Reducer per thread, or issue allreduce_async calls, "
               "which run in the order made)");
  return call;
}

void Reducer::reject(const std::string& key, const std::string& error) {
  EFCOMM_CHECK(!error.empty(), "Reducer.reject: the error must not be empty");
  auto job = std::make_shared<Job>(ConstTensorView{nullptr, DType::kFloat32, {0}},
                                   TensorView{nullptr, DType::kFloat32, {0}}, key, nullptr);
  job->rejected = error;
  runInOrder(job);
  throw InvalidArgument(error);  // not reached: the call throws it
}

std::shared_ptr<Work> Reducer::allreduceAsync(const ConstTensorView& x, const TensorView& out, const std::string& key,
                                              cuda::Stream stream) {
  return enqueue(std::make_shared<Job>(x, out, key, stream));
}

std::shared_ptr<Work> Reducer::enqueue(const std::shared_ptr<Job>& job) {
  job->abortCall = [this](const CollectiveTimeout& e) {
    std::shared_ptr<Backend> backend;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      backend = backend_;
    }
    backend->abort(e);
  };
  // An MPI initialized below MPI_THREAD_SERIALIZED may only be called from its own thread: the
  // call then runs here and the Work is complete when returned.
  const std::optional<MpiThreadLevel> level = mpiThreadLevel(*backend_);
  if (level && *level < MpiThreadLevel::kSerialized) {
    std::exception_ptr error;
    try {
      const auto call = claim("Reducer.allreduce_async(key '" + job->key + "')");
      reduceNow(*job);
    } catch (...) {
      error = std::current_exception();
    }
    job->finish(error);
    return job;
  }
  std::lock_guard<std::mutex> lock(mutex_);
  if (!thread_.joinable()) {
    thread_ = std::thread([this] {
      // The device reducer's worker works on the backend's device only (its DeviceGuards would
      // otherwise restore this new thread's device 0, making a context there).
      if (onDevice()) {
        try {
          cuda::setDevice(device_->device());
        } catch (...) {  // each call sets its device again and reports a failure itself
        }
      }
      std::unique_lock<std::mutex> lock(mutex_);
      for (;;) {
        wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
        if (queue_.empty()) return;  // stopping, nothing left
        std::shared_ptr<Job> j = queue_.front();
        queue_.pop_front();
        busy_ = true;
        lock.unlock();
        std::exception_ptr error;
        try {
          // A call on its caller's thread that began before this thread existed finishes first.
          const std::lock_guard<std::mutex> call(callMutex_);
          reduceNow(*j);
        } catch (...) {
          error = std::current_exception();
        }
        j->finish(error);
        lock.lock();
        busy_ = false;
        idle_.notify_all();
      }
    });
  }
  queue_.push_back(job);
  wake_.notify_all();
  return job;
}

void Reducer::rebind(std::shared_ptr<Backend> backend) {
  EFCOMM_CHECK(!onDevice(), "Reducer.rebind: a device reducer keeps its NCCL communicator");
  EFCOMM_CHECK(backend != nullptr, "Reducer.rebind: null backend");
  EFCOMM_CHECK(backend->rank() == rank() && backend->size() == size(), "Reducer.rebind: the backend is rank ",
               backend->rank(), " of ", backend->size(), ", this reducer rank ", rank(), " of ", size());
  drain();
  const std::lock_guard<std::mutex> call(callMutex_);  // after a call on another thread
  std::lock_guard<std::mutex> lock(mutex_);  // the worker thread reads backend_ after taking a job
  backend_ = std::move(backend);
}

void Reducer::drain() const {
  std::unique_lock<std::mutex> lock(mutex_);
  if (thread_.joinable() && std::this_thread::get_id() == thread_.get_id()) return;
  idle_.wait(lock, [&] { return queue_.empty() && !busy_; });
}

void Reducer::allreduceCoalesced(const std::vector<ConstTensorView>& xs, const std::vector<TensorView>& outs,
                                 const std::string& key, cuda::Stream stream) {
  EFCOMM_CHECK(xs.size() == outs.size(), "Reducer.allreduce_coalesced(key '", key, "'): ", xs.size(), " inputs but ",
               outs.size(), " outputs");
  // A bucket's bytes, fused in host memory, or in device memory (the backend's device) on a
  // device reducer.
  std::optional<cuda::DeviceGuard> onBackendDevice;
  if (onDevice()) onBackendDevice.emplace(device_->device());
  std::vector<double> hostFused;
  cuda::DeviceBuffer deviceFused;
  const auto copyBytes = [&](void* dst, const void* src, size_t n) {
    if (n == 0) return;
    if (onDevice()) {
      cuda::copy(dst, src, n, stream);
    } else {
      std::memcpy(dst, src, n);
    }
  };
  if (xs.empty())  // the others (a non-empty list) must not wait for a call that never comes
    reject(key + "#0", detail::concat("Reducer.allreduce_coalesced(key '", key, "'): the list is empty"));
  // The buckets: consecutive tensors of one dtype up to bucketBytes (at least one tensor each).
  std::vector<size_t> ends;
  for (size_t first = 0, last = 0; first < xs.size(); first = last) {
    size_t bytes = 0;
    for (last = first; last < xs.size() && xs[last].dtype == xs[first].dtype &&
                       (last == first || bytes + xs[last].nbytes() <= options_.bucketBytes);
         ++last)
      bytes += xs[last].nbytes();
    ends.push_back(last);
  }
  // Every bucket's agreement carries the number of buckets (Job::buckets): ranks whose lists
  // make different numbers of buckets disagree at the first one, instead of pairing one rank's
  // later buckets with another's next calls.
  const auto reduceBucket = [&](const ConstTensorView& x, const TensorView& out, const std::string& bucketKey,
                                std::string layout) {
    auto job = std::make_shared<Job>(x, out, bucketKey, stream);
    job->buckets = ends.size();
    job->layout = std::move(layout);
    runInOrder(job);
  };
  for (size_t bucket = 0, first = 0; bucket < ends.size(); first = ends[bucket++]) {
    const std::string bucketKey = key + "#" + std::to_string(bucket);
    const size_t last = ends[bucket];
    size_t bytes = 0;
    std::string layout;  // the bucket's tensors' shapes in order, e.g. "[2, 3] [3]"
    for (size_t i = first; i < last; ++i) {
      layout += shapeString(xs[i].shape) + " ";
      // A bad tensor fails its bucket's call on every rank (reject), not this rank alone.
      if (!(outs[i].dtype == xs[i].dtype && outs[i].numel() == xs[i].numel()))
        reject(bucketKey, detail::concat("Reducer.allreduce_coalesced(key '", key, "'): output ", i,
                                         " is not like input ", i));
      bytes += xs[i].nbytes();
    }
    const DType dtype = xs[first].dtype;
    if (dtype != DType::kFloat32 && dtype != DType::kFloat64)
      reject(bucketKey, detail::concat("Reducer.allreduce_coalesced(key '", key, "'): dtype must be float32 or float64, got ",
                                       dtypeName(dtype)));
    if (onDevice()) {
      // A tensor not on the backend's device is reduced alone under the bucket's key: the header
      // agreement then reports it (InvalidArgument here, MismatchError on the other ranks)
      // instead of this rank leaving the collectives.
      for (size_t i = first; i < last; ++i)
        if (xs[i].numel() > 0 && !(cuda::isDevicePointer(xs[i].data, device_->device()) &&
                                   cuda::isDevicePointer(outs[i].data, device_->device())))
          reduceBucket(xs[i], outs[i], bucketKey, shapeString(xs[i].shape));
    }
    uint8_t* p;
    if (onDevice()) {
      deviceFused.resize(bytes);
      p = static_cast<uint8_t*>(deviceFused.data());
    } else {
      hostFused.assign((bytes + sizeof(double) - 1) / sizeof(double), 0.0);
      p = reinterpret_cast<uint8_t*>(hostFused.data());
    }
    for (size_t i = first, at = 0; i < last; at += xs[i].nbytes(), ++i) {
      EFCOMM_CHECK(xs[i].data != nullptr || xs[i].numel() == 0, "Reducer.allreduce_coalesced: null input ", i);
      copyBytes(p + at, xs[i].data, xs[i].nbytes());
    }
    const std::vector<int64_t> shape{static_cast<int64_t>(bytes / itemSize(dtype))};
    reduceBucket(ConstTensorView{p, dtype, shape}, TensorView{p, dtype, shape}, bucketKey, layout);
    for (size_t i = first, at = 0; i < last; at += outs[i].nbytes(), ++i) copyBytes(outs[i].data, p + at, outs[i].nbytes());
    if (onDevice()) cuda::synchronize(stream);  // the fused buffer is reused, then freed
  }
}

void Reducer::reduceNow(const Job& job) {
  const ConstTensorView& x = job.x;
  const TensorView& out = job.out;
  const std::string& key = job.key;
  const cuda::Stream stream = job.stream;
  const std::string& rejected = job.rejected;
  // The collectives of this call carry its key and algorithm in a health monitor's record; later
  // ones (the application's own) carry none.
  struct Unlabel {
    Backend& backend;
    ~Unlabel() { backend.label("", ""); }
  } unlabel{*backend_};
  const auto found = slots_.find(key);
  const Slot* existing = found == slots_.end() ? nullptr : found->second.get();
  const std::string argError =
      !rejected.empty() ? rejected
                        : checkArgs(x, out, existing ? &existing->shape : nullptr,
                                    existing ? existing->dtype : DType::kFloat32, onDevice() ? device_->device() : -1);

  // Header agreement. Every rank sees every header, so every rank reaches the same verdict.
  const uint64_t keyHash =
      job.buckets ? hashString(key) ^ hashString("allreduce_coalesced buckets " + std::to_string(job.buckets) + " of " +
                                                 job.layout)
                  : hashString(key);
  const std::vector<uint8_t> header = encodeHeader(keyHash, calls_, specHash_, argError.empty(), x);
  ByteBlocks headers;
  const auto t0 = comm::Clock::now();
  backend_->label(key, existing ? existing->algorithm : options_.algorithm);
  backend_->allgatherv(header.data(), header.size(), headers)->wait();
  const double agreeSeconds = comm::secondsSince(t0);
  ++calls_;
  if (!rejected.empty()) throw InvalidArgument(rejected);
  EFCOMM_CHECK(argError.empty(), "Reducer.allreduce(key '", key, "'): ", argError);
  const size_t n = static_cast<size_t>(size());
  const Header mine = readHeader(headers, static_cast<size_t>(rank()));
  // A disagreement is also reported to the backend (a health monitor records it), naming the
  // ranks whose header differs from the most common one (ties: the one rank 0 belongs to).
  const auto mismatch = [&](const std::string& what) {
    const std::vector<int> odd =
        comm::oddRanks(n, [&](size_t a, size_t b) { return readHeader(headers, a) == readHeader(headers, b); });
    backend_->report("mismatch", odd, what);
    throw MismatchError(what, odd);
  };
  for (size_t r = 0; r < n; ++r) {
    const Header h = readHeader(headers, r);
    if (h[kStatus] != 0)
      mismatch(detail::concat("Reducer.allreduce(key '", key, "'): rank ", r, " rejected its arguments"));
    if (h[kSpecHash] != mine[kSpecHash])
      mismatch(detail::concat("Reducer.allreduce(key '", key, "'): rank ", r,
                              " uses another compressor, feedback, algorithm or weights than rank ", rank(), " (",
                              compressorSpec_, ", ", feedbackSpec_, ", ", options_.algorithm, ")"));
    if (h != mine)
      mismatch(detail::concat("Reducer.allreduce: ranks disagree: rank ", r, " has ", describe(h, key, keyHash),
                              ", rank ", rank(), " has ", describe(mine, key, keyHash),
                              job.buckets ? detail::concat(" in bucket ", key, " of an allreduce_coalesced call of ",
                                                           job.buckets, " buckets, here of shapes ", job.layout,
                                                           "(the ranks' lists must be alike)")
                                          : std::string()));
  }

  auto it = slots_.find(key);
  if (it == slots_.end()) {
    auto s = std::make_unique<Slot>();
    s->algorithm = chooseAlgorithm(x);
    s->shape = x.shape;
    s->dtype = x.dtype;
    s->impl = comm::makeAlgorithm(s->algorithm, setupFor(key, s->shape, s->dtype));
    it = slots_.emplace(key, std::move(s)).first;
  }
  Slot& s = *it->second;
  ReducerStats& st = stats_[key];
  st.algorithm = s.algorithm;
  st.controlBytes += header.size();
  st.commSeconds += agreeSeconds;
  backend_->label(key, s.algorithm);
  s.impl->run(*backend_, x, TensorView{out.data, out.dtype, x.shape}, s.step++, st, stream);
  ++st.calls;
}

comm::SlotSetup Reducer::setupFor(const std::string& key, const std::vector<int64_t>& shape, DType dtype) const {
  return {compressorSpec_, feedbackSpec_, workerSpec_, options_.weights, rank(), size(), shape, dtype,
          "Reducer.allreduce(key '" + key + "')", device_.get()};
}

std::map<std::string, ReducerStats> Reducer::stats() const {
  drain();
  const std::lock_guard<std::mutex> call(callMutex_);  // after a call on another thread
  return stats_;
}

std::optional<LinkModel> Reducer::link() const {
  drain();
  const std::lock_guard<std::mutex> call(callMutex_);  // after a call on another thread
  return options_.link;
}

StateDict Reducer::stateDict() const {
  drain();
  const std::lock_guard<std::mutex> call(callMutex_);  // after a call on another thread
  StateDict sd;
  sd.meta["reducer.compressor"] = compressorSpec_;
  sd.meta["reducer.feedback"] = feedbackSpec_;
  sd.meta["reducer.algorithm"] = options_.algorithm;
  sd.meta["reducer.weights"] = weightsText(options_.weights);
  sd.meta["reducer.rank"] = std::to_string(rank());
  sd.meta["reducer.size"] = std::to_string(size());
  sd.meta["reducer.calls"] = std::to_string(calls_);
  // Keys are arbitrary strings, so slots are numbered and each records its key.
  size_t index = 0;
  for (const auto& [key, s] : slots_) {
    const std::string prefix = "slot/" + std::to_string(index++) + "/";
    sd.meta[prefix + "key"] = key;
    sd.meta[prefix + "shape"] = feedback::shapeText(s->shape);
    sd.meta[prefix + "dtype"] = dtypeName(s->dtype);
    sd.meta[prefix + "algorithm"] = s->algorithm;
    sd.meta[prefix + "step"] = std::to_string(s->step);
    sd.merge(s->impl->stateDict(), prefix);
  }
  sd.meta["reducer.keys"] = std::to_string(slots_.size());
  return sd;
}

void Reducer::loadStateDict(const StateDict& state) {
  drain();
  const std::lock_guard<std::mutex> call(callMutex_);  // after a call on another thread
  state.expect("reducer.compressor", compressorSpec_, "compressor spec");
  state.expect("reducer.feedback", feedbackSpec_, "feedback spec");
  state.expect("reducer.algorithm", options_.algorithm, "algorithm");
  // Every algorithm's estimate is weighted (the allreduce algorithm's sum too, which keeps no
  // weights of its own to compare): another reducer's weights would silently go on from it.
  state.expect("reducer.weights", weightsText(options_.weights), "weights");
  state.expect("reducer.rank", std::to_string(rank()), "rank");
  state.expect("reducer.size", std::to_string(size()), "group size");
  const uint64_t calls = state.integer("reducer.calls");
  const uint64_t keys = state.integer("reducer.keys");
  std::map<std::string, std::unique_ptr<Slot>> slots;
  for (uint64_t i = 0; i < keys; ++i) {
    const std::string prefix = "slot/" + std::to_string(i) + "/";
    const std::string key = state.text(prefix + "key");
    auto s = std::make_unique<Slot>();
    s->shape = feedback::parseShape(state.text(prefix + "shape"));
    s->dtype = parseDType(state.text(prefix + "dtype"));
    s->algorithm = state.text(prefix + "algorithm");
    EFCOMM_CHECK_T(MismatchError, options_.algorithm == "auto" || s->algorithm == options_.algorithm,
                   "reducer state dict: key '", key, "' was reduced with ", s->algorithm, ", this reducer uses ",
                   options_.algorithm);
    s->step = state.integer(prefix + "step");
    s->impl = comm::makeAlgorithm(s->algorithm, setupFor(key, s->shape, s->dtype));
    s->impl->loadStateDict(state.sub(prefix));
    EFCOMM_CHECK(slots.emplace(key, std::move(s)).second, "reducer state dict: key '", key, "' appears twice");
  }
  slots_ = std::move(slots);
  calls_ = calls;
}

}  // namespace efcomm
