# Resolve the AUTO options into EFCOMM_HAVE_* (0/1). A missing optional dependency never fails
# the build under AUTO; ON makes it required.
include(CheckLanguage)

function(_efcomm_require opt found what)
  if("${${opt}}" STREQUAL "ON" AND NOT ${found})
    message(FATAL_ERROR "${opt}=ON but ${what} was not found")
  endif()
endfunction()

# OpenMP
set(EFCOMM_HAVE_OPENMP 0)
if(NOT EFCOMM_OPENMP STREQUAL "OFF")
  find_package(OpenMP COMPONENTS CXX QUIET)
  if(OpenMP_CXX_FOUND)
    set(EFCOMM_HAVE_OPENMP 1)
  endif()
  _efcomm_require(EFCOMM_OPENMP OpenMP_CXX_FOUND "OpenMP")
endif()

# CUDA: only probed here; kernels arrive with the CUDA issue.
set(EFCOMM_HAVE_CUDA 0)
if(NOT EFCOMM_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(EFCOMM_HAVE_CUDA 1)
  endif()
  _efcomm_require(EFCOMM_CUDA CMAKE_CUDA_COMPILER "a CUDA compiler")
endif()
set(EFCOMM_HAVE_CUDA_BUILT 0)  # no CUDA targets are compiled yet

# NCCL and MPI backends arrive with the collectives issues.
set(EFCOMM_HAVE_NCCL 0)
set(EFCOMM_HAVE_MPI 0)

# Vectorization: the kernels are written for the auto-vectorizer; -march decides the ISA.
set(EFCOMM_KERNEL_FLAGS -O3)
if(EFCOMM_ARCH)
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag("-march=${EFCOMM_ARCH}" _efcomm_march_ok)
  if(_efcomm_march_ok)
    list(APPEND EFCOMM_KERNEL_FLAGS "-march=${EFCOMM_ARCH}")
  endif()
endif()
