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

/// A polling loop's pause: `spins` yields, then sleeps from `minSleep` doubling to `maxSleep`, so
/// that a rank waiting on its peers leaves the CPU to them (ranks may oversubscribe the cores).
class Backoff {
 public:
  Backoff(int spins, std::chrono::microseconds minSleep, std::chrono::microseconds maxSleep)
      : spinLimit_(spins), minSleep_(minSleep), maxSleep_(maxSleep) {}
  void reset() {
    spins_ = 0;
    sleep_ = std::chrono::microseconds(0);
  }
  void pause();

 private:
  int spinLimit_;
  std::chrono::microseconds minSleep_, maxSleep_;
  int spins_ = 0;
  std::chrono::microseconds sleep_{0};
};

/// "0, 2, 3": ranks for error messages.
std::string rankList(const std::vector<int>& ranks);

/// The ranks of `n` whose call differs from the most common one (ties: the one rank 0 makes), a
/// MismatchError's ranks; `same(a, b)`: ranks a and b made the same call. O(n^2) calls of `same`,
/// made only once a disagreement is known.
template <typename Same>
std::vector<int> oddRanks(size_t n, Same&& same) {
  size_t best = 0, bestCount = 0;
  for (size_t r = 0; r < n; ++r) {
    size_t count = 0;
    for (size_t q = 0; q < n; ++q) count += same(q, r) ? 1 : 0;
    if (count > bestCount) best = r, bestCount = count;
  }
  std::vector<int> odd;
  for (size_t r = 0; r < n; ++r)
    if (!same(r, best)) odd.push_back(static_cast<int>(r));
  return odd;
}

/// The collective timeout in seconds: `requested`, or `fallback` when none; must be finite and > 0.
double resolveTimeout(std::optional<double> requested, double fallback);

/// Rejects a null pointer for a non-empty buffer.
void checkBuffer(const void* p, size_t bytes, const char* what);

/// Rejects dtypes other than float32/float64/bfloat16/float16 and buffers not aligned to the
/// element size.
void checkSumBuffer(const void* buf, size_t count, DType dtype);

/// One slow link of the fault injection below: on rank `src`, payload sends to rank `dst` wait
/// `seconds` after the collective's headers are all in.
struct LinkDelay {
  int src = 0;
  int dst = 0;
  double seconds = 0;
};

/// Fault injection for reliability tests (docs/reliability.md): the environment variable
/// EFCOMM_FAULT_LINK_DELAY="SRC>DST=SECONDS[,SRC>DST=SECONDS...]", read once by the MPI backend
/// when it is created, makes every payload send from rank SRC to rank DST start only SECONDS after
/// all ranks' headers of the collective are in on SRC: an application-level slow link (a network
/// emulator such as netem is not always available). Unset or empty: no delay, and no cost.
constexpr const char* kLinkDelayVariable = "EFCOMM_FAULT_LINK_DELAY";

/// Parses a value of EFCOMM_FAULT_LINK_DELAY for a group of `size` ranks (empty or blank: none).
/// SRC and DST are distinct ranks in [0, size), each pair at most once; SECONDS is a finite
/// number >= 0. Anything else throws InvalidArgument naming the variable and the format.
std::vector<LinkDelay> parseLinkDelays(const std::string& value, int size);

/// acc[i] += x[i] for `count` elements of `dtype` (float32, float64; bfloat16 and float16 add in
/// float32 and round to the type). Applied once per rank in rank order it gives
/// ((x0 + x1) + x2) + ..., the order every backend's allreduceSum uses.
void addInto(void* acc, const void* x, size_t count, DType dtype);

}  // namespace efcomm::comm
