#pragma once
/// @file state.hpp
/// `StateDict`: the serializable state of a stateful object (compressor, feedback, aggregate),
/// the C++ side of the Python `state_dict()` / `load_state_dict()` pair.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "efcomm/tensor.hpp"

namespace efcomm {

/// One saved array: its element type, shape and raw little-endian bytes (row-major).
struct StateTensor {
  DType dtype = DType::kFloat64;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;

  /// Copies `v` (any dtype and shape).
  static StateTensor fromView(const ConstTensorView& v);
  /// A 1-d float64 tensor holding `values`.
  static StateTensor fromDoubles(const std::vector<double>& values);
  /// Number of elements (product of the shape).
  int64_t numel() const;
  ConstTensorView view() const { return {bytes.data(), dtype, shape}; }
};

/// Named text entries (spec strings, counters as decimal text, parameters) and named arrays.
/// Plain data: copy, compare and store it freely. Loading functions check every entry they read
/// and throw `InvalidArgument` for a missing or malformed entry and `MismatchError` for state
/// that belongs to a different kind of object (spec, shape or dtype differ).
struct StateDict {
  std::map<std::string, std::string> meta;
  std::map<std::string, StateTensor> tensors;
  /// Where these entries sit in the state they were taken from (set by sub()): the errors below
  /// name `prefix + key`, the entry as the caller's dict spells it.
  std::string prefix;

  /// The entry `key` of meta; throws InvalidArgument if absent.
  const std::string& text(const std::string& key) const;
  /// meta[key] parsed as an unsigned decimal integer; throws InvalidArgument if absent or malformed.
  uint64_t integer(const std::string& key) const;
  /// The tensor `key`, checked to have `dtype` and `numel` elements; throws InvalidArgument if
  /// absent and MismatchError if its dtype or size differ.
  const StateTensor& tensor(const std::string& key, DType dtype, int64_t numel) const;
  /// Throws MismatchError unless meta[key] == expected (what: a description for the message).
  void expect(const std::string& key, const std::string& expected, const std::string& what) const;
  /// Adds every entry of `other` with `prefix` prepended to its name.
  void merge(const StateDict& other, const std::string& prefix);
  /// The entries whose names start with `prefix`, with the prefix removed.
  StateDict sub(const std::string& prefix) const;
};

}  // namespace efcomm
