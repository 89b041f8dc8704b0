// The MPI backend (efcomm/mpi.hpp).
//
// Loading: compiled against an MPICH-ABI mpi.h for the types and constants (all macros in that
// ABI), but the functions are looked up at run time, so efcomm never links MPI.
//
// Protocol of one collective, on every rank:
//   1. post a header receive from every peer and send every peer this rank's header (operation,
//      sequence number, agreed parameters, bytes of the payload that peer will get);
//   2. once all headers are in, every rank holds all n headers and reaches the same verdict: on
//      disagreement all fail with the same MismatchError and no payload moves; else post the
//      payload sends and receives (sizes are known now, so receive buffers are sized exactly).
// Payloads therefore only ever go to ranks that have reached the collective, which keeps unmatched
// large sends (that MPICH cannot cancel, and that make its MPI_Finalize fail) off the normal path.
// Messages of collective #s use tag s mod tagUB; headers and payloads from one peer share it and
// are told apart by MPI's non-overtaking order. Tag tagUB carries abort notices: a rank that
// times out, or whose Backend::abort is called (a health monitor found a peer dead or stopped),
// tells every peer, so their collectives fail at once instead of at their own timeout. Notices
// are best effort: small nonblocking sends whose failure (a dead peer) is ignored.
//
// Timing (Work::timing): a collective notes when it was issued, when its last header came in
// ("ready") and, per peer, when the last of that peer's payload receives completed.
//
// Fault injection: EFCOMM_FAULT_LINK_DELAY="SRC>DST=SECONDS,..." (comm/backend.hpp), read when
// the backend is created, holds back rank SRC's payload sends to rank DST until SECONDS after the
// collective's headers are all in; the progress loop posts them when due, other transfers go on.

#include "efcomm/mpi.hpp"

#include "efcomm/config.hpp"

#if !EFCOMM_HAVE_MPI

namespace efcomm {

std::shared_ptr<Backend> mpiBackendFromHandle(int64_t, const std::string&, double) {
  throw BackendUnavailable(
      "efcomm was built without the MPI backend: no MPICH-ABI mpi.h was found when it was compiled. Install "
      "MPICH (pip install mpich, or apt-get install libmpich-dev) and rebuild efcomm with mpicc on PATH "
      "(pip install --no-build-isolation .; the CMake option EFCOMM_MPI=ON makes MPI required)");
}

std::optional<MpiThreadLevel> mpiThreadLevel(const Backend&) { return std::nullopt; }

}  // namespace efcomm

#else

#include <dlfcn.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "comm/backend.hpp"

