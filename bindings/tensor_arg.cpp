#include "tensor_arg.hpp"

#include "efcomm/error.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

// DLPack ABI (dlpack.h, v0.8 "legacy" capsule named "dltensor"): only the fields read here.
struct DLDevice {
  int32_t device_type;
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};
constexpr int32_t kDLCPU = 1;
constexpr uint8_t kDLFloat = 2, kDLBfloat = 4;

std::string typeName(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

DType fromFormat(const std::string& fmt, ssize_t itemsize, const char* what) {
  char c = fmt.empty() ? '?' : fmt.back();
  if (c == 'f' && itemsize == 4) return DType::kFloat32;
  if (c == 'd' && itemsize == 8) return DType::kFloat64;
  if (c == 'e' && itemsize == 2) return DType::kFloat16;
  throw InvalidArgument(std::string(what) + ": unsupported element format '" + fmt +
                        "'; expected float32, float64, float16 or bfloat16");
}

TensorArg fromBuffer(py::handle obj, bool writable, const char* what) {
  py::buffer buf = py::reinterpret_borrow<py::buffer>(obj);
  py::buffer_info info;
  try {
    info = buf.request(writable);
  } catch (py::error_already_set& e) {
    throw InvalidArgument(std::string(what) + ": " + (writable ? "a writable" : "a") +
                          " contiguous buffer is required (" + e.what() + ")");
  }
  TensorArg t;
  t.dtype = fromFormat(info.format, info.itemsize, what);
  t.data = info.ptr;
  ssize_t expect = info.itemsize;
  // An empty array has no memory layout to check (exporters report arbitrary strides).
  for (ssize_t i = info.ndim - 1; i >= 0 && info.size > 0; --i) {
    EFCOMM_CHECK(info.shape[i] <= 1 || info.strides[i] == expect, what,
                 ": array is not C-contiguous; pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())");
    expect *= info.shape[i];
  }
  for (ssize_t s : info.shape) t.shape.push_back(static_cast<int64_t>(s));
  t.owner = py::reinterpret_borrow<py::object>(obj);
  return t;
}

TensorArg fromDLPack(py::handle obj, const char* what) {
  py::object cap;
  try {
    cap = obj.attr("__dlpack__")();
  } catch (py::error_already_set& e) {
    throw InvalidArgument(std::string(what) + ": cannot export " + typeName(obj) + " via DLPack: " + e.what());
  }
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!mt) {
    PyErr_Clear();
    throw InvalidArgument(std::string(what) + ": " + typeName(obj) + ".__dlpack__() did not return a DLPack capsule");
  }
  // The capsule is not renamed to "used_dltensor", so its destructor calls the deleter when the
  // TensorArg drops it: the producer's memory stays alive exactly as long as we use it.
  const DLTensor& d = mt->dl_tensor;
  EFCOMM_CHECK(d.device.device_type == kDLCPU, what, ": tensor is on device type ", d.device.device_type,
               "; this build handles host (CPU) memory only");
  EFCOMM_CHECK(d.dtype.lanes == 1, what, ": vector dtypes are not supported");
  TensorArg t;
  if (d.dtype.code == kDLFloat && d.dtype.bits == 32) t.dtype = DType::kFloat32;
  else if (d.dtype.code == kDLFloat && d.dtype.bits == 64) t.dtype = DType::kFloat64;
  else if (d.dtype.code == kDLFloat && d.dtype.bits == 16) t.dtype = DType::kFloat16;
  else if (d.dtype.code == kDLBfloat && d.dtype.bits == 16) t.dtype = DType::kBFloat16;
  else
    throw InvalidArgument(std::string(what) + ": unsupported dtype (DLPack code " + std::to_string(d.dtype.code) +
                          ", " + std::to_string(d.dtype.bits) +
                          " bits); expected float32, float64, float16 or bfloat16");
  t.shape.assign(d.shape, d.shape + d.ndim);
  int64_t numel = 1;
  for (int32_t i = 0; i < d.ndim; ++i) numel *= d.shape[i];
  if (d.strides && numel > 0) {
    int64_t expect = 1;
    for (int32_t i = d.ndim - 1; i >= 0; --i) {
      EFCOMM_CHECK(d.shape[i] <= 1 || d.strides[i] == expect, what,
                   ": tensor is not contiguous; pass tensor.contiguous()");
      expect *= d.shape[i];
    }
  }
  t.data = static_cast<uint8_t*>(d.data) + d.byte_offset;
  t.owner = cap;
  return t;
}

}  // namespace

TensorArg tensorArg(py::handle obj, bool writable, const char* what) {
  if (PyObject_CheckBuffer(obj.ptr())) return fromBuffer(obj, writable, what);
  if (py::hasattr(obj, "__dlpack__")) return fromDLPack(obj, what);
  throw InvalidArgument(std::string(what) + ": expected a numpy array, torch tensor or other buffer/DLPack array, got " +
                        typeName(obj));
}

}  // namespace efcomm::py_bind
