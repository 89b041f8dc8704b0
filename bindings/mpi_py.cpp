// The MPI backend. Python passes mpi4py's communicator as its C handle plus the path of the MPI
// library mpi4py loaded (privately, RTLD_LOCAL), so no mpi4py or MPI header is needed here.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "efcomm/mpi.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

void initMpi(py::module_& m) {
  // Collective over the communicator (MPI_Comm_idup): the GIL is released while the ranks meet.
  m.def("_mpi_backend", [](int64_t handle, const std::string& library, std::optional<double> timeout) {
    py::gil_scoped_release nogil;
    return mpiBackendFromHandle(handle, library, timeout.value_or(kDefaultCollectiveTimeout));
  }, py::arg("handle"), py::arg("library"), py::arg("timeout") = py::none());

  // MPI's thread level (0 single .. 3 multiple) for an MPI backend, None for others.
  m.def("_mpi_thread_level", [](const Backend& backend) -> std::optional<int> {
    if (auto level = mpiThreadLevel(backend)) return static_cast<int>(*level);
    return std::nullopt;
  }, py::arg("backend"));
}

}  // namespace efcomm::py_bind
