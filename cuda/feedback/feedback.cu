// efcomm::cuda::DeviceFeedback: the worker side of error feedback with its state in device
// memory, the GPU twin of cpp/src/feedback/feedback.cpp (same specs, same update rules and
// operation order, same state dictionary).
//
// With TopK (float32/float64) each step is fused: the vector to compress (v - g, v + e, ...) is
// computed on the fly inside the selection passes (topk_device.cuh's sources), never stored,
// and the state is updated only at the k kept indices (plus the element-wise updates a method
// needs anyway: EF14's e = v + e, EF21-SGDM's momentum, EControl's e: one pass each). So EF21 and
// EF21-W read v and g once (the selection's full pass) and touch g at k indices. Full passes read
// every array with 16-byte loads when all are 16-byte aligned (element by element otherwise), with
// the same per-element arithmetic either way (Src::combine). With other compressors the
// vector is formed in a device buffer, compressed by the compressor's device codec, and the
// decoded message is added to the state (efcomm::cuda::accumulate), as on the CPU.
// Every step compresses first and changes the state only after the message exists, so a throw
// (NonFiniteError) leaves the state unchanged.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "compress/device_codec.hpp"
#include "compress/topk_device.cuh"
#include "efcomm/cuda.hpp"
#include "efcomm/feedback.hpp"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunknown-pragmas"
#include "feedback/common.hpp"
#pragma GCC diagnostic pop

namespace efcomm::cuda {

namespace fb {

// The vector a method compresses (or an element-wise state update), element by element, in
// the CPU's expression order (feedback.cpp): x the input, a and b state arrays, c1 and c2
// scalars of the state's dtype.
enum Kind : int {
  kPlain,       // x
  kDiff,        // x - a                 (EF21: v - g; EControl with eta = 0: v - h)
  kScaledDiff,  // c1 x - a              (EF21-W: a v - g)
  kScaled,      // c1 x                  (EF21-W's first, uncompressed target)
  kSum,         // x + a                 (EF14: v + e)
  kMomentumDiff,  // (c1 b + c2 x) - a   (EF21-SGDM: (keep u + take v) - g)
  kMomentum,    // c1 b + c2 x           (its update of u)
  kEControl,    // (c1 b + x) - a        (EControl: (eta e + v) - h)
  kEUpdate,     // (b + x) - a           (EControl's update e = (e + v) - h)
};

__device__ __forceinline__ float subRn(float a, float b) { return __fsub_rn(a, b); }
__device__ __forceinline__ double subRn(double a, double b) { return __dsub_rn(a, b); }

template <typename T, int K>
struct Src {
  using Bits = typename topk::BitsOf<sizeof(T)>::type;
  /// Values per 16-byte load; which state arrays the kind reads (x always).
  static constexpr int kV = static_cast<int>(16 / sizeof(T));
  static constexpr bool kReadsA = K != kPlain && K != kScaled && K != kMomentum;
  static constexpr bool kReadsB = K == kMomentumDiff || K == kMomentum || K == kEControl || K == kEUpdate;
  static constexpr bool kVecLoads = true;  // topk_device.cuh's loadRun uses loadVec when vecOk
  const T* x;
  const T* a;
  const T* b;
  T c1, c2;
  bool vecOk = false;  // every array the kind reads is 16-byte aligned (set by makeSrc)
  /// The element from its inputs. The roundings are explicit (hd.hpp's mulRn/addRn/fmaRn and
  /// subRn: nothing left for nvcc to contract), fixed to what nvcc's default contraction made
  /// of the plain expressions before (checked in the SASS): c1 x - a is one fma(c1, x, -a);
  /// c1 b + c2 x is fma(c1, b, round(c2 x)); (c1 b + x) - a is round(fma(c1, b, x)) - a. The
  /// contraction of the plain expressions depended on the load order (scalar vs vector loads
  /// contracted c1 b + c2 x differently), so it is pinned here.
  __device__ __forceinline__ T combine(T xi, T ai, T bi) const {
    if constexpr (K == kPlain) return xi;
    else if constexpr (K == kDiff) return subRn(xi, ai);
    else if constexpr (K == kScaledDiff) return fmaRn(c1, xi, -ai);
    else if constexpr (K == kScaled) return mulRn(c1, xi);
    else if constexpr (K == kSum) return addRn(xi, ai);
    else if constexpr (K == kMomentumDiff) return subRn(fmaRn(c1, bi, mulRn(c2, xi)), ai);
    else if constexpr (K == kMomentum) return fmaRn(c1, bi, mulRn(c2, xi));
    else if constexpr (K == kEControl) return subRn(fmaRn(c1, bi, xi), ai);
    else return subRn(addRn(bi, xi), ai);
  }
  __device__ __forceinline__ T value(int64_t i) const {
    return combine(x[i], kReadsA ? a[i] : T(0), kReadsB ? b[i] : T(0));
  }
  __device__ __forceinline__ Bits bits(int64_t i) const {
    const T v = value(i);
    Bits u;
    memcpy(&u, &v, sizeof(T));
    return u;
  }
  __device__ __forceinline__ int64_t index(int64_t i) const { return i; }
  /// The kV values from i (a multiple of kV; vecOk): one 16-byte load of each array read.
  /// ReadOnly: the arrays are not written during the kernel (the selection passes), so the
  /// non-coherent path may be used; element-wise updates that write in place pass false.
  template <bool ReadOnly>
  __device__ __forceinline__ void values(int64_t i, T (&out)[kV]) const {
    T xv[kV], av[kV], bv[kV];
    load16<ReadOnly>(x + i, xv);
    if constexpr (kReadsA) load16<ReadOnly>(a + i, av);
    if constexpr (kReadsB) load16<ReadOnly>(b + i, bv);
#pragma unroll
    for (int e = 0; e < kV; ++e) {
      T ai = T(0), bi = T(0);
      if constexpr (kReadsA) ai = av[e];
      if constexpr (kReadsB) bi = bv[e];
      out[e] = combine(xv[e], ai, bi);
    }
  }
  /// topk_device.cuh's vector hook (the sampled full pass): kV raw values from i.
  __device__ __forceinline__ void loadVec(int64_t i, Bits* v) const {
    T t[kV];
    values<true>(i, t);
    memcpy(v, t, sizeof t);
  }

