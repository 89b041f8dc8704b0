#pragma once
// Zero-copy views of Python arrays: the buffer protocol first (numpy, memoryview), then DLPack
// (torch, jax, cupy) — mpi4py's order. The returned TensorArg keeps the exporter alive.
#include <pybind11/pybind11.h>

#include <string>

#include "efcomm/tensor.hpp"

namespace efcomm::py_bind {

struct TensorArg {
  pybind11::object owner;  // buffer or DLPack capsule; released with the TensorArg
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;

  ConstTensorView view() const { return {data, dtype, shape}; }
  TensorView mutableView() const { return {data, dtype, shape}; }
};

/// Throws efcomm::InvalidArgument naming `what` if obj is not a contiguous host float array.
TensorArg tensorArg(pybind11::handle obj, bool writable, const char* what);

}  // namespace efcomm::py_bind
