// The NCCL backend (efcomm/nccl.hpp).
//
// Loading: no nccl.h at build time. The few NCCL types and functions used are declared below
// (namespace abi), checked against nccl.h of NCCL 2.32.3 (the nvidia-nccl-cu13 wheel,
// nvidia/nccl/include/nccl.h), and found with dlopen/dlsym, as the MPI backend finds MPI
// (cpp/src/comm/mpi.cpp). Every declaration used has kept its ABI since NCCL 2.7 (send/recv);
// ncclCommInitRankConfig (2.14), ncclCommFinalize (2.14) and ncclGetLastError (2.13) are optional.
//
// Bounded waits: the communicator is created nonblocking (ncclConfig_t.blocking = 0) where the
// library has ncclCommInitRankConfig, so that neither its creation nor the launch of a collective
// (whose connections NCCL sets up at first use) can block the host: a call that answers
// ncclInProgress is polled with ncclCommGetAsyncError until it settles, against the deadline.
// A collective's completion is a CUDA event recorded after it on the caller's stream, polled with
// cudaEventQuery by Work::wait/completed, which also poll ncclCommGetAsyncError; past the deadline
// the communicator is aborted (ncclCommAbort) and the collective fails with CollectiveTimeout.

#include "efcomm/nccl.hpp"

#include "efcomm/config.hpp"

#if EFCOMM_HAVE_NCCL

#include <cuda_runtime.h>
#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "comm/backend.hpp"
#include "comm/staged.hpp"
#include "common/runtime.hpp"
#include "efcomm/error.hpp"

