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

# CUDA: the kernels (cuda/) are compiled when nvcc is found. The CUDA runtime is linked
# statically (it loads the driver at run time), so a build with kernels still imports and runs
# on a machine without a GPU or driver; efcomm::cuda::available() then says false.
set(EFCOMM_HAVE_CUDA 0)
if(NOT EFCOMM_CUDA STREQUAL "OFF")
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      # Ampere and Hopper machine code, plus PTX of the newest for later GPUs.
      set(CMAKE_CUDA_ARCHITECTURES "80-real;90")
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(EFCOMM_HAVE_CUDA 1)
    message(STATUS "efcomm: CUDA kernels for ${CMAKE_CUDA_ARCHITECTURES} (nvcc ${CMAKE_CUDA_COMPILER_VERSION})")
  else()
    message(STATUS "efcomm: no CUDA compiler (nvcc) found: no CUDA kernels")
  endif()
  _efcomm_require(EFCOMM_CUDA CMAKE_CUDA_COMPILER "a CUDA compiler")
endif()
set(EFCOMM_HAVE_CUDA_BUILT ${EFCOMM_HAVE_CUDA})

# NCCL: the backend (cuda/comm/nccl.cpp) finds libnccl at run time (dlopen), so nothing is looked
# for at build time; it needs the CUDA kernels' build.
set(EFCOMM_HAVE_NCCL 0)
if(EFCOMM_HAVE_CUDA AND NOT EFCOMM_NCCL STREQUAL "OFF")
  set(EFCOMM_HAVE_NCCL 1)
endif()
if(EFCOMM_NCCL STREQUAL "ON" AND NOT EFCOMM_HAVE_CUDA)
  message(FATAL_ERROR "EFCOMM_NCCL=ON needs the CUDA kernels (nvcc)")
endif()

# MPI: only an MPICH-ABI mpi.h is needed (for its types and constants); the backend finds the MPI
# functions at run time, so nothing links MPI. Looked for where `mpicc -show` points, in the
# Python environment's prefix (the `mpich` wheel installs include/mpi.h there), then the usual
# system places. EFCOMM_MPI_INCLUDE_DIR may be set by hand.
set(EFCOMM_HAVE_MPI 0)
set(EFCOMM_MPI_ABI "")
if(NOT EFCOMM_MPI STREQUAL "OFF")
  set(_efcomm_mpi_hints "")
  find_program(EFCOMM_MPICC NAMES mpicc)
  if(EFCOMM_MPICC)
    execute_process(COMMAND "${EFCOMM_MPICC}" -show OUTPUT_VARIABLE _efcomm_mpicc_show ERROR_QUIET
                    OUTPUT_STRIP_TRAILING_WHITESPACE)
    separate_arguments(_efcomm_mpicc_show UNIX_COMMAND "${_efcomm_mpicc_show}")
    foreach(_arg IN LISTS _efcomm_mpicc_show)
      if(_arg MATCHES "^-I(.+)")
        list(APPEND _efcomm_mpi_hints "${CMAKE_MATCH_1}")
      endif()
    endforeach()
    get_filename_component(_efcomm_mpicc_prefix "${EFCOMM_MPICC}" DIRECTORY)
    list(APPEND _efcomm_mpi_hints "${_efcomm_mpicc_prefix}/../include")
  endif()
  foreach(_py IN ITEMS "${Python_EXECUTABLE}" "${Python3_EXECUTABLE}")
    if(_py)
      execute_process(COMMAND "${_py}" -c "import sys; print(sys.prefix)" OUTPUT_VARIABLE _efcomm_py_prefix
                      ERROR_QUIET OUTPUT_STRIP_TRAILING_WHITESPACE)
      if(_efcomm_py_prefix)
        list(APPEND _efcomm_mpi_hints "${_efcomm_py_prefix}/include")
      endif()
    endif()
  endforeach()
  if(DEFINED ENV{VIRTUAL_ENV})
    list(APPEND _efcomm_mpi_hints "$ENV{VIRTUAL_ENV}/include")
  endif()
  find_path(EFCOMM_MPI_INCLUDE_DIR mpi.h HINTS ${_efcomm_mpi_hints}
            PATH_SUFFIXES mpich x86_64-linux-gnu/mpich aarch64-linux-gnu/mpich)
  if(EFCOMM_MPI_INCLUDE_DIR)
    file(STRINGS "${EFCOMM_MPI_INCLUDE_DIR}/mpi.h" _efcomm_mpich_version REGEX "^#define MPICH_VERSION ")
    if(_efcomm_mpich_version MATCHES "\"([^\"]+)\"")
      set(EFCOMM_HAVE_MPI 1)
      set(EFCOMM_MPI_ABI "MPICH ABI (mpi.h ${CMAKE_MATCH_1})")
      message(STATUS "efcomm: MPI backend for the ${EFCOMM_MPI_ABI}, ${EFCOMM_MPI_INCLUDE_DIR}/mpi.h")
    else()
      message(STATUS "efcomm: ${EFCOMM_MPI_INCLUDE_DIR}/mpi.h is not MPICH's (Open MPI?): no MPI backend")
    endif()
  else()
    message(STATUS "efcomm: no mpi.h found (pip install mpich, or apt-get install libmpich-dev): no MPI backend")
  endif()
  _efcomm_require(EFCOMM_MPI EFCOMM_HAVE_MPI "an MPICH-ABI mpi.h (MPICH, Intel MPI, MVAPICH)")
endif()

# Vectorization: the kernels are written for the auto-vectorizer; -march decides the ISA.
set(EFCOMM_KERNEL_FLAGS -O3)
if(EFCOMM_ARCH)
  include(CheckCXXCompilerFlag)
  check_cxx_compiler_flag("-march=${EFCOMM_ARCH}" _efcomm_march_ok)
  if(_efcomm_march_ok)
    list(APPEND EFCOMM_KERNEL_FLAGS "-march=${EFCOMM_ARCH}")
  endif()
endif()
