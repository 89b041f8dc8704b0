#pragma once
// Distributed PowerSGD (Vogels, Karimireddy, Jaggi 2019, Algorithm 1), used by the Reducer's
// allreduce algorithm: every worker computes P_i = M_i Q from the same warm start Q; the P_i are
// summed over the workers before orthonormalization, so every worker holds the same P and sends
// Q_i = M_i^T P; the messages P Q_i^T then add, and the receiver sums only the Q_i.

#include <cmath>
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

/// The host steps of PowerSGD, shared by the CPU compressor (powersgd.cpp) and the GPU codec
/// (cuda/compress/powersgd.cu), so that both build the same factors from the same products.
namespace powersgd {
/// The m x n matrix view of a tensor of `d` elements and r' = min(rank, m, n) (powersgd.cpp).
PowerSgdLayout matrixView(const std::vector<int64_t>& shape, int64_t d, int64_t rank);
/// Payload bytes: r'(m + n) values of the compute type (float64 for float64 input, else float32).
size_t payloadBytes(const PowerSgdLayout& v, DType dt);
/// x . y with the products' fixed lane order (element j to lane j mod 16).
double dot(const double* x, const double* y, int64_t n);
/// The initial Q, column-major (column k at [k n, (k + 1) n)): i.i.d. N(0, 1) by Box-Muller.
std::vector<double> initialQ(uint64_t seed, int64_t n, int64_t r);
/// Scales each column of q to unit norm; a zero column restarts from the initial Q.
void prepareQ(std::vector<double>& q, const std::vector<double>& init, int64_t n, int64_t r);
/// Modified Gram-Schmidt twice on the columns of p (m x r', column-major); see powersgd.cpp.
void orthonormalize(double* p, int64_t m, int64_t r);
/// The receiver forms P Q^T in `dtype`: |(P Q^T)_ij| <= max_i sum_k |P_ik| * max |Q|. Throws
/// NonFiniteError when that bound exceeds dtype's largest finite value, instead of letting a
/// message decode to Inf.
void checkDecodedRange(const std::vector<double>& p, const std::vector<double>& q, const PowerSgdLayout& v,
                       DType dtype);
/// Validation of a message's factors (`payload`: the r(m + n) values as stored, float64 for
/// float64 messages, else float32): every value finite and P Q^T within dtype's range, so that no
/// valid message decodes to Inf. Throws CorruptMessageError naming the first violation.
void checkFactors(const uint8_t* payload, const PowerSgdLayout& v, DType dtype);
/// Rounds values to the compute type C (what travels); false if any is not finite.
template <typename C>
bool roundToWire(std::vector<double>& x) {
  bool finite = true;
  for (double& v : x) {
    v = static_cast<double>(static_cast<C>(v));
    finite &= std::isfinite(v);
  }
  return finite;
}
}  // namespace powersgd

}  // namespace efcomm::compress
