// Error feedback: workers (Feedback) and receivers (Aggregate). Every call that computes
// releases the GIL; estimates are returned as numpy copies.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "efcomm/feedback.hpp"
#include "state_arg.hpp"
#include "tensor_arg.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

void initFeedback(py::module_& m) {
  py::class_<Feedback, std::shared_ptr<Feedback>>(m, "_Feedback")
      .def_property_readonly("name", &Feedback::name)
      .def_property_readonly("spec", &Feedback::spec)
      .def_property_readonly("compressor", &Feedback::compressor)
      .def_property_readonly("initialized", &Feedback::initialized)
      .def("step", [](Feedback& f, py::handle x, std::optional<uint64_t> step) {
        TensorArg t = tensorArg(x, false, (f.name() + ".step").c_str());
        py::gil_scoped_release nogil;
        return f.step(t.view(), step);
      }, py::arg("v"), py::arg("step") = py::none())
      .def("estimate", [](const Feedback& f) -> py::object {
        if (!f.initialized() || f.name() == "none") return py::none();
        return toNumpy(f.estimate());
      })
      .def("state_dict", [](const Feedback& f) { return stateToPython(f.stateDict()); })
      .def("load_state_dict", [](Feedback& f, py::handle d) {
        StateDict s = stateFromPython(d);
        py::gil_scoped_release nogil;
        f.loadStateDict(s);
      }, py::arg("state"));

  m.def("make_feedback", [](const std::string& spec, std::shared_ptr<Compressor> c) {
    return std::shared_ptr<Feedback>(makeFeedback(spec, std::move(c)));
  }, py::arg("spec"), py::arg("compressor"));
  m.def("feedback_names", &feedbackNames);

  py::class_<Aggregate, std::shared_ptr<Aggregate>>(m, "_Aggregate")
      .def(py::init([](const std::string& spec, int n, std::vector<double> weights, std::vector<int64_t> shape,
                       const std::string& dtype, std::shared_ptr<Compressor> broadcast) {
        return std::make_shared<Aggregate>(spec, n, std::move(weights), std::move(shape), parseDType(dtype),
                                           std::move(broadcast));
      }), py::arg("spec"), py::arg("n"), py::arg("weights"), py::arg("shape"), py::arg("dtype"),
           py::arg("broadcast"))
      .def_property_readonly("spec", &Aggregate::spec)
      .def_property_readonly("n", &Aggregate::n)
      .def_property_readonly("weights", &Aggregate::weights)
      .def_property_readonly("broadcast", &Aggregate::broadcast)
      .def("update", [](Aggregate& a, py::sequence msgs) {
        std::vector<const Message*> ptrs;
        for (py::handle h : msgs) ptrs.push_back(h.is_none() ? nullptr : &py::cast<const Message&>(h));
        {
          py::gil_scoped_release nogil;
          a.update(ptrs);
        }
        return toNumpy(a.estimate());
      }, py::arg("messages"))
      .def("estimate", [](const Aggregate& a) { return toNumpy(a.estimate()); })
      .def("last_broadcast", [](const Aggregate& a) -> py::object {
        if (a.lastBroadcast().empty()) return py::none();
        return py::cast(a.lastBroadcast());
      })
      .def("state_dict", [](const Aggregate& a) { return stateToPython(a.stateDict()); })
      .def("load_state_dict", [](Aggregate& a, py::handle d) {
        StateDict s = stateFromPython(d);
        py::gil_scoped_release nogil;
        a.loadStateDict(s);
      }, py::arg("state"));
}

}  // namespace efcomm::py_bind
