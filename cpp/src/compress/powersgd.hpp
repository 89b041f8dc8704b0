#pragma once
// Distributed PowerSGD (Vogels, Karimireddy, Jaggi 2019, Algorithm 1), used by the Reducer's
// allreduce algorithm: every worker computes P_i = M_i Q from the same warm start Q; the P_i are
// summed over the workers before orthonormalization, so every worker holds the same P and sends
// Q_i = M_i^T P; the messages P Q_i^T then add, and the receiver sums only the Q_i.

#include <cstdint>
#include <functional>
#include <vector>

#include "efcomm/compressor.hpp"

namespace efcomm::compress {

/// The collective steps a PowerSGD compressor calls inside `compress`.
struct PowerSgdRounds {
  /// Replaces p (m x r', column-major) by its weighted sum over the workers. Called by every
  /// worker in every compress, also when its own P is not finite (`finite` false) so that none
  /// waits for another; throws on every worker if any worker's P was not finite.
  std::function<void(std::vector<double>& p, bool finite)> sumP;
  /// Receives the orthonormalized P as it travels (rounded to the factors' precision), before
  /// Q is computed: the part every worker's message shares.
  std::function<void(const std::vector<double>& p)> sharedP;
};

/// Installs `rounds` on a compressor made by makeCompressor("powersgd:..."); InvalidArgument
/// for another compressor.
void setPowerSgdRounds(Compressor& c, PowerSgdRounds rounds);

/// Sets the next call's warm start to `q` (n x r', column-major) for an m x n matrix: the
/// workers' summed Q of the last round, so every worker starts the next round from the same Q.
void setPowerSgdWarmStart(Compressor& c, int64_t m, int64_t n, const std::vector<double>& q);

/// The matrix a PowerSGD message describes, from its parameters: m, n and r'.
struct PowerSgdLayout {
  int64_t m = 0, n = 0, r = 0;
};
PowerSgdLayout powerSgdLayout(const uint8_t* params, size_t size);

}  // namespace efcomm::compress
