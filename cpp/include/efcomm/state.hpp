#pragma once
/// @file state.hpp
/// `StateDict`: the serializable state of a stateful object (compressor, feedback, aggregate),
/// the C++ side of the Python `state_dict()` / `load_state_dict()` pair.
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "efcomm/error.hpp"
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

/// `obj.loadStateDict(s)`, strictly (torch's `load_state_dict(strict=True)`; the Python package's
/// `load_state_dict`): an entry `obj` does not keep (a misspelled key, tensors beside
/// `initialized=0`, a Reducer slot beyond `reducer.keys`) is `InvalidArgument` naming it, and
/// `obj` keeps the state it had. `loadStateDict` alone ignores such entries. What a loader leaves
/// unread shows in what `obj` saves again, so the load is undone then. A `"spec"` entry `obj`
/// does not save (the Reducer's tag in Python) is not counted. T: a type with `stateDict()` and
/// `loadStateDict(const StateDict&)` (Compressor, Feedback, Aggregate, Reducer, DeviceFeedback).
template <typename T>
void loadStateDictStrict(T& obj, const StateDict& s) {
  StateDict before = obj.stateDict();
  obj.loadStateDict(s);
  const StateDict after = obj.stateDict();
  std::string unknown;
  for (const auto& kv : s.meta)
    if (!after.meta.count(kv.first) && kv.first != "spec") unknown += (unknown.empty() ? "'" : ", '") + kv.first + "'";
  for (const auto& kv : s.tensors)
    if (!after.tensors.count(kv.first)) unknown += (unknown.empty() ? "tensor '" : ", tensor '") + kv.first + "'";
  if (unknown.empty()) return;
  obj.loadStateDict(before);
  throw InvalidArgument("load_state_dict: entries this object does not keep: " + unknown +
                        " (a state of another layout, or edited?); pass what state_dict() returned");
}

}  // namespace efcomm
