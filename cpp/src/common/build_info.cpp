#include "efcomm/build_info.hpp"

#include "common/parallel.hpp"
#include "efcomm/config.hpp"

namespace efcomm {

BuildInfo buildInfo() {
  BuildInfo b;
  b.version = EFCOMM_VERSION;
  b.cuda = EFCOMM_HAVE_CUDA;
  b.nccl = EFCOMM_HAVE_NCCL;
  b.mpi = EFCOMM_MPI_ABI;
  b.openmp = EFCOMM_HAVE_OPENMP;
  b.threads = maxThreads();
#if defined(__AVX512F__)
  b.simd = "avx512";
#elif defined(__AVX2__)
  b.simd = "avx2";
#elif defined(__SSE4_2__)
  b.simd = "sse4.2";
#elif defined(__ARM_NEON)
  b.simd = "neon";
#else
  b.simd = "scalar";
#endif
#if defined(__clang__)
  b.compiler = "clang " __clang_version__;
#elif defined(__GNUC__)
  b.compiler = "gcc " __VERSION__;
#else
  b.compiler = "unknown";
#endif
  return b;
}

}  // namespace efcomm