namespace efcomm {

namespace {

using comm::Backoff;
using comm::Clock;
using comm::deadlineAfter;
using comm::rankList;

// ---- the MPI functions, found at run time --------------------------------------------------

struct MpiApi {
  decltype(&MPI_Initialized) initialized = nullptr;
  decltype(&MPI_Finalized) finalized = nullptr;
  decltype(&MPI_Get_library_version) getLibraryVersion = nullptr;
  decltype(&MPI_Query_thread) queryThread = nullptr;
  decltype(&MPI_Comm_idup) commIdup = nullptr;
  decltype(&MPI_Comm_free) commFree = nullptr;
  decltype(&MPI_Comm_rank) commRank = nullptr;
  decltype(&MPI_Comm_size) commSize = nullptr;
  decltype(&MPI_Comm_get_attr) commGetAttr = nullptr;
  decltype(&MPI_Comm_set_errhandler) commSetErrhandler = nullptr;
  decltype(&MPI_Isend) isend = nullptr;
  decltype(&MPI_Irecv) irecv = nullptr;
  decltype(&MPI_Test) test = nullptr;
  decltype(&MPI_Testsome) testsome = nullptr;
  decltype(&MPI_Cancel) cancel = nullptr;
  decltype(&MPI_Request_free) requestFree = nullptr;
  decltype(&MPI_Iprobe) iprobe = nullptr;
  decltype(&MPI_Improbe) improbe = nullptr;
  decltype(&MPI_Imrecv) imrecv = nullptr;
  decltype(&MPI_Get_count) getCount = nullptr;
  decltype(&MPI_Error_string) errorString = nullptr;
  void* handle = nullptr;  // for dlsym; RTLD_DEFAULT when MPI is linked into the process
  std::string library;     // where the functions were found, for messages
};

constexpr const char* kHowToFix =
    "efcomm's MPI backend needs an initialized MPICH-ABI MPI library (MPICH, Intel MPI, MVAPICH, Cray MPICH) "
    "in this process: from Python, pip install mpi4py mpich and `from mpi4py import MPI` before "
    "ef.Communicator.mpi(); from C++, link MPI and call MPI_Init first";

template <typename F>
void bindSymbol(void* lib, const char* name, F& f, std::string& missing) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (f == nullptr) missing += std::string(missing.empty() ? "" : ", ") + name;
}

// Resolves every function from `lib`; returns the names that are missing (empty: all found).
std::string bindAll(void* lib, MpiApi& api) {
  std::string missing;
  bindSymbol(lib, "MPI_Initialized", api.initialized, missing);
  bindSymbol(lib, "MPI_Finalized", api.finalized, missing);
  bindSymbol(lib, "MPI_Get_library_version", api.getLibraryVersion, missing);
  bindSymbol(lib, "MPI_Query_thread", api.queryThread, missing);
  bindSymbol(lib, "MPI_Comm_idup", api.commIdup, missing);
  bindSymbol(lib, "MPI_Comm_free", api.commFree, missing);
  bindSymbol(lib, "MPI_Comm_rank", api.commRank, missing);
  bindSymbol(lib, "MPI_Comm_size", api.commSize, missing);
  bindSymbol(lib, "MPI_Comm_get_attr", api.commGetAttr, missing);
  bindSymbol(lib, "MPI_Comm_set_errhandler", api.commSetErrhandler, missing);
  bindSymbol(lib, "MPI_Isend", api.isend, missing);
  bindSymbol(lib, "MPI_Irecv", api.irecv, missing);
  bindSymbol(lib, "MPI_Test", api.test, missing);
  bindSymbol(lib, "MPI_Testsome", api.testsome, missing);
  bindSymbol(lib, "MPI_Cancel", api.cancel, missing);
  bindSymbol(lib, "MPI_Request_free", api.requestFree, missing);
  bindSymbol(lib, "MPI_Iprobe", api.iprobe, missing);
  bindSymbol(lib, "MPI_Improbe", api.improbe, missing);
  bindSymbol(lib, "MPI_Imrecv", api.imrecv, missing);
  bindSymbol(lib, "MPI_Get_count", api.getCount, missing);
  bindSymbol(lib, "MPI_Error_string", api.errorString, missing);
  return missing;
}

// The MPI library, in this order: linked into the process (C++ applications); `path` (mpi4py
// loads libmpi with RTLD_LOCAL, so its symbols are not global); an already loaded libmpi.
MpiApi loadMpi(const std::string& path) {
  MpiApi api;
  std::string tried;
  auto use = [&](void* lib, const std::string& where) {
    const std::string missing = bindAll(lib, api);
    EFCOMM_CHECK_T(BackendUnavailable, missing.empty(), "efcomm: the MPI library ", where,
                   " lacks the MPI-3 functions ", missing, ". ", kHowToFix);
    api.handle = lib;
    api.library = where;
  };
  if (dlsym(RTLD_DEFAULT, "MPI_Get_library_version") != nullptr) {
    use(RTLD_DEFAULT, "linked into the process");
    return api;
  }
  if (!path.empty()) {
    if (void* lib = dlopen(path.c_str(), RTLD_LAZY | RTLD_LOCAL)) {
      use(lib, path);
      return api;
    }
    tried += detail::concat(" dlopen(", path, "): ", dlerror(), ";");
  }
  for (const char* soname : {"libmpi.so.12", "libmpich.so.12"}) {
    if (void* lib = dlopen(soname, RTLD_LAZY | RTLD_NOLOAD)) {
      use(lib, soname);
      return api;
    }
  }
  throw BackendUnavailable(detail::concat(
      "efcomm: no MPI library is loaded in this process (looked for MPI symbols in the process,", tried,
      " and for an already loaded libmpi.so.12). ", kHowToFix));
}

// Rejects libraries whose handles are not the MPICH ABI that efcomm was compiled for.
std::string checkAbi(const MpiApi& api) {
  char version[MPI_MAX_LIBRARY_VERSION_STRING] = {0};
  int len = 0;
  api.getLibraryVersion(version, &len);
  std::string text(version, static_cast<size_t>(std::clamp(len, 0, MPI_MAX_LIBRARY_VERSION_STRING)));
  const std::string firstLine = text.substr(0, text.find('\n'));
  // MPI 5's standard ABI (libmpi_abi) has other handle types; its MPI_Abi_get_version says so.
  using AbiVersionFn = int (*)(int*, int*);
  auto abiVersion = reinterpret_cast<AbiVersionFn>(dlsym(api.handle, "MPI_Abi_get_version"));
  int abiMajor = 0, abiMinor = 0;
  const bool standardAbi = abiVersion != nullptr && abiVersion(&abiMajor, &abiMinor) == MPI_SUCCESS && abiMajor > 0;
  const bool mpichAbi = text.find("MPICH") != std::string::npos || text.find("Intel(R) MPI") != std::string::npos ||
                        text.find("MVAPICH") != std::string::npos;
  EFCOMM_CHECK_T(BackendUnavailable, mpichAbi && !standardAbi, "efcomm: the loaded MPI library (", api.library, ": ",
                 firstLine, standardAbi ? ", MPI standard ABI" : "", ") is not of the MPICH ABI (mpi.h ",
                 MPICH_VERSION, ") efcomm was compiled for. ", kHowToFix);
  return firstLine;
}

// ---- wire formats ------------------------------------------------------------------------------

enum class Kind : uint8_t { kAllgatherv = 1, kAlltoallv = 2, kBroadcast = 3, kAllreduceSum = 4, kBarrier = 5 };

const char* kindName(Kind k) {
  switch (k) {
    case Kind::kAllgatherv: return "allgatherv";
    case Kind::kAlltoallv: return "alltoallv";
    case Kind::kBroadcast: return "broadcast";
    case Kind::kAllreduceSum: return "allreduceSum";
    case Kind::kBarrier: return "barrier";
  }
  return "an unknown collective";
}

constexpr uint32_t kHeaderMagic = 0x4546434d;  // "EFCM"
constexpr uint32_t kNoticeMagic = 0x45464142;  // "EFAB"

// Sent before every payload, from every rank to every peer; raw bytes (the ranks of one MPI job
// share a byte order).
struct Header {
  uint32_t magic = kHeaderMagic;
  uint8_t kind = 0;
  uint8_t dtype = 0;        // allreduceSum
  uint16_t reserved = 0;
  int32_t root = 0;         // broadcast
  uint32_t reserved2 = 0;
  uint64_t seq = 0;
  uint64_t param = 0;       // agreed by all ranks: broadcast bytes, allreduceSum element count
  uint64_t payloadBytes = 0;  // bytes of the payload the receiver of this header will get from the sender
};
static_assert(sizeof(Header) == 40, "Header is sent as raw bytes");

// An abort notice: rank `rank` timed out in collective #seq after `seconds` waiting for
// `culprits`, or (kNoticeAborted) its Backend::abort was called while collective #seq was its
// oldest unfinished one, giving `culprits` and a reason (`textBytes` of text). Followed by the
// culprits (int32) and the text.
struct NoticeHead {
  uint32_t magic = kNoticeMagic;
  uint8_t kind = 0;
  uint8_t flags = 0;
  uint16_t textBytes = 0;
  int32_t rank = 0;
  uint32_t culpritCount = 0;
  uint64_t seq = 0;
  double seconds = 0;
};
static_assert(sizeof(NoticeHead) == 32, "NoticeHead is sent as raw bytes");
constexpr uint8_t kNoticeAborted = 1;
// The reason an aborting rank passes on, cut to this many bytes.
constexpr size_t kNoticeTextBytes = 512;
static_assert(MPI_THREAD_SINGLE == static_cast<int>(MpiThreadLevel::kSingle) &&
                  MPI_THREAD_FUNNELED == static_cast<int>(MpiThreadLevel::kFunneled) &&
                  MPI_THREAD_SERIALIZED == static_cast<int>(MpiThreadLevel::kSerialized) &&
                  MPI_THREAD_MULTIPLE == static_cast<int>(MpiThreadLevel::kMultiple),
              "MpiThreadLevel mirrors the MPI_THREAD_* constants");

// Messages larger than this go in several pieces: MPI counts are ints.
constexpr size_t kMaxPiece = size_t{1} << 30;
// How long a failed collective keeps driving its cancelled and in-flight requests to completion
// before leaving them to the backend's destructor.
constexpr double kFailGraceSeconds = 1.0;
// Polls for abort notices once a collective's headers are all in (see Engine::advance).
constexpr int kNoticePolls = 8;

// Memory MPI may still write to after its owner is gone (a request that could not be completed
// or cancelled): kept until the process ends rather than risk a write into freed memory.
void keepForever(std::shared_ptr<void> p) {
  static std::mutex mu;
  static auto* kept = new std::vector<std::shared_ptr<void>>();  // never freed, on purpose
  std::lock_guard<std::mutex> lk(mu);
  kept->push_back(std::move(p));
}

// Spins briefly, then sleeps 20 us doubling to 1 ms: ranks oversubscribing cores must leave the
// CPU to the peers they wait for.
Backoff mpiBackoff() { return Backoff(64, std::chrono::microseconds(20), std::chrono::microseconds(1000)); }

// ---- one collective on this rank -----------------------------------------------------------------

enum class Role : uint8_t { kHeader, kPayload, kContribution, kResult };

// One logical message (possibly several MPI requests, see kMaxPiece).
struct Transfer {
  int peer;
  Role role;
  bool isRecv;
  int piecesLeft;
};

enum class Stage { kHeaders, kPayload, kFailing, kDone, kFailed };

// A payload send held back by EFCOMM_FAULT_LINK_DELAY until `due`.
struct DeferredSend {
  int peer;
  Role role;
  const void* data;
  size_t bytes;
  Clock::time_point due;
};

struct Op {
  Kind kind = Kind::kBarrier;
  uint64_t seq = 0;
  int tag = 0;
  double timeout = 0;
  Clock::time_point deadline;
  Clock::time_point graceDeadline;  // kFailing
  Stage stage = Stage::kHeaders;
  std::exception_ptr error;

  // Work::timing
  Clock::time_point issued;  // start()
  Clock::time_point ready;   // the last header came in (valid when isReady)
  bool isReady = false;
  std::vector<double> peerSeconds;  // per peer: s from ready to its payload being in; -1: none

