#include "efcomm/tensor.hpp"

#include "efcomm/error.hpp"

namespace efcomm {

size_t itemSize(DType dt) {
  switch (dt) {
    case DType::kFloat32: return 4;
    case DType::kFloat64: return 8;
    case DType::kBFloat16:
    case DType::kFloat16: return 2;
  }
  throw InvalidArgument("unknown dtype code " + std::to_string(static_cast<int>(dt)));
}

bool isValidDType(uint8_t raw) { return raw <= 3; }

std::string dtypeName(DType dt) {
  switch (dt) {
    case DType::kFloat32: return "float32";
    case DType::kFloat64: return "float64";
    case DType::kBFloat16: return "bfloat16";
    case DType::kFloat16: return "float16";
  }
  return "dtype(" + std::to_string(static_cast<int>(dt)) + ")";
}

DType parseDType(const std::string& n) {
  if (n == "float32" || n == "f32" || n == "fp32") return DType::kFloat32;
  if (n == "float64" || n == "f64" || n == "fp64") return DType::kFloat64;
  if (n == "bfloat16" || n == "bf16") return DType::kBFloat16;
  if (n == "float16" || n == "fp16" || n == "f16" || n == "half") return DType::kFloat16;
  throw InvalidArgument("unknown dtype '" + n + "'; expected float32, float64, bfloat16 or float16");
}

namespace {
constexpr int64_t kMaxNumel = int64_t{1} << 56;

int64_t product(const std::vector<int64_t>& shape) {
  for (int64_t s : shape) EFCOMM_CHECK(s >= 0, "negative dimension in shape ", shapeString(shape));
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s == 0) return 0;
    EFCOMM_CHECK(n <= kMaxNumel / s, "shape ", shapeString(shape), " has more than 2^56 elements");
    n *= s;
  }
  return n;
}
}  // namespace

int64_t shapeNumel(const std::vector<int64_t>& shape) { return product(shape); }
int64_t ConstTensorView::numel() const { return product(shape); }
int64_t TensorView::numel() const { return product(shape); }

std::string shapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace efcomm