namespace efcomm {

namespace {

using comm::Clock;
using comm::deadlineAfter;

// ---- the NCCL ABI (nccl.h of NCCL 2.32.3) -------------------------------------------------------

namespace abi {

// typedef struct ncclComm* ncclComm_t;
using Comm = struct ncclComm*;
// #define NCCL_UNIQUE_ID_BYTES 128
// typedef struct { char internal[NCCL_UNIQUE_ID_BYTES]; } ncclUniqueId;  (passed by value)
struct UniqueId {
  char internal[128];
};
static_assert(sizeof(UniqueId) == kNcclUniqueIdBytes, "ncclUniqueId is 128 bytes");
// typedef enum { ncclSuccess = 0, ncclUnhandledCudaError = 1, ncclSystemError = 2,
//   ncclInternalError = 3, ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6,
//   ncclInProgress = 7, ncclTimeout = 8, ncclNumResults = 9 } ncclResult_t;   (an int-sized C enum)
using Result = int;
constexpr Result kSuccess = 0, kInvalidArgument = 4, kInvalidUsage = 5, kRemoteError = 6, kInProgress = 7,
                 kTimeout = 8;
// typedef enum { ncclInt8 = 0, ncclChar = 0, ncclUint8 = 1, ..., ncclFloat16 = 6, ncclFloat32 = 7,
//   ncclFloat64 = 8, ncclBfloat16 = 9, ... } ncclDataType_t;
using DataType = int;
constexpr DataType kUint8 = 1, kFloat16 = 6, kFloat32 = 7, kFloat64 = 8, kBfloat16 = 9;
// typedef enum { ncclSum = 0, ... } ncclRedOp_t;
using RedOp = int;
constexpr RedOp kSum = 0;
// The ncclConfig_t of NCCL 2.31 (ncclConfig_v23100, nccl.h of 2.32.3), every field set as
// NCCL_CONFIG_INITIALIZER sets it except `blocking`. The struct is append-only; a library copies
// min(size, its own sizeof) bytes and reads the fields its `version` names (parseCommConfig in
// src/init.cc). With only the 2.17 prefix, NCCL 2.28.9 crashed in ncclCommInitRankConfig when
// torch or mpi4py had been loaded first (an H200 run; the cause, likely a read past the prefix,
// is not established), so every field a library may read is initialized here.
struct Config {
  size_t size;
  unsigned int magic;    // NCCL_API_MAGIC 0xcafebeef
  unsigned int version;  // NCCL_VERSION(2, 31, 0) == 23100 at most
  int blocking;
  int cgaClusterSize;
  int minCTAs;
  int maxCTAs;
  const char* netName;
  int splitShare;
  int trafficClass;
  const char* commName;
  int collnetEnable;
  int CTAPolicy;
  int shrinkShare;
  int nvlsCTAs;
  int nChannelsPerNetPeer;
  int nvlinkCentricSched;
  int graphUsageMode;
  int numRmaCtx;
  int maxP2pPeers;
  int graphStreamOrdering;
  int launchOrderImplicit;
  int numRmaSig;
  int rmaEagerInit;
  int hostCftMode;
  int nvlsHostMode;
};
constexpr unsigned int kConfigVersion = 23100;
static_assert(sizeof(Config) == 120, "ncclConfig_v23100 is 120 bytes on LP64");
constexpr unsigned int kApiMagic = 0xcafebeef;
constexpr int kConfigUndefInt = INT_MIN;  // NCCL_CONFIG_UNDEF_INT

}  // namespace abi

struct NcclApi {
  abi::Result (*getVersion)(int*) = nullptr;
  abi::Result (*getUniqueId)(abi::UniqueId*) = nullptr;
  abi::Result (*commInitRank)(abi::Comm*, int, abi::UniqueId, int) = nullptr;
  abi::Result (*commInitRankConfig)(abi::Comm*, int, abi::UniqueId, int, abi::Config*) = nullptr;  // 2.14+
  abi::Result (*commFinalize)(abi::Comm) = nullptr;                                                       // 2.14+
  abi::Result (*commDestroy)(abi::Comm) = nullptr;
  abi::Result (*commAbort)(abi::Comm) = nullptr;
  abi::Result (*commGetAsyncError)(abi::Comm, abi::Result*) = nullptr;
  const char* (*getErrorString)(abi::Result) = nullptr;
  const char* (*getLastError)(abi::Comm) = nullptr;  // 2.13+
  abi::Result (*allReduce)(const void*, void*, size_t, abi::DataType, abi::RedOp, abi::Comm, cudaStream_t) = nullptr;
  abi::Result (*broadcast)(const void*, void*, size_t, abi::DataType, int, abi::Comm, cudaStream_t) = nullptr;
  abi::Result (*allGather)(const void*, void*, size_t, abi::DataType, abi::Comm, cudaStream_t) = nullptr;
  abi::Result (*send)(const void*, size_t, abi::DataType, int, abi::Comm, cudaStream_t) = nullptr;
  abi::Result (*recv)(void*, size_t, abi::DataType, int, abi::Comm, cudaStream_t) = nullptr;
  abi::Result (*groupStart)() = nullptr;
  abi::Result (*groupEnd)() = nullptr;
  int version = 0;
  std::string library;  // the file it was loaded from
};

constexpr const char* kLibraryVariable = "EFCOMM_NCCL_LIBRARY";
constexpr const char* kHowToFix =
    "Install NCCL for CUDA 13 with `pip install nvidia-nccl-cu13` (or the system's libnccl2 package), or set "
    "EFCOMM_NCCL_LIBRARY to the path of libnccl.so.2";

template <typename F>
void bindSymbol(void* lib, const char* name, F& f, std::string* missing) {
  f = reinterpret_cast<F>(dlsym(lib, name));
  if (f == nullptr && missing != nullptr) *missing += std::string(missing->empty() ? "" : ", ") + name;
}

// Binds every function from `lib`; returns the names of required ones that are missing.
std::string bindAll(void* lib, NcclApi& api) {
  std::string missing;
  bindSymbol(lib, "ncclGetVersion", api.getVersion, &missing);
  bindSymbol(lib, "ncclGetUniqueId", api.getUniqueId, &missing);
  bindSymbol(lib, "ncclCommInitRank", api.commInitRank, &missing);
  bindSymbol(lib, "ncclCommInitRankConfig", api.commInitRankConfig, nullptr);
  bindSymbol(lib, "ncclCommFinalize", api.commFinalize, nullptr);
  bindSymbol(lib, "ncclCommDestroy", api.commDestroy, &missing);
  bindSymbol(lib, "ncclCommAbort", api.commAbort, &missing);
  bindSymbol(lib, "ncclCommGetAsyncError", api.commGetAsyncError, &missing);
  bindSymbol(lib, "ncclGetErrorString", api.getErrorString, &missing);
  bindSymbol(lib, "ncclGetLastError", api.getLastError, nullptr);
  bindSymbol(lib, "ncclAllReduce", api.allReduce, &missing);
  bindSymbol(lib, "ncclBroadcast", api.broadcast, &missing);
  bindSymbol(lib, "ncclAllGather", api.allGather, &missing);
  bindSymbol(lib, "ncclSend", api.send, &missing);
  bindSymbol(lib, "ncclRecv", api.recv, &missing);
  bindSymbol(lib, "ncclGroupStart", api.groupStart, &missing);
  bindSymbol(lib, "ncclGroupEnd", api.groupEnd, &missing);
  return missing;
}

std::mutex& loadMutex() {
  static std::mutex mu;
  return mu;
}

// The loaded library; never unloaded (NCCL keeps threads of its own).
NcclApi*& loadedApi() {
  static NcclApi* api = nullptr;
  return api;
}

// The file a loaded library's function lives in ("" if unknown).
std::string fileOf(void* function) {
  Dl_info info{};
  if (function != nullptr && dladdr(function, &info) != 0 && info.dli_fname != nullptr) return info.dli_fname;
  return std::string();
}

// libnccl from EFCOMM_NCCL_LIBRARY (when set, only there); else a libnccl.so.2 that is already
// loaded in the process (torch's, CuPy's: one NCCL per process; a second copy of another version
// would share the process with the first, and where that one's exported symbols are global, the
// second's internal calls of exported functions could bind to the first's code); else `path`,
// else libnccl.so.2 on the loader's search path.
const NcclApi& loadNccl(const std::string& path) {
  std::lock_guard<std::mutex> lk(loadMutex());
  if (loadedApi() != nullptr) return *loadedApi();
  struct Candidate {
    std::string name;
    int flags;
    const char* how;
  };
  std::vector<Candidate> candidates;
  const char* env = std::getenv(kLibraryVariable);
  const bool fromEnv = env != nullptr && *env != '\0';
  if (fromEnv) {
    candidates.push_back({env, RTLD_NOW | RTLD_LOCAL, "EFCOMM_NCCL_LIBRARY"});
  } else {
    candidates.push_back({"libnccl.so.2", RTLD_NOW | RTLD_NOLOAD, "already loaded"});
    if (!path.empty()) candidates.push_back({path, RTLD_NOW | RTLD_LOCAL, "given path"});
    candidates.push_back({"libnccl.so.2", RTLD_NOW | RTLD_LOCAL, "search path"});
  }
  std::string tried;
  for (const Candidate& candidate : candidates) {
    void* lib = dlopen(candidate.name.c_str(), candidate.flags);
    if (lib == nullptr) {
      const char* why = dlerror();
      if ((candidate.flags & RTLD_NOLOAD) == 0) {
        tried += detail::concat(tried.empty() ? "" : "; ", "dlopen(", candidate.name, "): ", why ? why : "failed");
      }
      continue;
    }
    auto api = std::make_unique<NcclApi>();
    const std::string missing = bindAll(lib, *api);
    if (!missing.empty()) {
      tried += detail::concat(tried.empty() ? "" : "; ", candidate.name, " (", candidate.how, ") lacks ", missing,
                              " (NCCL older than 2.7?)");
      dlclose(lib);
      continue;
    }
    if (api->getVersion(&api->version) != abi::kSuccess) api->version = 0;
    const std::string file = fileOf(reinterpret_cast<void*>(api->getVersion));
    api->library = file.empty() ? candidate.name : file;
    loadedApi() = api.release();
    return *loadedApi();
  }
  throw BackendUnavailable(detail::concat("efcomm: cannot load the NCCL library (",
                                          fromEnv ? "EFCOMM_NCCL_LIBRARY is set; " : "", "tried ", tried, "). ",
                                          kHowToFix));
}

// ---- CUDA and NCCL errors ---------------------------------------------------------------------

void checkCuda(cudaError_t rc, const char* call, const char* where) {
  if (rc == cudaSuccess) return;
  const std::string text = detail::concat("efcomm (NCCL backend): ", call, " failed in ", where, ": ",
                                          cudaGetErrorName(rc), ": ", cudaGetErrorString(rc));
  if (rc == cudaErrorNoDevice || rc == cudaErrorInsufficientDriver || rc == cudaErrorInvalidDevice) {
    throw BackendUnavailable(text);
  }
  throw Error(text);
}
#define EFCOMM_NCCL_CUDA(expr, where) checkCuda((expr), #expr, (where))

std::string ncclText(const NcclApi& api, abi::Result rc, abi::Comm comm) {
  std::string s = detail::concat(api.getErrorString ? api.getErrorString(rc) : "error", " (ncclResult_t ", rc, ")");
  if (api.getLastError != nullptr) {
    const char* last = api.getLastError(comm);
    if (last != nullptr && *last != '\0') s += detail::concat(": ", last);
  }
  return s;
}

// The efcomm error for NCCL's `rc` from `call` (not success, not in progress).
std::exception_ptr ncclError(const NcclApi& api, abi::Result rc, abi::Comm comm, const std::string& call) {
  const std::string text =
      detail::concat("efcomm (NCCL backend): ", call, " failed: ", ncclText(api, rc, comm), " [", api.library, "]");
  if (rc == abi::kInvalidArgument || rc == abi::kInvalidUsage) return std::make_exception_ptr(InvalidArgument(text));
  if (rc == abi::kRemoteError || rc == abi::kTimeout) {
    return std::make_exception_ptr(CollectiveTimeout(
        text + "; a peer rank failed or left (NCCL does not say which, so culprits is empty)", {}));
  }
  return std::make_exception_ptr(Error(text));
}


// Yields briefly, then sleeps 10 us doubling to 200 us: GPU collectives take micro- to
// milliseconds, so the poll must be fine-grained, but must leave the CPU to other threads.
comm::Backoff ncclBackoff() { return comm::Backoff(32, std::chrono::microseconds(10), std::chrono::microseconds(200)); }

abi::DataType ncclType(DType dtype) {
  switch (dtype) {
    case DType::kFloat32: return abi::kFloat32;
    case DType::kFloat64: return abi::kFloat64;
    case DType::kBFloat16: return abi::kBfloat16;
    case DType::kFloat16: return abi::kFloat16;
  }
  throw InvalidArgument(detail::concat("NCCL allreduceSum: unsupported dtype ", static_cast<int>(dtype)));
}

// Rejects host memory: NCCL needs device (or managed) memory of the communicator's device.
void checkDevicePointer(const void* p, size_t bytes, int device, const char* what) {
  EFCOMM_CHECK(p != nullptr || bytes == 0, what, ": null buffer for ", bytes, " bytes");
  if (bytes == 0) return;
  cudaPointerAttributes attr{};
  const cudaError_t rc = cudaPointerGetAttributes(&attr, p);
  if (rc != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky-free error of an unknown pointer
    throw InvalidArgument(detail::concat(what, ": ", p, " is not CUDA memory (", cudaGetErrorString(rc),
                                         "); the NCCL backend takes device buffers (torch CUDA tensors, CuPy arrays)"));
  }
  EFCOMM_CHECK(attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged, what, ": ", p,
               " is host memory; the NCCL backend takes device buffers (torch CUDA tensors, CuPy arrays)");
  EFCOMM_CHECK(attr.type == cudaMemoryTypeManaged || attr.device == device, what, ": the buffer is on CUDA device ",
               attr.device, ", the communicator on device ", device);
}

}  // namespace

// ---- the communicator's state, shared with its Works -------------------------------------------

struct NcclCommunicator::State {
  const NcclApi* api = nullptr;
  std::mutex mu;  // guards everything below and every NCCL call on `comm`
  abi::Comm comm = nullptr;
  int rank = 0, size = 1, device = 0;
  double defaultTimeout = kDefaultCollectiveTimeout;
  bool blocking = true;  // no ncclCommInitRankConfig: a blocking communicator
  bool isAborted = false;
  std::exception_ptr abortError;
  uint64_t seq = 0;
  // Staging of exchangeSizes/alltoallv counts: device words and pinned host words.
  void* words = nullptr;  // device
  size_t wordCapacity = 0;
  uint64_t* pinned = nullptr;  // host, page-locked
  size_t pinnedCapacity = 0;
  float* barrierWord = nullptr;  // device

