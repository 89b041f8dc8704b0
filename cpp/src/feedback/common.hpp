#pragma once
// Pieces shared by the worker (feedback.cpp) and receiver (aggregate.cpp) sides: spec parsing,
// the per-thread workspace, element-wise kernels and state-dict helpers.
#include <cstdint>
#include <string>
#include <vector>

#include "common/parallel.hpp"
#include "efcomm/error.hpp"
#include "efcomm/state.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::feedback {

/// A parsed feedback spec.
struct Config {
  std::string name;       // none, ef14, ef21, ef21w, ef21sgdm, econtrol
  std::string canonical;  // every parameter spelled out
  bool initFull = true;   // EF21 family, EControl
  double weight = 1;      // ef21w: w_i
  int64_t n = 1;          // ef21w: number of workers
  bool weighted = false;  // ef21w: weight and n given (optional in a receiver's spec)
  double momentum = 1;    // ef21sgdm: eta
  double eta = 0;         // econtrol: eta
  /// The EF21 family and EControl accumulate g += sum w_i decoded at the receiver.
  bool additive() const { return name != "none" && name != "ef14"; }
};

/// Parses and checks a feedback spec; throws InvalidArgument naming the problem. `receiver`: the
/// spec of an Aggregate, which needs only the method (ef21w's weight and n are then optional:
/// the aggregate has weights of its own).
Config parseConfig(const std::string& spec, bool receiver = false);
/// The method names parseConfig accepts.
std::vector<std::string> methodNames();

/// A view of the calling thread's workspace, sized for `like` (grown when needed, never shrunk;
/// shared by every feedback object on the thread). Valid until the next call on this thread.
TensorView workspace(const ConstTensorView& like);

/// Throws InvalidArgument unless dt is float32 or float64.
void checkFloatDType(DType dt, const std::string& what);

/// Runs fn(TypeTag<T>) with T = float or double (the dtypes feedback state is kept in).
template <typename Fn>
decltype(auto) dispatchFloat(DType dt, Fn&& fn);

/// out[i] = f(i) for i in [0, n), in parallel; f must be a simple expression so the loop vectorizes.
template <typename T, typename F>
void fill(T* out, int64_t n, F&& f) {
  parallelRanges(n, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = f(i);
  });
}

/// dst = src (same dtype and size), in parallel.
void copy(const ConstTensorView& src, const TensorView& dst);

/// "3,4" (empty for a 0-d shape) and back; parseShape throws InvalidArgument if malformed.
std::string shapeText(const std::vector<int64_t>& shape);
std::vector<int64_t> parseShape(const std::string& text);

/// The saved array `key`, checked to have exactly `shape` and `dtype` (MismatchError otherwise).
const StateTensor& savedArray(const StateDict& d, const std::string& key, DType dtype,
                              const std::vector<int64_t>& shape);
/// Copies a saved array into storage sized for it (whole doubles).
void restoreArray(const StateTensor& t, std::vector<double>& storage);
/// Doubles needed to store `bytes` bytes.
inline size_t words(size_t bytes) { return (bytes + 7) / 8; }

template <typename T>
struct Tag {
  using type = T;
};

template <typename Fn>
decltype(auto) dispatchFloat(DType dt, Fn&& fn) {
  if (dt == DType::kFloat64) return fn(Tag<double>{});
  checkFloatDType(dt, "feedback");
  return fn(Tag<float>{});
}

}  // namespace efcomm::feedback
