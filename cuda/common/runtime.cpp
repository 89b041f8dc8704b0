// The CUDA runtime glue: availability, DeviceBuffer, error translation, scratch and flags.
// The runtime is linked statically and loads the driver when first called, so on a machine
// without a driver or device every query here answers "unavailable" instead of failing.
#include "common/runtime.hpp"

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <string>

#include "efcomm/message.hpp"

namespace efcomm::cuda {

namespace {

struct Probe {
  int count = 0;
  std::string reason;
};

const Probe& probe() {
  static const Probe p = [] {
    Probe r;
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky-free error so later calls start clean
      r.reason = std::string("no CUDA device: ") + cudaGetErrorString(err) + " (" + cudaGetErrorName(err) + ")";
    } else if (n <= 0) {
      r.reason = "no CUDA device: the driver reports 0 devices";
    } else {
      r.count = n;
    }
    return r;
  }();
  return p;
}

bool isUnavailableError(cudaError_t err) {
  switch (err) {
    case cudaErrorNoDevice:
    case cudaErrorInsufficientDriver:
    case cudaErrorInitializationError:
    case cudaErrorStubLibrary:
    case cudaErrorDevicesUnavailable:
    case cudaErrorSystemDriverMismatch:
    case cudaErrorCompatNotSupportedOnDevice:
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorUnsupportedPtxVersion:
      return true;
    default:
      return false;
  }
}

// Per-thread, per-device resources, freed at thread exit (errors ignored then: the driver may
// already be shutting down at process exit).
struct DeviceResources {
  std::array<void*, 8> slot{};
  std::array<size_t, 8> cap{};
  uint32_t* flagsDevice = nullptr;
  uint32_t* flagsHost = nullptr;
  HostMailbox::Layout* mailHost = nullptr;
  HostMailbox::Layout* mailDevice = nullptr;
  uint32_t* tickets = nullptr;
  cudaEvent_t event = nullptr;
  cudaStream_t side = nullptr;
  cudaEvent_t sideDone = nullptr;
};

struct ThreadResources {
  std::map<int, DeviceResources> byDevice;
  ~ThreadResources() {
    for (auto& [dev, r] : byDevice) {
      if (cudaSetDevice(dev) != cudaSuccess) continue;
      for (void* p : r.slot)
        if (p) cudaFree(p);
      if (r.flagsDevice) cudaFree(r.flagsDevice);
      if (r.flagsHost) cudaFreeHost(r.flagsHost);
      if (r.mailHost) cudaFreeHost(r.mailHost);
      if (r.tickets) cudaFree(r.tickets);
      if (r.event) cudaEventDestroy(r.event);
      if (r.sideDone) cudaEventDestroy(r.sideDone);
      if (r.side) cudaStreamDestroy(r.side);
    }
    cudaGetLastError();
  }
};

DeviceResources& resources() {
  thread_local ThreadResources t;
  thread_local int lastDev = -1;
  thread_local DeviceResources* last = nullptr;
  const int dev = currentDevice();
  if (dev != lastDev || !last) {  // std::map nodes are stable
    last = &t.byDevice[dev];
    lastDev = dev;
  }
  return *last;
}

// Device pointers that checkDeviceView or isDevicePointer(p, device) accepted recently on this
// thread (pointer, device): a repeated call with the same tensor skips cudaPointerGetAttributes. Device allocations keep
// their virtual addresses reserved for the driver, so a cached address cannot turn into host
// memory.
struct PointerCache {
  static constexpr int kSize = 16;
  const void* ptr[kSize] = {};
  int dev[kSize] = {};
  int next = 0;
  bool has(const void* p, int d) const {
    if (p == nullptr) return false;  // the empty slots hold nullptr
    for (int i = 0; i < kSize; ++i)
      if (ptr[i] == p && dev[i] == d) return true;
    return false;
  }
  void add(const void* p, int d) {
    ptr[next] = p;
    dev[next] = d;
    next = (next + 1) % kSize;
  }
};
PointerCache& pointerCache() {
  thread_local PointerCache c;
  return c;
}

DeviceResources& flagResources() {
  DeviceResources& r = resources();
  if (!r.flagsDevice) {
    EFCOMM_CUDA_CHECK(cudaMalloc(&r.flagsDevice, 8 * sizeof(uint32_t)));
    EFCOMM_CUDA_CHECK(cudaMallocHost(&r.flagsHost, 8 * sizeof(uint32_t)));
  }
  return r;
}

}  // namespace

