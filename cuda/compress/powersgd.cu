// PowerSGD on the device: the payload and warm start semantics of cpp/src/compress/powersgd.cpp
// (read that file's comment for the matrix view, the initial Q and the checks). The two
// tall-skinny products run on the device in double, each with a fixed summation order:
//   P = M Q:    one block per row, each thread strides over the row, then a block reduction;
//   Q = M^T P:  one thread per column and row slab, then the slabs' partials summed in order.
// The r' x r'-sized steps stay on the host, where they are cheap and exactly the CPU's code:
// preparing Q (unit columns, zero columns restarted), orthonormalizing P (m x r', modified
// Gram-Schmidt twice), rounding to the factors' precision and the overflow checks. The warm start
// lives in the CPU compressor object: read from its state dict, written back with
// setPowerSgdWarmStart on success. Sums run in another order than the CPU's lanes, so factors may
// differ from the CPU's in the last bits.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/dispatch.hpp"
#include "common/kernels.cuh"
#include "common/rng.hpp"
#include "common/runtime.hpp"
#include "common/spec.hpp"
#include "common/wire.hpp"
#include "compress/device_codec.hpp"
#include "compress/powersgd.hpp"

namespace efcomm::cuda {

namespace psgd {

namespace {

// The host steps are the CPU's own (compress::powersgd): the same factors from the same products.
using View = compress::PowerSgdLayout;
using compress::powersgd::checkDecodedRange;
using compress::powersgd::initialQ;
using compress::powersgd::matrixView;
using compress::powersgd::orthonormalize;
using compress::powersgd::payloadBytes;
using compress::powersgd::prepareQ;
using compress::powersgd::roundToWire;

constexpr int kGroup = 8;             // columns of Q/P per kernel pass (register accumulators)
constexpr int64_t kSlabRows = 256;    // rows per slab of Q = M^T P

size_t computeBytes(DType dt) { return dt == DType::kFloat64 ? 8 : 4; }

std::vector<uint8_t> paramBytes(int64_t rank, const View& v) {
  std::vector<uint8_t> b(20);
  const auto put = [&](size_t at, uint64_t x, int bytes) {
    for (int i = 0; i < bytes; ++i) b[at + i] = static_cast<uint8_t>(x >> (8 * i));
  };
  put(0, static_cast<uint64_t>(rank), 4);
  put(4, static_cast<uint64_t>(v.m), 8);
  put(12, static_cast<uint64_t>(v.n), 8);
  return b;
}

std::vector<double> doublesOf(const StateTensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
  return v;
}

// ---- kernels ----

__device__ __forceinline__ int64_t rowLength(int64_t n, int64_t d, int64_t i) {
  return n < d - i * n ? n : d - i * n;
}

// p[k m + i] = sum_j x[i n + j] q[k n + j] for k in [k0, k0 + g): one block per row.
template <typename T>
__global__ void multiplyMQKernel(const T* x, int64_t d, int64_t m, int64_t n, const double* q, int64_t k0, int g,
                                 double* p) {
  for (int64_t i = blockIdx.x; i < m; i += gridDim.x) {
    const int64_t len = rowLength(n, d, i);
    const T* row = x + i * n;
    double acc[kGroup];
#pragma unroll
    for (int c = 0; c < kGroup; ++c) acc[c] = 0;
    for (int64_t j = threadIdx.x; j < len; j += blockDim.x) {
      const double v = static_cast<double>(Elem<T>::load(row[j]));
#pragma unroll
      for (int c = 0; c < kGroup; ++c)
        if (c < g) acc[c] += v * q[(k0 + c) * n + j];
    }
    for (int c = 0; c < g; ++c) {
      const double s = blockSum(acc[c]);
      if (threadIdx.x == 0) p[(k0 + c) * m + i] = s;
    }
  }
}

// partial[(slab r + k) n + j] = sum over the slab's rows i of p[k m + i] x[i n + j].
template <typename T>
__global__ void multiplyMtPKernel(const T* x, int64_t d, int64_t m, int64_t n, int64_t r, const double* p,
                                  int64_t k0, int g, double* partial) {
  const int64_t slab = blockIdx.y;
  const int64_t lo = slab * kSlabRows, hi = lo + kSlabRows < m ? lo + kSlabRows : m;
  for (int64_t j = globalThread(); j < n; j += gridThreads()) {
    double acc[kGroup];
#pragma unroll
    for (int c = 0; c < kGroup; ++c) acc[c] = 0;
    for (int64_t i = lo; i < hi; ++i) {
      if (j >= rowLength(n, d, i)) break;  // only the last row is short
      const double v = static_cast<double>(Elem<T>::load(x[i * n + j]));
#pragma unroll
      for (int c = 0; c < kGroup; ++c)
        if (c < g) acc[c] += p[(k0 + c) * m + i] * v;
    }
    for (int c = 0; c < g; ++c) partial[(slab * r + k0 + c) * n + j] = acc[c];
  }
}

__global__ void sumSlabsKernel(const double* partial, int64_t slabs, int64_t rn, double* q) {
  for (int64_t e = globalThread(); e < rn; e += gridThreads()) {
    double s = 0;
    for (int64_t b = 0; b < slabs; ++b) s += partial[b * rn + e];
    q[e] = s;
  }
}

// out = the first d elements of P Q^T, row i of it sum_k P[i, k] Q[:, k] in the CPU's order.
template <typename T>
__global__ void decodeKernel(const typename Elem<T>::Compute* p, const typename Elem<T>::Compute* q, int64_t d,
                             int64_t m, int64_t n, DivisorU64 byN, int64_t r, T* out) {
  using C = typename Elem<T>::Compute;
  for (int64_t e = globalThread(); e < d; e += gridThreads()) {
    const int64_t i = static_cast<int64_t>(divide(static_cast<uint64_t>(e), byN)), j = e - i * n;
    C buf = p[i] * q[j];
    for (int64_t k = 1; k < r; ++k) buf += p[k * m + i] * q[k * n + j];
    out[e] = Elem<T>::store(buf);
  }
}

void check() { EFCOMM_CUDA_CHECK(cudaGetLastError()); }

template <typename T>
std::vector<double> toHost(const double* d, size_t count, cudaStream_t st) {
  std::vector<double> h(count);
  if (count) EFCOMM_CUDA_CHECK(cudaMemcpyAsync(h.data(), d, count * sizeof(double), cudaMemcpyDeviceToHost, st));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  return h;
}

size_t compress(Compressor& c, const ConstTensorView& x, uint64_t, DeviceBuffer& out, cudaStream_t st) {
  SpecParams sp = SpecParams::parse(c.spec());
  const int64_t rank = sp.getInt("rank").value_or(4);
  const auto seed = static_cast<uint64_t>(sp.getInt("seed").value_or(0));
  const int64_t d = x.numel();
  const View v = matrixView(x.shape, d, rank);
  const size_t bytes = payloadBytes(v, x.dtype);
  const DeviceMessageLayout layout =
      beginMessage(out, CompressorId::kPowerSGD, x.dtype, x.shape, 0, paramBytes(rank, v), bytes, st);
  if (v.r == 0) return finishMessage(out, layout, 0, st);

  // The warm start, from the compressor's state (powersgd.cpp saveExtra).
  const StateDict saved = c.stateDict();
  const bool warm = saved.meta.count("warm") && saved.meta.at("warm") == "1" &&
                    saved.integer("m") == static_cast<uint64_t>(v.m) && saved.integer("n") == static_cast<uint64_t>(v.n);
  const std::vector<double> init = warm ? doublesOf(saved.tensors.at("init")) : initialQ(seed, v.n, v.r);
  std::vector<double> q = warm ? doublesOf(saved.tensors.at("q")) : init;
  prepareQ(q, init, v.n, v.r);

  const int64_t slabs = (v.m + kSlabRows - 1) / kSlabRows;
  const size_t qn = static_cast<size_t>(v.n * v.r), pm = static_cast<size_t>(v.m * v.r);
  auto* work = static_cast<double*>(scratch((qn + pm + static_cast<size_t>(slabs) * qn) * sizeof(double), 4));
  double* dq = work;
  double* dp = work + qn;
  double* partial = dp + pm;

  return dispatchDType(x.dtype, [&](auto tag) -> size_t {
    using T = typename decltype(tag)::type;
    using C = typename Elem<T>::Compute;
    const T* in = static_cast<const T*>(x.data);
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dq, q.data(), qn * sizeof(double), cudaMemcpyHostToDevice, st));
    const int rowBlocks = static_cast<int>(std::min<int64_t>(v.m, 65535));
    for (int64_t k0 = 0; k0 < v.r; k0 += kGroup) {
      const int g = static_cast<int>(std::min<int64_t>(kGroup, v.r - k0));
      multiplyMQKernel<T><<<rowBlocks, kThreads, 0, st>>>(in, d, v.m, v.n, dq, k0, g, dp);
      check();
    }
    std::vector<double> p = toHost<T>(dp, pm, st);
    // Inf * q is +-Inf or NaN for every finite q, so a non-finite element leaves P non-finite.
    const bool finite = std::all_of(p.begin(), p.end(), [](double e) { return std::isfinite(e); });
    if (!finite) throwNonFinite("powersgd.compress", x, st, "M Q overflows; the input's magnitude is too large");
    orthonormalize(p.data(), v.m, v.r);
    roundToWire<C>(p);
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dp, p.data(), pm * sizeof(double), cudaMemcpyHostToDevice, st));
    const dim3 grid(static_cast<unsigned>(std::min<int64_t>((v.n + kThreads - 1) / kThreads, 4096)),
                    static_cast<unsigned>(slabs));
    for (int64_t k0 = 0; k0 < v.r; k0 += kGroup) {
      const int g = static_cast<int>(std::min<int64_t>(kGroup, v.r - k0));
      multiplyMtPKernel<T><<<grid, kThreads, 0, st>>>(in, d, v.m, v.n, v.r, dp, k0, g, partial);
      check();
    }
    sumSlabsKernel<<<gridFor(static_cast<int64_t>(qn)), kThreads, 0, st>>>(partial, slabs, static_cast<int64_t>(qn), dq);
    check();
    q = toHost<T>(dq, qn, st);
    if (!roundToWire<C>(q))
      throw NonFiniteError(
          "powersgd.compress: Q = M^T P overflows the factors' precision; the input's magnitude is too large");
    checkDecodedRange(p, q, v, x.dtype);
    std::vector<C> payload(pm + qn);
    for (size_t i = 0; i < pm; ++i) payload[i] = static_cast<C>(p[i]);
    for (size_t i = 0; i < qn; ++i) payload[pm + i] = static_cast<C>(q[i]);
    uint8_t* dst = static_cast<uint8_t*>(out.data()) + layout.headerBytes;
    EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dst, payload.data(), bytes, cudaMemcpyHostToDevice, st));
    const size_t size = finishMessage(out, layout, bytes, st);
    EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));  // the payload's host staging, then commit
    ::efcomm::compress::setPowerSgdWarmStart(c, v.m, v.n, q);
    return size;
  });
}

