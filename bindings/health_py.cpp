// Health: the monitor (efcomm/health.hpp). Construction and close are collective and block on
// other ranks, so they release the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "efcomm/health.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

void initHealth(py::module_& m) {
  using health::Anomaly;
  using health::Monitor;
  using health::MonitorOptions;
  py::class_<Monitor, std::shared_ptr<Monitor>>(m, "_Monitor")
      .def(py::init([](std::shared_ptr<Backend> inner, double timeoutFloor, double timeoutFactor, double minGbps,
                       double heartbeatInterval, double heartbeatTimeout, size_t capacity, int window,
                       std::string dumpDir, std::string address, double connectTimeout) {
             MonitorOptions o;
             o.timeoutFloor = timeoutFloor;
             o.timeoutFactor = timeoutFactor;
             o.minGbps = minGbps;
             o.heartbeatInterval = heartbeatInterval;
             o.heartbeatTimeout = heartbeatTimeout;
             o.capacity = capacity;
             o.window = window;
             o.dumpDir = std::move(dumpDir);
             o.address = std::move(address);
             o.connectTimeout = connectTimeout;
             return std::make_shared<Monitor>(std::move(inner), std::move(o));
           }),
           py::arg("backend"), py::arg("timeout_floor"), py::arg("timeout_factor"), py::arg("min_gbps"),
           py::arg("heartbeat_interval"),
           py::arg("heartbeat_timeout"), py::arg("capacity"), py::arg("window"), py::arg("dump_dir"),
           py::arg("address"), py::arg("connect_timeout"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("backend", &Monitor::backend)
      .def("anomalies",
           [](const Monitor& mon) {
             py::list out;
             for (const Anomaly& a : mon.anomalies())
               out.append(py::make_tuple(a.kind, a.ranks, a.detail, a.seq, a.time));
             return out;
           })
      .def("dump_json", &Monitor::dumpJson, py::arg("reason") = "demand")
      .def("dump", &Monitor::dump, py::arg("path"), py::arg("reason") = "demand",
           py::call_guard<py::gil_scoped_release>())
      .def("close", &Monitor::close, py::call_guard<py::gil_scoped_release>());
}

}  // namespace efcomm::py_bind