 private:
  template <bool ReadOnly>
  __device__ __forceinline__ static void load16(const T* p, T (&v)[kV]) {
    uint4 q;
    if constexpr (ReadOnly) {
      q = __ldg(reinterpret_cast<const uint4*>(p));
    } else {
      q = *reinterpret_cast<const uint4*>(p);
    }
    memcpy(v, &q, sizeof q);
  }
};

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

template <typename T>
struct NoDeduce {
  using type = T;
};
/// A source with vecOk set from the alignment of the arrays its kind reads (T from x).
template <int K, typename T>
Src<T, K> makeSrc(const T* x, const typename NoDeduce<T>::type* a, const typename NoDeduce<T>::type* b,
                  typename NoDeduce<T>::type c1 = T(0), typename NoDeduce<T>::type c2 = T(0)) {
  Src<T, K> s{x, a, b, c1, c2, false};
  s.vecOk = aligned16(x) && (!Src<T, K>::kReadsA || aligned16(a)) && (!Src<T, K>::kReadsB || aligned16(b));
  return s;
}

/// Element-wise out[i] = src.value(i) (out may be one of src's arrays: each element is read
/// before it is written, by the same thread). Vec (src.vecOk and out 16-byte aligned): kUnroll
/// 16-byte groups per thread and grid-stride step, all loads before the stores; the n % kV
/// tail element by element.
constexpr int kUnroll = 4;
template <typename T, int K, bool Vec>
__global__ void __launch_bounds__(kThreads) formKernel(Src<T, K> src, int64_t n, T* out) {
  if constexpr (Vec) {
    constexpr int V = Src<T, K>::kV;
    const int64_t groups = n / V;
    const int64_t stride = gridThreads();
    for (int64_t g0 = globalThread(); g0 < groups; g0 += stride * kUnroll) {
      T r[kUnroll][V];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t g = g0 + u * stride;
        if (g < groups) src.template values<false>(g * V, r[u]);
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t g = g0 + u * stride;
        if (g < groups) {
          uint4 q;
          memcpy(&q, r[u], sizeof q);
          *reinterpret_cast<uint4*>(out + g * V) = q;
        }
      }
    }
    for (int64_t i = groups * V + globalThread(); i < n; i += stride) out[i] = src.value(i);
  } else {
    for (int64_t i = globalThread(); i < n; i += gridThreads()) out[i] = src.value(i);
  }
}

// state[idx[j]] += w * value j (the CPU's sparse accumulate of a TopK message).
template <typename T>
__global__ void scatterAddKernel(const int64_t* idx, const typename topk::BitsOf<sizeof(T)>::type* bits, int64_t k,
                                 T w, T* state) {
  for (int64_t j = globalThread(); j < k; j += gridThreads()) {
    T v;
    memcpy(&v, &bits[j], sizeof(T));
    T& s = state[idx[j]];
    s = fmaRn(w, v, s);  // state += w v, contracted as before
  }
}

// EControl's commit in one launch: e[idx[j]] += -1 * value j, h[idx[j]] += 1 * value j (the
// same expressions as two scatterAddKernel launches; the arrays are distinct).
template <typename T>
__global__ void scatterAdd2Kernel(const int64_t* idx, const typename topk::BitsOf<sizeof(T)>::type* bits, int64_t k,
                                  T w0, T* state0, T w1, T* state1) {
  for (int64_t j = globalThread(); j < k; j += gridThreads()) {
    T v;
    memcpy(&v, &bits[j], sizeof(T));
    const int64_t i = idx[j];
    state0[i] = fmaRn(w0, v, state0[i]);
    state1[i] = fmaRn(w1, v, state1[i]);
  }
}

// The object's state (DeviceFeedback::Impl is this).
struct State {
  feedback::Config cfg;
  std::string specText;
  std::shared_ptr<Compressor> comp;
  std::shared_ptr<Compressor> identity;
  double scale = 1;
  bool sgdm = false;
  bool initialized = false;
  std::vector<int64_t> shape;
  DType dtype = DType::kFloat32;
  DeviceBuffer s0, s1;  // g and u (EF21 family), e (EF14), e and h (EControl)
  DeviceBuffer work;    // the formed vector (generic path, error reports)