  ~State() {
    if (comm != nullptr) {
      try {
        cuda::DeviceGuard g(device);
        close();
      } catch (...) {  // nothing may escape a destructor; the process keeps running
      }
    }
    if (words != nullptr) (void)cudaFree(words);
    if (pinned != nullptr) (void)cudaFreeHost(pinned);
    if (barrierWord != nullptr) (void)cudaFree(barrierWord);
  }

  // Finalizes (waits for pending work, bounded by the default timeout) and destroys the
  // communicator; aborts it when that fails.
  void close() {
    abi::Result rc = abi::kSuccess;
    if (api->commFinalize != nullptr) {
      rc = api->commFinalize(comm);
      const auto deadline = deadlineAfter(defaultTimeout);
      comm::Backoff backoff = ncclBackoff();
      while (rc == abi::kInProgress && Clock::now() < deadline) {
        if (api->commGetAsyncError(comm, &rc) != abi::kSuccess) break;
        if (rc == abi::kInProgress) backoff.pause();
      }
    }
    if (rc == abi::kSuccess) {
      rc = api->commDestroy(comm);
    }
    if (rc != abi::kSuccess) (void)api->commAbort(comm);
    comm = nullptr;
  }

  // Aborts the communicator with `error` (first abort wins). `mu` held.
  void abortLocked(std::exception_ptr error) {
    if (isAborted) return;
    isAborted = true;
    abortError = std::move(error);
    if (comm != nullptr) {
      try {
        cuda::DeviceGuard g(device);
        (void)api->commAbort(comm);
      } catch (...) {
        (void)api->commAbort(comm);
      }
      comm = nullptr;
    }
  }

