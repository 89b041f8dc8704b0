#pragma once
// Minimal JSON for the health monitor's dumps, the coordinator's view and plan topologies. Writing:
// strings escaped per RFC 8259, doubles in shortest round-trip form, non-finite doubles as null.
// Reading: a strict RFC 8259 parser into `Value` (UTF-8 checked, duplicate keys and nesting
// deeper than kMaxDepth refused), errors as InvalidArgument naming the byte offset.

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <variant>
#include <vector>

#include "efcomm/error.hpp"

namespace efcomm::json {

/// s as a JSON string literal.
inline std::string quote(std::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (const char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(static_cast<unsigned char>(c)));
          out += buf;
        } else {
          out += c;
        }
    }
  }
  out += '"';
  return out;
}

/// v as a JSON number; null when v is NaN or infinite.
inline std::string number(double v) {
  if (!std::isfinite(v)) return "null";
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, r.ptr);
}

/// A parsed JSON value. Numbers keep their source text too, for readers that must convert it
/// exactly (e.g. with a scale factor applied to the decimal digits); objects keep member order.
class Value {
 public:
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };
  using Array = std::vector<Value>;
  using Object = std::vector<std::pair<std::string, Value>>;

  Value() = default;
  static Value makeBool(bool b) { return Value(Data(std::in_place_index<1>, b)); }
  static Value makeNumber(double v, std::string text) {
    return Value(Data(std::in_place_index<2>, Number{v, std::move(text)}));
  }
  static Value makeString(std::string s) { return Value(Data(std::in_place_index<3>, std::move(s))); }
  static Value makeArray(Array a) { return Value(Data(std::in_place_index<4>, std::move(a))); }
  static Value makeObject(Object o) { return Value(Data(std::in_place_index<5>, std::move(o))); }

  Type type() const { return static_cast<Type>(data_.index()); }
  bool isNull() const { return type() == Type::kNull; }
  bool isBool() const { return type() == Type::kBool; }
  bool isNumber() const { return type() == Type::kNumber; }
  bool isString() const { return type() == Type::kString; }
  bool isArray() const { return type() == Type::kArray; }
  bool isObject() const { return type() == Type::kObject; }

  /// The value; throws InvalidArgument when it is of another type.
  bool boolean() const { return get<1>("a boolean"); }
  double number() const { return get<2>("a number").value; }
  /// A number's source text, e.g. "4e+2".
  const std::string& numberText() const { return get<2>("a number").text; }
  const std::string& string() const { return get<3>("a string"); }
  const Array& array() const { return get<4>("an array"); }
  const Object& object() const { return get<5>("an object"); }
  /// The member `key` of an object, or nullptr (also when this is not an object).
  const Value* find(std::string_view key) const {
    if (!isObject()) return nullptr;
    for (const auto& [k, v] : object()) {
      if (k == key) return &v;
    }
    return nullptr;
  }

  /// "null", "boolean", "number", "string", "array", "object".
  static const char* typeName(Type t) {
    static const char* const kNames[] = {"null", "boolean", "number", "string", "array", "object"};
    return kNames[static_cast<int>(t)];
  }

 private:
  struct Number {
    double value;
    std::string text;
  };
  using Data = std::variant<std::monostate, bool, Number, std::string, Array, Object>;
  explicit Value(Data d) : data_(std::move(d)) {}

  template <size_t I>
  const std::variant_alternative_t<I, Data>& get(const char* expected) const {
    EFCOMM_CHECK(data_.index() == I, "json: expected ", expected, ", got ", typeName(type()));
    return std::get<I>(data_);
  }

  Data data_;
};

/// The deepest nesting of arrays and objects `parse` accepts.
inline constexpr int kMaxDepth = 256;

namespace detail {

class Parser {
 public:
  explicit Parser(std::string_view text) : s_(text) {}

  Value document() {
    skipSpace();
    Value v = value(0);
    skipSpace();
    if (pos_ != s_.size()) fail("unexpected characters after the document");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    throw InvalidArgument("json: " + what + " at byte " + std::to_string(pos_));
  }

  void skipSpace() {
    while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r')) ++pos_;
  }

