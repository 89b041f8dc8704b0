// Error feedback: workers (Feedback) and receivers (Aggregate). Every call that computes
// releases the GIL; estimates are returned as numpy copies.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "efcomm/cuda.hpp"
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
        loadStateDictStrict(f, s);
      }, py::arg("state"));

  // The GPU counterpart (efcomm::cuda::DeviceFeedback): state in device memory, the same state
  // dict. `step` takes a CUDA array used on `stream` and returns the message as a host Message.
  py::class_<cuda::DeviceFeedback, std::shared_ptr<cuda::DeviceFeedback>>(m, "_DeviceFeedback")
      .def(py::init([](const std::string& feedbackSpec, const std::string& compressorSpec) {
        requireCuda("Feedback.step");
        return std::make_shared<cuda::DeviceFeedback>(feedbackSpec, compressorSpec);
      }), py::arg("feedback"), py::arg("compressor"))
      .def_property_readonly("spec", &cuda::DeviceFeedback::spec)
      .def_property_readonly("initialized", &cuda::DeviceFeedback::initialized)
      .def("step", [](cuda::DeviceFeedback& f, py::handle x, std::optional<uint64_t> step, intptr_t stream) {
        TensorArg t = cudaTensorArg(x, false, "Feedback.step", stream);
        py::gil_scoped_release nogil;
        const auto s = reinterpret_cast<cuda::Stream>(stream);
        cuda::DeviceBuffer out;
        const size_t size = f.step(t.view(), out, step, s);
        return cuda::toHost(out.data(), size, s);
      }, py::arg("v"), py::arg("step") = py::none(), py::arg("stream") = 0)
      // The estimate in device memory as (pointer, shape, dtype name), or None: Python wraps it
      // in __cuda_array_interface__ and copies it with the caller's array library.
      .def("estimate_view", [](const cuda::DeviceFeedback& f) -> py::object {
        if (!f.initialized()) return py::none();
        const ConstTensorView v = f.estimate();
        if (v.data == nullptr && v.numel() > 0) return py::none();
        py::tuple shape(v.shape.size());
        for (size_t i = 0; i < v.shape.size(); ++i) shape[i] = v.shape[i];
        return py::make_tuple(reinterpret_cast<uintptr_t>(v.data), shape, dtypeName(v.dtype));
      })
      .def("state_dict", [](const cuda::DeviceFeedback& f) { return stateToPython(f.stateDict()); })
      .def("load_state_dict", [](cuda::DeviceFeedback& f, py::handle d) {
        StateDict s = stateFromPython(d);
        py::gil_scoped_release nogil;
        loadStateDictStrict(f, s);
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
      .def_property_readonly("additive", &Aggregate::additive)
      .def("update", [](Aggregate& a, py::sequence msgs) {
        std::vector<const Message*> ptrs;
        for (py::handle h : msgs) {
          ptrs.push_back(h.is_none() ? nullptr
                                     : &castOrThrow<const Message&>(
                                           h, "Aggregate.update: messages[" + std::to_string(ptrs.size()) + "]",
                                           "an efcomm.Message or None"));
        }
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
        loadStateDictStrict(a, s);
      }, py::arg("state"));
}

}  // namespace efcomm::py_bind
