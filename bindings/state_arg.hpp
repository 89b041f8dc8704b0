#pragma once
// StateDict <-> the Python state dict {"spec": str, "meta": {str: str}, "tensors": {str: ndarray}}:
// plain Python objects and numpy arrays, so pickle and torch.save store it as is.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <type_traits>

#include "efcomm/error.hpp"
#include "efcomm/state.hpp"
#include "tensor_arg.hpp"

namespace efcomm::py_bind {

/// A new numpy array holding a copy of v (float32 or float64).
inline pybind11::array toNumpy(const ConstTensorView& v) {
  pybind11::dtype dt = v.dtype == DType::kFloat64 ? pybind11::dtype::of<double>() : pybind11::dtype::of<float>();
  EFCOMM_CHECK(v.dtype == DType::kFloat64 || v.dtype == DType::kFloat32, "cannot convert ", dtypeName(v.dtype),
               " state to numpy");
  pybind11::array a(dt, std::vector<pybind11::ssize_t>(v.shape.begin(), v.shape.end()));
  if (v.nbytes()) std::memcpy(a.mutable_data(), v.data, v.nbytes());
  return a;
}

inline pybind11::dict stateToPython(const StateDict& d) {
  pybind11::dict out, meta, tensors;
  for (const auto& kv : d.meta) {
    if (kv.first == "spec") {
      out["spec"] = kv.second;
    } else {
      meta[pybind11::str(kv.first)] = kv.second;
    }
  }
  for (const auto& kv : d.tensors) tensors[pybind11::str(kv.first)] = toNumpy(kv.second.view());
  out["meta"] = meta;
  out["tensors"] = tensors;
  return out;
}

inline std::string pyTypeName(pybind11::handle obj) {
  return pybind11::str(pybind11::type::handle_of(obj).attr("__name__"));
}

/// obj as a T, or InvalidArgument saying that `what` must be `expected` (a state dict from an
/// unknown source: never pybind11's bare cast error).
template <typename T>
T castOrThrow(pybind11::handle obj, const std::string& what, const char* expected) {
  // A pybind11 object type (dict) converts by calling dict(obj), which raises TypeError for
  // None or a number: checked first.
  if constexpr (std::is_base_of_v<pybind11::object, T>) {
    if (!pybind11::isinstance<T>(obj)) throw InvalidArgument(what + " must be " + expected + ", got " + pyTypeName(obj));
  }
  try {
    return pybind11::cast<T>(obj);
  } catch (const pybind11::cast_error&) {
    throw InvalidArgument(what + " must be " + expected + ", got " + pyTypeName(obj));
  }
}

inline StateDict stateFromPython(pybind11::handle obj) {
  EFCOMM_CHECK(pybind11::isinstance<pybind11::dict>(obj), "load_state_dict: expected a dict, got ", pyTypeName(obj));
  pybind11::dict d = pybind11::reinterpret_borrow<pybind11::dict>(obj);
  for (const char* key : {"spec", "meta", "tensors"})
    EFCOMM_CHECK(d.contains(key), "load_state_dict: the dict has no '", key, "' entry");
  StateDict s;
  s.meta["spec"] = castOrThrow<std::string>(d["spec"], "load_state_dict: 'spec'", "a str");
  const auto meta = castOrThrow<pybind11::dict>(d["meta"], "load_state_dict: 'meta'", "a dict of str to str");
  for (auto kv : meta) {
    const auto key = castOrThrow<std::string>(kv.first, "load_state_dict: a 'meta' key", "a str");
    s.meta[key] = castOrThrow<std::string>(kv.second, "load_state_dict: meta '" + key + "'", "a str");
  }
  const auto tensors = castOrThrow<pybind11::dict>(d["tensors"], "load_state_dict: 'tensors'", "a dict of str to array");
  for (auto kv : tensors) {
    const std::string name = castOrThrow<std::string>(kv.first, "load_state_dict: a 'tensors' key", "a str");
    pybind11::object arr;
    try {  // numpy refuses some objects outright (a bfloat16 torch tensor: TypeError)
      arr = pybind11::module_::import("numpy").attr("ascontiguousarray")(kv.second);
    } catch (const pybind11::error_already_set& e) {
      throw InvalidArgument("load_state_dict: tensor '" + name + "' (a " + pyTypeName(kv.second) +
                            ") is not an array numpy reads (" + e.what() +
                            "); pass what state_dict() returned (numpy arrays or float32/float64 CPU tensors)");
    }
    TensorArg t = tensorArg(arr, false, ("state tensor '" + name + "'").c_str());
    s.tensors[name] = StateTensor::fromView(t.view());
  }
  return s;
}

}  // namespace efcomm::py_bind
