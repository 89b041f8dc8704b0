// The NCCL backend. Python makes the unique id on rank 0 and sends it to the other ranks (mpi4py
// or torch.distributed); arrays are CUDA arrays (DLPack / __cuda_array_interface__) used on the
// stream Python passes (the array library's current stream). Blocking calls release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>

#include "efcomm/nccl.hpp"
#include "tensor_arg.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

// An in-flight collective: keeps its arrays alive until it is waited on.
struct PyNcclWork {
  std::shared_ptr<Work> work;
  py::object keep;
};

DType sumDType(const CudaBytes& b, const std::string& dtype) {
  const DType dt = parseDType(dtype);
  EFCOMM_CHECK(itemSize(dt) == b.itemsize, "allreduce: dtype ", dtype, " does not match the array's ", b.itemsize,
               "-byte elements");
  return dt;
}

}  // namespace

void initNccl(py::module_& m) {
  m.def("_nccl_built", &ncclBuilt);
  m.def("_nccl_version", [](const std::string& library) { return ncclVersion(library); }, py::arg("library") = "");
  m.def("_nccl_library", &ncclLibrary);
  m.def("_nccl_unique_id", [](const std::string& library) {
    const NcclUniqueId id = NcclCommunicator::uniqueId(library);
    return py::bytes(reinterpret_cast<const char*>(id.data()), id.size());
  }, py::arg("library") = "");

  py::class_<PyNcclWork>(m, "_NcclWork")
      .def("wait", [](PyNcclWork& w, std::optional<double> timeout) {
        {
          py::gil_scoped_release nogil;
          w.work->wait(timeout);
        }
        return w.keep ? w.keep : py::none();  // a null handle cannot be returned to Python
      }, py::arg("timeout") = py::none())
      .def("completed", [](const PyNcclWork& w) { return w.work->completed(); });

  py::class_<NcclCommunicator, std::shared_ptr<NcclCommunicator>>(m, "_NcclCommunicator")
      .def(py::init([](int rank, int size, py::bytes id, int device, std::optional<double> timeout,
                       const std::string& library) {
        const std::string raw = id;
        EFCOMM_CHECK(raw.size() == kNcclUniqueIdBytes, "Communicator.nccl: the unique id must be ", kNcclUniqueIdBytes,
                     " bytes, got ", raw.size());
        NcclUniqueId uid{};
        std::memcpy(uid.data(), raw.data(), uid.size());
        py::gil_scoped_release nogil;  // collective: the ranks meet here
        return std::make_shared<NcclCommunicator>(rank, size, uid, device,
                                                  timeout.value_or(kDefaultCollectiveTimeout), library);
      }), py::arg("rank"), py::arg("size"), py::arg("id"), py::arg("device"), py::arg("timeout") = py::none(),
           py::arg("library") = "")
      .def_property_readonly("rank", &NcclCommunicator::rank)
      .def_property_readonly("size", &NcclCommunicator::size)
      .def_property_readonly("device", &NcclCommunicator::device)
      .def_property_readonly("aborted", &NcclCommunicator::aborted)
      .def("abort", [](NcclCommunicator& c, const std::string& message) {
        const CollectiveTimeout error(message, {});
        py::gil_scoped_release nogil;
        c.abort(error);
      }, py::arg("message"))
      .def("barrier", [](NcclCommunicator& c, intptr_t stream, std::optional<double> timeout) {
        py::gil_scoped_release nogil;
        return PyNcclWork{c.barrier(reinterpret_cast<cuda::Stream>(stream), timeout), py::object()};
      }, py::arg("stream") = 0, py::arg("timeout") = py::none())
      .def("allreduce_sum", [](NcclCommunicator& c, py::handle x, const std::string& dtype, intptr_t stream,
                               std::optional<double> timeout) {
        CudaBytes b = cudaBytesArg(x, true, "Communicator.allreduce", stream);
        const DType dt = sumDType(b, dtype);
        std::shared_ptr<Work> w;
        {
          py::gil_scoped_release nogil;
          w = c.allreduceSum(b.data, b.nbytes / b.itemsize, dt, reinterpret_cast<cuda::Stream>(stream), timeout);
        }
        return PyNcclWork{std::move(w), py::make_tuple(py::reinterpret_borrow<py::object>(x), b.owner)};
      }, py::arg("x"), py::arg("dtype"), py::arg("stream") = 0, py::arg("timeout") = py::none())
      .def("broadcast", [](NcclCommunicator& c, py::handle x, int root, intptr_t stream, std::optional<double> timeout) {
        CudaBytes b = cudaBytesArg(x, true, "Communicator.broadcast", stream);
        std::shared_ptr<Work> w;
        {
          py::gil_scoped_release nogil;
          w = c.broadcast(b.data, b.nbytes, root, reinterpret_cast<cuda::Stream>(stream), timeout);
        }
        return PyNcclWork{std::move(w), py::make_tuple(py::reinterpret_borrow<py::object>(x), b.owner)};
      }, py::arg("x"), py::arg("root"), py::arg("stream") = 0, py::arg("timeout") = py::none())
      .def("exchange_sizes", [](NcclCommunicator& c, size_t bytes, intptr_t stream, std::optional<double> timeout) {
        py::gil_scoped_release nogil;
        return c.exchangeSizes(bytes, reinterpret_cast<cuda::Stream>(stream), timeout);
      }, py::arg("nbytes"), py::arg("stream") = 0, py::arg("timeout") = py::none())
      .def("allgatherv_into", [](NcclCommunicator& c, py::handle x, py::handle out, std::vector<size_t> sizes,
                                 intptr_t stream, std::optional<double> timeout) {
        CudaBytes in = cudaBytesArg(x, false, "Communicator.allgatherv", stream);
        CudaBytes o = cudaBytesArg(out, true, "Communicator.allgatherv (output)", stream);
        size_t total = 0;
        for (size_t s : sizes) total += s;
        EFCOMM_CHECK(o.nbytes >= total, "Communicator.allgatherv: the output holds ", o.nbytes, " bytes, ", total,
                     " are needed");
        EFCOMM_CHECK(static_cast<size_t>(c.rank()) < sizes.size() && sizes[static_cast<size_t>(c.rank())] == in.nbytes,
                     "Communicator.allgatherv: sizes do not give this rank's ", in.nbytes, " bytes");
        std::shared_ptr<Work> w;
        {
          py::gil_scoped_release nogil;
          w = c.allgathervInto(in.data, o.data, sizes, reinterpret_cast<cuda::Stream>(stream), timeout);
        }
        return PyNcclWork{std::move(w), py::make_tuple(py::reinterpret_borrow<py::object>(out), in.owner, o.owner)};
      }, py::arg("x"), py::arg("out"), py::arg("sizes"), py::arg("stream") = 0, py::arg("timeout") = py::none());
}

}  // namespace efcomm::py_bind