  // Arguments; only those of `kind` are used.
  const uint8_t* send = nullptr;
  uint8_t* buf = nullptr;
  size_t bytes = 0;  // allgatherv: own bytes; broadcast: bytes; allreduceSum: element count
  std::vector<size_t> sendCounts;
  ByteBlocks* recv = nullptr;
  int root = 0;
  DType dtype = DType::kFloat32;

  std::vector<Header> outHeaders;  // to each peer
  std::vector<Header> inHeaders;   // from each peer; the own slot holds this rank's header
  std::vector<bool> headerIn;
  int headersMissing = 0;

  std::vector<MPI_Request> requests;  // parallel to requestTransfer; completed ones are MPI_REQUEST_NULL
  std::vector<size_t> requestTransfer;
  std::vector<Transfer> transfers;
  size_t transfersLeft = 0;
  std::vector<DeferredSend> deferred;  // not posted yet (fault injection); in posting order

  // allreduceSum: chunk c is owned by rank c; rank r's contribution to this rank's chunk lands
  // at scratch + r * (this chunk's bytes), and they are added in rank order as they arrive.
  std::vector<size_t> chunkBegin;  // n + 1 element offsets
  std::unique_ptr<uint8_t[]> scratch;  // not a vector: no zero-filling of what MPI overwrites
  std::vector<bool> contributionIn;
  std::vector<bool> partSent;     // phase 1 send to rank p done: its chunk of buf may be overwritten
  std::vector<bool> resultPosted;
  int nextToAdd = 0;
  uint8_t* accumulator = nullptr;
  bool reduced = false;

  bool finished() const { return stage == Stage::kDone || stage == Stage::kFailed; }
  bool running() const { return stage == Stage::kHeaders || stage == Stage::kPayload; }
};

// ---- the engine: the duplicated communicator and every collective in flight ---------------------

class Engine {
 public:
  Engine(MpiApi api, MPI_Comm userComm, double defaultTimeout) : api_(std::move(api)), defaultTimeout_(defaultTimeout) {
    int rc = api_.queryThread(&threadLevel_);
    check(rc, "MPI_Query_thread");
    // Before the (collective) duplicate, so that a bad value fails on every rank alike; the
    // duplicate has the user communicator's ranks.
    if (const char* value = std::getenv(comm::kLinkDelayVariable)) {
      int userRank = 0, userSize = 1;
      check(api_.commRank(userComm, &userRank), "MPI_Comm_rank");
      check(api_.commSize(userComm, &userSize), "MPI_Comm_size");
      for (const comm::LinkDelay& d : comm::parseLinkDelays(value, userSize)) {
        if (d.src != userRank || d.seconds <= 0) continue;
        linkDelay_.resize(static_cast<size_t>(userSize), 0.0);
        linkDelay_[static_cast<size_t>(d.dst)] = d.seconds;
      }
    }
    // Nonblocking duplicate, so that a rank that never comes is reported instead of hanging.
    MPI_Request dupRequest = MPI_REQUEST_NULL;
    check(api_.commIdup(userComm, &comm_, &dupRequest), "MPI_Comm_idup");
    const auto deadline = deadlineAfter(defaultTimeout);
    Backoff backoff = mpiBackoff();
    for (int done = 0;;) {
      check(api_.test(&dupRequest, &done, MPI_STATUS_IGNORE), "MPI_Test(MPI_Comm_idup)");
      if (done) break;
      if (Clock::now() >= deadline) {
        throw CollectiveTimeout(detail::concat("efcomm: creating the MPI backend timed out after ", defaultTimeout,
                                               " s in MPI_Comm_idup: every rank of the communicator must create it, "
                                               "at the same point of the program"),
                                {});
      }
      backoff.pause();
    }
    check(api_.commSetErrhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(api_.commRank(comm_, &rank_), "MPI_Comm_rank");
    check(api_.commSize(comm_, &size_), "MPI_Comm_size");
    int* tagUb = nullptr;
    int flag = 0;
    check(api_.commGetAttr(comm_, MPI_TAG_UB, static_cast<void*>(&tagUb), &flag), "MPI_Comm_get_attr(MPI_TAG_UB)");
    tagUb_ = flag && tagUb != nullptr ? *tagUb : 32767;  // 32767: the least the standard allows
    noticeIn_.assign(static_cast<size_t>(size_), std::vector<uint8_t>(noticeBytes()));
    noticeRequests_.assign(static_cast<size_t>(size_), MPI_REQUEST_NULL);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      check(api_.irecv(noticeIn_[static_cast<size_t>(p)].data(), static_cast<int>(noticeBytes()), MPI_BYTE, p,
                       tagUb_, comm_, &noticeRequests_[static_cast<size_t>(p)]),
            "MPI_Irecv(abort notice)");
    }
  }

  // Nothing is left to MPI that points into freed memory: requests still open after a failure
  // get a bounded last chance to finish, then they and their buffers are kept for good. The
  // communicator is freed when healthy; MPICH aborts MPI_Comm_free on a communicator holding
  // unmatched messages, which a failed one may receive at any time, so that one is left to
  // MPI_Finalize. Nothing at all is done once MPI is finalized (Python objects outlive it).
  ~Engine() {
    int finalized = 1;
    api_.finalized(&finalized);
    if (finalized) return;
    std::lock_guard<std::mutex> lk(mu_);
    try {
      checkNotices();
      for (MPI_Request& r : noticeRequests_) {
        if (r != MPI_REQUEST_NULL) api_.cancel(&r);
      }
      const auto until = deadlineAfter(broken_ ? kFailGraceSeconds : 0.1);
      Backoff backoff = mpiBackoff();
      for (;;) {
        testLeftovers();
        testAll(noticeRequests_);
        testNotices(noticeOut_);
        if (broken_) drainIncoming();
        const bool settled =
            leftovers_.empty() && drained_.empty() && allNull(noticeRequests_) && allNull(noticeOut_);
        if (settled || Clock::now() >= until) break;
        backoff.pause();
      }
      bool clean = !broken_ && leftovers_.empty() && drained_.empty() && allNull(noticeRequests_);
      for (auto& [request, op] : leftovers_) {
        api_.requestFree(&request);
        keepForever(op);
      }
      for (auto& [request, bytes] : drained_) {
        api_.requestFree(&request);
        keepForever(std::make_shared<std::vector<uint8_t>>(std::move(bytes)));
      }
      if (!allNull(noticeOut_)) {
        for (MPI_Request& r : noticeOut_) {
          if (r != MPI_REQUEST_NULL) api_.requestFree(&r);
        }
        keepForever(std::make_shared<std::vector<uint8_t>>(std::move(noticeOutBytes_)));
      }
      if (!allNull(noticeRequests_)) keepForever(std::make_shared<decltype(noticeIn_)>(std::move(noticeIn_)));
      int unmatched = 0;
      if (clean) check(api_.iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &unmatched, MPI_STATUS_IGNORE), "MPI_Iprobe");
      if (clean && !unmatched) api_.commFree(&comm_);
    } catch (...) {  // NOLINT(bugprone-empty-catch): a destructor must not throw; MPI cleans up at finalize
    }
  }

  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  double defaultTimeout() const { return defaultTimeout_; }
  int threadLevel() const { return threadLevel_; }
  std::mutex& mutex() { return mu_; }

  // Registers and starts a collective (mu_ held). A broken engine fails it at once.
  void start(const std::shared_ptr<Op>& op) {
    op->issued = Clock::now();
    op->seq = nextSeq_++;
    op->tag = static_cast<int>(op->seq % static_cast<uint64_t>(tagUb_));
    op->deadline = deadlineAfter(op->timeout);
    applyAbort();
    if (broken_) {
      op->error = unusable(*op);
      op->stage = Stage::kFailed;
      return;
    }
    active_.push_back(op);
    try {
      postHeaders(*op);
    } catch (...) {
      breakDown(std::current_exception(), nullptr);
    }
    progress();
  }

