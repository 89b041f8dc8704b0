#include "feedback/common.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/spec.hpp"

namespace efcomm::feedback {

std::vector<std::string> methodNames() { return {"econtrol", "ef14", "ef21", "ef21sgdm", "ef21w", "none"}; }

Config parseConfig(const std::string& spec, bool receiver) {
  SpecParams p = SpecParams::parse(spec);
  Config c;
  c.name = p.name();
  const auto readInit = [&] {
    const std::string init = p.getString("init").value_or("full");
    EFCOMM_CHECK(init == "full" || init == "compressed", c.name, ": init must be 'full' or 'compressed', got '",
                 init, "'");
    c.initFull = init == "full";
    return ",init=" + init;
  };
  if (c.name == "none" || c.name == "ef14") {
    p.finish("");
    c.canonical = c.name;
  } else if (c.name == "ef21") {
    c.canonical = "ef21:" + readInit().substr(1);
    p.finish("init");
  } else if (c.name == "ef21w") {
    const std::optional<double> w = p.getDouble("weight");
    const std::optional<int64_t> n = p.getInt("n");
    const std::string init = readInit();
    p.finish("weight, n, init");
    if (receiver && !w && !n) {
      c.canonical = "ef21w:" + init.substr(1);
      return c;
    }
    EFCOMM_CHECK(w && n, "ef21w: weight and n are required (EF21-W sends v / (n weight)), got '", spec, "'");
    EFCOMM_CHECK(std::isfinite(*w) && *w > 0 && *w <= 1, "ef21w: weight must be in (0, 1], got ", *w);
    EFCOMM_CHECK(*n >= 1, "ef21w: n must be >= 1, got ", *n);
    // The worker scales by 1 / (n weight), in the state's dtype (float32 at the least).
    EFCOMM_CHECK(1.0 / (static_cast<double>(*n) * *w) <= std::numeric_limits<float>::max(), "ef21w: weight ", *w,
                 " with n = ", *n, " makes the worker's scale 1 / (n weight) overflow float32; weights that small "
                 "mean the rank takes no part: leave it out");
    c.weight = *w;
    c.n = *n;
    c.weighted = true;
    c.canonical = "ef21w:weight=" + formatDouble(*w) + ",n=" + std::to_string(*n) + init;
  } else if (c.name == "ef21sgdm") {
    c.momentum = p.getDouble("momentum").value_or(0.1);
    const std::string init = readInit();
    p.finish("momentum, init");
    EFCOMM_CHECK(c.momentum > 0 && c.momentum <= 1, "ef21sgdm: momentum must be in (0, 1], got ", c.momentum);
    c.canonical = "ef21sgdm:momentum=" + formatDouble(c.momentum) + init;
  } else if (c.name == "econtrol") {
    c.eta = p.getDouble("eta").value_or(0.1);
    const std::string init = readInit();
    p.finish("eta, init");
    EFCOMM_CHECK(c.eta >= 0 && c.eta <= 1, "econtrol: eta must be in [0, 1], got ", c.eta);
    c.canonical = "econtrol:eta=" + formatDouble(c.eta) + init;
  } else {
    std::string known;
    for (const auto& n : methodNames()) known += (known.empty() ? "" : ", ") + n;
    throw InvalidArgument("unknown feedback method '" + c.name + "' in spec '" + spec + "'; known: " + known);
  }
  return c;
}

TensorView workspace(const ConstTensorView& like) {
  thread_local std::vector<double> ws;
  const size_t need = words(like.nbytes());
  if (ws.size() < need) ws = std::vector<double>(need);
  return {ws.data(), like.dtype, like.shape};
}

void checkFloatDType(DType dt, const std::string& what) {
  EFCOMM_CHECK(dt == DType::kFloat32 || dt == DType::kFloat64, what, ": float32 or float64 required, got ",
               dtypeName(dt));
}

void copy(const ConstTensorView& src, const TensorView& dst) {
  const auto* s = static_cast<const uint8_t*>(src.data);
  auto* d = static_cast<uint8_t*>(dst.data);
  parallelBlocks(static_cast<int64_t>(src.nbytes()), 1 << 20, [&](int64_t, int64_t lo, int64_t hi) {
    std::memcpy(d + lo, s + lo, static_cast<size_t>(hi - lo));
  }, 1 << 21);
}

std::string shapeText(const std::vector<int64_t>& shape) {
  std::string s;
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s;
}

std::vector<int64_t> parseShape(const std::string& text) {
  std::vector<int64_t> shape;
  size_t at = 0;
  while (at < text.size()) {
    const size_t end = std::min(text.find(',', at), text.size());
    const std::string part = text.substr(at, end - at);
    EFCOMM_CHECK(!part.empty() && part.size() <= 18 && part.find_first_not_of("0123456789") == std::string::npos,
                 "state dict: malformed shape '", text, "'");
    shape.push_back(std::stoll(part));
    at = end + 1;
    EFCOMM_CHECK(end == text.size() || at < text.size(), "state dict: malformed shape '", text, "'");
  }
  EFCOMM_CHECK(shape.size() <= 8, "state dict: shape '", text, "' has too many dimensions");
  ConstTensorView{nullptr, DType::kFloat32, shape}.numel();  // validates the product
  return shape;
}

const StateTensor& savedArray(const StateDict& d, const std::string& key, DType dtype,
                              const std::vector<int64_t>& shape) {
  const StateTensor& t = d.tensor(key, dtype, ConstTensorView{nullptr, dtype, shape}.numel());
  EFCOMM_CHECK_T(MismatchError, t.shape == shape, "state dict: tensor '", key, "' has shape ", shapeString(t.shape),
                 ", expected ", shapeString(shape));
  return t;
}

void restoreArray(const StateTensor& t, std::vector<double>& storage) {
  storage.assign(words(t.bytes.size()), 0.0);
  if (!t.bytes.empty()) std::memcpy(storage.data(), t.bytes.data(), t.bytes.size());
}

}  // namespace efcomm::feedback
