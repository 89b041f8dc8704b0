#pragma once
// Helpers shared by the C++ tests.
#include <random>
#include <vector>

#include "efcomm/efcomm.hpp"

namespace efcomm::test {

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

}  // namespace efcomm::test