  // Advances every collective in flight; true if any request completed (mu_ held). MPI errors
  // fail everything in flight and break the engine.
  bool progress() {
    bool moved = false;
    try {
      moved = applyAbort();
      moved |= checkNotices();
      for (const auto& op : active_) moved |= advance(*op);
      if (broken_) drainIncoming();
      testLeftovers();
      testNotices(noticeOut_);
      const auto now = Clock::now();
      for (const auto& op : active_) {
        if (op->running() && now >= op->deadline) timeOut(*op, op->timeout);
        if (op->stage == Stage::kFailing && now >= op->graceDeadline) abandon(op);
      }
    } catch (...) {
      breakDown(std::current_exception(), nullptr);
    }
    active_.erase(std::remove_if(active_.begin(), active_.end(), [](const auto& op) { return op->finished(); }),
                  active_.end());
    return moved;
  }

  // `op` ran out of time after `seconds` (its own timeout or a shorter Work::wait bound): fail it
  // naming the peers it waits for, tell every peer, break the engine (mu_ held).
  void timeOut(Op& op, double seconds) {
    const std::vector<int> culprits = waitingFor(op);
    auto error = std::make_exception_ptr(CollectiveTimeout(
        detail::concat("efcomm: ", kindName(op.kind), " (collective #", op.seq, ") on rank ", rank_, " of ", size_,
                       " timed out after ", seconds, " s waiting for rank(s) ", rankList(culprits),
                       "; the MPI communicator is unusable from now on"),
        culprits));
    sendNotices(op.seq, op.kind, seconds, culprits, nullptr);
    breakDown(error, &op);
  }

  // Backend::abort (mu_ held): fails every collective in flight and every later one with
  // `error`, tells the peers and breaks the engine; ignored once the engine is broken or an
  // abort is pending. The calling thread (a health monitor's) calls MPI only under
  // MPI_THREAD_MULTIPLE: at lower levels another thread of the application may be inside MPI
  // right now. There the abort takes effect in the next call of the thread that drives the
  // backend (start, Work::wait, Work::completed): within a millisecond while it waits.
  void abort(const CollectiveTimeout& error) {
    if (broken_ || pendingAbort_) return;
    pendingAbort_ = std::make_exception_ptr(error);
    pendingCulprits_ = error.culprits();
    pendingReason_ = error.what();
    if (threadLevel_ >= MPI_THREAD_MULTIPLE) applyAbort();
  }

