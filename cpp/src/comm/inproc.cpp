// The in-process backend: ranks are threads of one process meeting in a shared rendezvous.
// The i-th collective of every rank lands in slot i (per-rank sequence numbers); the last rank
// to arrive checks that all agree, moves the data for everybody and completes every rank's Work
// at once, so a collective either succeeds on all ranks or fails on all of them.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <map>
#include <mutex>
#include <thread>

#include "comm/backend.hpp"
#include "efcomm/comm.hpp"

namespace efcomm {

namespace {

using comm::Clock;
using comm::deadlineAfter;
using comm::rankList;

enum class Op { kAllgatherv, kAlltoallv, kBroadcast, kAllreduceSum, kBarrier };

const char* opName(Op op) {
  switch (op) {
    case Op::kAllgatherv: return "allgatherv";
    case Op::kAlltoallv: return "alltoallv";
    case Op::kBroadcast: return "broadcast";
    case Op::kAllreduceSum: return "allreduceSum";
    case Op::kBarrier: return "barrier";
  }
  return "?";
}

// One rank's arguments to one collective; only the fields of its Op are used.
struct Entry {
  bool arrived = false;
  Clock::time_point issued;  // when this rank issued the collective (Work::timing)
  Op op = Op::kBarrier;
  const void* send = nullptr;
  void* buf = nullptr;
  size_t bytes = 0;  // allgatherv, broadcast: bytes; allreduceSum: element count
  std::vector<size_t> sendCounts;
  ByteBlocks* recv = nullptr;
  int root = 0;
  DType dtype = DType::kFloat32;
};

// kRunning: all ranks arrived and the data is being moved outside the lock; it can no longer
// time out, because the buffers are in use.
enum class Phase { kPending, kRunning, kDone, kFailed };

struct Slot {
  Slot(uint64_t s, int n) : seq(s), entries(n) {}
  uint64_t seq;
  std::vector<Entry> entries;
  int arrived = 0;
  Phase phase = Phase::kPending;
  std::exception_ptr error;
  bool ready = false;           // every rank arrived before the slot failed (Work::timing)
  Clock::time_point readyTime;  // when the last rank arrived
};

// Whether two ranks made the same call, as far as the ranks must agree.
bool sameCall(const Entry& a, const Entry& b) {
  if (a.op != b.op) return false;
  if (a.op == Op::kBroadcast) return a.bytes == b.bytes && a.root == b.root;
  if (a.op == Op::kAllreduceSum) return a.bytes == b.bytes && a.dtype == b.dtype;
  return true;
}

// Null when all agree, else the MismatchError all ranks get: the first rank that differs from
// rank 0 in the message, and every rank that differs from the most common call in its ranks().
std::exception_ptr checkAgreement(const Slot& slot) {
  const std::vector<Entry>& es = slot.entries;
  const Entry& e0 = es[0];
  for (size_t r = 1; r < es.size(); ++r) {
    const Entry& e = es[r];
    if (sameCall(e, e0)) continue;
    std::string what = detail::concat("efcomm: collective #", slot.seq, ": ");
    if (e.op != e0.op) {
      what += detail::concat("rank 0 called ", opName(e0.op), " but rank ", r, " called ", opName(e.op));
    } else if (e.op == Op::kBroadcast) {
      what += detail::concat("broadcast of ", e0.bytes, " bytes from root ", e0.root, " on rank 0 but of ", e.bytes,
                             " bytes from root ", e.root, " on rank ", r);
    } else {
      what += detail::concat("allreduceSum of ", e0.bytes, " ", dtypeName(e0.dtype), " on rank 0 but of ", e.bytes, " ",
                             dtypeName(e.dtype), " on rank ", r);
    }
    return std::make_exception_ptr(
        MismatchError(what, comm::oddRanks(es.size(), [&](size_t a, size_t b) { return sameCall(es[a], es[b]); })));
  }
  return nullptr;
}

void copyBytes(void* dst, const void* src, size_t n) {
  if (n > 0 && dst != src) std::memcpy(dst, src, n);  // memcpy with a null pointer is UB even for 0
}

void runAllgatherv(Slot& slot) {
  const size_t n = slot.entries.size();
  std::vector<size_t> offsets(n + 1, 0);
  for (size_t j = 0; j < n; ++j) offsets[j + 1] = offsets[j] + slot.entries[j].bytes;
  for (const Entry& dst : slot.entries) {
    dst.recv->offsets = offsets;
    dst.recv->data.resize(offsets[n]);
    for (size_t j = 0; j < n; ++j) {
      copyBytes(dst.recv->data.data() + offsets[j], slot.entries[j].send, slot.entries[j].bytes);
    }
  }
}

void runAlltoallv(Slot& slot) {
  const size_t n = slot.entries.size();
  // sendOffsets[j][r]: where rank j's chunk for rank r starts in j's send buffer.
  std::vector<std::vector<size_t>> sendOffsets(n, std::vector<size_t>(n + 1, 0));
  for (size_t j = 0; j < n; ++j) {
    for (size_t r = 0; r < n; ++r) sendOffsets[j][r + 1] = sendOffsets[j][r] + slot.entries[j].sendCounts[r];
  }
  for (size_t r = 0; r < n; ++r) {
    ByteBlocks& recv = *slot.entries[r].recv;
    recv.offsets.assign(n + 1, 0);
    for (size_t j = 0; j < n; ++j) recv.offsets[j + 1] = recv.offsets[j] + slot.entries[j].sendCounts[r];
    recv.data.resize(recv.offsets[n]);
    for (size_t j = 0; j < n; ++j) {
      const auto* src = static_cast<const uint8_t*>(slot.entries[j].send);
      copyBytes(recv.data.data() + recv.offsets[j], src + sendOffsets[j][r], slot.entries[j].sendCounts[r]);
    }
  }
}

void runBroadcast(Slot& slot) {
  const Entry& root = slot.entries[static_cast<size_t>(slot.entries[0].root)];
  for (const Entry& e : slot.entries) copyBytes(e.buf, root.buf, root.bytes);
}

void runAllreduceSum(Slot& slot) {
  // Accumulate into rank 0's buffer in rank order, then copy that one result everywhere: the
  // order, and so every rounding, is the same for all ranks.
  const Entry& e0 = slot.entries[0];
  for (size_t r = 1; r < slot.entries.size(); ++r) comm::addInto(e0.buf, slot.entries[r].buf, e0.bytes, e0.dtype);
  for (size_t r = 1; r < slot.entries.size(); ++r) {
    copyBytes(slot.entries[r].buf, e0.buf, e0.bytes * itemSize(e0.dtype));
  }
}

void runCollective(Slot& slot) {
  switch (slot.entries[0].op) {
    case Op::kAllgatherv: runAllgatherv(slot); break;
    case Op::kAlltoallv: runAlltoallv(slot); break;
    case Op::kBroadcast: runBroadcast(slot); break;
    case Op::kAllreduceSum: runAllreduceSum(slot); break;
    case Op::kBarrier: break;
  }
}

}  // namespace

namespace comm {

struct InProcessState {
  InProcessState(int n, double t) : size(n), defaultTimeout(t), left(static_cast<size_t>(n), false) {}
  const int size;
  const double defaultTimeout;
  std::mutex mu;
  std::condition_variable cv;
  // Slots some rank has reached and not every rank has; erased when the last rank arrives.
  std::map<uint64_t, std::shared_ptr<Slot>> slots;
  std::exception_ptr aborted;  // set once: every pending and later collective fails with it
  std::vector<bool> left;      // ranks that finished (InProcessGroup::leave): they arrive nowhere again