  [[noreturn]] void failLocked(std::exception_ptr error) {
    abortLocked(error);
    std::rethrow_exception(abortError);
  }

  void checkUsableLocked(const char* what) const {
    if (isAborted) {
      try {
        std::rethrow_exception(abortError);
      } catch (const CollectiveTimeout& e) {
        throw CollectiveTimeout(detail::concat("NCCL ", what, ": the communicator was aborted earlier: ", e.what()),
                                e.culprits());
      } catch (const Error& e) {
        throw CollectiveTimeout(detail::concat("NCCL ", what, ": the communicator was aborted earlier: ", e.what()),
                                {});
      }
    }
    EFCOMM_CHECK(comm != nullptr, "NCCL ", what, ": the communicator is closed");
  }

  // After an NCCL call that returned `rc`: waits, until `deadline`, for a nonblocking
  // communicator's operation to leave ncclInProgress; throws (aborting where the communicator is
  // no longer usable) on an error. `mu` held.
  void settleLocked(abi::Result rc, const std::string& call, Clock::time_point deadline, double timeout) {
    comm::Backoff backoff = ncclBackoff();
    while (rc == abi::kInProgress) {
      abi::Result state = abi::kSuccess;
      const abi::Result q = api->commGetAsyncError(comm, &state);
      if (q != abi::kSuccess) failLocked(ncclError(*api, q, comm, "ncclCommGetAsyncError after " + call));
      rc = state;
      if (rc != abi::kInProgress) break;
      if (Clock::now() >= deadline) {
        failLocked(std::make_exception_ptr(CollectiveTimeout(
            detail::concat("efcomm (NCCL backend): ", call, " on rank ", rank, " did not complete within ", timeout,
                           " s: not every rank of the communicator reached it (NCCL does not say which; culprits is "
                           "empty). The communicator is aborted."),
            {})));
      }
      backoff.pause();
    }
    if (rc == abi::kSuccess) return;
    if (rc == abi::kInvalidArgument || rc == abi::kInvalidUsage) std::rethrow_exception(ncclError(*api, rc, comm, call));
    failLocked(ncclError(*api, rc, comm, call));
  }

  void ensureWords(size_t count) {
    if (count > wordCapacity) {
      if (words != nullptr) EFCOMM_NCCL_CUDA(cudaFree(words), "growing the NCCL staging buffer");
      words = nullptr;
      wordCapacity = 0;
      EFCOMM_NCCL_CUDA(cudaMalloc(&words, count * sizeof(uint64_t)), "allocating the NCCL staging buffer");
      wordCapacity = count;
    }
    if (count > pinnedCapacity) {
      if (pinned != nullptr) EFCOMM_NCCL_CUDA(cudaFreeHost(pinned), "growing the NCCL staging buffer");
      pinned = nullptr;
      pinnedCapacity = 0;
      EFCOMM_NCCL_CUDA(cudaHostAlloc(reinterpret_cast<void**>(&pinned), count * sizeof(uint64_t), cudaHostAllocDefault),
                       "allocating the NCCL staging buffer");
      pinnedCapacity = count;
    }
  }
};

namespace {

using State = NcclCommunicator::State;

// One collective on one rank: an event recorded after its work on the caller's stream.
class NcclWork final : public Work {
 public:
  NcclWork(std::shared_ptr<State> st, cudaEvent_t event, std::string what, double timeout)
      : st_(std::move(st)), event_(event), what_(std::move(what)), timeout_(timeout), deadline_(deadlineAfter(timeout)) {}
  ~NcclWork() override {
    if (event_ != nullptr) (void)cudaEventDestroy(event_);
  }

