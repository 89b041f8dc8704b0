#pragma once
// Helpers shared by the backends: argument checks and the fixed-order reduction that makes
// allreduceSum bit-identical on every rank whatever the transport.

#include <chrono>
#include <cstddef>
#include <optional>
#include <string>
#include <vector>

#include "efcomm/comm.hpp"

namespace efcomm::comm {

using Clock = std::chrono::steady_clock;

/// The time `seconds` from now.
Clock::time_point deadlineAfter(double seconds);

/// Seconds elapsed since t0.
double secondsSince(Clock::time_point t0);

/// Where part `c` of `count` items split into `n` contiguous parts begins: count * c / n. Part c
/// is [partBegin(count, n, c), partBegin(count, n, c + 1)). The split of the MPI backend's
/// allreduceSum and of the Reducer's reduce_scatter chunks.
size_t partBegin(size_t count, int n, int c);

/// "0, 2, 3": ranks for error messages.
std::string rankList(const std::vector<int>& ranks);

/// The collective timeout in seconds: `requested`, or `fallback` when none; must be finite and > 0.
double resolveTimeout(std::optional<double> requested, double fallback);

/// Rejects a null pointer for a non-empty buffer.
void checkBuffer(const void* p, size_t bytes, const char* what);

/// Rejects dtypes other than float32/float64/bfloat16/float16 and buffers not aligned to the
/// element size.
void checkSumBuffer(const void* buf, size_t count, DType dtype);

/// acc[i] += x[i] for `count` elements of `dtype` (float32, float64; bfloat16 and float16 add in
/// float32 and round to the type). Applied once per rank in rank order it gives
/// ((x0 + x1) + x2) + ..., the order every backend's allreduceSum uses.
void addInto(void* acc, const void* x, size_t count, DType dtype);

}  // namespace efcomm::comm