  bool consume(char c) {
    if (pos_ < s_.size() && s_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  void literal(std::string_view word) {
    if (s_.substr(pos_, word.size()) != word) fail("invalid literal (expected " + std::string(word) + ")");
    pos_ += word.size();
  }

  Value value(int depth) {
    if (pos_ >= s_.size()) fail("unexpected end of input, expected a value");
    switch (s_[pos_]) {
      case '{': return object(depth + 1);
      case '[': return array(depth + 1);
      case '"': return Value::makeString(string());
      case 't': literal("true"); return Value::makeBool(true);
      case 'f': literal("false"); return Value::makeBool(false);
      case 'n': literal("null"); return Value();
      default: return number();
    }
  }

  void checkDepth(int depth) const {
    if (depth > kMaxDepth) fail("nesting deeper than " + std::to_string(kMaxDepth));
  }

  Value array(int depth) {
    checkDepth(depth);
    ++pos_;  // '['
    Value::Array items;
    skipSpace();
    if (consume(']')) return Value::makeArray(std::move(items));
    for (;;) {
      skipSpace();
      items.push_back(value(depth));
      skipSpace();
      if (consume(']')) return Value::makeArray(std::move(items));
      if (!consume(',')) fail("expected ',' or ']' in an array");
    }
  }

  Value object(int depth) {
    checkDepth(depth);
    const size_t start = pos_;
    ++pos_;  // '{'
    Value::Object members;
    skipSpace();
    if (!consume('}')) {
      for (;;) {
        skipSpace();
        if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a string key in an object");
        std::string key = string();
        skipSpace();
        if (!consume(':')) fail("expected ':' after an object key");
        skipSpace();
        Value v = value(depth);
        members.emplace_back(std::move(key), std::move(v));
        skipSpace();
        if (consume('}')) break;
        if (!consume(',')) fail("expected ',' or '}' in an object");
      }
    }
    // Duplicate keys are ambiguous (RFC 8259 section 4): refused, found in O(m log m).
    std::vector<std::string_view> keys;
    keys.reserve(members.size());
    for (const auto& m : members) keys.push_back(m.first);
    std::sort(keys.begin(), keys.end());
    const auto dup = std::adjacent_find(keys.begin(), keys.end());
    if (dup != keys.end()) {
      pos_ = start;
      fail("duplicate key " + quote(*dup) + " in the object");
    }
    return Value::makeObject(std::move(members));
  }

  static bool isDigit(char c) { return c >= '0' && c <= '9'; }

  Value number() {
    const size_t start = pos_;
    consume('-');
    if (consume('0')) {
    } else if (pos_ < s_.size() && s_[pos_] >= '1' && s_[pos_] <= '9') {
      while (pos_ < s_.size() && isDigit(s_[pos_])) ++pos_;
    } else {
      fail("invalid value");
    }
    if (consume('.')) {
      if (pos_ >= s_.size() || !isDigit(s_[pos_])) fail("expected a digit after the decimal point");
      while (pos_ < s_.size() && isDigit(s_[pos_])) ++pos_;
    }
    if (pos_ < s_.size() && (s_[pos_] == 'e' || s_[pos_] == 'E')) {
      ++pos_;
      if (!consume('+')) consume('-');
      if (pos_ >= s_.size() || !isDigit(s_[pos_])) fail("expected a digit in the exponent");
      while (pos_ < s_.size() && isDigit(s_[pos_])) ++pos_;
    }
    const std::string_view text = s_.substr(start, pos_ - start);
    double v = 0;
    const auto r = std::from_chars(text.data(), text.data() + text.size(), v);
    if (r.ec != std::errc() || r.ptr != text.data() + text.size()) {
      pos_ = start;
      fail("number " + std::string(text) + " out of the range of a double");
    }
    return Value::makeNumber(v, std::string(text));
  }

  unsigned hex4() {
    if (s_.size() - pos_ < 4) fail("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i) {
      const char c = s_[pos_++];
      v <<= 4;
      if (c >= '0' && c <= '9') {
        v |= static_cast<unsigned>(c - '0');
      } else if (c >= 'a' && c <= 'f') {
        v |= static_cast<unsigned>(c - 'a' + 10);
      } else if (c >= 'A' && c <= 'F') {
        v |= static_cast<unsigned>(c - 'A' + 10);
      } else {
        --pos_;
        fail("invalid hex digit in a \\u escape");
      }
    }
    return v;
  }

  static void appendUtf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  // One UTF-8 sequence starting at pos_ (a byte >= 0x80), checked: no overlong forms, no
  // surrogates, nothing above U+10FFFF.
  void utf8(std::string& out) {
    const auto byte = [&](size_t i) { return static_cast<unsigned char>(s_[i]); };
    const unsigned char b0 = byte(pos_);
    int len = 0;
    unsigned cp = 0, min = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2, cp = b0 & 0x1F, min = 0x80;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3, cp = b0 & 0x0F, min = 0x800;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4, cp = b0 & 0x07, min = 0x10000;
    } else {
      fail("invalid UTF-8");
    }
    if (s_.size() - pos_ < static_cast<size_t>(len)) fail("truncated UTF-8 sequence");
    for (int i = 1; i < len; ++i) {
      const unsigned char b = byte(pos_ + i);
      if ((b & 0xC0) != 0x80) fail("invalid UTF-8");
      cp = (cp << 6) | (b & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) fail("invalid UTF-8");
    out.append(s_.substr(pos_, len));
    pos_ += len;
  }

  std::string string() {
    ++pos_;  // '"'
    std::string out;
    for (;;) {
      if (pos_ >= s_.size()) fail("unterminated string");
      const char c = s_[pos_];
      if (c == '"') {
        ++pos_;
        return out;
      }
      if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string (escape it)");
      if (static_cast<unsigned char>(c) >= 0x80) {
        utf8(out);
        continue;
      }
      ++pos_;
      if (c != '\\') {
        out += c;
        continue;
      }
      if (pos_ >= s_.size()) fail("unterminated string");
      const char e = s_[pos_++];
      switch (e) {
        case '"': out += '"'; break;
        case '\\': out += '\\'; break;
        case '/': out += '/'; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': {
          unsigned cp = hex4();
          if (cp >= 0xDC00 && cp <= 0xDFFF) fail("unpaired low surrogate in a \\u escape");
          if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (s_.substr(pos_, 2) != "\\u") fail("unpaired high surrogate in a \\u escape");
            pos_ += 2;
            const unsigned lo = hex4();
            if (lo < 0xDC00 || lo > 0xDFFF) fail("unpaired high surrogate in a \\u escape");
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
          }
          appendUtf8(out, cp);
          break;
        }
        default: --pos_; fail("invalid escape in a string");
      }
    }
  }

  std::string_view s_;
  size_t pos_ = 0;
};

}  // namespace detail

/// Parses one JSON document (RFC 8259). Throws InvalidArgument "json: <what> at byte <offset>".
inline Value parse(std::string_view text) { return detail::Parser(text).document(); }

}  // namespace efcomm::json