  // Called with mu held: fails a pending slot that a rank which left never reached, naming it.
  void failIfLeft(Slot& slot, int rank) {
    if (slot.phase != Phase::kPending) return;
    std::vector<int> gone;
    for (int r = 0; r < size; ++r)
      if (left[static_cast<size_t>(r)] && !slot.entries[static_cast<size_t>(r)].arrived) gone.push_back(r);
    if (gone.empty()) return;
    slot.error = std::make_exception_ptr(CollectiveTimeout(
        detail::concat("efcomm: ", opName(slot.entries[static_cast<size_t>(rank)].op), " (collective #", slot.seq,
                       ") on rank ", rank, " of ", size, ": rank(s) ", rankList(gone),
                       " finished without calling it"),
        gone));
    slot.phase = Phase::kFailed;
    cv.notify_all();
  }

  void leave(int rank) {
    std::lock_guard<std::mutex> lk(mu);
    left[static_cast<size_t>(rank)] = true;
    for (auto& [seq, slot] : slots) {
      for (int r = 0; r < size; ++r) {
        if (slot->entries[static_cast<size_t>(r)].arrived) {
          failIfLeft(*slot, r);  // worded from a rank that is waiting in it
          break;
        }
      }
    }
  }

  // Fails every pending and every later collective of the group with `error`; the first abort
  // wins. Collectives already moving data (kRunning) complete: their buffers are in use.
  void abort(std::exception_ptr error) {
    std::lock_guard<std::mutex> lk(mu);
    if (aborted) return;
    aborted = std::move(error);
    for (auto& [seq, slot] : slots) {
      if (slot->phase == Phase::kPending) {
        slot->phase = Phase::kFailed;
        slot->error = aborted;
      }
    }
    cv.notify_all();
  }