  void wait(std::optional<double> timeoutSeconds) override {
    std::optional<Clock::time_point> until;
    if (timeoutSeconds) {
      EFCOMM_CHECK(*timeoutSeconds >= 0 && !std::isnan(*timeoutSeconds), "Work.wait: timeout must be >= 0, got ",
                   *timeoutSeconds);
      until = deadlineAfter(*timeoutSeconds);
    }
    comm::Backoff backoff = ncclBackoff();
    for (;;) {
      {
        std::lock_guard<std::mutex> lk(st_->mu);
        if (pollLocked()) {
          if (error_) std::rethrow_exception(error_);
          return;
        }
        if (until && Clock::now() >= *until) {
          failLocked(timeoutError(*timeoutSeconds, "Work.wait's timeout"));
          std::rethrow_exception(error_);
        }
      }
      backoff.pause();
    }
  }

  bool completed() const override {
    std::lock_guard<std::mutex> lk(st_->mu);
    return const_cast<NcclWork*>(this)->pollLocked();
  }

 private:
  std::exception_ptr timeoutError(double seconds, const char* which) const {
    return std::make_exception_ptr(CollectiveTimeout(
        detail::concat("efcomm (NCCL backend): ", what_, " on rank ", st_->rank, " did not complete within ", seconds,
                       " s (", which, "): a rank did not reach it or is stuck (NCCL does not say which, so culprits "
                       "is empty). The communicator is aborted; create a new one to go on."),
        {}));
  }

  void failLocked(std::exception_ptr error) {
    st_->abortLocked(std::move(error));
    error_ = st_->abortError;
    done_ = true;
  }

  // True once finished (error_ set on failure). `st_->mu` held.
  bool pollLocked() {
    if (done_) return true;
    if (st_->isAborted) {  // aborted by another collective, a timeout or Backend-style abort()
      error_ = st_->abortError;
      done_ = true;
      return true;
    }
    const cudaError_t rc = cudaEventQuery(event_);
    if (rc == cudaSuccess) {
      done_ = true;
      return true;
    }
    if (rc != cudaErrorNotReady) {
      failLocked(std::make_exception_ptr(Error(detail::concat("efcomm (NCCL backend): ", what_, ": cudaEventQuery: ",
                                                              cudaGetErrorName(rc), ": ", cudaGetErrorString(rc)))));
      return true;
    }
    if (st_->comm != nullptr) {
      abi::Result state = abi::kSuccess;
      const abi::Result q = st_->api->commGetAsyncError(st_->comm, &state);
      if (q != abi::kSuccess) state = q;
      if (state != abi::kSuccess && state != abi::kInProgress) {
        failLocked(ncclError(*st_->api, state, st_->comm, what_));
        return true;
      }
    }
    if (Clock::now() >= deadline_) {
      failLocked(timeoutError(timeout_, "the collective's timeout"));
      return true;
    }
    return false;
  }

  std::shared_ptr<State> st_;
  cudaEvent_t event_ = nullptr;
  std::string what_;
  double timeout_;
  Clock::time_point deadline_;
  bool done_ = false;
  std::exception_ptr error_;
};

// A Work for everything enqueued on `stream` so far (an event recorded there). `st->mu` held.
std::shared_ptr<Work> recordWorkLocked(const std::shared_ptr<State>& st, const std::string& what, double timeout,
                                       cudaStream_t stream) {
  cudaEvent_t event = nullptr;
  EFCOMM_NCCL_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), what.c_str());
  const cudaError_t rec = cudaEventRecord(event, stream);
  if (rec != cudaSuccess) {
    (void)cudaEventDestroy(event);
    checkCuda(rec, "cudaEventRecord", what.c_str());
  }
  return std::make_shared<NcclWork>(st, event, what, timeout);
}

// Runs `issue` (the NCCL calls of one collective, returning the last call's result) on this
// rank's communicator and stream, settles it and returns its Work. `st->mu` held by the caller.
template <typename Issue>
std::shared_ptr<Work> enqueueLocked(const std::shared_ptr<State>& st, const std::string& what, double timeout,
                                    cudaStream_t stream, Issue&& issue) {
  const auto deadline = deadlineAfter(timeout);
  st->settleLocked(issue(), what, deadline, timeout);
  return recordWorkLocked(st, what, timeout, stream);
}

// ncclGroupStart; the calls of `body` (each result checked); ncclGroupEnd, whose result is returned.
template <typename Body>
abi::Result grouped(const State& st, const std::string& what, Body&& body) {
  abi::Result rc = st.api->groupStart();
  if (rc != abi::kSuccess) return rc;
  abi::Result first = abi::kSuccess;
  body([&](abi::Result r) {
    if (first == abi::kSuccess && r != abi::kSuccess && r != abi::kInProgress) first = r;
  });
  rc = st.api->groupEnd();
  if (first != abi::kSuccess) {
    std::rethrow_exception(ncclError(*st.api, first, st.comm, what));
  }
  return rc;
}

