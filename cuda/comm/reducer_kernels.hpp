#pragma once
// Device kernels of the device Reducer (reducer_kernels.cu).
#include <cuda_runtime.h>

#include <cstddef>

#include "efcomm/tensor.hpp"

namespace efcomm::cuda {

/// out[i] = in[i] * w for `count` values of `dtype` (float32, float64, bfloat16, float16; the
/// product in double, rounded to the type), on `stream`. in may equal out. Enqueues only.
void scaleValues(const void* in, void* out, size_t count, DType dtype, double w, cudaStream_t stream);

}  // namespace efcomm::cuda