View parseLayout(const DeviceMessageHeader& h) {
  EFCOMM_CHECK_MSG(h.params.size() == 20, "powersgd parameters: ", h.params.size(), " bytes, expected 20");
  const auto get = [&](size_t at, int bytes) {
    uint64_t x = 0;
    for (int i = 0; i < bytes; ++i) x |= static_cast<uint64_t>(h.params[at + i]) << (8 * i);
    return x;
  };
  const auto rank = static_cast<int64_t>(get(0, 4));
  const uint64_t m = get(4, 8), n = get(12, 8);
  EFCOMM_CHECK_MSG(rank >= 1, "powersgd: rank must be at least 1");
  const View v = matrixView(h.shape, h.numel, rank);
  EFCOMM_CHECK_MSG(m == static_cast<uint64_t>(v.m) && n == static_cast<uint64_t>(v.n), "powersgd: a ", m, " x ", n,
                   " matrix does not match shape ", shapeString(h.shape), " (expected ", v.m, " x ", v.n, ")");
  const size_t want = payloadBytes(v, h.dtype);
  EFCOMM_CHECK_MSG(h.payloadBytes == want, "powersgd: payload of ", h.payloadBytes, " bytes; rank ", v.r,
                   " factors of a ", v.m, " x ", v.n, " matrix need ", want);
  return v;
}

