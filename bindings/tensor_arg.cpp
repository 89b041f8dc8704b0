#include "tensor_arg.hpp"

#include <cctype>

#include "efcomm/cuda.hpp"
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
constexpr int32_t kDLCPU = 1, kDLCUDA = 2, kDLCUDAManaged = 13;
constexpr uint8_t kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBfloat = 4;

std::string typeName(py::handle obj) { return py::str(py::type::handle_of(obj).attr("__name__")); }

DType fromFormat(const std::string& fmt, ssize_t itemsize, const char* what) {
  // The kernels read native (little-endian) values: a big-endian array would be read as garbage.
  if (!fmt.empty() && (fmt[0] == '>' || fmt[0] == '!'))
    throw InvalidArgument(std::string(what) + ": big-endian elements (format '" + fmt +
                          "') are not supported; convert first, e.g. x.astype(x.dtype.newbyteorder('='))");
  char c = fmt.empty() ? '?' : fmt.back();
  if (c == 'f' && itemsize == 4) return DType::kFloat32;
  if (c == 'd' && itemsize == 8) return DType::kFloat64;
  if (c == 'e' && itemsize == 2) return DType::kFloat16;
  throw InvalidArgument(std::string(what) + ": unsupported element format '" + fmt +
                        "'; expected float32, float64, float16 or bfloat16");
}

}  // namespace

void checkCContiguous(const py::buffer_info& info, const char* what) {
  ssize_t expect = info.itemsize;
  // An empty array has no memory layout to check (exporters report arbitrary strides).
  for (ssize_t i = info.ndim - 1; i >= 0 && info.size > 0; --i) {
    EFCOMM_CHECK(info.shape[i] <= 1 || info.strides[i] == expect, what,
                 ": array is not C-contiguous; pass a contiguous copy (numpy.ascontiguousarray / tensor.contiguous())");
    expect *= info.shape[i];
  }
}

namespace {

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
  checkCContiguous(info, what);
  for (ssize_t s : info.shape) t.shape.push_back(static_cast<int64_t>(s));
  t.owner = py::reinterpret_borrow<py::object>(obj);
  return t;
}

// The tensor a DLPack capsule (from obj.__dlpack__()) describes; InvalidArgument if it is none.
const DLTensor& dlTensorOf(const py::object& cap, py::handle obj, const char* what) {
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!mt) {
    PyErr_Clear();
    throw InvalidArgument(std::string(what) + ": " + typeName(obj) + ".__dlpack__() did not return a DLPack capsule");
  }
  return mt->dl_tensor;
}

// InvalidArgument unless the DLPack tensor is row-major contiguous (strides null or matching).
void checkDLContiguous(const DLTensor& d, int64_t numel, const char* what) {
  if (d.strides && numel > 0) {
    int64_t expect = 1;
    for (int32_t i = d.ndim - 1; i >= 0; --i) {
      EFCOMM_CHECK(d.shape[i] <= 1 || d.strides[i] == expect, what,
                   ": tensor is not contiguous; pass tensor.contiguous()");
      expect *= d.shape[i];
    }
  }
}