 private:
  void check(int rc, const char* what) const {
    if (rc == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {0};
    int len = 0;
    api_.errorString(rc, text, &len);
    throw Error(detail::concat("efcomm: ", what, " failed on rank ", rank_, " (", api_.library, "): ",
                               std::string(text, static_cast<size_t>(std::max(len, 0)))));
  }

  size_t noticeBytes() const {
    return sizeof(NoticeHead) + sizeof(int32_t) * static_cast<size_t>(size_) + kNoticeTextBytes;
  }

  // Carries out a pending Backend::abort; true if there was one.
  bool applyAbort() {
    if (!pendingAbort_) return false;
    const std::exception_ptr error = std::move(pendingAbort_);
    pendingAbort_ = nullptr;
    if (broken_) return true;
    uint64_t seq = nextSeq_;  // the oldest collective not finished here, or the next one
    Kind kind = Kind::kBarrier;
    for (const auto& op : active_) {
      if (op->running() && op->seq < seq) {
        seq = op->seq;
        kind = op->kind;
      }
    }
    sendNotices(seq, kind, 0.0, pendingCulprits_, &pendingReason_);
    breakDown(error, nullptr);
    return true;
  }

  static bool allNull(const std::vector<MPI_Request>& rs) {
    return std::all_of(rs.begin(), rs.end(), [](MPI_Request r) { return r == MPI_REQUEST_NULL; });
  }

  // Tests a list whose completions need no handling (completed entries become MPI_REQUEST_NULL).
  void testAll(std::vector<MPI_Request>& rs) {
    for (MPI_Request& r : rs) {
      if (r == MPI_REQUEST_NULL) continue;
      int done = 0;
      check(api_.test(&r, &done, MPI_STATUS_IGNORE), "MPI_Test");
    }
  }

  // Tests sends of abort notices, ignoring errors: a peer that cannot be told (it may be dead)
  // does not matter to this rank, which is failing anyway.
  void testNotices(std::vector<MPI_Request>& rs) {
    for (MPI_Request& r : rs) {
      if (r == MPI_REQUEST_NULL) continue;
      int done = 0;
      if (api_.test(&r, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) r = MPI_REQUEST_NULL;
    }
  }

  void testLeftovers() {
    for (auto& [request, op] : leftovers_) {
      int done = 0;
      check(api_.test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test(leftover)");
    }
    leftovers_.erase(std::remove_if(leftovers_.begin(), leftovers_.end(),
                                    [](const auto& l) { return l.first == MPI_REQUEST_NULL; }),
                     leftovers_.end());
    for (auto& [request, bytes] : drained_) {
      int done = 0;
      if (request != MPI_REQUEST_NULL) check(api_.test(&request, &done, MPI_STATUS_IGNORE), "MPI_Test(drain)");
    }
    drained_.erase(std::remove_if(drained_.begin(), drained_.end(),
                                  [](const auto& d) { return d.first == MPI_REQUEST_NULL; }),
                   drained_.end());
  }

  // ---- posting ----

  void post(Op& op, int peer, Role role, bool isRecv, const void* data, size_t bytes) {
    if (bytes == 0) return;
    const size_t pieces = (bytes + kMaxPiece - 1) / kMaxPiece;
    op.transfers.push_back(Transfer{peer, role, isRecv, static_cast<int>(pieces)});
    ++op.transfersLeft;
    auto* p = static_cast<uint8_t*>(const_cast<void*>(data));
    for (size_t i = 0; i < pieces; ++i) {
      const int n = static_cast<int>(std::min(kMaxPiece, bytes - i * kMaxPiece));
      MPI_Request r = MPI_REQUEST_NULL;
      if (isRecv) {
        check(api_.irecv(p + i * kMaxPiece, n, MPI_BYTE, peer, op.tag, comm_, &r), "MPI_Irecv");
      } else {
        check(api_.isend(p + i * kMaxPiece, n, MPI_BYTE, peer, op.tag, comm_, &r), "MPI_Isend");
      }
      op.requests.push_back(r);
      op.requestTransfer.push_back(op.transfers.size() - 1);
    }
  }

  // A payload send: posted now, or, on a link slowed by EFCOMM_FAULT_LINK_DELAY, queued until
  // its delay after the headers has passed (and after any send to that peer queued before it,
  // so the sends to one peer keep their order).
  void postData(Op& op, int peer, Role role, const void* data, size_t bytes) {
    if (!linkDelay_.empty() && bytes > 0 && linkDelay_[static_cast<size_t>(peer)] > 0) {
      const auto due = op.ready + std::chrono::duration_cast<Clock::duration>(
                                      std::chrono::duration<double>(linkDelay_[static_cast<size_t>(peer)]));
      const bool queued =
          std::any_of(op.deferred.begin(), op.deferred.end(), [&](const DeferredSend& d) { return d.peer == peer; });
      if (queued || Clock::now() < due) {
        op.deferred.push_back(DeferredSend{peer, role, data, bytes, due});
        return;
      }
    }
    post(op, peer, role, false, data, bytes);
  }

  // Posts the held-back sends that are due; true if any. Sends to one peer share their due time.
  bool postDue(Op& op) {
    const auto now = Clock::now();
    bool posted = false;
    std::vector<DeferredSend> later;
    for (const DeferredSend& d : op.deferred) {
      if (d.due <= now) {
        post(op, d.peer, d.role, false, d.data, d.bytes);
        posted = true;
      } else {
        later.push_back(d);
      }
    }
    if (posted) op.deferred = std::move(later);
    return posted;
  }

  std::vector<size_t> chunkOffsets(size_t count) const {
    const size_t n = static_cast<size_t>(size_);
    std::vector<size_t> begin(n + 1, 0);
    for (size_t c = 1; c <= n; ++c) begin[c] = comm::partBegin(count, size_, static_cast<int>(c));
    return begin;
  }

  // Bytes of the payload this rank sends to `peer` in the collective's first data phase.
  size_t payloadFor(const Op& op, int peer) const {
    switch (op.kind) {
      case Kind::kAllgatherv: return op.bytes;
      case Kind::kAlltoallv: return op.sendCounts[static_cast<size_t>(peer)];
      case Kind::kBroadcast: return op.root == rank_ ? op.bytes : 0;
      case Kind::kAllreduceSum: {
        const auto begin = chunkOffsets(op.bytes);
        return (begin[static_cast<size_t>(peer) + 1] - begin[static_cast<size_t>(peer)]) * itemSize(op.dtype);
      }
      case Kind::kBarrier: return 0;
    }
    return 0;
  }

  void postHeaders(Op& op) {
    const size_t n = static_cast<size_t>(size_);
    op.outHeaders.assign(n, Header{});
    op.inHeaders.assign(n, Header{});
    op.headerIn.assign(n, false);
    op.headerIn[static_cast<size_t>(rank_)] = true;
    op.headersMissing = size_ - 1;
    op.peerSeconds.assign(n, -1.0);
    if (op.headersMissing == 0) markReady(op);
    for (int p = 0; p < size_; ++p) {
      Header& h = op.outHeaders[static_cast<size_t>(p)];
      h.kind = static_cast<uint8_t>(op.kind);
      h.dtype = static_cast<uint8_t>(op.dtype);
      h.root = op.root;
      h.seq = op.seq;
      h.param = (op.kind == Kind::kBroadcast || op.kind == Kind::kAllreduceSum) ? op.bytes : 0;
      h.payloadBytes = p == rank_ ? 0 : payloadFor(op, p);
    }
    op.inHeaders[static_cast<size_t>(rank_)] = op.outHeaders[static_cast<size_t>(rank_)];
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      post(op, p, Role::kHeader, true, &op.inHeaders[static_cast<size_t>(p)], sizeof(Header));
      post(op, p, Role::kHeader, false, &op.outHeaders[static_cast<size_t>(p)], sizeof(Header));
    }
    op.stage = Stage::kHeaders;
  }

  // ---- advancing ----

  // Tests op's requests and reacts to completions; true if any completed.
  bool advance(Op& op) {
    if (op.finished()) return false;
    bool moved = false;
    if (!op.requests.empty()) {
      std::vector<int> indices(op.requests.size());
      int count = 0;
      check(api_.testsome(static_cast<int>(op.requests.size()), op.requests.data(), &count, indices.data(),
                          MPI_STATUSES_IGNORE),
            "MPI_Testsome");
      if (count == MPI_UNDEFINED) count = 0;
      for (int i = 0; i < count; ++i) {
        Transfer& t = op.transfers[op.requestTransfer[static_cast<size_t>(indices[static_cast<size_t>(i)])]];
        if (--t.piecesLeft == 0) {
          --op.transfersLeft;
          const Transfer done = t;  // onTransferDone may post, reallocating op.transfers
          if (op.running()) onTransferDone(op, done);
        }
      }
      moved = count > 0;
      if (op.transfersLeft == 0) {
        op.requests.clear();
        op.requestTransfer.clear();
        op.transfers.clear();
      }
    }
    if (op.stage == Stage::kHeaders && op.headersMissing == 0) {
      // A peer that gave up on this collective sent its header before its abort notice, so the
      // notice is next in line from it: look for it before acting on the headers, or a late
      // rank would report a mismatch, or send payloads nobody will receive.
      for (int i = 0; i < kNoticePolls && !broken_; ++i) checkNotices();
      if (broken_) return true;
      if (std::exception_ptr mismatch = checkAgreement(op)) {
        op.error = mismatch;
        op.stage = Stage::kFailing;
        op.graceDeadline = deadlineAfter(kFailGraceSeconds);
      } else {
        startPayload(op);
        moved = true;
      }
    }
    if (op.stage == Stage::kPayload) reduceReady(op);
    if (op.stage == Stage::kPayload && !op.deferred.empty()) moved |= postDue(op);
    if (op.transfersLeft == 0 && op.deferred.empty()) {
      if (op.stage == Stage::kPayload && (op.kind != Kind::kAllreduceSum || op.reduced)) op.stage = Stage::kDone;
      if (op.stage == Stage::kFailing) op.stage = Stage::kFailed;
    }
    return moved;
  }

  void onTransferDone(Op& op, const Transfer& t) {
    const size_t p = static_cast<size_t>(t.peer);
    switch (t.role) {
      case Role::kHeader:
        if (t.isRecv) {
          const Header& h = op.inHeaders[p];
          EFCOMM_CHECK_MSG(h.magic == kHeaderMagic, "efcomm: rank ", rank_, " received a malformed header from rank ",
                           t.peer, " in collective #", op.seq);
          op.headerIn[p] = true;
          if (--op.headersMissing == 0) markReady(op);
        }
        return;
      case Role::kContribution: op.contributionIn[p] = true; break;
      case Role::kPayload:
        if (!t.isRecv && op.kind == Kind::kAllreduceSum) {
          op.partSent[p] = true;
          postResultRecv(op, t.peer);
        }
        break;
      case Role::kResult: break;
    }
    // The last of this peer's payload receives so far (allreduceSum has two per peer).
    if (t.isRecv) op.peerSeconds[p] = std::chrono::duration<double>(Clock::now() - op.ready).count();
  }

  static void markReady(Op& op) {
    op.ready = Clock::now();
    op.isReady = true;
  }

  // Whether two ranks' headers make the same call, as far as the ranks must agree.
  static bool sameCall(const Header& a, const Header& b) {
    if (a.seq != b.seq || a.kind != b.kind) return false;
    const auto k = static_cast<Kind>(a.kind);
    if (k == Kind::kBroadcast) return a.param == b.param && a.root == b.root;
    if (k == Kind::kAllreduceSum) return a.param == b.param && a.dtype == b.dtype;
    return true;
  }

  // Every rank holds all n headers, so every rank computes the same verdict, message and ranks:
  // the first rank that differs from rank 0 in the message, every rank that differs from the
  // most common call in its ranks().
  std::exception_ptr checkAgreement(const Op& op) const {
    const std::vector<Header>& hs = op.inHeaders;
    const Header& h0 = hs[0];
    for (int r = 1; r < size_; ++r) {
      const Header& h = hs[static_cast<size_t>(r)];
      if (sameCall(h, h0)) continue;
      const auto k0 = static_cast<Kind>(h0.kind), k = static_cast<Kind>(h.kind);
      std::string what = detail::concat("efcomm: collective #", op.seq, ": ");
      if (h.seq != h0.seq) {
        what += detail::concat("rank 0 is at collective #", h0.seq, " but rank ", r, " at #", h.seq,
                               ": the ranks issued different numbers of collectives");
      } else if (k != k0) {
        what += detail::concat("rank 0 called ", kindName(k0), " but rank ", r, " called ", kindName(k));
      } else if (k == Kind::kBroadcast) {
        what += detail::concat("broadcast of ", h0.param, " bytes from root ", h0.root, " on rank 0 but of ", h.param,
                               " bytes from root ", h.root, " on rank ", r);
      } else {
        what += detail::concat("allreduceSum of ", h0.param, " ", dtypeName(static_cast<DType>(h0.dtype)),
                               " on rank 0 but of ", h.param, " ", dtypeName(static_cast<DType>(h.dtype)), " on rank ", r);
      }
      return std::make_exception_ptr(
          MismatchError(what, comm::oddRanks(hs.size(), [&](size_t a, size_t b) { return sameCall(hs[a], hs[b]); })));
    }
    return nullptr;
  }

  void startPayload(Op& op) {
    op.stage = Stage::kPayload;
    const size_t n = static_cast<size_t>(size_);
    const size_t me = static_cast<size_t>(rank_);
    switch (op.kind) {
      case Kind::kAllgatherv:
      case Kind::kAlltoallv: {
        // Block p of recv: what p sends to this rank; sizes come from the headers, so the
        // receive buffer is allocated once, exactly.
        ByteBlocks& recv = *op.recv;
        recv.offsets.assign(n + 1, 0);
        for (size_t p = 0; p < n; ++p) {
          recv.offsets[p + 1] = recv.offsets[p] + (p == me ? payloadFor(op, rank_) : op.inHeaders[p].payloadBytes);
        }
        recv.data.resize(recv.offsets[n]);
        size_t ownOffset = 0;
        if (op.kind == Kind::kAlltoallv) {
          for (size_t j = 0; j < me; ++j) ownOffset += op.sendCounts[j];
        }
        if (recv.blockBytes(me) > 0) std::memcpy(recv.data.data() + recv.offsets[me], op.send + ownOffset, recv.blockBytes(me));
        size_t sendOffset = 0;
        for (int p = 0; p < size_; ++p) {
          const size_t bytes = payloadFor(op, p);
          if (p != rank_) {
            post(op, p, Role::kPayload, true, recv.data.data() + recv.offsets[static_cast<size_t>(p)],
                 recv.blockBytes(static_cast<size_t>(p)));
            postData(op, p, Role::kPayload, op.send + (op.kind == Kind::kAlltoallv ? sendOffset : 0), bytes);
          }
          if (op.kind == Kind::kAlltoallv) sendOffset += bytes;
        }
        break;
      }
      case Kind::kBroadcast:
        // The root sends to every rank directly: n - 1 sends from one rank, fine for the small
        // groups and messages broadcast is used for here.
        if (op.root == rank_) {
          for (int p = 0; p < size_; ++p) {
            if (p != rank_) postData(op, p, Role::kPayload, op.buf, op.bytes);
          }
        } else {
          post(op, op.root, Role::kPayload, true, op.buf, op.bytes);
        }
        break;
      case Kind::kAllreduceSum: startAllreduce(op); break;
      case Kind::kBarrier: break;
    }
  }

  // Reduce-scatter then allgather, each rank owning one chunk: every rank sends and receives
  // (n-1)/n of the buffer twice, the bandwidth optimum; the owner adds the n contributions in
  // rank order, so the result is bit-identical to the in-process backend's.
  void startAllreduce(Op& op) {
    const size_t n = static_cast<size_t>(size_);
    const size_t me = static_cast<size_t>(rank_);
    const size_t item = itemSize(op.dtype);
    op.chunkBegin = chunkOffsets(op.bytes);
    const size_t myBytes = (op.chunkBegin[me + 1] - op.chunkBegin[me]) * item;
    op.scratch.reset(new uint8_t[myBytes * n]);
    op.contributionIn.assign(n, false);
    op.contributionIn[me] = true;
    op.partSent.assign(n, false);
    op.resultPosted.assign(n, false);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      const size_t q = static_cast<size_t>(p);
      const size_t partBytes = (op.chunkBegin[q + 1] - op.chunkBegin[q]) * item;
      if (myBytes > 0) {
        post(op, p, Role::kContribution, true, op.scratch.get() + myBytes * q, myBytes);
      } else {
        op.contributionIn[q] = true;
      }
      if (partBytes > 0) {
        postData(op, p, Role::kPayload, op.buf + op.chunkBegin[q] * item, partBytes);
      } else {
        op.partSent[q] = true;
      }
    }
    for (int p = 0; p < size_; ++p) {
      if (p != rank_ && op.partSent[static_cast<size_t>(p)]) postResultRecv(op, p);
    }
  }

  // Rank p's reduced chunk lands in buf only once this rank's phase-1 send of that chunk is done.
  void postResultRecv(Op& op, int p) {
    const size_t q = static_cast<size_t>(p);
    if (op.resultPosted[q]) return;
    op.resultPosted[q] = true;
    const size_t item = itemSize(op.dtype);
    post(op, p, Role::kResult, true, op.buf + op.chunkBegin[q] * item, (op.chunkBegin[q + 1] - op.chunkBegin[q]) * item);
  }

  // Adds the contributions that are in, in rank order ((x0 + x1) + x2) + ...; once all are in,
  // sends the reduced chunk to every peer.
  void reduceReady(Op& op) {
    if (op.kind != Kind::kAllreduceSum || op.reduced) return;
    const size_t me = static_cast<size_t>(rank_);
    const size_t count = op.chunkBegin[me + 1] - op.chunkBegin[me];
    const size_t myBytes = count * itemSize(op.dtype);
    uint8_t* mine = op.buf + op.chunkBegin[me] * itemSize(op.dtype);
    while (op.nextToAdd < size_ && op.contributionIn[static_cast<size_t>(op.nextToAdd)]) {
      const size_t r = static_cast<size_t>(op.nextToAdd++);
      uint8_t* x = r == me ? mine : op.scratch.get() + myBytes * r;
      if (op.accumulator == nullptr) {
        op.accumulator = x;
      } else if (r == me) {
        // acc + x == x + acc exactly, so the sum may continue in place in buf.
        comm::addInto(mine, op.accumulator, count, op.dtype);
        op.accumulator = mine;
      } else {
        comm::addInto(op.accumulator, x, count, op.dtype);
      }
    }
    if (op.nextToAdd < size_) return;
    op.reduced = true;
    for (int p = 0; p < size_; ++p) {
      if (p != rank_) postData(op, p, Role::kResult, mine, myBytes);
    }
  }

  // ---- failures ----

  // Peers `op` is waiting for: missing headers first, then missing data, then unfinished sends.
  std::vector<int> waitingFor(const Op& op) const {
    std::vector<int> culprits;
    for (int p = 0; p < size_; ++p) {
      if (!op.headerIn.empty() && !op.headerIn[static_cast<size_t>(p)]) culprits.push_back(p);
    }
    for (bool recvs : {true, false}) {
      if (!culprits.empty()) break;
      for (const Transfer& t : op.transfers) {
        if (t.piecesLeft > 0 && t.isRecv == recvs) culprits.push_back(t.peer);
      }
      if (!recvs) {
        for (const DeferredSend& d : op.deferred) culprits.push_back(d.peer);
      }
    }
    std::sort(culprits.begin(), culprits.end());
    culprits.erase(std::unique(culprits.begin(), culprits.end()), culprits.end());
    return culprits;
  }

  // The error of a collective issued or in flight after the engine broke: of the type of the
  // failure that broke it (a timeout, or an MPI error), with its culprits.
  std::exception_ptr unusable(const Op& op) const {
    const auto what = [&](const std::exception& e) {
      return detail::concat("efcomm: ", kindName(op.kind), " (collective #", op.seq, ") on rank ", rank_,
                            ": the MPI communicator is unusable after a failed collective; create a new "
                            "Communicator (or restart the job). The failure: ",
                            e.what());
    };
    try {
      std::rethrow_exception(broken_);
    } catch (const CollectiveTimeout& e) {
      return std::make_exception_ptr(CollectiveTimeout(what(e), e.culprits()));
    } catch (const std::exception& e) {
      return std::make_exception_ptr(Error(what(e)));
    }
  }

  // Marks the engine broken with `error` and fails every collective in flight with it, or, when
  // `origin` (the collective that timed out) is given, the others as unusable. Unmatched receives
  // are cancelled; what is in flight gets kFailGraceSeconds to finish.
  void breakDown(std::exception_ptr error, Op* origin) {
    if (!broken_) broken_ = error;
    for (const auto& op : active_) {
      if (!op->running()) continue;
      op->error = origin == nullptr || op.get() == origin ? error : unusable(*op);
      op->stage = Stage::kFailing;
      op->graceDeadline = deadlineAfter(kFailGraceSeconds);
      op->deferred.clear();
      for (size_t i = 0; i < op->requests.size(); ++i) {
        MPI_Request& r = op->requests[i];
        if (r != MPI_REQUEST_NULL && op->transfers[op->requestTransfer[i]].isRecv) api_.cancel(&r);
      }
    }
  }

  // The grace period of a failed op ran out: its open requests are left to the destructor, and
  // keep the op (whose buffers they may use) alive.
  void abandon(const std::shared_ptr<Op>& op) {
    for (MPI_Request r : op->requests) {
      if (r != MPI_REQUEST_NULL) leftovers_.emplace_back(r, op);
    }
    op->requests.clear();
    op->requestTransfer.clear();
    op->transfers.clear();
    op->transfersLeft = 0;
    op->stage = Stage::kFailed;
  }

  // Tells every peer that this rank gave up (a timeout in collective #seq, or with `reason` an
  // abort). Sent once per engine (it breaks right after), from one buffer. Best effort: never
  // blocks, and a peer that cannot be reached (it may be dead) is skipped.
  void sendNotices(uint64_t seq, Kind kind, double seconds, const std::vector<int>& culprits,
                   const std::string* reason) {
    if (!noticeOut_.empty()) return;
    const size_t count = std::min(culprits.size(), static_cast<size_t>(size_));
    const size_t textBytes = reason == nullptr ? 0 : std::min(reason->size(), kNoticeTextBytes);
    NoticeHead head;
    head.kind = static_cast<uint8_t>(kind);
    head.flags = reason == nullptr ? 0 : kNoticeAborted;
    head.textBytes = static_cast<uint16_t>(textBytes);
    head.rank = rank_;
    head.culpritCount = static_cast<uint32_t>(count);
    head.seq = seq;
    head.seconds = seconds;
    noticeOutBytes_.assign(sizeof head + sizeof(int32_t) * count + textBytes, 0);
    std::memcpy(noticeOutBytes_.data(), &head, sizeof head);
    for (size_t i = 0; i < count; ++i) {
      const int32_t c = culprits[i];
      std::memcpy(noticeOutBytes_.data() + sizeof head + sizeof c * i, &c, sizeof c);
    }
    if (textBytes > 0) {
      std::memcpy(noticeOutBytes_.data() + sizeof head + sizeof(int32_t) * count, reason->data(), textBytes);
    }
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      MPI_Request r = MPI_REQUEST_NULL;
      if (api_.isend(noticeOutBytes_.data(), static_cast<int>(noticeOutBytes_.size()), MPI_BYTE, p, tagUb_, comm_,
                     &r) == MPI_SUCCESS) {
        noticeOut_.push_back(r);
      }
    }
  }

