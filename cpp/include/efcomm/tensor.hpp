#pragma once
/// @file tensor.hpp
/// Element types and non-owning views of dense, contiguous (row-major) host arrays.

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace efcomm {

/// Floating-point element types that compressors accept. Values are part of the wire format.
enum class DType : uint8_t { kFloat32 = 0, kFloat64 = 1, kBFloat16 = 2, kFloat16 = 3 };

/// Bytes per element.
size_t itemSize(DType dt);
/// "float32", "float64", "bfloat16", "float16".
std::string dtypeName(DType dt);
/// Parses the names above and the short forms f32, f64, bf16, fp16/f16.
DType parseDType(const std::string& name);
/// True for a value that names a DType.
bool isValidDType(uint8_t raw);

/// Product of `shape` (1 for a 0-d scalar). Throws `InvalidArgument` for a negative dimension or
/// more than 2^56 elements.
int64_t shapeNumel(const std::vector<int64_t>& shape);

/// A read-only view of a contiguous array. Does not own `data`; the caller keeps it alive for
/// the duration of the call it is passed to.
struct ConstTensorView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;

  /// Product of the shape (1 for a 0-d scalar). Throws `InvalidArgument` for a negative
  /// dimension or more than 2^56 elements (the wire format's limit, and more than any memory
  /// holds: so that nbytes() cannot overflow).
  int64_t numel() const;
  size_t nbytes() const { return static_cast<size_t>(numel()) * itemSize(dtype); }
};

/// A writable view of a contiguous array.
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;

  int64_t numel() const;  // as ConstTensorView::numel
  size_t nbytes() const { return static_cast<size_t>(numel()) * itemSize(dtype); }
  operator ConstTensorView() const { return {data, dtype, shape}; }
};

/// "[3, 4]" for error messages.
std::string shapeString(const std::vector<int64_t>& shape);

}  // namespace efcomm
