// efcomm::cuda's compressor entry points: argument checks, the step counter, message
// validation, then dispatch to the compressor's DeviceCodec.
#include "compress/device_codec.hpp"

#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <vector>

#include "common/dispatch.hpp"
#include "common/runtime.hpp"
#include "efcomm/error.hpp"

namespace efcomm::cuda {

namespace {

struct Registry {
  std::array<DeviceCodec, 256> codecs{};
  std::array<bool, 256> present{};
};

const Registry& registry() {
  static const Registry r = [] {
    Registry reg;
    for (auto make : {identityDeviceCodec, castDeviceCodec, signDeviceCodec, qsgdDeviceCodec, naturalDeviceCodec,
                      randkDeviceCodec, blockquantDeviceCodec, topkDeviceCodec, powersgdDeviceCodec}) {
      const DeviceCodec c = make();
      const auto raw = static_cast<uint8_t>(c.id);
      if (reg.present[raw]) throw Error("GPU codec for compressor id " + std::to_string(raw) + " registered twice");
      reg.codecs[raw] = c;
      reg.present[raw] = true;
    }
    return reg;
  }();
  return r;
}

void checkOutput(const DeviceMessageHeader& h, const TensorView& out) {
  EFCOMM_CHECK(out.dtype == h.dtype, "output dtype ", dtypeName(out.dtype), " does not match the message's ",
               dtypeName(h.dtype));
  EFCOMM_CHECK(out.numel() == h.numel, "output has ", out.numel(), " elements ", shapeString(out.shape),
               "; the message holds ", h.numel, " ", shapeString(h.shape));
}

const DeviceCodec& codecFor(CompressorId id) {
  const DeviceCodec* c = deviceCodecOrNull(id);
  if (!c) throw BackendUnavailable("the GPU path has no kernels for '" + compressorName(id) + "' yet");
  return *c;
}

// Codecs read typed values from the payload, which starts 16 bytes after a 16-byte aligned
// message: a message at another address is first copied to aligned scratch (slot 3).
const void* alignedMessage(const void* msg, size_t size, cudaStream_t stream) {
  if ((reinterpret_cast<uintptr_t>(msg) & 15) == 0) return msg;
  void* copy = scratch(size, 3);
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(copy, msg, size, cudaMemcpyDeviceToDevice, stream));
  return copy;
}

// The share of the multiprocessors for the checksum when it runs beside the decode (an
// experiment, which bench/gpu_check.sh measures against the default): with
// EFCOMM_CUDA_OVERLAP_CHECKSUM=1 its part of the bytes the two kernels move (the message it
// reads against the message and output of the decode), with a number in (0, 1) that share;
// unset or 0: none (the checksum before the decode, on the same stream, all multiprocessors).
double checksumShare(size_t messageBytes, size_t outputBytes) {
  const char* v = std::getenv("EFCOMM_CUDA_OVERLAP_CHECKSUM");
  if (v == nullptr || std::strcmp(v, "0") == 0 || *v == '\0') return 0;
  const double m = static_cast<double>(messageBytes);
  if (std::strcmp(v, "1") == 0) return m / (2 * m + static_cast<double>(outputBytes));
  char* end = nullptr;
  const double share = std::strtod(v, &end);
  EFCOMM_CHECK(end != v && *end == '\0' && share > 0 && share < 1, "EFCOMM_CUDA_OVERLAP_CHECKSUM='", v,
               "': 1 (a share by bytes moved), a share in (0, 1), or 0/unset (off)");
  return share;
}

constexpr int kDecodeCheckWord = HostMailbox::kFlagWords - 1;

const char*& pendingDecodeCheck() {
  thread_local const char* message = nullptr;
  return message;
}

// After the final synchronization of decompress: the deferred content check.
void finishDecodeChecks() {
  const char* message = pendingDecodeCheck();
  if (!message) return;
  pendingDecodeCheck() = nullptr;
  const volatile uint32_t* f = mailbox().host->flags;
  EFCOMM_CHECK_MSG(f[kDecodeCheckWord] == 0, message);
}

}  // namespace

