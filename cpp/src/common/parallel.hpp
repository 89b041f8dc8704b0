#pragma once
// Multi-threading helpers over OpenMP (serial without it).
//
// Work is cut into fixed-size blocks that do not depend on the thread count, so reductions
// combine per-block partials in block order and give bit-identical results on any machine.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "efcomm/config.hpp"
#if EFCOMM_HAVE_OPENMP
#include <omp.h>
#endif

namespace efcomm {

/// Elements below which kernels stay on one thread (thread start-up costs more than it saves).
constexpr int64_t kParallelThreshold = 1 << 16;
/// Block size of deterministic blocked reductions.
constexpr int64_t kReduceBlock = 1 << 14;

inline int maxThreads() {
#if EFCOMM_HAVE_OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

/// Sets the threads of the kernels called from this thread (OpenMP's per-thread setting).
inline void setMaxThreads(int n) {
#if EFCOMM_HAVE_OPENMP
  omp_set_num_threads(std::max(1, n));
#else
  (void)n;
#endif
}

/// Calls fn(begin, end) on contiguous ranges covering [0, n), one per thread, in parallel when
/// n >= threshold. Ranges are ordered by thread index: range t precedes range t+1.
template <typename Fn>
void parallelRanges(int64_t n, Fn&& fn, int64_t threshold = kParallelThreshold) {
  if (n <= 0) return;
#if EFCOMM_HAVE_OPENMP
  if (n >= threshold && maxThreads() > 1) {
#pragma omp parallel
    {
      const int64_t t = omp_get_thread_num(), nt = omp_get_num_threads();
      const int64_t b = n * t / nt, e = n * (t + 1) / nt;
      if (b < e) fn(b, e);
    }
    return;
  }
#endif
  (void)threshold;
  fn(int64_t{0}, n);
}

/// Number of ranges parallelRanges would use for n (for callers that keep per-range state).
inline int numRanges(int64_t n, int64_t threshold = kParallelThreshold) {
  return (n >= threshold) ? maxThreads() : 1;
}

/// Calls fn(block, begin, end) for every block of `block` elements of [0, n), in parallel.
template <typename Fn>
void parallelBlocks(int64_t n, int64_t block, Fn&& fn, int64_t threshold = kParallelThreshold) {
  if (n <= 0) return;
  const int64_t nb = (n + block - 1) / block;
#if EFCOMM_HAVE_OPENMP
  if (n >= threshold && maxThreads() > 1) {
#pragma omp parallel for schedule(static)
    for (int64_t b = 0; b < nb; ++b) fn(b, b * block, std::min(n, (b + 1) * block));
    return;
  }
#endif
  (void)threshold;
  for (int64_t b = 0; b < nb; ++b) fn(b, b * block, std::min(n, (b + 1) * block));
}

/// Deterministic parallel sum: fn(begin, end) returns the partial of a block; partials are
/// added in block order. Acc is double or a struct with operator+=.
template <typename Acc, typename Fn>
Acc blockedReduce(int64_t n, Fn&& fn) {
  const int64_t nb = (n + kReduceBlock - 1) / kReduceBlock;
  std::vector<Acc> part(static_cast<size_t>(std::max<int64_t>(nb, 0)));
  parallelBlocks(n, kReduceBlock, [&](int64_t b, int64_t lo, int64_t hi) { part[b] = fn(lo, hi); });
  Acc total{};
  for (const Acc& p : part) total += p;
  return total;
}

}  // namespace efcomm
