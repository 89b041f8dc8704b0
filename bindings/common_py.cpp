// Errors and build information. C++ exceptions become the Python classes of efcomm.errors, with
// `.code` set (and `.culprits` for CollectiveTimeout, `.ranks` for MismatchError).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/parallel.hpp"
#include "efcomm/build_info.hpp"
#include "efcomm/error.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

const char* className(ErrorCode c) {
  switch (c) {
    case ErrorCode::kInvalidArgument: return "InvalidArgument";
    case ErrorCode::kNonFinite: return "NonFiniteError";
    case ErrorCode::kCorruptMessage: return "CorruptMessageError";
    case ErrorCode::kMismatch: return "MismatchError";
    case ErrorCode::kCollectiveTimeout: return "CollectiveTimeout";
    case ErrorCode::kBackendUnavailable: return "BackendUnavailable";
    default: return "Error";
  }
}

void raise(const Error& e) {
  py::module_ errors = py::module_::import("efcomm.errors");
  py::object exc = errors.attr(className(e.code()))(e.what());
  exc.attr("code") = static_cast<int>(e.code());
  if (auto* t = dynamic_cast<const CollectiveTimeout*>(&e)) exc.attr("culprits") = py::cast(t->culprits());
  if (auto* m = dynamic_cast<const MismatchError*>(&e)) exc.attr("ranks") = py::cast(m->ranks());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exc.ptr())), exc.ptr());
}

}  // namespace

void initCommon(py::module_& m) {
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      raise(e);
    }
  });
  m.def("get_num_threads", &maxThreads, "Threads of efcomm's kernels called from this thread.");
  m.def("set_num_threads", [](int n) {
    EFCOMM_CHECK(n >= 1, "set_num_threads: n must be >= 1, got ", n);
    setMaxThreads(n);
  }, py::arg("n"), "Sets the threads of efcomm's kernels called from this thread (OpenMP's per-thread setting).");
  m.def("build_info", [] {
    const BuildInfo b = buildInfo();
    py::dict d;
    d["version"] = b.version;
    d["cuda"] = b.cuda;
    d["nccl"] = b.nccl;
    d["mpi"] = b.mpi.empty() ? py::none() : py::object(py::str(b.mpi));
    d["simd"] = b.simd;
    d["openmp"] = b.openmp;
    d["threads"] = b.threads;
    d["compiler"] = b.compiler;
    return d;
  });
}

}  // namespace efcomm::py_bind
