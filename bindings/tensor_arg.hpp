#pragma once
// Zero-copy views of Python arrays: the buffer protocol first (numpy, memoryview), then DLPack
// (torch, jax, cupy) — mpi4py's order. The returned TensorArg keeps the exporter alive.
// CUDA arrays (torch CUDA tensors, CuPy) enter through cudaTensorArg/cudaBytesArg: DLPack with
// device kDLCUDA or kDLCUDAManaged, else `__cuda_array_interface__` (version 2 or 3).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <vector>

#include "efcomm/tensor.hpp"

namespace efcomm::py_bind {

struct TensorArg {
  pybind11::object owner;  // buffer or DLPack capsule; released with the TensorArg
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  int device = -1;  // CUDA device of a CUDA array (-1: host, or unknown for __cuda_array_interface__)

  ConstTensorView view() const { return {data, dtype, shape}; }
  TensorView mutableView() const { return {data, dtype, shape}; }
};

/// Throws efcomm::InvalidArgument naming `what` if obj is not a contiguous host float array.
TensorArg tensorArg(pybind11::handle obj, bool writable, const char* what);
/// Throws InvalidArgument naming `what` unless the buffer is C-contiguous (any number of
/// dimensions; an empty buffer always passes).
void checkCContiguous(const pybind11::buffer_info& info, const char* what);

/// Throws efcomm::BackendUnavailable (naming `what` and the reason) unless the CUDA kernels are
/// built and a device is present.
void requireCuda(const char* what);

/// A contiguous float32/float64/float16/bfloat16 CUDA array, zero-copy. `stream` is the
/// cudaStream_t (as an integer; 0 legacy default) the caller will use it on: passed to the
/// exporter's `__dlpack__(stream=...)`, which orders the array's pending work before it.
/// Calls requireCuda first. Throws InvalidArgument for host memory, other dtypes, non-contiguous
/// arrays and a read-only array where `writable`.
TensorArg cudaTensorArg(pybind11::handle obj, bool writable, const char* what, intptr_t stream);

/// The raw bytes of a contiguous CUDA array of any element type (for the NCCL collectives).
struct CudaBytes {
  pybind11::object owner;
  void* data = nullptr;
  size_t nbytes = 0;
  size_t itemsize = 1;
  int device = -1;
};
CudaBytes cudaBytesArg(pybind11::handle obj, bool writable, const char* what, intptr_t stream);

}  // namespace efcomm::py_bind