  // Called with mu held: fails a pending slot with CollectiveTimeout naming the absent ranks.
  void failTimeout(Slot& slot, int rank, double seconds) {
    std::vector<int> culprits;
    for (int r = 0; r < size; ++r) {
      if (!slot.entries[static_cast<size_t>(r)].arrived) culprits.push_back(r);
    }
    const Op op = slot.entries[static_cast<size_t>(rank)].op;
    slot.error = std::make_exception_ptr(CollectiveTimeout(
        detail::concat("efcomm: ", opName(op), " (collective #", slot.seq, ") on rank ", rank, " of ", size,
                       " timed out after ", seconds, " s waiting for rank(s) ", rankList(culprits)),
        culprits));
    slot.phase = Phase::kFailed;
    cv.notify_all();
  }
};

}  // namespace comm

namespace {

class InProcessWork final : public Work {
 public:
  InProcessWork(std::shared_ptr<comm::InProcessState> state, std::shared_ptr<Slot> slot, int rank, double timeout)
      : state_(std::move(state)), slot_(std::move(slot)), rank_(rank), timeout_(timeout),
        deadline_(deadlineAfter(timeout)) {}

  // Waits (bounded by the collective's timeout) so the caller's buffers are never written after
  // the Work is gone; errors were the business of wait().
  ~InProcessWork() override {
    try {
      wait(std::nullopt);
    } catch (...) {  // NOLINT(bugprone-empty-catch): reported by wait(), if it is called
    }
  }

  void wait(std::optional<double> timeoutSeconds) override {
    auto until = deadline_;
    double seconds = timeout_;
    if (timeoutSeconds) {
      EFCOMM_CHECK(*timeoutSeconds >= 0 && !std::isnan(*timeoutSeconds), "Work.wait: timeout must be >= 0, got ",
                   *timeoutSeconds);
      if (std::chrono::duration<double>(deadline_ - Clock::now()).count() > *timeoutSeconds) {
        until = deadlineAfter(*timeoutSeconds);
        seconds = *timeoutSeconds;
      }
    }
    std::unique_lock<std::mutex> lk(state_->mu);
    for (;;) {
      switch (slot_->phase) {
        case Phase::kDone: return;
        case Phase::kFailed: std::rethrow_exception(slot_->error);
        case Phase::kRunning: state_->cv.wait(lk); break;
        case Phase::kPending:
          if (Clock::now() >= until) {
            state_->failTimeout(*slot_, rank_, seconds);
          } else {
            state_->cv.wait_until(lk, until);
          }
          break;
      }
    }
  }

  bool completed() const override {
    std::lock_guard<std::mutex> lk(state_->mu);
    if (slot_->phase == Phase::kPending && Clock::now() >= deadline_) state_->failTimeout(*slot_, rank_, timeout_);
    return slot_->phase == Phase::kDone || slot_->phase == Phase::kFailed;
  }

  // No per-peer transfers here: the last rank to arrive moves everybody's data.
  WorkTiming timing() const override {
    std::lock_guard<std::mutex> lk(state_->mu);
    WorkTiming t;
    if (slot_->ready) {
      t.readySeconds =
          std::chrono::duration<double>(slot_->readyTime - slot_->entries[static_cast<size_t>(rank_)].issued).count();
    }
    return t;
  }

 private:
  std::shared_ptr<comm::InProcessState> state_;
  std::shared_ptr<Slot> slot_;
  int rank_;
  double timeout_;
  Clock::time_point deadline_;
};

class InProcessBackend final : public Backend {
 public:
  InProcessBackend(std::shared_ptr<comm::InProcessState> state, int rank) : state_(std::move(state)), rank_(rank) {}