TensorArg fromDLPack(py::handle obj, const char* what) {
  py::object cap;
  try {
    cap = obj.attr("__dlpack__")();
  } catch (py::error_already_set& e) {
    throw InvalidArgument(std::string(what) + ": cannot export " + typeName(obj) + " via DLPack: " + e.what());
  }
  // The capsule is not renamed to "used_dltensor", so its destructor calls the deleter when the
  // TensorArg drops it: the producer's memory stays alive exactly as long as we use it.
  const DLTensor& d = dlTensorOf(cap, obj, what);
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
  checkDLContiguous(d, numel, what);
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

// ---- CUDA arrays ------------------------------------------------------------------------------

namespace {

// A parsed CUDA array: element kind as DLPack's (code, bits), C-contiguous.
struct CudaView {
  py::object owner;
  void* data = nullptr;
  std::vector<int64_t> shape;
  uint8_t code = kDLFloat, bits = 32;
  int device = -1;
};

int64_t numelOf(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t s : shape) n *= s;
  return n;
}

CudaView cudaFromDLPack(py::handle obj, const char* what, intptr_t stream) {
  // DLPack's stream argument: the consumer's stream, on which the producer orders its pending
  // work; 0 is not allowed for CUDA (1 names the legacy default stream, the runtime's value too).
  const intptr_t dlStream = stream == 0 ? 1 : stream;
  py::object cap;
  try {
    cap = obj.attr("__dlpack__")(py::arg("stream") = dlStream);
  } catch (py::error_already_set& e) {
    if (!e.matches(PyExc_TypeError)) {
      throw InvalidArgument(std::string(what) + ": cannot export " + typeName(obj) + " via DLPack: " + e.what());
    }
    try {  // an exporter without the stream argument
      cap = obj.attr("__dlpack__")();
    } catch (py::error_already_set& e2) {
      throw InvalidArgument(std::string(what) + ": cannot export " + typeName(obj) + " via DLPack: " + e2.what());
    }
  }
  auto* mt = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
  if (!mt) {
    PyErr_Clear();
    throw InvalidArgument(std::string(what) + ": " + typeName(obj) + ".__dlpack__() did not return a DLPack capsule");
  }
  const DLTensor& d = dlTensorOf(cap, obj, what);
  EFCOMM_CHECK(d.device.device_type == kDLCUDA || d.device.device_type == kDLCUDAManaged, what,
               ": expected a CUDA array, got DLPack device type ", d.device.device_type);
  EFCOMM_CHECK(d.dtype.lanes == 1, what, ": vector dtypes are not supported");
  CudaView v;
  v.shape.assign(d.shape, d.shape + d.ndim);
  const int64_t numel = numelOf(v.shape);
  checkDLContiguous(d, numel, what);
  v.code = d.dtype.code;
  v.bits = d.dtype.bits;
  v.data = static_cast<uint8_t*>(d.data) + d.byte_offset;
  v.device = d.device.device_id;
  v.owner = cap;  // the capsule's destructor releases the producer's memory when we drop it
  return v;
}

// __cuda_array_interface__ (Numba's protocol, versions 2 and 3): data, shape, typestr, strides.
CudaView cudaFromInterface(py::handle obj, bool writable, const char* what) {
  py::object cai;
  try {
    cai = obj.attr("__cuda_array_interface__");
  } catch (py::error_already_set& e) {
    throw InvalidArgument(std::string(what) + ": cannot read " + typeName(obj) + ".__cuda_array_interface__: " +
                          e.what());
  }
  EFCOMM_CHECK(py::isinstance<py::dict>(cai), what, ": ", typeName(obj), ".__cuda_array_interface__ is not a dict");
  py::dict d = py::reinterpret_borrow<py::dict>(cai);
  for (const char* key : {"data", "shape", "typestr"})
    EFCOMM_CHECK(d.contains(key), what, ": __cuda_array_interface__ has no '", key, "' entry");
  CudaView v;
  try {
    py::tuple data = py::cast<py::tuple>(d["data"]);
    EFCOMM_CHECK(data.size() == 2, what, ": __cuda_array_interface__['data'] must be (pointer, read_only)");
    v.data = reinterpret_cast<void*>(py::cast<uintptr_t>(data[0]));
    EFCOMM_CHECK(!(writable && py::cast<bool>(data[1])), what, ": the CUDA array is read-only; a writable one is needed");
    for (py::handle s : py::cast<py::tuple>(d["shape"])) v.shape.push_back(py::cast<int64_t>(s));
  } catch (py::cast_error& e) {
    throw InvalidArgument(std::string(what) + ": malformed __cuda_array_interface__ (" + e.what() + ")");
  }
  for (int64_t s : v.shape) EFCOMM_CHECK(s >= 0, what, ": negative extent in __cuda_array_interface__['shape']");
  const std::string typestr = py::cast<std::string>(d["typestr"]);
  // "<f4": byte order, kind, item size; "|" (not applicable) for one-byte types.
  EFCOMM_CHECK(typestr.size() >= 3 && (typestr[0] == '<' || typestr[0] == '|' || typestr[0] == '='), what,
               ": unsupported __cuda_array_interface__ typestr '", typestr, "' (little-endian types only)");
  int bytes = 0;
  for (size_t i = 2; i < typestr.size(); ++i) {
    EFCOMM_CHECK(std::isdigit(static_cast<unsigned char>(typestr[i])), what, ": malformed typestr '", typestr, "'");
    bytes = bytes * 10 + (typestr[i] - '0');
    EFCOMM_CHECK(bytes <= 64, what, ": malformed typestr '", typestr, "'");
  }
  EFCOMM_CHECK(bytes > 0, what, ": malformed typestr '", typestr, "'");
  const char kind = typestr[1];
  v.code = kind == 'f' ? kDLFloat : kind == 'i' ? kDLInt : kind == 'u' ? kDLUInt : uint8_t{255};
  v.bits = static_cast<uint8_t>(bytes * 8);
  if (d.contains("strides") && !d["strides"].is_none() && numelOf(v.shape) > 0) {
    py::tuple strides = py::cast<py::tuple>(d["strides"]);
    EFCOMM_CHECK(strides.size() == v.shape.size(), what, ": __cuda_array_interface__ strides do not match its shape");
    int64_t expect = bytes;
    for (size_t i = v.shape.size(); i-- > 0;) {
      EFCOMM_CHECK(v.shape[i] <= 1 || py::cast<int64_t>(strides[i]) == expect, what,
                   ": the CUDA array is not C-contiguous; pass a contiguous copy");
      expect *= v.shape[i];
    }
  }
  EFCOMM_CHECK(v.data != nullptr || numelOf(v.shape) == 0, what, ": null data pointer in __cuda_array_interface__");
  v.owner = py::reinterpret_borrow<py::object>(obj);
  return v;
}

bool hasCudaDLPack(py::handle obj) {
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) return false;
  try {
    py::tuple dev = obj.attr("__dlpack_device__")();
    const int type = py::cast<int>(dev[0]);
    return type == kDLCUDA || type == kDLCUDAManaged;
  } catch (py::error_already_set&) {
    return false;
  } catch (py::cast_error&) {
    return false;
  }
}

