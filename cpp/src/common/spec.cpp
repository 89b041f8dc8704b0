#include "common/spec.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "efcomm/error.hpp"

namespace efcomm {

namespace {
std::string trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t");
  if (b == std::string::npos) return "";
  const auto e = s.find_last_not_of(" \t");
  return s.substr(b, e - b + 1);
}
}  // namespace

SpecParams SpecParams::parse(const std::string& spec) {
  SpecParams p;
  const auto colon = spec.find(':');
  p.name_ = trim(spec.substr(0, colon));
  EFCOMM_CHECK(!p.name_.empty(), "empty spec string '", spec, "'; expected name[:key=value,...]");
  if (colon == std::string::npos) return p;
  const std::string rest = spec.substr(colon + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t comma = rest.find(',', pos);
    if (comma == std::string::npos) comma = rest.size();
    const std::string item = trim(rest.substr(pos, comma - pos));
    if (!item.empty()) {
      const auto eq = item.find('=');
      EFCOMM_CHECK(eq != std::string::npos, "spec '", spec, "': parameter '", item,
                   "' must be key=value");
      const std::string key = trim(item.substr(0, eq)), value = trim(item.substr(eq + 1));
      EFCOMM_CHECK(!key.empty() && !value.empty(), "spec '", spec, "': empty key or value in '", item, "'");
      EFCOMM_CHECK(p.values_.emplace(key, value).second, "spec '", spec, "': parameter '", key,
                   "' given twice");
    }
    pos = comma + 1;
  }
  return p;
}

const std::string* SpecParams::raw(const std::string& key) {
  auto it = values_.find(key);
  if (it == values_.end()) return nullptr;
  used_.insert(key);
  return &it->second;
}

std::optional<double> SpecParams::getDouble(const std::string& key) {
  const std::string* v = raw(key);
  if (!v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double d = std::strtod(v->c_str(), &end);
  // end at the string's end, not at an embedded NUL ("0.1\0junk")
  EFCOMM_CHECK(end == v->c_str() + v->size() && !v->empty() && errno == 0 && std::isfinite(d), name_,
               ": parameter ", key, "='", *v, "' is not a finite number");
  return d;
}

std::optional<int64_t> SpecParams::getInt(const std::string& key) {
  const std::string* v = raw(key);
  if (!v) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const long long i = std::strtoll(v->c_str(), &end, 10);
  EFCOMM_CHECK(end == v->c_str() + v->size() && !v->empty() && errno == 0, name_, ": parameter ", key, "='", *v,
               "' is not an integer");
  return static_cast<int64_t>(i);
}

std::optional<bool> SpecParams::getBool(const std::string& key) {
  const std::string* v = raw(key);
  if (!v) return std::nullopt;
  if (*v == "true" || *v == "1" || *v == "True") return true;
  if (*v == "false" || *v == "0" || *v == "False") return false;
  throw InvalidArgument(name_ + ": parameter " + key + "='" + *v + "' is not true/false");
}

std::optional<std::string> SpecParams::getString(const std::string& key) {
  const std::string* v = raw(key);
  if (!v) return std::nullopt;
  return *v;
}

void SpecParams::finish(const std::string& allowed) const {
  for (const auto& kv : values_) {
    EFCOMM_CHECK(used_.count(kv.first), "unknown parameter '", kv.first, "' in '", name_,
                 "'; allowed: ", allowed.empty() ? std::string("(none)") : allowed);
  }
}

std::string formatDouble(double v) {
  char buf[32];
  for (int prec = 1; prec <= 17; ++prec) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

}  // namespace efcomm
