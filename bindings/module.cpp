// The efcomm._core extension module: one init function per public area.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace efcomm::py_bind {
void initCommon(py::module_& m);
void initCompress(py::module_& m);
void initFeedback(py::module_& m);
void initComm(py::module_& m);
void initMpi(py::module_& m);
void initNccl(py::module_& m);
void initHealth(py::module_& m);
void initPlan(py::module_& m);
}  // namespace efcomm::py_bind

PYBIND11_MODULE(_core, m) {
  m.doc() = "efcomm native core";
  efcomm::py_bind::initCommon(m);
  efcomm::py_bind::initCompress(m);
  efcomm::py_bind::initFeedback(m);
  efcomm::py_bind::initComm(m);
  efcomm::py_bind::initMpi(m);
  efcomm::py_bind::initNccl(m);
  efcomm::py_bind::initHealth(m);
  efcomm::py_bind::initPlan(m);
}