  int rank() const override { return rank_; }
  int size() const override { return state_->size; }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                   std::optional<double> timeoutSeconds) override {
    const double t = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
    comm::checkBuffer(send, bytes, "allgatherv");
    Entry e;
    e.op = Op::kAllgatherv;
    e.send = send;
    e.bytes = bytes;
    e.recv = &recv;
    return arrive(std::move(e), t);
  }

  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, ByteBlocks& recv,
                                  std::optional<double> timeoutSeconds) override {
    const double t = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
    EFCOMM_CHECK(sendCounts.size() == static_cast<size_t>(state_->size), "alltoallv: ", sendCounts.size(),
                 " send counts for ", state_->size, " ranks");
    size_t total = 0;
    for (size_t c : sendCounts) total += c;
    comm::checkBuffer(send, total, "alltoallv");
    Entry e;
    e.op = Op::kAlltoallv;
    e.send = send;
    e.sendCounts = sendCounts;
    e.recv = &recv;
    return arrive(std::move(e), t);
  }

  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, std::optional<double> timeoutSeconds) override {
    const double t = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
    EFCOMM_CHECK(root >= 0 && root < state_->size, "broadcast: root ", root, " not in [0, ", state_->size, ")");
    comm::checkBuffer(buf, bytes, "broadcast");
    Entry e;
    e.op = Op::kBroadcast;
    e.buf = buf;
    e.bytes = bytes;
    e.root = root;
    return arrive(std::move(e), t);
  }

  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype,
                                     std::optional<double> timeoutSeconds) override {
    const double t = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
    comm::checkSumBuffer(buf, count, dtype);
    Entry e;
    e.op = Op::kAllreduceSum;
    e.buf = buf;
    e.bytes = count;
    e.dtype = dtype;
    return arrive(std::move(e), t);
  }

  std::shared_ptr<Work> barrier(std::optional<double> timeoutSeconds) override {
    const double t = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
    Entry e;
    e.op = Op::kBarrier;
    return arrive(std::move(e), t);
  }

  // The rendezvous is shared: aborting one rank's backend fails the whole group's collectives,
  // as InProcessGroup::abort does.
  void abort(const CollectiveTimeout& error) override { state_->abort(std::make_exception_ptr(error)); }

 private:
  std::shared_ptr<Work> arrive(Entry entry, double timeout) {
    const uint64_t seq = nextSeq_++;
    entry.arrived = true;
    entry.issued = Clock::now();
    comm::InProcessState& st = *state_;
    std::unique_lock<std::mutex> lk(st.mu);
    std::shared_ptr<Slot> slot;
    if (st.aborted) {
      slot = std::make_shared<Slot>(seq, st.size);
      slot->phase = Phase::kFailed;
      slot->error = st.aborted;
    } else {
      std::shared_ptr<Slot>& s = st.slots[seq];
      if (!s) s = std::make_shared<Slot>(seq, st.size);
      slot = s;
    }
    slot->entries[static_cast<size_t>(rank_)] = std::move(entry);
    st.failIfLeft(*slot, rank_);
    if (++slot->arrived == st.size) {
      st.slots.erase(seq);
      if (slot->phase == Phase::kPending) {
        slot->ready = true;
        slot->readyTime = Clock::now();
        if (std::exception_ptr mismatch = checkAgreement(*slot)) {
          slot->error = mismatch;
          slot->phase = Phase::kFailed;
        } else {
          slot->phase = Phase::kRunning;
          lk.unlock();
          std::exception_ptr error;
          try {
            runCollective(*slot);
          } catch (...) {
            error = std::current_exception();
          }
          lk.lock();
          slot->error = error;
          slot->phase = error ? Phase::kFailed : Phase::kDone;
        }
        st.cv.notify_all();
      }
    }
    return std::make_shared<InProcessWork>(state_, std::move(slot), rank_, timeout);
  }

  std::shared_ptr<comm::InProcessState> state_;
  int rank_;
  uint64_t nextSeq_ = 0;
};

}  // namespace

InProcessGroup::InProcessGroup(int size, double defaultTimeoutSeconds) {
  EFCOMM_CHECK(size >= 1, "InProcessGroup: size must be >= 1, got ", size);
  comm::resolveTimeout(defaultTimeoutSeconds, defaultTimeoutSeconds);
  state_ = std::make_shared<comm::InProcessState>(size, defaultTimeoutSeconds);
  for (int r = 0; r < size; ++r) backends_.push_back(std::make_shared<InProcessBackend>(state_, r));
}

InProcessGroup::~InProcessGroup() = default;

int InProcessGroup::size() const { return state_->size; }

std::shared_ptr<Backend> InProcessGroup::backend(int rank) const {
  EFCOMM_CHECK(rank >= 0 && rank < state_->size, "InProcessGroup: rank ", rank, " not in [0, ", state_->size, ")");
  return backends_[static_cast<size_t>(rank)];
}

void InProcessGroup::leave(int rank) {
  EFCOMM_CHECK(rank >= 0 && rank < state_->size, "InProcessGroup.leave: rank ", rank, " not in [0, ", state_->size,
               ")");
  state_->leave(rank);
}

void InProcessGroup::abort(int culprit, const std::string& reason) {
  state_->abort(std::make_exception_ptr(CollectiveTimeout(
      detail::concat("efcomm: in-process group aborted because rank ", culprit, " stopped: ", reason), {culprit})));
}

void runRanks(int n, const std::function<void(Backend&)>& fn, double defaultTimeoutSeconds) {
  InProcessGroup group(n, defaultTimeoutSeconds);
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  threads.reserve(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        fn(*group.backend(r));
        group.leave(r);
      } catch (...) {
        std::string what = "unknown exception";
        try {
          throw;
        } catch (const std::exception& e) {
          what = e.what();
        } catch (...) {  // NOLINT(bugprone-empty-catch): keeps the generic description
        }
        {
          std::lock_guard<std::mutex> lk(mu);
          if (!first) first = std::current_exception();
        }
        group.abort(r, what);
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

}  // namespace efcomm