[[noreturn]] void throwCudaError(cudaError_t err, const char* expr, const char* file, int line) {
  cudaGetLastError();  // clear a non-sticky error so that the next call does not report it again
  const std::string what = std::string("CUDA call ") + expr + " failed: " + cudaGetErrorString(err) + " (" +
                           cudaGetErrorName(err) + ") [" + file + ":" + std::to_string(line) + "]";
  if (isUnavailableError(err)) throw BackendUnavailable(what);
  if (err == cudaErrorMemoryAllocation)
    throw Error(what + "; the device is out of memory: free device memory or use smaller tensors");
  throw Error(what);
}

int currentDevice() {
  int dev = 0;
  EFCOMM_CUDA_CHECK(cudaGetDevice(&dev));
  return dev;
}

bool built() { return true; }
int deviceCount() { return probe().count; }
bool available() { return probe().count > 0; }
std::string unavailableReason() { return probe().reason; }

void requireDevice() {
  if (!available()) throw BackendUnavailable("efcomm CUDA path unavailable: " + unavailableReason());
}

bool cpuContractsFma() {
  // This file is compiled with the CPU kernels' flags (EFCOMM_KERNEL_FLAGS, -march), and gcc
  // contracts whenever the target has FMA, also in ISO mode.
#if defined(__FMA__) || defined(__aarch64__)
  return true;
#else
  return false;
#endif
}

void setDevice(int device) { EFCOMM_CUDA_CHECK(cudaSetDevice(device)); }

DeviceGuard::DeviceGuard(int device) : device_(device) {
  EFCOMM_CUDA_CHECK(cudaGetDevice(&previous_));
  if (previous_ != device_) EFCOMM_CUDA_CHECK(cudaSetDevice(device_));
}
DeviceGuard::~DeviceGuard() {
  if (previous_ != device_) (void)cudaSetDevice(previous_);
}

void settleLegacyStream() { EFCOMM_CUDA_CHECK(cudaStreamSynchronize(cudaStreamLegacy)); }

namespace {
// p's attributes; false (the error cleared) where CUDA cannot tell.
bool pointerAttributes(const void* p, cudaPointerAttributes& attr) {
  attr = cudaPointerAttributes{};
  if (cudaPointerGetAttributes(&attr, p) == cudaSuccess) return true;
  cudaGetLastError();
  return false;
}
}  // namespace

bool isDevicePointer(const void* p, int device) {
  if (pointerCache().has(p, device)) return true;
  cudaPointerAttributes attr;
  if (!pointerAttributes(p, attr)) return false;
  if (attr.type == cudaMemoryTypeDevice && attr.device == device) pointerCache().add(p, device);
  return attr.type == cudaMemoryTypeManaged || (attr.type == cudaMemoryTypeDevice && attr.device == device);
}

bool isDevicePointer(const void* p) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (pointerCache().has(p, dev)) return true;
  cudaPointerAttributes attr;
  return pointerAttributes(p, attr) && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged);
}

void checkDeviceView(const ConstTensorView& v, const char* what) {
  const int64_t n = v.numel();  // validates the shape (InvalidArgument)
  EFCOMM_CHECK(static_cast<int>(v.shape.size()) <= kMaxDims, what, ": ", v.shape.size(),
               "-d array; at most ", kMaxDims, " dimensions are supported");
  itemSize(v.dtype);  // validates the dtype
  if (n == 0 && v.data == nullptr) return;
  EFCOMM_CHECK(v.data != nullptr, what, ": data pointer is null for ", n, " elements");
  const int cur = currentDevice();
  if (pointerCache().has(v.data, cur)) return;
  cudaPointerAttributes attr;
  const bool known = pointerAttributes(v.data, attr);
  EFCOMM_CHECK(known && (attr.type == cudaMemoryTypeDevice || attr.type == cudaMemoryTypeManaged),
               what, " is host memory: pass a CUDA tensor (device or managed memory of the current device), "
               "or use the CPU path (efcomm::Compressor) for host arrays");
  if (attr.type == cudaMemoryTypeDevice) {
    EFCOMM_CHECK(attr.device == cur, what, " lives on CUDA device ", attr.device, " but the current device is ",
                 cur, "; call cudaSetDevice(", attr.device, ") (torch.cuda.set_device) first");
    pointerCache().add(v.data, cur);
  }
}