CudaView cudaView(py::handle obj, bool writable, const char* what, intptr_t stream) {
  if (hasCudaDLPack(obj)) return cudaFromDLPack(obj, what, stream);
  if (py::hasattr(obj, "__cuda_array_interface__")) return cudaFromInterface(obj, writable, what);
  throw InvalidArgument(std::string(what) + ": expected a CUDA array (torch CUDA tensor, CuPy array, or an object "
                                            "with __cuda_array_interface__), got " +
                        typeName(obj));
}

}  // namespace

void requireCuda(const char* what) {
  if (!cuda::available()) {
    throw BackendUnavailable(std::string(what) + ": got a CUDA array, but the GPU path is unavailable: " +
                             cuda::unavailableReason() + ". Pass a host (CPU) array, or use a build of efcomm with "
                                                         "CUDA on a machine with a GPU");
  }
}

TensorArg cudaTensorArg(py::handle obj, bool writable, const char* what, intptr_t stream) {
  requireCuda(what);
  CudaView v = cudaView(obj, writable, what, stream);
  TensorArg t;
  if (v.code == kDLFloat && v.bits == 32) t.dtype = DType::kFloat32;
  else if (v.code == kDLFloat && v.bits == 64) t.dtype = DType::kFloat64;
  else if (v.code == kDLFloat && v.bits == 16) t.dtype = DType::kFloat16;
  else if (v.code == kDLBfloat && v.bits == 16) t.dtype = DType::kBFloat16;
  else
    throw InvalidArgument(std::string(what) + ": unsupported dtype (kind " + std::to_string(v.code) + ", " +
                          std::to_string(v.bits) + " bits); expected float32, float64, float16 or bfloat16");
  t.data = v.data;
  t.shape = std::move(v.shape);
  t.device = v.device;
  t.owner = std::move(v.owner);
  return t;
}

CudaBytes cudaBytesArg(py::handle obj, bool writable, const char* what, intptr_t stream) {
  requireCuda(what);
  CudaView v = cudaView(obj, writable, what, stream);
  EFCOMM_CHECK(v.bits % 8 == 0 && v.bits > 0, what, ": unsupported element size of ", int(v.bits), " bits");
  CudaBytes b;
  b.itemsize = v.bits / 8;
  b.nbytes = static_cast<size_t>(numelOf(v.shape)) * b.itemsize;
  b.data = v.data;
  b.device = v.device;
  b.owner = std::move(v.owner);
  return b;
}

}  // namespace efcomm::py_bind
