#pragma once
/// @file mpi.hpp
/// The MPI backend: a `Backend` over an MPI communicator of an MPICH-ABI library (MPICH, Intel
/// MPI, MVAPICH, Cray MPICH; the `mpich` Python wheel that mpi4py uses by default).
///
/// efcomm does not link MPI: the backend finds the MPI functions at run time in the library the
/// process already loaded (the application's own, or mpi4py's), so efcomm works, without this
/// backend, on machines without MPI. MPI must be initialized before a backend is created.
///
/// The backend duplicates the communicator (its traffic never mixes with the caller's) and runs
/// every collective with nonblocking point-to-point messages, each preceded by a small header
/// (operation, sequence number, sizes) so that ranks that disagree get `MismatchError` instead of
/// hanging. Progress is made by `Work::wait` and `Work::completed`: one rank's MPI calls are
/// serialized by the backend, so a thread other than the one that issued a collective may wait on
/// it when MPI was initialized with at least `MPI_THREAD_SERIALIZED` (see `mpiThreadLevel`) and
/// the application makes no MPI calls of its own at the same time.
/// After a `CollectiveTimeout` the backend is unusable: its later collectives fail at once, and
/// the other ranks are told, so that their pending collectives fail too instead of waiting.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>

#include "efcomm/comm.hpp"

namespace efcomm {

/// The MPI backend on the MPI communicator whose C handle (`MPI_Comm` of the MPICH ABI, an int)
/// is `handle`, for callers without `<mpi.h>` (the Python bindings). Collective over the
/// communicator: every rank calls it, bounded by `defaultTimeoutSeconds`.
/// `libraryPath`: the MPI shared library the handle belongs to when the process did not link it
/// globally (mpi4py loads it with RTLD_LOCAL); empty: look in the process, then for an already
/// loaded `libmpi.so.12`. Throws `BackendUnavailable` when efcomm was built without MPI, no
/// MPICH-ABI library is loaded, or MPI is not initialized (or already finalized).
std::shared_ptr<Backend> mpiBackendFromHandle(int64_t handle, const std::string& libraryPath,
                                              double defaultTimeoutSeconds = kDefaultCollectiveTimeout);

/// The MPI backend on `comm` (an `MPI_Comm`), for C++ applications that include `<mpi.h>` and
/// link MPI: `efcomm::mpiBackend(MPI_COMM_WORLD)`. A template so that this header needs no
/// `<mpi.h>`; `MPI_Comm` must be the MPICH ABI's int handle.
template <typename Comm>
std::shared_ptr<Backend> mpiBackend(Comm comm, double defaultTimeoutSeconds = kDefaultCollectiveTimeout) {
  static_assert(std::is_same_v<Comm, int>,
                "efcomm::mpiBackend takes an MPI_Comm of an MPICH-ABI MPI (MPICH, Intel MPI, MVAPICH, Cray "
                "MPICH), whose MPI_Comm is an int handle; this MPI (Open MPI?) is not supported");
  return mpiBackendFromHandle(static_cast<int64_t>(comm), std::string(), defaultTimeoutSeconds);
}

/// MPI thread support levels (`MPI_THREAD_SINGLE` ... `MPI_THREAD_MULTIPLE`).
enum class MpiThreadLevel : int { kSingle = 0, kFunneled = 1, kSerialized = 2, kMultiple = 3 };

/// The thread level MPI was initialized with (`MPI_Query_thread`), when `backend` is an MPI
/// backend; `std::nullopt` for other backends. A thread other than the one that initialized MPI
/// may drive the backend only at `kSerialized` or above.
std::optional<MpiThreadLevel> mpiThreadLevel(const Backend& backend);

}  // namespace efcomm