cudaEvent_t mailEvent() {
  DeviceResources& r = resources();
  if (!r.event) EFCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&r.event, cudaEventDisableTiming));
  return r.event;
}

cudaStream_t sideStream() {
  DeviceResources& r = resources();
  if (!r.side) EFCOMM_CUDA_CHECK(cudaStreamCreateWithFlags(&r.side, cudaStreamNonBlocking));
  return r.side;
}

cudaEvent_t sideEvent() {
  DeviceResources& r = resources();
  if (!r.sideDone) EFCOMM_CUDA_CHECK(cudaEventCreateWithFlags(&r.sideDone, cudaEventDisableTiming));
  return r.sideDone;
}

HostMailbox mailbox() {
  DeviceResources& r = resources();
  if (!r.mailHost) {
    void* h = nullptr;
    EFCOMM_CUDA_CHECK(cudaHostAlloc(&h, sizeof(HostMailbox::Layout), cudaHostAllocMapped));
    std::memset(h, 0, sizeof(HostMailbox::Layout));
    void* d = nullptr;
    const cudaError_t err = cudaHostGetDevicePointer(&d, h, 0);
    if (err != cudaSuccess) {
      cudaFreeHost(h);
      EFCOMM_CUDA_CHECK(err);
    }
    r.mailHost = static_cast<HostMailbox::Layout*>(h);
    r.mailDevice = static_cast<HostMailbox::Layout*>(d);
  }
  return {r.mailHost, r.mailDevice};
}

uint32_t* clearMailboxFlags(int count) {
  const HostMailbox m = mailbox();
  EFCOMM_CHECK_T(Error, count >= 1 && count <= HostMailbox::kFlagWords, "flag count ", count, " out of range");
  // volatile: the device writes these words; the compiler must not keep them in registers.
  volatile uint32_t* f = m.host->flags;
  for (int i = 0; i < count; ++i) f[i] = 0;
  return m.device->flags;
}

uint32_t* ticketWords() {
  DeviceResources& r = resources();
  if (!r.tickets) {
    EFCOMM_CUDA_CHECK(cudaMalloc(&r.tickets, 8 * sizeof(uint32_t)));
    EFCOMM_CUDA_CHECK(cudaMemset(r.tickets, 0, 8 * sizeof(uint32_t)));
    settleLegacyStream();  // zero before the first kernel, on whatever stream, counts on them
  }
  return r.tickets;
}

// ---- tracing ---------------------------------------------------------------------------

namespace {

struct Trace {
  static constexpr int kMarks = 16;
  bool active = false;
  const char* call = "";
  const char* codec = "";
  int64_t numel = 0;
  int count = 0;
  const char* names[kMarks] = {};
  cudaEvent_t events[kMarks] = {};
  std::chrono::steady_clock::time_point start, enqueued;
  ~Trace() {
    for (cudaEvent_t e : events)
      if (e) cudaEventDestroy(e);
  }
};

Trace& trace() {
  thread_local Trace t;
  return t;
}

}  // namespace

bool traceEnabled() {
  static const bool on = [] {
    const char* v = std::getenv("EFCOMM_CUDA_TRACE");
    return v && *v && std::strcmp(v, "0") != 0;
  }();
  return on;
}

void traceBegin(cudaStream_t stream, const char* call, const char* codec, int64_t numel) {
  if (!traceEnabled()) return;
  Trace& t = trace();
  t.active = true;
  t.call = call;
  t.codec = codec;
  t.numel = numel;
  t.count = 0;
  t.start = std::chrono::steady_clock::now();
  traceMark(stream, "start");
}

void traceMark(cudaStream_t stream, const char* phase) {
  if (!traceEnabled()) return;
  Trace& t = trace();
  if (!t.active || t.count >= Trace::kMarks) return;
  cudaEvent_t& e = t.events[t.count];
  if (!e && cudaEventCreate(&e) != cudaSuccess) {
    cudaGetLastError();
    t.active = false;
    return;
  }
  cudaEventRecord(e, stream);
  t.names[t.count++] = phase;
  t.enqueued = std::chrono::steady_clock::now();
}

