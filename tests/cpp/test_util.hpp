#pragma once
// Helpers shared by the C++ tests.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "efcomm/efcomm.hpp"

namespace efcomm::test {

/// A leaf-spine spec with the default (400 Gbit/s) rates.
inline plan::LeafSpineSpec leafSpineSpec(int leaves, int spines, int hostsPerLeaf, int nics = 1, bool rail = false,
                                         int planes = 1) {
  plan::LeafSpineSpec s;
  s.leaves = leaves;
  s.spines = spines;
  s.hostsPerLeaf = hostsPerLeaf;
  s.nicsPerHost = nics;
  s.railOptimized = rail;
  s.planes = planes;
  return s;
}

inline std::vector<float> randomVector(size_t n, uint64_t seed = 1) {
  std::mt19937_64 g(seed);
  std::normal_distribution<float> dist;
  std::vector<float> v(n);
  for (auto& x : v) x = dist(g);
  return v;
}

inline ConstTensorView view(const std::vector<float>& v) {
  return {v.data(), DType::kFloat32, {static_cast<int64_t>(v.size())}};
}
inline TensorView mutableView(std::vector<float>& v) {
  return {v.data(), DType::kFloat32, {static_cast<int64_t>(v.size())}};
}
inline ConstTensorView view(const std::vector<double>& v) {
  return {v.data(), DType::kFloat64, {static_cast<int64_t>(v.size())}};
}
inline TensorView mutableView(std::vector<double>& v) {
  return {v.data(), DType::kFloat64, {static_cast<int64_t>(v.size())}};
}

/// Compresses then decompresses x with `spec`.
inline std::vector<float> roundTrip(Compressor& c, const std::vector<float>& x, uint64_t step = 0) {
  Message m = c.compress(view(x), step);
  Message parsed = Message::fromBytes(m.data(), m.size());  // every message must re-validate
  std::vector<float> out(x.size());
  c.decompress(parsed, mutableView(out));
  return out;
}

/// Empirical moments of a randomized compressor over steps 0..steps-1: the mean decoded vector,
/// the mean squared error E||C(x) - x||^2 and the standard error of that mean.
struct Moments {
  std::vector<double> mean;
  double err = 0, sd = 0;
};

inline Moments empiricalMoments(Compressor& c, const std::vector<float>& x, int steps) {
  Moments mo;
  mo.mean.assign(x.size(), 0.0);
  double errSq = 0;
  for (int t = 0; t < steps; ++t) {
    const auto y = roundTrip(c, x, static_cast<uint64_t>(t));
    double e = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      mo.mean[j] += y[j];
      e += (double(y[j]) - x[j]) * (double(y[j]) - x[j]);
    }
    mo.err += e;
    errSq += e * e;
  }
  for (double& m : mo.mean) m /= steps;
  mo.err /= steps;
  mo.sd = std::sqrt(std::max(errSq / steps - mo.err * mo.err, 0.0) / steps);
  return mo;
}

/// True when Message::fromBytes rejects the bytes with CorruptMessageError.
inline bool rejected(const std::vector<uint8_t>& bytes) {
  try {
    Message::fromBytes(bytes.data(), bytes.size());
  } catch (const CorruptMessageError&) {
    return true;
  }
  return false;
}

}  // namespace efcomm::test
