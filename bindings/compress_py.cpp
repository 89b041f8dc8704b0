// Compressors and messages. Every call that computes releases the GIL.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/error.hpp"
#include "state_arg.hpp"
#include "tensor_arg.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

Message messageFromBuffer(const py::object& o) {
  EFCOMM_CHECK(PyObject_CheckBuffer(o.ptr()), "Message.from_bytes: expected bytes, bytearray, memoryview or a uint8 ",
               "array, got ", std::string(py::str(py::type::of(o).attr("__name__"))));
  py::buffer_info info = py::reinterpret_borrow<py::buffer>(o).request();
  EFCOMM_CHECK_MSG(info.ndim <= 1 || info.itemsize == 1, "Message.from_bytes: expected a 1-d byte buffer");
  // The bytes are read in memory order: a strided view (reversed, transposed) would be read out
  // of order or past its end.
  checkCContiguous(info, "Message.from_bytes");
  const size_t n = static_cast<size_t>(info.size) * static_cast<size_t>(info.itemsize);
  const void* p = info.ptr;
  py::gil_scoped_release nogil;
  return Message::fromBytes(p, n);
}

// d for the per-dimension constants: a message holds at most 2^56 elements (Message rejects more), and
// byte counts beyond that would overflow.
int64_t checkedDim(int64_t d, const char* what) {
  EFCOMM_CHECK(d >= 0 && d <= (int64_t{1} << 56), what, ": d must be in [0, 2^56], got ", d);
  return d;
}

// Decodes the host message `msg` into the CUDA array `out` (the message is copied to the device
// first; decoding checks it there as on the host). Synchronizes `stream`.
void decompressIntoCuda(const Message& msg, py::handle out, intptr_t stream, const char* what) {
  TensorArg t = cudaTensorArg(out, true, what, stream);
  py::gil_scoped_release nogil;
  const auto s = reinterpret_cast<cuda::Stream>(stream);
  cuda::DeviceBuffer d;
  cuda::toDevice(msg, d, s);
  cuda::decompress(d.data(), d.size(), t.mutableView(), s);  // synchronizes s: d may be freed after
}

}  // namespace

