#pragma once
// Spec strings: "name[:key=value,key=value...]". Values are read once each; finish() rejects
// keys that no reader consumed, so a typo is an error, not a silent default.
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

namespace efcomm {

class SpecParams {
 public:
  /// Parses `spec`; throws InvalidArgument on syntax errors or repeated keys.
  static SpecParams parse(const std::string& spec);

  const std::string& name() const { return name_; }
  bool has(const std::string& key) const { return values_.count(key) != 0; }
  std::optional<double> getDouble(const std::string& key);
  std::optional<int64_t> getInt(const std::string& key);
  std::optional<bool> getBool(const std::string& key);
  std::optional<std::string> getString(const std::string& key);
  /// Throws InvalidArgument naming unknown keys and listing `allowed`.
  void finish(const std::string& allowed) const;

 private:
  const std::string* raw(const std::string& key);
  std::string name_;
  std::map<std::string, std::string> values_;
  std::set<std::string> used_;
};

/// Shortest decimal text that reads back to the same double ("0.01", "1e-05").
std::string formatDouble(double v);

}  // namespace efcomm