void traceEnd(size_t messageBytes) {
  if (!traceEnabled()) return;
  Trace& t = trace();
  if (!t.active) return;
  t.active = false;
  const auto end = std::chrono::steady_clock::now();
  auto us = [](auto a, auto b) { return std::chrono::duration<double, std::micro>(b - a).count(); };
  std::string line = std::string("efcomm-trace ") + t.call + " " + t.codec + " n=" + std::to_string(t.numel) +
                     " msg=" + std::to_string(messageBytes);
  char buf[96];
  for (int i = 1; i < t.count; ++i) {
    float ms = 0;
    if (cudaEventSynchronize(t.events[i]) != cudaSuccess ||
        cudaEventElapsedTime(&ms, t.events[i - 1], t.events[i]) != cudaSuccess) {
      cudaGetLastError();
      ms = -1;
    }
    std::snprintf(buf, sizeof(buf), " | %s %.1fus", t.names[i], 1000.0 * ms);
    line += buf;
  }
  std::snprintf(buf, sizeof(buf), " | host-enqueue %.1fus | wall %.1fus", us(t.start, t.enqueued), us(t.start, end));
  line += buf;
  std::fprintf(stderr, "%s\n", line.c_str());
}

int smCount() {
  static std::mutex mu;
  static std::map<int, int> counts;
  const int dev = currentDevice();
  std::lock_guard<std::mutex> lock(mu);
  auto it = counts.find(dev);
  if (it != counts.end()) return it->second;
  int n = 0;
  EFCOMM_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev));
  counts[dev] = n > 0 ? n : 1;
  return counts[dev];
}

void* scratch(size_t bytes, int slot) {
  EFCOMM_CHECK_T(Error, slot >= 0 && slot < 8, "scratch slot ", slot, " out of range");
  DeviceResources& r = resources();
  bytes = bytes < 1 ? 1 : bytes;
  if (r.cap[slot] < bytes) {
    if (r.slot[slot]) {
      void* old = r.slot[slot];
      r.slot[slot] = nullptr;
      r.cap[slot] = 0;
      EFCOMM_CUDA_CHECK(cudaFree(old));
    }
    // Grow geometrically so that slowly growing sizes do not reallocate every call.
    const size_t want = bytes + bytes / 4;
    EFCOMM_CUDA_CHECK(cudaMalloc(&r.slot[slot], want));
    r.cap[slot] = want;
  }
  return r.slot[slot];
}

uint32_t* resetFlags(cudaStream_t stream, int count) {
  EFCOMM_CHECK_T(Error, count >= 1 && count <= 8, "flag count ", count, " out of range");
  DeviceResources& r = flagResources();
  EFCOMM_CUDA_CHECK(cudaMemsetAsync(r.flagsDevice, 0, static_cast<size_t>(count) * sizeof(uint32_t), stream));
  return r.flagsDevice;
}

std::vector<uint32_t> readFlags(cudaStream_t stream, int count) {
  EFCOMM_CHECK_T(Error, count >= 1 && count <= 8, "flag count ", count, " out of range");
  DeviceResources& r = flagResources();
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(r.flagsHost, r.flagsDevice, static_cast<size_t>(count) * sizeof(uint32_t),
                                    cudaMemcpyDeviceToHost, stream));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  return std::vector<uint32_t>(r.flagsHost, r.flagsHost + count);
}

// ---- DeviceBuffer ---------------------------------------------------------------------

DeviceBuffer::~DeviceBuffer() {
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& other) noexcept
    : ptr_(other.ptr_), size_(other.size_), capacity_(other.capacity_) {
  other.ptr_ = nullptr;
  other.size_ = other.capacity_ = 0;
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& other) noexcept {
  if (this != &other) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = other.ptr_;
    size_ = other.size_;
    capacity_ = other.capacity_;
    other.ptr_ = nullptr;
    other.size_ = other.capacity_ = 0;
  }
  return *this;
}

void DeviceBuffer::resize(size_t bytes) {
  if (bytes <= capacity_) {
    size_ = bytes;
    return;
  }
  requireDevice();
  if (ptr_) {
    void* old = ptr_;
    ptr_ = nullptr;
    size_ = capacity_ = 0;
    EFCOMM_CUDA_CHECK(cudaFree(old));
  }
  EFCOMM_CUDA_CHECK(cudaMalloc(&ptr_, bytes));
  size_ = capacity_ = bytes;
}

}  // namespace efcomm::cuda
