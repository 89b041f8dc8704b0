#pragma once
// Device helpers of the kernels (include from .cu files only): launch geometry, fixed-order
// block reductions, vector loads. The element arithmetic itself lives in the EFCOMM_HD headers
// (hd.hpp, hd_pack.hpp, hd_crc.hpp, and common/rng.hpp of the CPU path) that the host tests exercise.
#include <cuda_runtime.h>

#include <cstdint>

#include "common/hd.hpp"
#include "common/runtime.hpp"

namespace efcomm::cuda {

/// Threads per block of the element-wise kernels.
constexpr int kThreads = 256;

/// Blocks for n work items of `threads` each: ceil(n / threads), at most 4 per multiprocessor
/// (grid-stride loops cover the rest), at least 1.
inline int gridFor(int64_t n, int threads = kThreads) {
  const int64_t cap = 4 * static_cast<int64_t>(smCount());
  const int64_t want = (n + threads - 1) / threads;
  return static_cast<int>(want < 1 ? 1 : (want < cap ? want : cap));
}

/// Groups of 8 elements each thread of a streaming kernel handles per grid-stride step (all
/// loads of a step are issued before any arithmetic: bytes in flight).
constexpr int kStreamUnroll = 4;

/// Blocks of a streaming kernel over `groups` groups of 8 elements: one step of kStreamUnroll
/// groups per thread, at most 8 blocks of kThreads per multiprocessor (grid-stride beyond).
inline int streamGrid(int64_t groups) {
  const int64_t per = static_cast<int64_t>(kThreads) * kStreamUnroll;
  const int64_t want = (groups + per - 1) / per;
  const int64_t cap = 8 * static_cast<int64_t>(smCount());
  return static_cast<int>(want < 1 ? 1 : (want < cap ? want : cap));
}

/// Sets a mailbox flag word (mapped host memory, HostMailbox) when `bad`: a plain store of 1,
/// on the error path only.
__device__ __forceinline__ void raiseMailFlag(uint32_t* word, uint32_t bad) {
  if (bad) *reinterpret_cast<volatile uint32_t*>(word) = 1u;
}

/// Sum over the warp in a fixed butterfly order (the same bits on every run); every lane gets
/// the sum.
__device__ __forceinline__ double warpSum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warpMax(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ uint32_t warpOr(uint32_t v) { return __reduce_or_sync(0xffffffffu, v); }

/// Block-wide reduction (blockDim.x a multiple of 32, at most 1024) with `warpOp`, a warp-wide
/// reduction that gives every lane the result; `identity` stands in for the absent warps. Every
/// thread of the block must call it; every thread gets the result. Fixed order: the warps'
/// reductions, then warp 0 over the warps' results.
template <typename T, typename WarpOp>
__device__ inline T blockReduce(T v, T identity, WarpOp warpOp) {
  __shared__ T part[32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = warpOp(v);
  __syncthreads();  // part[] may still be read by a previous call
  if (lane == 0) part[warp] = v;
  __syncthreads();
  if (warp == 0) {  // only warp 0 reads part[]: thread 0 then overwrites part[0] without a race
    v = lane < warps ? part[lane] : identity;
    v = warpOp(v);
  }
  if (threadIdx.x == 0) part[0] = v;
  __syncthreads();
  return part[0];
}

/// Block-wide sum, max and OR of flag bits (blockReduce's rules).
__device__ inline double blockSum(double v) {
  return blockReduce(v, 0.0, [](double x) { return warpSum(x); });
}
__device__ inline float blockMax(float v) {
  return blockReduce(v, -INFINITY, [](float x) { return warpMax(x); });
}
__device__ inline uint32_t blockOr(uint32_t v) {
  return blockReduce(v, 0u, [](uint32_t x) { return warpOr(x); });
}

/// Grid-stride loop index helpers (int64 sizes).
__device__ __forceinline__ int64_t globalThread() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t gridThreads() { return static_cast<int64_t>(gridDim.x) * blockDim.x; }

/// Loads element i of a T array widened to the compute type (float, or double for double).
template <typename T>
__device__ __forceinline__ typename Elem<T>::Compute loadElem(const T* p, int64_t i) {
  return Elem<T>::load(p[i]);
}
template <typename T>
__device__ __forceinline__ void storeElem(T* p, int64_t i, typename Elem<T>::Compute v) {
  p[i] = Elem<T>::store(v);
}


/// Loads elements [8g, 8g + 8) of p. kVec: p is 16-byte aligned, so the group is loaded with
/// 16-byte loads (8 sizeof(T) bytes: 1 to 4 of them).
template <typename T, bool kVec>
__device__ __forceinline__ void load8(const T* p, int64_t g, T (&v)[8]) {
  if constexpr (kVec) {
    constexpr int kWords = static_cast<int>(8 * sizeof(T) / 16);  // sizeof(T) >= 2
    const uint4* q = reinterpret_cast<const uint4*>(p + 8 * g);
    uint4 t[kWords];
#pragma unroll
    for (int i = 0; i < kWords; ++i) t[i] = __ldg(q + i);
    memcpy(v, t, sizeof(v));
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) v[k] = p[8 * g + k];
  }
}

/// Stores elements [8g, 8g + 8) of p (kVec: p 16-byte aligned).
template <typename T, bool kVec>
__device__ __forceinline__ void store8(T* p, int64_t g, const T (&v)[8]) {
  if constexpr (kVec) {
    constexpr int kWords = static_cast<int>(8 * sizeof(T) / 16);
    uint4 t[kWords];
    memcpy(t, v, sizeof(v));
    uint4* q = reinterpret_cast<uint4*>(p + 8 * g);
#pragma unroll
    for (int i = 0; i < kWords; ++i) q[i] = t[i];
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) p[8 * g + k] = v[k];
  }
}

/// Loads / stores elements [4h, 4h + 4) of p. kVec: p is 16-byte aligned, so a warp's accesses
/// are consecutive (one 16-byte access per lane for 4-byte T): coalesced stores, which the
/// strided 2 x 16-byte stores of store8 are not (those run at about 70 % of the bandwidth).
template <typename T, bool kVec>
__device__ __forceinline__ void load4(const T* p, int64_t h, T (&v)[4]) {
  if constexpr (kVec && sizeof(T) == 4) {
    const uint4 t = __ldg(reinterpret_cast<const uint4*>(p + 4 * h));
    memcpy(v, &t, 16);
  } else if constexpr (kVec && sizeof(T) == 2) {
    const uint2 t = __ldg(reinterpret_cast<const uint2*>(p + 4 * h));
    memcpy(v, &t, 8);
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) v[k] = p[4 * h + k];
  }
}
template <typename T, bool kVec>
__device__ __forceinline__ void store4(T* p, int64_t h, const T (&v)[4]) {
  if constexpr (kVec && sizeof(T) == 4) {
    uint4 t;
    memcpy(&t, v, 16);
    *reinterpret_cast<uint4*>(p + 4 * h) = t;
  } else if constexpr (kVec && sizeof(T) == 2) {
    uint2 t;
    memcpy(&t, v, 8);
    *reinterpret_cast<uint2*>(p + 4 * h) = t;
  } else if constexpr (kVec && sizeof(T) == 8) {
    uint4 t[2];
    memcpy(t, v, 32);
    uint4* q = reinterpret_cast<uint4*>(p + 4 * h);
    q[0] = t[0];
    q[1] = t[1];
  } else {
#pragma unroll
    for (int k = 0; k < 4; ++k) p[4 * h + k] = v[k];
  }
}

/// ORs `bits` into *flag when non-zero: one atomic per thread at the end of a kernel, on the
/// error path only.
__device__ __forceinline__ void raiseFlag(uint32_t* flag, uint32_t bits) {
  if (bits) atomicOr(flag, bits);
}

/// True when p is aligned to `bytes`.
__host__ __device__ __forceinline__ bool isAligned(const void* p, size_t bytes) {
  return (reinterpret_cast<uintptr_t>(p) & (bytes - 1)) == 0;
}

}  // namespace efcomm::cuda