  // A peer timed out: everything in flight here fails with its reason. True if one arrived.
  bool checkNotices() {
    if (broken_) return false;
    std::vector<int> indices(noticeRequests_.size());
    int count = 0;
    check(api_.testsome(size_, noticeRequests_.data(), &count, indices.data(), MPI_STATUSES_IGNORE),
          "MPI_Testsome(abort notices)");
    if (count == MPI_UNDEFINED || count == 0) return false;
    {  // the first notice is enough: the engine is broken from now on
      const int p = *std::min_element(indices.begin(), indices.begin() + count);
      const auto& bytes = noticeIn_[static_cast<size_t>(p)];
      NoticeHead head;
      std::memcpy(&head, bytes.data(), sizeof head);
      EFCOMM_CHECK_MSG(head.magic == kNoticeMagic && head.culpritCount <= static_cast<uint32_t>(size_) &&
                           head.textBytes <= kNoticeTextBytes,
                       "efcomm: rank ", rank_, " received a malformed abort notice from rank ", p);
      std::vector<int> culprits(head.culpritCount);
      for (size_t i = 0; i < culprits.size(); ++i) {
        int32_t c = 0;
        std::memcpy(&c, bytes.data() + sizeof head + sizeof c * i, sizeof c);
        culprits[i] = c;
      }
      const auto* text = reinterpret_cast<const char*>(bytes.data()) + sizeof head + sizeof(int32_t) * culprits.size();
      const std::string message =
          (head.flags & kNoticeAborted) != 0
              ? detail::concat("efcomm: rank ", p, " aborted its collectives at collective #", head.seq, " (",
                               std::string(text, head.textBytes), "); the MPI communicator is unusable from now on")
              : detail::concat("efcomm: rank ", p, " timed out in ", kindName(static_cast<Kind>(head.kind)),
                               " (collective #", head.seq, ") after ", head.seconds, " s waiting for rank(s) ",
                               rankList(culprits), "; the MPI communicator is unusable from now on");
      breakDown(std::make_exception_ptr(CollectiveTimeout(message, culprits)), nullptr);
    }
    return true;
  }