uint32_t* deferDecodeCheck(const char* message) {
  const HostMailbox m = mailbox();
  volatile uint32_t* f = m.host->flags;
  f[kDecodeCheckWord] = 0;
  pendingDecodeCheck() = message;
  return m.device->flags + kDecodeCheckWord;
}

const DeviceCodec* deviceCodecOrNull(CompressorId id) {
  const Registry& r = registry();
  const auto raw = static_cast<uint8_t>(id);
  return r.present[raw] ? &r.codecs[raw] : nullptr;
}

const DeviceCodec& deviceCodec(CompressorId id) {
  const DeviceCodec* c = deviceCodecOrNull(id);
  EFCOMM_CHECK_MSG(c != nullptr, "no GPU codec for compressor id ", int(id));
  return *c;
}

void throwIfNonFinite(const std::string& who, const ConstTensorView& x, cudaStream_t stream) {
  const int64_t n = x.numel();
  std::vector<uint8_t> host(x.nbytes());
  if (!host.empty()) {
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(host.data(), x.data, host.size(), cudaMemcpyDeviceToHost, stream));
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
  dispatchDType(x.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* p = reinterpret_cast<const T*>(host.data());
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(Elem<T>::load(p[i]));
      if (!std::isfinite(v)) {
        throw NonFiniteError(who + ": input holds " + (std::isnan(v) ? "NaN" : "Inf") + " at flat index " +
                             std::to_string(i) + " of " + std::to_string(n) + " (shape " + shapeString(x.shape) + ")");
      }
    }
  });
}

void throwNonFinite(const std::string& who, const ConstTensorView& x, cudaStream_t stream,
                    const std::string& otherwise) {
  throwIfNonFinite(who, x, stream);
  throw NonFiniteError(who + ": " + otherwise);
}

size_t compress(Compressor& c, const ConstTensorView& x, DeviceBuffer& out, std::optional<uint64_t> step,
                Stream stream) {
  requireDevice();
  checkDeviceView(x, (c.name() + ".compress: x").c_str());
  const DeviceCodec& codec = codecFor(c.id());
  const uint64_t s = c.resolveStep(step);
  const cudaStream_t st = nativeStream(stream);
  const bool tracing = traceEnabled();
  std::string name;
  if (tracing) {
    name = c.spec();
    traceBegin(st, "compress", name.c_str(), x.numel());
  }
  const size_t size = codec.compress(c, x, s, out, st);
  if (!codec.compressSynchronizes) EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  if (tracing) traceEnd(size);
  c.advanceStep(s);  // only on success, as Compressor::compress
  return size;
}

void decompress(const void* msg, size_t size, const TensorView& out, Stream stream) {
  requireDevice();
  checkDeviceView(out, "decompress: out");
  const cudaStream_t st = nativeStream(stream);
  const bool tracing = traceEnabled();
  if (tracing) traceBegin(st, "decompress", "", out.numel());
  pendingDecodeCheck() = nullptr;
  // The header is checked while the checksum kernel runs. A codec whose decode is safe on any
  // payload bytes decodes right behind it (no synchronization in between), and the checksum is
  // compared after the decode: a damaged message then leaves `out` overwritten, as a failed
  // content check does. The others wait for the checksum first.
  // Beside the decode only where the decode does not wait for the checksum anyway (TopK's does).
  const double share = checksumShare(size, out.nbytes());
  std::function<double(const DeviceMessageHeader&)> beside;
  if (share > 0) {
    beside = [share](const DeviceMessageHeader& h) {
      const DeviceCodec* c = deviceCodecOrNull(h.id);
      return c != nullptr && c->decodesUnverified ? share : 0.0;
    };
  }
  const PendingMessage pending = readMessageAsync(msg, size, st, beside);
  const DeviceMessageHeader& h = pending.header;
  bool verified = false;
  try {
    const DeviceCodec& codec = codecFor(h.id);
    if (!codec.decodesUnverified) {
      joinMessageRead(pending, st);
      EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
      finishMessageRead(pending);
      verified = true;
    }
    checkOutput(h, out);
    codec.decode(h, alignedMessage(msg, size, st), out, st);
    traceMark(st, "decode");
    joinMessageRead(pending, st);
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  } catch (...) {
    if (pending.checked) (void)cudaEventSynchronize(pending.checked);
    // No checksum kernel outlives the call, and a damaged payload is reported as such (as
    // Message::fromBytes does) rather than as the content error it caused. When the stream
    // itself failed (a faulting kernel), the checksum word was never written: the CUDA error is
    // the one to report, not a mismatch against a stale value.
    if (cudaStreamSynchronize(st) == cudaSuccess && !verified) finishMessageRead(pending);
    throw;
  }
  if (tracing) traceEnd(size);
  if (!verified) finishMessageRead(pending);
  finishDecodeChecks();
}

