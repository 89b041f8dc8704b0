#pragma once
/// @file build_info.hpp
/// What this build of efcomm contains.

#include <string>

namespace efcomm {

/// The build's version and what it was compiled with (`efcomm info`, Python `ef.build_info()`).
struct BuildInfo {
  std::string version;   ///< "0.1.0"
  bool cuda = false;     ///< CUDA kernels compiled in
  bool nccl = false;     ///< NCCL backend compiled in
  std::string mpi;       ///< MPI ABI the MPI backend was built for ("MPICH ABI (mpi.h 5.0.2)"), empty when absent
  std::string simd;      ///< widest vector ISA the kernels were compiled for ("avx512", "avx2", ...)
  bool openmp = false;   ///< kernels multi-threaded with OpenMP
  int threads = 1;       ///< threads the kernels use
  std::string compiler;  ///< compiler id and version
};

/// This library's BuildInfo (`threads`: as the calling thread would use now).
BuildInfo buildInfo();

}  // namespace efcomm