void decode(const DeviceMessageHeader& h, const void* msg, const TensorView& out, cudaStream_t st) {
  const View v = parseLayout(h);
  if (v.r == 0) return;
  const uint8_t* payload = static_cast<const uint8_t*>(msg) + h.headerBytes;
  const int64_t count = v.r * (v.m + v.n);
  // Factors are read as typed values: copy them to aligned scratch (the payload is aligned in
  // the messages this library makes; this keeps any address safe).
  void* f = scratch(static_cast<size_t>(count) * computeBytes(h.dtype), 4);
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(f, payload, static_cast<size_t>(count) * computeBytes(h.dtype),
                                    cudaMemcpyDeviceToDevice, st));
  // The factors are few: validated on the host by the CPU's checks (finite, P Q^T in range).
  std::vector<uint8_t> host(static_cast<size_t>(count) * computeBytes(h.dtype));
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(host.data(), payload, host.size(), cudaMemcpyDeviceToHost, st));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
  compress::powersgd::checkFactors(host.data(), v, h.dtype);
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = typename Elem<T>::Compute;
    const C* p = static_cast<const C*>(f);
    decodeKernel<T><<<gridFor(h.numel), kThreads, 0, st>>>(p, p + v.m * v.r, h.numel, v.m, v.n,
                                                           makeDivisorU64(static_cast<uint64_t>(std::max<int64_t>(v.n, 1))), v.r,
                                                           static_cast<T*>(out.data));
    check();
  });
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(st));
}

}  // namespace
}  // namespace psgd

DeviceCodec powersgdDeviceCodec() { return {CompressorId::kPowerSGD, psgd::compress, psgd::decode, nullptr, false, true}; }

}  // namespace efcomm::cuda