void initCompress(py::module_& m) {
  py::class_<Message>(m, "Message", py::buffer_protocol(), py::dynamic_attr(),
                      "A compressed tensor in efcomm's versioned wire format (bytes-like).")
      .def_static("from_bytes", &messageFromBuffer, py::arg("buf"),
                  "Copy and validate a wire image; raises CorruptMessageError if malformed.")
      .def_buffer([](Message& msg) {
        return py::buffer_info(const_cast<uint8_t*>(msg.data()), 1, py::format_descriptor<uint8_t>::format(), 1,
                               {static_cast<ssize_t>(msg.size())}, {ssize_t{1}}, /*readonly=*/true);
      })
      .def_property_readonly("nbytes", &Message::size)
      .def("__len__", &Message::size)
      .def("__bytes__", [](const Message& msg) {
        return py::bytes(reinterpret_cast<const char*>(msg.data()), msg.size());
      })
      .def_property_readonly("version", &Message::version)
      .def_property_readonly("compressor", [](const Message& msg) { return compressorName(msg.compressorId()); })
      .def_property_readonly("dtype", [](const Message& msg) { return dtypeName(msg.dtype()); })
      .def_property_readonly("shape", [](const Message& msg) {
        py::tuple t(msg.shape().size());
        for (size_t i = 0; i < msg.shape().size(); ++i) t[i] = msg.shape()[i];
        return t;
      })
      .def_property_readonly("numel", &Message::numel)
      .def_property_readonly("flags", &Message::flags)
      .def_property_readonly("payload_nbytes", &Message::payloadSize)
      .def_property_readonly("checksum", &Message::checksum)
      .def("__repr__", [](const Message& msg) {
        return "<efcomm.Message " + compressorName(msg.compressorId()) + " " + dtypeName(msg.dtype()) +
               shapeString(msg.shape()) + " " + std::to_string(msg.size()) + " bytes>";
      });

  py::class_<Compressor, std::shared_ptr<Compressor>>(m, "_Compressor")
      .def_property_readonly("name", &Compressor::name)
      .def_property_readonly("spec", &Compressor::spec)
      .def_property_readonly("biased", &Compressor::biased)
      .def_property_readonly("randomized", &Compressor::randomized)
      .def("alpha", [](const Compressor& c, int64_t d) { return c.alpha(checkedDim(d, "alpha")); }, py::arg("d"))
      .def("omega", [](const Compressor& c, int64_t d) { return c.omega(checkedDim(d, "omega")); }, py::arg("d"))
      .def("wire_bytes", [](const Compressor& c, const std::vector<int64_t>& shape, const std::string& dtype) {
        EFCOMM_CHECK(static_cast<int>(shape.size()) <= kMaxDims, "wire_bytes: at most ", kMaxDims,
                     " dimensions, got ", shape.size());
        shapeNumel(shape);  // negative or too many elements: InvalidArgument
        return c.wireBytes(shape, parseDType(dtype));
      }, py::arg("shape"), py::arg("dtype") = "float32")
      .def("compress", [](Compressor& c, py::handle x, std::optional<uint64_t> step) {
        TensorArg t = tensorArg(x, false, (c.name() + ".compress").c_str());
        py::gil_scoped_release nogil;
        return c.compress(t.view(), step);
      }, py::arg("x"), py::arg("step") = py::none())
      // The GPU path: x is a CUDA array used on `stream`; the message comes back to the host
      // (toHost), the same bytes a host compress of the same values would make.
      .def("compress_cuda", [](Compressor& c, py::handle x, std::optional<uint64_t> step, intptr_t stream) {
        TensorArg t = cudaTensorArg(x, false, (c.name() + ".compress").c_str(), stream);
        py::gil_scoped_release nogil;
        const auto s = reinterpret_cast<cuda::Stream>(stream);
        cuda::DeviceBuffer out;
        const size_t size = cuda::compress(c, t.view(), out, step, s);
        return cuda::toHost(out.data(), size, s);
      }, py::arg("x"), py::arg("step") = py::none(), py::arg("stream") = 0)
      .def("decompress_into_cuda", [](const Compressor& c, const Message& msg, py::handle out, intptr_t stream) {
        EFCOMM_CHECK(msg.empty() || msg.compressorId() == c.id(), c.name(), ".decompress: message was made by '",
                     compressorName(msg.compressorId()), "'");
        decompressIntoCuda(msg, out, stream, (c.name() + ".decompress(out=...)").c_str());
      }, py::arg("msg"), py::arg("out"), py::arg("stream") = 0)
      .def("decompress_into", [](const Compressor& c, const Message& msg, py::handle out) {
        TensorArg t = tensorArg(out, true, (c.name() + ".decompress(out=...)").c_str());
        py::gil_scoped_release nogil;
        c.decompress(msg, t.mutableView());
      }, py::arg("msg"), py::arg("out"))
      .def("state_dict", [](const Compressor& c) { return stateToPython(c.stateDict()); })
      .def("load_state_dict", [](Compressor& c, py::handle d) { loadStateDictStrict(c, stateFromPython(d)); },
           py::arg("state"));

  m.def("make_compressor", [](const std::string& spec) {
    return std::shared_ptr<Compressor>(makeCompressor(spec));
  }, py::arg("spec"));
  m.def("compressor_names", &compressorNames);
  m.def("decompress_into", [](const Message& msg, py::handle out) {
    TensorArg t = tensorArg(out, true, "decompress(out=...)");
    py::gil_scoped_release nogil;
    decompress(msg, t.mutableView());
  }, py::arg("msg"), py::arg("out"));
  m.def("decompress_into_cuda", [](const Message& msg, py::handle out, intptr_t stream) {
    decompressIntoCuda(msg, out, stream, "decompress(out=...)");
  }, py::arg("msg"), py::arg("out"), py::arg("stream") = 0);
  // out += weight * decode(msg) where msg is a CUDA byte array (a message as received, e.g. a
  // slice of an all_gather's output): no host copy of the payload. The message is checked in
  // full before out changes. Synchronizes `stream`.
  m.def("accumulate_cuda", [](py::handle msg, py::handle out, double weight, intptr_t stream) {
    CudaBytes b = cudaBytesArg(msg, false, "accumulate (message)", stream);
    TensorArg t = cudaTensorArg(out, true, "accumulate (out)", stream);
    py::gil_scoped_release nogil;
    cuda::accumulate(b.data, b.nbytes, t.mutableView(), weight, reinterpret_cast<cuda::Stream>(stream));
  }, py::arg("msg"), py::arg("out"), py::arg("weight"), py::arg("stream") = 0);
  // The GPU path's status: {"built", "available", "device_count", "reason"}.
  m.def("_cuda_info", [] {
    py::dict d;
    d["built"] = cuda::built();
    d["device_count"] = cuda::deviceCount();
    d["available"] = cuda::available();
    d["reason"] = cuda::unavailableReason();
    return d;
  });
}

}  // namespace efcomm::py_bind