  // A broken engine receives and discards whatever peers still send, so that their sends finish.
  void drainIncoming() {
    for (;;) {
      int flag = 0;
      MPI_Message message = MPI_MESSAGE_NULL;
      MPI_Status status;
      check(api_.improbe(MPI_ANY_SOURCE, MPI_ANY_TAG, comm_, &flag, &message, &status), "MPI_Improbe");
      if (!flag) return;
      int count = 0;
      check(api_.getCount(&status, MPI_BYTE, &count), "MPI_Get_count");
      drained_.emplace_back(MPI_REQUEST_NULL, std::vector<uint8_t>(static_cast<size_t>(std::max(count, 0))));
      check(api_.imrecv(drained_.back().second.data(), count, MPI_BYTE, &message, &drained_.back().first),
            "MPI_Imrecv");
    }
  }

  MpiApi api_;
  double defaultTimeout_;
  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  int tagUb_ = 32767;  // data tags are [0, tagUb_); tagUb_ carries abort notices
  int threadLevel_ = MPI_THREAD_SINGLE;
  std::mutex mu_;
  uint64_t nextSeq_ = 0;
  std::vector<std::shared_ptr<Op>> active_;
  std::exception_ptr broken_;
  std::vector<std::vector<uint8_t>> noticeIn_;
  std::vector<MPI_Request> noticeRequests_;
  std::vector<uint8_t> noticeOutBytes_;
  std::vector<MPI_Request> noticeOut_;
  // Backend::abort waiting for a thread that may call MPI (see abort).
  std::exception_ptr pendingAbort_;
  std::vector<int> pendingCulprits_;
  std::string pendingReason_;
  // EFCOMM_FAULT_LINK_DELAY: seconds this rank holds back its payload sends to each peer; empty
  // when no link from this rank is slowed.
  std::vector<double> linkDelay_;
  std::vector<std::pair<MPI_Request, std::shared_ptr<Op>>> leftovers_;
  // Discarded messages being received; moving the vectors keeps their buffers in place.
  std::vector<std::pair<MPI_Request, std::vector<uint8_t>>> drained_;
};

