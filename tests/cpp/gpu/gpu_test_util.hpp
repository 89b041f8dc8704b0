#pragma once
// Helpers of the GPU tests: device arrays from host vectors and back, random inputs.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "efcomm/cuda.hpp"
#include "efcomm/message.hpp"

namespace efcomm::gputest {

#define GPU_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}

/// A device copy of host bytes (freed on destruction).
struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  Dev() = default;
  explicit Dev(size_t n) : bytes(n) { check(cudaMalloc(&p, n ? n : 1), "cudaMalloc"); }
  template <typename T>
  explicit Dev(const std::vector<T>& h) : Dev(h.size() * sizeof(T)) {
    if (bytes) check(cudaMemcpy(p, h.data(), bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  }
  ~Dev() {
    if (p) cudaFree(p);
  }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  template <typename T>
  std::vector<T> get() const {
    std::vector<T> h(bytes / sizeof(T));
    if (bytes) check(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
    return h;
  }
};

template <typename T>
std::vector<T> fromDevice(const void* p, size_t count) {
  std::vector<T> h(count);
  if (count) check(cudaMemcpy(h.data(), p, count * sizeof(T), cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
  return h;
}

inline std::vector<uint8_t> bytesOf(const cuda::DeviceBuffer& b, size_t size) {
  return fromDevice<uint8_t>(b.data(), size);
}
inline std::vector<uint8_t> bytesOf(const Message& m) { return std::vector<uint8_t>(m.data(), m.data() + m.size()); }

template <typename T>
std::vector<T> gaussian(int64_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> g(0.0, scale);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(g(rng));
  return v;
}

/// Small integers: heavy ties.
template <typename T>
std::vector<T> ties(int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = static_cast<T>(static_cast<int>(rng() % 7) - 3);
  return v;
}

inline const std::vector<int64_t>& oddSizes() {
  static const std::vector<int64_t> s = {0, 1, 7, 65537, (int64_t{1} << 20) + 3};
  return s;
}

}  // namespace efcomm::gputest