  std::vector<std::string> names() const {
    if (cfg.name == "none") return {};
    if (cfg.name == "ef14") return {"e"};
    if (cfg.name == "econtrol") return {"e", "h"};
    if (sgdm) return {"g", "u"};
    return {"g"};
  }
  DeviceBuffer& buffer(const std::string& n) {
    if (n == "u" || n == "h") return s1;
    return s0;
  }
  int64_t numel() const { return ConstTensorView{nullptr, dtype, shape}.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * itemSize(dtype); }
  TensorView view(DeviceBuffer& b) { return {b.data(), dtype, shape}; }
};

}  // namespace fb

struct DeviceFeedback::Impl : fb::State {};

namespace {

using Impl = fb::State;

void copyDevice(void* dst, const void* src, size_t bytes, cudaStream_t st) {
  if (bytes) EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, st));
}

template <typename T, int K>
void form(const fb::Src<T, K>& src, int64_t n, void* out, cudaStream_t st) {
  if (n == 0) return;
  T* o = static_cast<T*>(out);
  if (src.vecOk && fb::aligned16(out)) {
    const int64_t per = int64_t{kThreads} * fb::kUnroll * fb::Src<T, K>::kV;
    const int64_t cap = 8 * static_cast<int64_t>(smCount());
    const int64_t want = std::max<int64_t>((n + per - 1) / per, 1);
    fb::formKernel<T, K, true><<<static_cast<unsigned>(std::min(want, cap)), kThreads, 0, st>>>(src, n, o);
  } else {
    fb::formKernel<T, K, false><<<gridFor(n), kThreads, 0, st>>>(src, n, o);
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void scatterAdd(const int64_t* idx, const typename topk::BitsOf<sizeof(T)>::type* bits, int64_t k, double w, void* state,
                cudaStream_t st) {
  if (k == 0) return;
  fb::scatterAddKernel<T><<<gridFor(k), kThreads, 0, st>>>(idx, bits, k, static_cast<T>(w), static_cast<T*>(state));
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

template <typename T>
void scatterAdd2(const int64_t* idx, const typename topk::BitsOf<sizeof(T)>::type* bits, int64_t k, double w0,
                 void* state0, double w1, void* state1, cudaStream_t st) {
  if (k == 0) return;
  fb::scatterAdd2Kernel<T><<<gridFor(k), kThreads, 0, st>>>(idx, bits, k, static_cast<T>(w0), static_cast<T*>(state0),
                                                            static_cast<T>(w1), static_cast<T*>(state1));
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

// The fused TopK step on the source `src`: select, check, encode, then `commit(idx, bits, k)`.
template <typename T, int K, typename Commit>
size_t fusedTopK(Impl& im, const fb::Src<T, K>& src, const ConstTensorView& v, DeviceBuffer& out, cudaStream_t st,
                 Commit&& commit) {
  using B = typename topk::BitsOf<sizeof(T)>::type;
  const int64_t n = v.numel();
  const int64_t k = topk::keepCountOf(*im.comp, n);
  topk::Trace tr("feedback.topk-step", n, k, st);
  topk::Trace* trp = tr.on() ? &tr : nullptr;
  topk::Workspace<B> ws = topk::Workspace<B>::make(n, k);
  const int64_t varints = topk::selectTopK(src, n, k, ws, topk::infKey(v.dtype), st, trp);
  if (varints < 0) {
    im.work.resize(v.nbytes());
    form(src, n, im.work.data(), st);
    throwNonFinite("topk.compress", ConstTensorView{im.work.data(), v.dtype, v.shape}, st, "a kept value is not finite");
  }
  const size_t size = topk::encodeTopK(ws, n, k, varints, v.dtype, v.shape, out, st, trp);
  commit(ws.selIdx, ws.selBits, k);
  tr.mark("commit");
  tr.print();
  return size;
}

// Raises *flag (a mailbox word) when x[0, n) holds a NaN or Inf.
template <typename T>
__global__ void anyNonFiniteKernel(const T* x, int64_t n, uint32_t* flag) {
  uint32_t bad = 0;
  for (int64_t i = globalThread(); i < n; i += gridThreads()) bad |= nonFiniteBit(x[i]);
  raiseMailFlag(flag, bad);
}

// The generic step: form the vector into im.work, compress it with the device codec. Every
// element of the formed vector enters the state, so where the codec reads only some (RandK:
// the ones it sends) the whole vector is checked first, as on the CPU (Feedback::compressFormed).
template <typename T, int K>
size_t generic(Impl& im, const fb::Src<T, K>& src, const ConstTensorView& v, DeviceBuffer& out, uint64_t step,
               cudaStream_t st) {
  const int64_t n = v.numel();
  im.work.resize(v.nbytes());
  form(src, n, im.work.data(), st);
  const ConstTensorView work{im.work.data(), v.dtype, v.shape};
  if (!im.comp->readsEveryElement() && n > 0) {
    uint32_t* flag = clearMailboxFlags(1);
    anyNonFiniteKernel<T><<<gridFor(n), kThreads, 0, st>>>(static_cast<const T*>(work.data), n, flag);
    EFCOMM_CUDA_CHECK(cudaGetLastError());
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
    if (static_cast<const volatile uint32_t*>(mailbox().host->flags)[0]) {
      throwIfNonFinite(im.specText + ".step", v, st);
      throwNonFinite(im.specText + ".step", work, st,
                     "the vector to compress (the input combined with the state) overflowed");
    }
  }
  const DeviceCodec& codec = deviceCodec(im.comp->id());
  return codec.compress(*im.comp, work, step, out, st);
}

void addMessage(const DeviceBuffer& out, size_t size, const TensorView& state, double w, cudaStream_t st) {
  efcomm::cuda::accumulate(out.data(), size, state, w, st);
}

template <typename T>
size_t doStep(Impl& im, const ConstTensorView& v, DeviceBuffer& out, uint64_t step, cudaStream_t st) {
  const int64_t n = v.numel();
  const T* x = static_cast<const T*>(v.data);
  T* s0 = static_cast<T*>(im.s0.data());
  T* s1 = static_cast<T*>(im.s1.data());
  const bool first = !im.initialized;
  const bool topk = im.comp->id() == CompressorId::kTopK;
  const std::string& name = im.cfg.name;

  if (name == "none") {
    return deviceCodec(im.comp->id()).compress(*im.comp, v, step, out, st);
  }
  if (first && im.cfg.initFull && im.cfg.additive()) {
    // The first vector travels uncompressed (an identity message) and starts the estimate.
    const DeviceCodec& ident = deviceCodec(CompressorId::kIdentity);
    if (name == "econtrol") {
      const size_t size = ident.compress(*im.identity, v, 0, out, st);
      copyDevice(s1, x, v.nbytes(), st);
      return size;
    }
    ConstTensorView target = v;
    if (im.scale != 1) {
      im.work.resize(v.nbytes());
      form(fb::makeSrc<fb::kScaled>(x, nullptr, nullptr, static_cast<T>(im.scale)), n, im.work.data(), st);
      target = ConstTensorView{im.work.data(), v.dtype, v.shape};
    }
    const size_t size = ident.compress(*im.identity, target, 0, out, st);
    copyDevice(s0, target.data, v.nbytes(), st);
    if (im.sgdm) copyDevice(s1, x, v.nbytes(), st);
    return size;
  }

  if (name == "ef14") {
    const auto src = fb::makeSrc<fb::kSum>(x, s0, nullptr);
    const auto commitE = [&] { form(src, n, s0, st); };  // e = p (in place: p_i reads e_i first)
    if (topk) {
      return fusedTopK(im, src, v, out, st, [&](const int64_t* idx, const auto* bits, int64_t k) {
        commitE();
        scatterAdd<T>(idx, bits, k, -1.0, s0, st);
      });
    }
    const size_t size = generic(im, src, v, out, step, st);
    copyDevice(s0, im.work.data(), v.nbytes(), st);
    addMessage(out, size, im.view(im.s0), -1.0, st);
    return size;
  }

  if (name == "econtrol") {
    const T eta = static_cast<T>(im.cfg.eta);
    const auto upd = fb::makeSrc<fb::kEUpdate>(x, s1, s0);  // e = (e + v) - h
    // The first round (init=compressed) leaves e at 0: h^0 = C(v^0), e^0 = 0 (as the CPU).
    const auto run = [&](const auto& src) -> size_t {
      if (topk) {
        return fusedTopK(im, src, v, out, st, [&](const int64_t* idx, const auto* bits, int64_t k) {
          if (first) {
            scatterAdd<T>(idx, bits, k, 1.0, s1, st);
            return;
          }
          form(upd, n, s0, st);
          scatterAdd2<T>(idx, bits, k, -1.0, s0, 1.0, s1, st);
        });
      }
      const size_t size = generic(im, src, v, out, step, st);
      if (!first) {
        form(upd, n, s0, st);
        addMessage(out, size, im.view(im.s0), -1.0, st);
      }
      addMessage(out, size, im.view(im.s1), 1.0, st);
      return size;
    };
    if (im.cfg.eta == 0) return run(fb::makeSrc<fb::kDiff>(x, s1, nullptr));
    return run(fb::makeSrc<fb::kEControl>(x, s1, s0, eta));
  }

  // The EF21 family: g += C(target - g).
  const bool plainV = !im.sgdm || first || im.cfg.momentum == 1;
  const T keep = static_cast<T>(1 - im.cfg.momentum), take = static_cast<T>(im.cfg.momentum);
  const auto updateU = [&] {
    if (!im.sgdm) return;
    if (plainV) {
      copyDevice(s1, x, v.nbytes(), st);
    } else {
      form(fb::makeSrc<fb::kMomentum>(x, nullptr, s1, keep, take), n, s1, st);
    }
  };
  const auto run = [&](const auto& src) -> size_t {
    if (topk) {
      return fusedTopK(im, src, v, out, st, [&](const int64_t* idx, const auto* bits, int64_t k) {
        updateU();
        scatterAdd<T>(idx, bits, k, 1.0, s0, st);
      });
    }
    const size_t size = generic(im, src, v, out, step, st);
    updateU();
    addMessage(out, size, im.view(im.s0), 1.0, st);
    return size;
  };
  if (!plainV) return run(fb::makeSrc<fb::kMomentumDiff>(x, s0, s1, keep, take));
  if (im.scale != 1) return run(fb::makeSrc<fb::kScaledDiff>(x, s0, nullptr, static_cast<T>(im.scale)));
  return run(fb::makeSrc<fb::kDiff>(x, s0, nullptr));
}

}  // namespace

DeviceFeedback::DeviceFeedback(const std::string& feedbackSpec, const std::string& compressorSpec)
    : impl_(std::make_unique<Impl>()) {
  Impl& im = *impl_;
  im.comp = std::shared_ptr<Compressor>(makeCompressor(compressorSpec));
  im.specText = makeFeedback(feedbackSpec, im.comp)->spec();  // validates the spec as the CPU does
  im.cfg = feedback::parseConfig(feedbackSpec);
  im.identity = std::shared_ptr<Compressor>(makeCompressor("identity"));
  im.scale = im.cfg.name == "ef21w" ? 1.0 / (static_cast<double>(im.cfg.n) * im.cfg.weight) : 1.0;
  im.sgdm = im.cfg.name == "ef21sgdm";
  if (!deviceCodecOrNull(im.comp->id()))
    throw BackendUnavailable("DeviceFeedback: the GPU path has no kernels for '" + im.comp->spec() + "' yet");
}

DeviceFeedback::~DeviceFeedback() = default;

std::string DeviceFeedback::spec() const { return impl_->specText; }
const Compressor& DeviceFeedback::compressor() const { return *impl_->comp; }
bool DeviceFeedback::initialized() const { return impl_->initialized; }

ConstTensorView DeviceFeedback::estimate() const {
  Impl& im = *impl_;
  if (!im.initialized || im.cfg.name == "none") return {nullptr, DType::kFloat32, {0}};
  DeviceBuffer& b = im.cfg.name == "econtrol" ? im.s1 : im.s0;
  return {b.data(), im.dtype, im.shape};
}

size_t DeviceFeedback::step(const ConstTensorView& v, DeviceBuffer& out, std::optional<uint64_t> step, Stream stream) {
  Impl& im = *impl_;
  const std::string who = im.cfg.name + ".step";
  const int64_t n = v.numel();  // validates the shape
  feedback::checkFloatDType(v.dtype, who);
  EFCOMM_CHECK(static_cast<int>(v.shape.size()) <= kMaxDims, who, ": ", v.shape.size(), "-d input; at most ",
               kMaxDims, " dimensions are supported");
  requireDevice();
  checkDeviceView(v, (who + ": v").c_str());
  if (im.initialized) {
    EFCOMM_CHECK(v.shape == im.shape && v.dtype == im.dtype, who, ": input is ", dtypeName(v.dtype), " ",
                 shapeString(v.shape), " but the state is ", dtypeName(im.dtype), " ", shapeString(im.shape),
                 " (fixed by the first step)");
  }
  const cudaStream_t st = nativeStream(stream);
  if (!im.initialized) {  // not yet a state: a failed first step leaves none
    im.shape = v.shape;
    im.dtype = v.dtype;
    const size_t bytes = static_cast<size_t>(n) * itemSize(v.dtype);
    for (const std::string& name : im.names()) {
      DeviceBuffer& b = im.buffer(name);
      b.resize(bytes);
      if (bytes) EFCOMM_CUDA_CHECK(cudaMemsetAsync(b.data(), 0, bytes, st));
    }
  }
  const uint64_t s = im.comp->resolveStep(step);
  // init=full methods send their first vector uncompressed: the compressor's counter stays.
  const bool compresses = im.initialized || !im.cfg.initFull || !im.cfg.additive();
  const size_t size = v.dtype == DType::kFloat64 ? doStep<double>(im, v, out, s, st) : doStep<float>(im, v, out, s, st);
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  if (compresses) im.comp->advanceStep(s);
  im.initialized = true;
  return size;
}

StateDict DeviceFeedback::stateDict() const {
  Impl& im = *impl_;
  StateDict d;
  d.meta["spec"] = im.specText;
  d.meta["initialized"] = im.initialized ? "1" : "0";
  if (im.initialized) {
    d.meta["dtype"] = dtypeName(im.dtype);
    d.meta["shape"] = feedback::shapeText(im.shape);
    for (const std::string& name : im.names()) {
      StateTensor t;
      t.dtype = im.dtype;
      t.shape = im.shape;
      t.bytes.resize(im.nbytes());
      if (!t.bytes.empty()) {
        EFCOMM_CUDA_CHECK(cudaMemcpy(t.bytes.data(), im.buffer(name).data(), t.bytes.size(), cudaMemcpyDeviceToHost));
      }
      d.tensors[name] = std::move(t);
    }
  }
  d.merge(im.comp->stateDict(), "compressor.");
  return d;
}

void DeviceFeedback::loadStateDict(const StateDict& state) {
  Impl& im = *impl_;
  state.expect("spec", im.specText, "the saved feedback spec");
  const uint64_t init = state.integer("initialized");
  EFCOMM_CHECK(init <= 1, "state dict: 'initialized' must be 0 or 1, got ", init);
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<const StateTensor*> arrays;
  const std::vector<std::string> names = im.names();
  if (init) {
    dtype = parseDType(state.text("dtype"));
    feedback::checkFloatDType(dtype, "state dict");
    shape = feedback::parseShape(state.text("shape"));
    for (const std::string& n : names) arrays.push_back(&feedback::savedArray(state, n, dtype, shape));
    requireDevice();
  }
  // Check the compressor's part on a copy first, so that nothing changes on a throw.
  const StateDict compState = state.sub("compressor.");
  makeCompressor(im.comp->spec())->loadStateDict(compState);
  if (init) {
    for (size_t i = 0; i < names.size(); ++i) {
      DeviceBuffer& b = im.buffer(names[i]);
      b.resize(arrays[i]->bytes.size());
      if (!arrays[i]->bytes.empty()) {
        EFCOMM_CUDA_CHECK(cudaMemcpy(b.data(), arrays[i]->bytes.data(), arrays[i]->bytes.size(), cudaMemcpyHostToDevice));
      }
    }
    settleLegacyStream();  // the pageable copies complete before a step on another stream reads them
  }
  im.comp->loadStateDict(compState);
  im.initialized = init == 1;
  if (!im.initialized) return;
  im.shape = shape;
  im.dtype = dtype;
}

}  // namespace efcomm::cuda