// ---- Work and Backend ------------------------------------------------------------------------------

class MpiWork final : public Work {
 public:
  MpiWork(std::shared_ptr<Engine> engine, std::shared_ptr<Op> op) : engine_(std::move(engine)), op_(std::move(op)) {}

  // Waits (bounded by the collective's timeout) so that the caller's buffers are never touched
  // after the Work is gone; errors were the business of wait().
  ~MpiWork() override {
    try {
      wait(std::nullopt);
    } catch (...) {  // NOLINT(bugprone-empty-catch): reported by wait(), if it is called
    }
  }

  void wait(std::optional<double> timeoutSeconds) override {
    std::optional<Clock::time_point> until;
    if (timeoutSeconds) {
      EFCOMM_CHECK(*timeoutSeconds >= 0 && !std::isnan(*timeoutSeconds), "Work.wait: timeout must be >= 0, got ",
                   *timeoutSeconds);
      until = deadlineAfter(*timeoutSeconds);
    }
    Backoff backoff = mpiBackoff();
    for (;;) {
      bool moved = false;
      {
        std::lock_guard<std::mutex> lk(engine_->mutex());
        moved = engine_->progress();
        if (op_->finished()) {
          if (op_->error) std::rethrow_exception(op_->error);
          return;
        }
        if (until && Clock::now() >= *until && op_->running() && op_->deadline > *until) {
          engine_->timeOut(*op_, *timeoutSeconds);
          moved = true;
        }
      }
      if (moved) {
        backoff.reset();
      } else {
        backoff.pause();
      }
    }
  }

  bool completed() const override {
    std::lock_guard<std::mutex> lk(engine_->mutex());
    engine_->progress();
    return op_->finished();
  }

  WorkTiming timing() const override {
    std::lock_guard<std::mutex> lk(engine_->mutex());
    WorkTiming t;
    if (op_->isReady) t.readySeconds = std::chrono::duration<double>(op_->ready - op_->issued).count();
    t.peerSeconds = op_->peerSeconds;
    t.peerSeconds.resize(static_cast<size_t>(engine_->size()), -1.0);
    return t;
  }

 private:
  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Op> op_;
};

class MpiBackend final : public Backend {
 public:
  explicit MpiBackend(std::shared_ptr<Engine> engine) : engine_(std::move(engine)) {}

  int rank() const override { return engine_->rank(); }
  int size() const override { return engine_->size(); }
  int threadLevel() const { return engine_->threadLevel(); }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                   std::optional<double> timeoutSeconds) override {
    auto op = makeOp(Kind::kAllgatherv, timeoutSeconds);
    comm::checkBuffer(send, bytes, "allgatherv");
    op->send = static_cast<const uint8_t*>(send);
    op->bytes = bytes;
    op->recv = &recv;
    return start(op);
  }

  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, ByteBlocks& recv,
                                  std::optional<double> timeoutSeconds) override {
    auto op = makeOp(Kind::kAlltoallv, timeoutSeconds);
    EFCOMM_CHECK(sendCounts.size() == static_cast<size_t>(size()), "alltoallv: ", sendCounts.size(),
                 " send counts for ", size(), " ranks");
    size_t total = 0;
    for (size_t c : sendCounts) total += c;
    comm::checkBuffer(send, total, "alltoallv");
    op->send = static_cast<const uint8_t*>(send);
    op->sendCounts = sendCounts;
    op->recv = &recv;
    return start(op);
  }

  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, std::optional<double> timeoutSeconds) override {
    auto op = makeOp(Kind::kBroadcast, timeoutSeconds);
    EFCOMM_CHECK(root >= 0 && root < size(), "broadcast: root ", root, " not in [0, ", size(), ")");
    comm::checkBuffer(buf, bytes, "broadcast");
    op->buf = static_cast<uint8_t*>(buf);
    op->bytes = bytes;
    op->root = root;
    return start(op);
  }

  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype,
                                     std::optional<double> timeoutSeconds) override {
    auto op = makeOp(Kind::kAllreduceSum, timeoutSeconds);
    comm::checkSumBuffer(buf, count, dtype);
    op->buf = static_cast<uint8_t*>(buf);
    op->bytes = count;
    op->dtype = dtype;
    return start(op);
  }

  std::shared_ptr<Work> barrier(std::optional<double> timeoutSeconds) override {
    return start(makeOp(Kind::kBarrier, timeoutSeconds));
  }

  void abort(const CollectiveTimeout& error) override {
    std::lock_guard<std::mutex> lk(engine_->mutex());
    engine_->abort(error);
  }

 private:
  std::shared_ptr<Op> makeOp(Kind kind, std::optional<double> timeoutSeconds) const {
    auto op = std::make_shared<Op>();
    op->kind = kind;
    op->timeout = comm::resolveTimeout(timeoutSeconds, engine_->defaultTimeout());
    return op;
  }

  std::shared_ptr<Work> start(const std::shared_ptr<Op>& op) {
    std::lock_guard<std::mutex> lk(engine_->mutex());
    engine_->start(op);
    return std::make_shared<MpiWork>(engine_, op);
  }

  std::shared_ptr<Engine> engine_;
};

}  // namespace

std::shared_ptr<Backend> mpiBackendFromHandle(int64_t handle, const std::string& libraryPath,
                                              double defaultTimeoutSeconds) {
  comm::resolveTimeout(defaultTimeoutSeconds, defaultTimeoutSeconds);
  EFCOMM_CHECK(handle >= INT32_MIN && handle <= INT32_MAX, "mpiBackendFromHandle: ", handle,
               " is not an MPI_Comm handle of the MPICH ABI (an int)");
  MpiApi api = loadMpi(libraryPath);
  const std::string version = checkAbi(api);
  int initialized = 0, finalized = 0;
  api.initialized(&initialized);
  api.finalized(&finalized);
  EFCOMM_CHECK_T(BackendUnavailable, initialized && !finalized, "efcomm: MPI is ",
                 finalized ? "already finalized" : "not initialized", " in this process (", version, "). ", kHowToFix);
  const auto comm = static_cast<MPI_Comm>(handle);
  EFCOMM_CHECK(comm != MPI_COMM_NULL, "mpiBackendFromHandle: the communicator is MPI_COMM_NULL");
  return std::make_shared<MpiBackend>(std::make_shared<Engine>(std::move(api), comm, defaultTimeoutSeconds));
}

std::optional<MpiThreadLevel> mpiThreadLevel(const Backend& backend) {
  if (const auto* mpi = dynamic_cast<const MpiBackend*>(&backend)) {
    return static_cast<MpiThreadLevel>(mpi->threadLevel());
  }
  return std::nullopt;
}

}  // namespace efcomm

#endif  // EFCOMM_HAVE_MPI
