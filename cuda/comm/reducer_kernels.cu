// The device Reducer's one elementwise kernel: an allreduce payload scaled by its rank's weight,
// rounded to the payload's type as the host's scaleValues does (v * w in double, rounded once to
// the type: roundFromDouble).
#include "comm/reducer_kernels.hpp"

#include "common/kernels.cuh"
#include "efcomm/error.hpp"

namespace efcomm::cuda {

namespace {

template <typename T>
struct Scaled;

template <>
struct Scaled<float> {
  __device__ static float apply(float v, double w) { return static_cast<float>(static_cast<double>(v) * w); }
};

template <>
struct Scaled<double> {
  __device__ static double apply(double v, double w) { return v * w; }
};

template <typename T>
__global__ void scaleKernel(const T* in, T* out, int64_t n, double w) {
  for (int64_t i = globalThread(); i < n; i += gridThreads()) out[i] = Scaled<T>::apply(in[i], w);
}

__global__ void scale16Kernel(const uint16_t* in, uint16_t* out, int64_t n, double w, bool bf16) {
  for (int64_t i = globalThread(); i < n; i += gridThreads()) {
    const float v = bf16 ? bf16ToFloat(in[i]) : f16ToFloat(in[i]);
    const float r = roundToOddFloat(static_cast<double>(v) * w);  // rounded once, as the CPU's scaleValues
    out[i] = bf16 ? floatToBf16(r) : floatToF16(r);
  }
}

}  // namespace

void scaleValues(const void* in, void* out, size_t count, DType dtype, double w, cudaStream_t stream) {
  if (count == 0) return;
  const auto n = static_cast<int64_t>(count);
  const int grid = gridFor(n);
  switch (dtype) {
    case DType::kFloat32:
      scaleKernel<<<grid, kThreads, 0, stream>>>(static_cast<const float*>(in), static_cast<float*>(out), n, w);
      break;
    case DType::kFloat64:
      scaleKernel<<<grid, kThreads, 0, stream>>>(static_cast<const double*>(in), static_cast<double*>(out), n, w);
      break;
    case DType::kBFloat16:
    case DType::kFloat16:
      scale16Kernel<<<grid, kThreads, 0, stream>>>(static_cast<const uint16_t*>(in), static_cast<uint16_t*>(out), n,
                                                   w, dtype == DType::kBFloat16);
      break;
    default:
      throw InvalidArgument(detail::concat("scaleValues: unsupported dtype ", dtypeName(dtype)));
  }
  EFCOMM_CUDA_CHECK(cudaGetLastError());
}

}  // namespace efcomm::cuda