void accumulate(const void* msg, size_t size, const TensorView& out, double weight, Stream stream) {
  requireDevice();
  checkDeviceView(out, "accumulate: out");
  const cudaStream_t st = nativeStream(stream);
  accumulateRead(readMessage(msg, size, st), msg, size, out, weight, st);
}

void accumulateRead(const DeviceMessageHeader& h, const void* msg, size_t size, const TensorView& out, double weight,
                    cudaStream_t st) {
  checkOutput(h, out);
  EFCOMM_CHECK(out.dtype == DType::kFloat32 || out.dtype == DType::kFloat64,
               "accumulate: float32 or float64 output required, got ", dtypeName(out.dtype));
  const DeviceCodec& codec = codecFor(h.id);
  const void* m = alignedMessage(msg, size, st);
  pendingDecodeCheck() = nullptr;
  if (codec.accumulate) {
    codec.accumulate(h, m, out, weight, st);
  } else {
    void* tmp = scratch(out.nbytes(), 6);
    codec.decode(h, m, {tmp, out.dtype, out.shape}, st);
    if (pendingDecodeCheck()) {  // the content check before out changes
      EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
      finishDecodeChecks();
    }
    addScaled(tmp, out, weight, st);
  }
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  finishDecodeChecks();
}

void copy(void* dst, const void* src, size_t bytes, Stream stream) {
  if (bytes == 0) return;
  requireDevice();
  EFCOMM_CHECK(dst != nullptr && src != nullptr && isDevicePointer(dst) && isDevicePointer(src), "copy: ", bytes,
               " bytes between arrays that are not both device memory (pass CUDA arrays)");
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, nativeStream(stream)));
}

void synchronize(Stream stream) {
  requireDevice();
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(nativeStream(stream)));
}

Message toHost(const void* msg, size_t size, Stream stream) {
  requireDevice();
  EFCOMM_CHECK(size == 0 || (msg != nullptr && isDevicePointer(msg)),
               "toHost: the message is not in device memory (pass a CUDA buffer)");
  std::vector<uint8_t> host(size);
  if (size) {
    const cudaStream_t st = nativeStream(stream);
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(host.data(), msg, size, cudaMemcpyDeviceToHost, st));
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  }
  return Message::fromBytes(host.data(), size);
}

void toDevice(const Message& msg, DeviceBuffer& out, Stream stream) {
  requireDevice();
  EFCOMM_CHECK(!msg.empty(), "toDevice: the message is empty (unfinished)");
  out.resize(msg.size());
  // The copy may run after this call returns: a copy of the Message (sharing its bytes) keeps
  // the source alive until a host callback on the stream releases it.
  auto* keep = new Message(msg);
  const cudaStream_t st = nativeStream(stream);
  const cudaError_t err = cudaMemcpyAsync(out.data(), keep->data(), keep->size(), cudaMemcpyHostToDevice, st);
  if (err != cudaSuccess) {
    delete keep;
    EFCOMM_CUDA_CHECK(err);
  }
  EFCOMM_CUDA_CHECK(cudaLaunchHostFunc(st, [](void* p) { delete static_cast<Message*>(p); }, keep));
}

}  // namespace efcomm::cuda