std::string opName(const char* kind, uint64_t seq) { return detail::concat("NCCL ", kind, " #", seq); }

}  // namespace

// ---- public functions ---------------------------------------------------------------------------

bool ncclBuilt() { return true; }

int ncclVersion(const std::string& libraryPath) { return loadNccl(libraryPath).version; }

std::string ncclLibrary() {
  std::lock_guard<std::mutex> lk(loadMutex());
  return loadedApi() ? loadedApi()->library : std::string();
}

NcclUniqueId NcclCommunicator::uniqueId(const std::string& libraryPath) {
  const NcclApi& api = loadNccl(libraryPath);
  abi::UniqueId id{};
  const abi::Result rc = api.getUniqueId(&id);
  if (rc != abi::kSuccess) std::rethrow_exception(ncclError(api, rc, nullptr, "ncclGetUniqueId"));
  NcclUniqueId out{};
  std::memcpy(out.data(), id.internal, out.size());
  return out;
}

NcclCommunicator::NcclCommunicator(int rank, int size, const NcclUniqueId& id, int device,
                                   double defaultTimeoutSeconds, const std::string& libraryPath) {
  EFCOMM_CHECK(size >= 1, "NcclCommunicator: size must be >= 1, got ", size);
  EFCOMM_CHECK(rank >= 0 && rank < size, "NcclCommunicator: rank ", rank, " not in [0, ", size, ")");
  comm::resolveTimeout(defaultTimeoutSeconds, defaultTimeoutSeconds);
  EFCOMM_CHECK_T(BackendUnavailable, cuda::available(), "efcomm: the NCCL backend needs a CUDA device: ",
                 cuda::unavailableReason());
  const int devices = cuda::deviceCount();
  EFCOMM_CHECK(device >= 0 && device < devices, "NcclCommunicator: device ", device, " not in [0, ", devices,
               ") (CUDA devices visible to this process)");
  auto st = std::make_shared<State>();
  st->api = &loadNccl(libraryPath);
  st->rank = rank;
  st->size = size;
  st->device = device;
  st->defaultTimeout = defaultTimeoutSeconds;
  cuda::DeviceGuard guard(device);
  abi::UniqueId uid{};
  std::memcpy(uid.internal, id.data(), id.size());
  std::lock_guard<std::mutex> lk(st->mu);
  abi::Result rc;
  if (st->api->commInitRankConfig != nullptr) {
    // `version` tells NCCL which fields are set: never more than this library knows (it then
    // reads only its own fields, all initialized below).
    const unsigned int configVersion = std::min(static_cast<unsigned int>(st->api->version), abi::kConfigVersion);
    constexpr int u = abi::kConfigUndefInt;
    abi::Config config{sizeof(abi::Config), abi::kApiMagic, configVersion, /*blocking=*/0, u, u, u,
                       /*netName=*/nullptr, u, u, /*commName=*/nullptr, u, u, u, u, u, u, u, u, u, u, u, u, u, u, u};
    st->blocking = false;
    rc = st->api->commInitRankConfig(&st->comm, size, uid, rank, &config);
  } else {
    rc = st->api->commInitRank(&st->comm, size, uid, rank);  // blocking: cannot time out
  }
  if (rc != abi::kSuccess && rc != abi::kInProgress) {
    const std::exception_ptr error = ncclError(*st->api, rc, st->comm, "ncclCommInitRank");
    if (st->comm != nullptr) (void)st->api->commAbort(st->comm);
    st->comm = nullptr;
    std::rethrow_exception(error);
  }
  st->settleLocked(rc,
                   detail::concat("creating the NCCL communicator (ncclCommInitRank, rank ", rank, " of ", size,
                                  ", device ", device, "; every rank must create it with the same unique id)"),
                   deadlineAfter(defaultTimeoutSeconds), defaultTimeoutSeconds);
  EFCOMM_NCCL_CUDA(cudaMalloc(reinterpret_cast<void**>(&st->barrierWord), sizeof(float)), "NcclCommunicator");
  EFCOMM_NCCL_CUDA(cudaMemset(st->barrierWord, 0, sizeof(float)), "NcclCommunicator");
  EFCOMM_NCCL_CUDA(cudaStreamSynchronize(cudaStreamLegacy), "NcclCommunicator");  // before any stream uses it
  state_ = std::move(st);
  host_ = comm::ncclHostBackend(*this);
}

NcclCommunicator::~NcclCommunicator() = default;  // State closes the communicator with its last Work

int NcclCommunicator::rank() const { return state_->rank; }
int NcclCommunicator::size() const { return state_->size; }
int NcclCommunicator::device() const { return state_->device; }
double NcclCommunicator::defaultTimeout() const { return state_->defaultTimeout; }

Backend& NcclCommunicator::host() { return *host_; }

bool NcclCommunicator::aborted() const {
  std::lock_guard<std::mutex> lk(state_->mu);
  return state_->isAborted;
}

void NcclCommunicator::abort(const CollectiveTimeout& error) {
  std::lock_guard<std::mutex> lk(state_->mu);
  state_->abortLocked(std::make_exception_ptr(error));
}

