#include "efcomm/reducer.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <exception>
#include <optional>
#include <sstream>
#include <utility>

#include "common/bytes.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "efcomm/message.hpp"
#include "feedback/common.hpp"

namespace efcomm {

struct Reducer::Slot {
  std::unique_ptr<Feedback> worker;
  std::unique_ptr<Aggregate> aggregate;
  std::vector<int64_t> shape;
  DType dtype;
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
// A 1-byte block in the message exchange marks a rank whose compression failed (a real
// message is never that short); the byte is its ErrorCode.
constexpr size_t kFailureBytes = 1;

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ull) {
  const auto* p = static_cast<const uint8_t*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ull;
  return h;
}

uint64_t hashString(const std::string& s) { return fnv1a(s.data(), s.size()); }

double secondsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

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

std::string describe(const Header& h, const std::string& key) {
  std::ostringstream os;
  if (h[kKeyHash] == hashString(key)) {
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
std::string checkArgs(const ConstTensorView& x, const TensorView& out, const std::vector<int64_t>* slotShape,
                      DType slotDType) {
  try {
    if (x.dtype != DType::kFloat32 && x.dtype != DType::kFloat64)
      return "dtype must be float32 or float64, got " + dtypeName(x.dtype);
    if (out.dtype != x.dtype) return "out has dtype " + dtypeName(out.dtype) + ", x has " + dtypeName(x.dtype);
    if (out.numel() != x.numel())
      return "out has " + std::to_string(out.numel()) + " elements, x has " + std::to_string(x.numel());
    if ((x.data == nullptr || out.data == nullptr) && x.numel() > 0) return "null data pointer";
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

Reducer::Reducer(std::shared_ptr<Backend> backend, std::string compressorSpec, std::string feedbackSpec,
                 std::vector<double> weights)
    : backend_(std::move(backend)), weights_(std::move(weights)) {
  EFCOMM_CHECK(backend_ != nullptr, "Reducer: null backend");
  std::shared_ptr<Compressor> c = makeCompressor(compressorSpec);
  compressorSpec_ = c->spec();
  feedbackSpec_ = makeFeedback(feedbackSpec, c)->spec();
  EFCOMM_CHECK(weights_.empty() || weights_.size() == static_cast<size_t>(backend_->size()),
               "Reducer: ", weights_.size(), " weights for ", backend_->size(), " ranks");
  Aggregate check(feedbackSpec_, backend_->size(), weights_, {0}, DType::kFloat32);  // validates weights
  specHash_ = hashString(compressorSpec_ + "|" + feedbackSpec_ + "|" + algorithm_);
  specHash_ = fnv1a(weights_.data(), weights_.size() * sizeof(double), specHash_);
}

Reducer::~Reducer() = default;

int Reducer::rank() const { return backend_->rank(); }
int Reducer::size() const { return backend_->size(); }

Reducer::Slot& Reducer::slot(const std::string& key, const ConstTensorView& x) {
  auto it = slots_.find(key);
  if (it != slots_.end()) return *it->second;
  auto s = std::make_unique<Slot>();
  s->worker = makeFeedback(feedbackSpec_, makeCompressor(compressorSpec_));
  s->aggregate = std::make_unique<Aggregate>(feedbackSpec_, size(), weights_, x.shape, x.dtype);
  s->shape = x.shape;
  s->dtype = x.dtype;
  return *slots_.emplace(key, std::move(s)).first->second;
}

void Reducer::allreduce(const ConstTensorView& x, const TensorView& out, const std::string& key) {
  const auto found = slots_.find(key);
  const Slot* existing = found == slots_.end() ? nullptr : found->second.get();
  const std::string argError =
      checkArgs(x, out, existing ? &existing->shape : nullptr, existing ? existing->dtype : DType::kFloat32);

  // Phase 1: header agreement. Every rank sees every header, so every rank reaches the same verdict.
  const std::vector<uint8_t> header = encodeHeader(hashString(key), calls_, specHash_, argError.empty(), x);
  ByteBlocks headers;
  auto t0 = std::chrono::steady_clock::now();
  backend_->allgatherv(header.data(), header.size(), headers)->wait();
  double commSeconds = secondsSince(t0);
  ++calls_;
  EFCOMM_CHECK(argError.empty(), "Reducer.allreduce(key '", key, "'): ", argError);
  const size_t n = static_cast<size_t>(size());
  const Header mine = readHeader(headers, static_cast<size_t>(rank()));
  for (size_t r = 0; r < n; ++r) {
    const Header h = readHeader(headers, r);
    EFCOMM_CHECK_T(MismatchError, h[kStatus] == 0, "Reducer.allreduce(key '", key, "'): rank ", r,
                   " rejected its arguments");
    EFCOMM_CHECK_T(MismatchError, h[kSpecHash] == mine[kSpecHash], "Reducer.allreduce(key '", key,
                   "'): rank ", r, " uses another compressor, feedback, algorithm or weights than rank ",
                   rank(), " (", compressorSpec_, ", ", feedbackSpec_, ")");
    EFCOMM_CHECK_T(MismatchError, h == mine,
                   "Reducer.allreduce: ranks disagree: rank ", r, " has ", describe(h, key), ", rank ",
                   rank(), " has ", describe(mine, key));
  }

  Slot& s = slot(key, x);
  ReducerStats& st = stats_[key];
  st.controlBytes += header.size();

  // Phase 2: compress. A failure is announced to the other ranks instead of leaving them waiting.
  std::optional<Message> msg;
  std::exception_ptr failure;
  uint8_t failureCode = 0;
  t0 = std::chrono::steady_clock::now();
  try {
    msg.emplace(s.worker->step(x));
  } catch (const Error& e) {
    failure = std::current_exception();
    failureCode = static_cast<uint8_t>(e.code());
  } catch (...) {
    failure = std::current_exception();
    failureCode = static_cast<uint8_t>(ErrorCode::kInternal);
  }
  st.compressSeconds += secondsSince(t0);

  // Phase 3: allgather the messages (variable sizes, no padding).
  ByteBlocks gathered;
  t0 = std::chrono::steady_clock::now();
  if (failure) {
    backend_->allgatherv(&failureCode, kFailureBytes, gathered)->wait();
  } else {
    backend_->allgatherv(msg->data(), msg->size(), gathered)->wait();
  }
  commSeconds += secondsSince(t0);
  st.commSeconds += commSeconds;
  if (failure) std::rethrow_exception(failure);
  for (size_t r = 0; r < n; ++r) {
    if (gathered.blockBytes(r) != kFailureBytes) continue;
    const auto code = static_cast<ErrorCode>(gathered.block(r)[0]);
    EFCOMM_CHECK_T(NonFiniteError, code != ErrorCode::kNonFinite, "Reducer.allreduce(key '", key,
                   "'): rank ", r, " has a non-finite vector to compress");
    throw Error("Reducer.allreduce(key '" + key + "'): rank " + std::to_string(r) + " failed to compress");
  }

  // Phase 4: fold every rank's message into the mirror, in rank order (bit-identical everywhere).
  t0 = std::chrono::steady_clock::now();
  std::vector<Message> msgs;
  msgs.reserve(n);
  uint64_t received = 0;
  for (size_t r = 0; r < n; ++r) {
    msgs.push_back(Message::fromBytes(gathered.block(r), gathered.blockBytes(r)));
    if (r != static_cast<size_t>(rank())) received += gathered.blockBytes(r);
  }
  std::vector<const Message*> ptrs;
  for (const Message& m : msgs) ptrs.push_back(&m);
  const ConstTensorView est = s.aggregate->update(ptrs);
  if (est.nbytes() > 0) std::memcpy(out.data, est.data, est.nbytes());
  st.aggregateSeconds += secondsSince(t0);
  st.bytesSent += msg->size();
  st.bytesReceived += received;
  ++st.calls;
}

std::map<std::string, ReducerStats> Reducer::stats() const { return stats_; }

StateDict Reducer::stateDict() const {
  StateDict sd;
  sd.meta["reducer.compressor"] = compressorSpec_;
  sd.meta["reducer.feedback"] = feedbackSpec_;
  sd.meta["reducer.algorithm"] = algorithm_;
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
    sd.merge(s->worker->stateDict(), prefix + "worker.");
    sd.merge(s->aggregate->stateDict(), prefix + "aggregate.");
  }
  sd.meta["reducer.keys"] = std::to_string(slots_.size());
  return sd;
}

void Reducer::loadStateDict(const StateDict& state) {
  state.expect("reducer.compressor", compressorSpec_, "compressor spec");
  state.expect("reducer.feedback", feedbackSpec_, "feedback spec");
  state.expect("reducer.algorithm", algorithm_, "algorithm");
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
    s->worker = makeFeedback(feedbackSpec_, makeCompressor(compressorSpec_));
    s->worker->loadStateDict(state.sub(prefix + "worker."));
    s->aggregate = std::make_unique<Aggregate>(feedbackSpec_, size(), weights_, s->shape, s->dtype);
    s->aggregate->loadStateDict(state.sub(prefix + "aggregate."));
    EFCOMM_CHECK(slots.emplace(key, std::move(s)).second, "reducer state dict: key '", key, "' appears twice");
  }
  slots_ = std::move(slots);
  calls_ = calls;
}

}  // namespace efcomm
