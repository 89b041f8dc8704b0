#pragma once
// EFCOMM_HD marks the arithmetic that kernels and host code share: __host__ __device__ under
// nvcc, nothing under a plain C++ compiler. A function marked so is the one copy the CPU path
// and the CUDA kernels (cuda/) both run; the host tests (tests/cpp/test_cuda_host_*.cpp) check it
// with g++. Write `EFCOMM_HD inline T f()`; such headers include no CUDA header.
#if defined(__CUDACC__)
#define EFCOMM_HD __host__ __device__
#else
#define EFCOMM_HD
#endif