std::shared_ptr<Work> NcclCommunicator::allreduceSum(void* buf, size_t count, DType dtype, cuda::Stream stream,
                                                     std::optional<double> timeoutSeconds) {
  State& st = *state_;
  const double timeout = comm::resolveTimeout(timeoutSeconds, st.defaultTimeout);
  comm::checkSumBuffer(buf, count, dtype);
  std::lock_guard<std::mutex> lk(st.mu);
  st.checkUsableLocked("allreduceSum");
  cuda::DeviceGuard guard(st.device);
  checkDevicePointer(buf, count * itemSize(dtype), st.device, "NCCL allreduceSum");
  const auto s = static_cast<cudaStream_t>(stream);
  return enqueueLocked(state_, opName("allreduceSum", st.seq++), timeout, s, [&] {
    return st.api->allReduce(buf, buf, count, ncclType(dtype), abi::kSum, st.comm, s);
  });
}

std::shared_ptr<Work> NcclCommunicator::broadcast(void* buf, size_t bytes, int root, cuda::Stream stream,
                                                  std::optional<double> timeoutSeconds) {
  State& st = *state_;
  const double timeout = comm::resolveTimeout(timeoutSeconds, st.defaultTimeout);
  EFCOMM_CHECK(root >= 0 && root < st.size, "NCCL broadcast: root ", root, " not in [0, ", st.size, ")");
  std::lock_guard<std::mutex> lk(st.mu);
  st.checkUsableLocked("broadcast");
  cuda::DeviceGuard guard(st.device);
  checkDevicePointer(buf, bytes, st.device, "NCCL broadcast");
  const auto s = static_cast<cudaStream_t>(stream);
  return enqueueLocked(state_, opName("broadcast", st.seq++), timeout, s, [&] {
    return st.api->broadcast(buf, buf, bytes, abi::kUint8, root, st.comm, s);
  });
}

namespace {

// Gathers `mine` (k words, the same k on every rank) from every rank: rank i's words at
// [i*k, (i+1)*k) of the result. Synchronizes, bounded by `timeout`. `st.mu` NOT held.
std::vector<uint64_t> gatherWords(const std::shared_ptr<State>& stp, const std::vector<uint64_t>& mine,
                                  cudaStream_t s, double timeout, const char* kind) {
  State& st = *stp;
  const size_t k = mine.size();
  const size_t n = static_cast<size_t>(st.size);
  std::shared_ptr<Work> work;
  {
    std::lock_guard<std::mutex> lk(st.mu);
    st.checkUsableLocked(kind);
    cuda::DeviceGuard guard(st.device);
    // Device: [own k words | n*k gathered]; pinned host the same.
    st.ensureWords(k + n * k);
    std::memcpy(st.pinned, mine.data(), k * sizeof(uint64_t));
    auto* dev = static_cast<uint64_t*>(st.words);
    EFCOMM_NCCL_CUDA(cudaMemcpyAsync(dev, st.pinned, k * sizeof(uint64_t), cudaMemcpyHostToDevice, s), kind);
    const std::string what = opName(kind, st.seq++) + " (size exchange)";
    st.settleLocked(st.api->allGather(dev, dev + k, k * sizeof(uint64_t), abi::kUint8, st.comm, s), what,
                    deadlineAfter(timeout), timeout);
    EFCOMM_NCCL_CUDA(cudaMemcpyAsync(st.pinned + k, dev + k, n * k * sizeof(uint64_t), cudaMemcpyDeviceToHost, s),
                     kind);
    work = recordWorkLocked(stp, what, timeout, s);
  }
  work->wait(std::nullopt);
  std::lock_guard<std::mutex> lk(st.mu);
  return std::vector<uint64_t>(st.pinned + k, st.pinned + k + n * k);
}

}  // namespace

std::vector<size_t> NcclCommunicator::exchangeSizes(size_t bytes, cuda::Stream stream,
                                                    std::optional<double> timeoutSeconds) {
  const double timeout = comm::resolveTimeout(timeoutSeconds, state_->defaultTimeout);
  const auto words = gatherWords(state_, {static_cast<uint64_t>(bytes)}, static_cast<cudaStream_t>(stream), timeout,
                                 "exchangeSizes");
  return std::vector<size_t>(words.begin(), words.end());
}

std::shared_ptr<Work> NcclCommunicator::allgathervInto(const void* send, void* recv, const std::vector<size_t>& sizes,
                                                       cuda::Stream stream, std::optional<double> timeoutSeconds) {
  State& st = *state_;
  const double timeout = comm::resolveTimeout(timeoutSeconds, st.defaultTimeout);
  EFCOMM_CHECK(sizes.size() == static_cast<size_t>(st.size), "NCCL allgatherv: ", sizes.size(), " sizes for ",
               st.size, " ranks");
  std::vector<size_t> offsets(sizes.size() + 1, 0);
  for (size_t i = 0; i < sizes.size(); ++i) offsets[i + 1] = offsets[i] + sizes[i];
  std::lock_guard<std::mutex> lk(st.mu);
  st.checkUsableLocked("allgatherv");
  cuda::DeviceGuard guard(st.device);
  checkDevicePointer(send, sizes[static_cast<size_t>(st.rank)], st.device, "NCCL allgatherv (send)");
  checkDevicePointer(recv, offsets.back(), st.device, "NCCL allgatherv (recv)");
  const auto s = static_cast<cudaStream_t>(stream);
  auto* out = static_cast<uint8_t*>(recv);
  const std::string what = opName("allgatherv", st.seq++);
  return enqueueLocked(state_, what, timeout, s, [&] {
    return grouped(st, what, [&](auto check) {
      for (int r = 0; r < st.size; ++r) {
        const size_t bytes = sizes[static_cast<size_t>(r)];
        if (bytes == 0) continue;  // every rank knows every size: all skip the same broadcasts
        uint8_t* dst = out + offsets[static_cast<size_t>(r)];
        const void* src = r == st.rank ? send : dst;
        check(st.api->broadcast(src, dst, bytes, abi::kUint8, r, st.comm, s));
      }
    });
  });
}

