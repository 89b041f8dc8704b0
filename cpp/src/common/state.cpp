#include "efcomm/state.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "common/bytes.hpp"
#include "common/dispatch.hpp"
#include "common/finite.hpp"
#include "efcomm/error.hpp"

namespace efcomm {

StateTensor StateTensor::fromView(const ConstTensorView& v) {
  EFCOMM_CHECK(v.data != nullptr || v.nbytes() == 0, "StateTensor.fromView: null data for ", v.nbytes(), " bytes");
  StateTensor t;
  t.dtype = v.dtype;
  t.shape = v.shape;
  t.bytes.resize(v.nbytes());
  if (!t.bytes.empty()) std::memcpy(t.bytes.data(), v.data, t.bytes.size());
  return t;
}

StateTensor StateTensor::fromDoubles(const std::vector<double>& values) {
  return fromView({values.data(), DType::kFloat64, {static_cast<int64_t>(values.size())}});
}

int64_t StateTensor::numel() const { return ConstTensorView{nullptr, dtype, shape}.numel(); }

const std::string& StateDict::text(const std::string& key) const {
  auto it = meta.find(key);
  EFCOMM_CHECK(it != meta.end(), "state dict: missing entry '", prefix + key, "'");
  return it->second;
}

uint64_t StateDict::integer(const std::string& key) const {
  const std::string& s = text(key);
  EFCOMM_CHECK(!s.empty() && s.size() <= 20 && s.find_first_not_of("0123456789") == std::string::npos,
               "state dict: entry '", prefix + key, "' = '", s, "' is not an unsigned integer");
  errno = 0;
  const unsigned long long v = std::strtoull(s.c_str(), nullptr, 10);
  EFCOMM_CHECK(errno == 0, "state dict: entry '", prefix + key, "' = '", s, "' is out of range");
  return v;
}

const StateTensor& StateDict::tensor(const std::string& key, DType dtype, int64_t numel) const {
  auto it = tensors.find(key);
  EFCOMM_CHECK(it != tensors.end(), "state dict: missing tensor '", prefix + key, "'");
  const StateTensor& t = it->second;
  EFCOMM_CHECK_T(MismatchError, t.dtype == dtype, "state dict: tensor '", prefix + key, "' is ", dtypeName(t.dtype),
                 ", expected ", dtypeName(dtype));
  EFCOMM_CHECK_T(MismatchError, t.numel() == numel, "state dict: tensor '", prefix + key, "' has shape ",
                 shapeString(t.shape), ", expected ", numel, " elements");
  EFCOMM_CHECK(t.bytes.size() == static_cast<size_t>(numel) * itemSize(dtype), "state dict: tensor '", prefix + key,
               "' holds ", t.bytes.size(), " bytes for ", numel, " elements");
  // Every state efcomm saves is finite (a step that would make it otherwise raises first): a NaN
  // or Inf here is a damaged state, which would otherwise surface later as this rank's aggregate
  // differing from the others' or as its inputs being blamed.
  if (!anyNonFinite(ConstTensorView{t.bytes.data(), dtype, t.shape})) return t;
  dispatchDType(dtype, [&](auto tag) {  // name the first one
    using T = typename decltype(tag)::type;
    const auto at = [&](int64_t i) { return loadAs<T>(t.bytes.data() + static_cast<size_t>(i) * sizeof(T)); };
    for (int64_t i = 0; i < numel; ++i) {
      const double d = static_cast<double>(Elem<T>::load(at(i)));
      EFCOMM_CHECK(std::isfinite(d), "state dict: tensor '", prefix + key, "' holds ", std::isnan(d) ? "NaN" : "Inf",
                   " at flat index ", i, " of ", numel, ": the saved state is damaged (efcomm's states are finite)");
    }
  });
  return t;
}

void StateDict::expect(const std::string& key, const std::string& expected, const std::string& what) const {
  const std::string& got = text(key);
  EFCOMM_CHECK_T(MismatchError, got == expected, "state dict: ", what, " (entry '", prefix + key, "') is '", got,
                 "', this object's is '", expected, "'");
}

void StateDict::merge(const StateDict& other, const std::string& prefix) {
  for (const auto& kv : other.meta) meta[prefix + kv.first] = kv.second;
  for (const auto& kv : other.tensors) tensors[prefix + kv.first] = kv.second;
}

StateDict StateDict::sub(const std::string& at) const {
  StateDict out;
  out.prefix = prefix + at;
  for (auto it = meta.lower_bound(at); it != meta.end() && it->first.compare(0, at.size(), at) == 0; ++it)
    out.meta[it->first.substr(at.size())] = it->second;
  for (auto it = tensors.lower_bound(at); it != tensors.end() && it->first.compare(0, at.size(), at) == 0; ++it)
    out.tensors[it->first.substr(at.size())] = it->second;
  return out;
}

}  // namespace efcomm