std::shared_ptr<Work> NcclCommunicator::allgatherv(const void* send, size_t bytes, DeviceByteBlocks& recv,
                                                   cuda::Stream stream, std::optional<double> timeoutSeconds) {
  EFCOMM_CHECK(send != nullptr || bytes == 0, "NCCL allgatherv: null buffer for ", bytes, " bytes");
  const std::vector<size_t> sizes = exchangeSizes(bytes, stream, timeoutSeconds);
  EFCOMM_CHECK(sizes[static_cast<size_t>(state_->rank)] == bytes, "NCCL allgatherv: size exchange returned ",
               sizes[static_cast<size_t>(state_->rank)], " bytes for this rank, which sent ", bytes);
  recv.offsets.assign(sizes.size() + 1, 0);
  for (size_t i = 0; i < sizes.size(); ++i) recv.offsets[i + 1] = recv.offsets[i] + sizes[i];
  {
    cuda::DeviceGuard guard(state_->device);
    recv.data.resize(recv.offsets.back());
  }
  return allgathervInto(send, recv.data.data(), sizes, stream, timeoutSeconds);
}

std::shared_ptr<Work> NcclCommunicator::alltoallv(const void* send, const std::vector<size_t>& sendCounts,
                                                  DeviceByteBlocks& recv, cuda::Stream stream,
                                                  std::optional<double> timeoutSeconds) {
  State& st = *state_;
  const double timeout = comm::resolveTimeout(timeoutSeconds, st.defaultTimeout);
  const size_t n = static_cast<size_t>(st.size);
  EFCOMM_CHECK(sendCounts.size() == n, "NCCL alltoallv: ", sendCounts.size(), " send counts for ", n, " ranks");
  std::vector<size_t> sendOffsets(n + 1, 0);
  for (size_t j = 0; j < n; ++j) sendOffsets[j + 1] = sendOffsets[j] + sendCounts[j];
  EFCOMM_CHECK(send != nullptr || sendOffsets.back() == 0, "NCCL alltoallv: null buffer for ", sendOffsets.back(),
               " bytes");
  const auto s = static_cast<cudaStream_t>(stream);
  // Row i of the gathered matrix: what rank i sends to each rank; this rank receives column rank().
  const std::vector<uint64_t> matrix =
      gatherWords(state_, std::vector<uint64_t>(sendCounts.begin(), sendCounts.end()), s, timeout, "alltoallv");
  const size_t me = static_cast<size_t>(st.rank);
  recv.offsets.assign(n + 1, 0);
  for (size_t i = 0; i < n; ++i) recv.offsets[i + 1] = recv.offsets[i] + static_cast<size_t>(matrix[i * n + me]);
  std::lock_guard<std::mutex> lk(st.mu);
  st.checkUsableLocked("alltoallv");
  cuda::DeviceGuard guard(st.device);
  recv.data.resize(recv.offsets.back());
  checkDevicePointer(send, sendOffsets.back(), st.device, "NCCL alltoallv (send)");
  const auto* in = static_cast<const uint8_t*>(send);
  auto* out = static_cast<uint8_t*>(recv.data.data());
  if (sendCounts[me] > 0) {
    EFCOMM_NCCL_CUDA(cudaMemcpyAsync(out + recv.offsets[me], in + sendOffsets[me], sendCounts[me],
                                     cudaMemcpyDeviceToDevice, s),
                     "NCCL alltoallv (own chunk)");
  }
  const std::string what = opName("alltoallv", st.seq++);
  return enqueueLocked(state_, what, timeout, s, [&] {
    return grouped(st, what, [&](auto check) {
      for (size_t j = 0; j < n; ++j) {
        if (j == me) continue;
        const int peer = static_cast<int>(j);
        if (sendCounts[j] > 0) check(st.api->send(in + sendOffsets[j], sendCounts[j], abi::kUint8, peer, st.comm, s));
        const size_t incoming = recv.offsets[j + 1] - recv.offsets[j];
        if (incoming > 0) check(st.api->recv(out + recv.offsets[j], incoming, abi::kUint8, peer, st.comm, s));
      }
    });
  });
}

std::shared_ptr<Work> NcclCommunicator::barrier(cuda::Stream stream, std::optional<double> timeoutSeconds) {
  State& st = *state_;
  const double timeout = comm::resolveTimeout(timeoutSeconds, st.defaultTimeout);
  std::lock_guard<std::mutex> lk(st.mu);
  st.checkUsableLocked("barrier");
  cuda::DeviceGuard guard(st.device);
  const auto s = static_cast<cudaStream_t>(stream);
  return enqueueLocked(state_, opName("barrier", st.seq++), timeout, s, [&] {
    return st.api->allReduce(st.barrierWord, st.barrierWord, 1, abi::kFloat32, abi::kSum, st.comm, s);
  });
}

}  // namespace efcomm

#endif  // EFCOMM_HAVE_NCCL
