#include "comm/backend.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <string_view>
#include <thread>

#include "common/dispatch.hpp"

namespace efcomm::comm {

Clock::time_point deadlineAfter(double seconds) {
  // Beyond ~30 years is "never" (and the conversion to the clock's int64 nanoseconds would
  // overflow into the past: a collective timed out at once).
  constexpr double kNever = 1e9;
  return Clock::now() +
         std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(std::min(seconds, kNever)));
}

double secondsSince(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

size_t partBegin(size_t count, int n, int c) {
  const auto product = static_cast<unsigned __int128>(count) * static_cast<unsigned>(c);
  return static_cast<size_t>(product / static_cast<unsigned>(n));
}

void Backoff::pause() {
  if (spins_ < spinLimit_) {
    ++spins_;
    std::this_thread::yield();
    return;
  }
  sleep_ = std::min(std::max(sleep_ * 2, minSleep_), maxSleep_);
  std::this_thread::sleep_for(sleep_);
}

std::string rankList(const std::vector<int>& ranks) {
  std::string s;
  for (int r : ranks) s += (s.empty() ? "" : ", ") + std::to_string(r);
  return s;
}

double resolveTimeout(std::optional<double> requested, double fallback) {
  const double t = requested.value_or(fallback);
  EFCOMM_CHECK(std::isfinite(t) && t > 0, "collective timeout must be finite and > 0 seconds, got ", t);
  return t;
}

void checkBuffer(const void* p, size_t bytes, const char* what) {
  EFCOMM_CHECK(p != nullptr || bytes == 0, what, ": null buffer for ", bytes, " bytes");
}

void checkSumBuffer(const void* buf, size_t count, DType dtype) {
  EFCOMM_CHECK(dtype == DType::kFloat32 || dtype == DType::kFloat64 || dtype == DType::kBFloat16 ||
                   dtype == DType::kFloat16,
               "allreduceSum: dtype must be float32, float64, bfloat16 or float16, got ", dtypeName(dtype));
  checkBuffer(buf, count, "allreduceSum");
  EFCOMM_CHECK(reinterpret_cast<uintptr_t>(buf) % itemSize(dtype) == 0,
               "allreduceSum: buffer not aligned to ", itemSize(dtype), " bytes");
}

namespace {

std::string_view trim(std::string_view s) {
  const auto blank = [](char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; };
  while (!s.empty() && blank(s.front())) s.remove_prefix(1);
  while (!s.empty() && blank(s.back())) s.remove_suffix(1);
  return s;
}

// The whole of `s` as a number of type T, or nothing.
template <typename T>
std::optional<T> parseWhole(std::string_view s) {
  s = trim(s);
  T value{};
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, value);
  if (s.empty() || ec != std::errc() || ptr != end) return std::nullopt;
  return value;
}

}  // namespace

std::vector<LinkDelay> parseLinkDelays(const std::string& value, int size) {
  std::vector<LinkDelay> delays;
  if (trim(value).empty()) return delays;
  const auto fail = [&](std::string_view item, const std::string& why) {
    return InvalidArgument(detail::concat("efcomm: ", kLinkDelayVariable, "=\"", value, "\": ", why, " in '", item,
                                          "'; expected SRC>DST=SECONDS[,SRC>DST=SECONDS...] with ranks SRC != DST in "
                                          "[0, ",
                                          size, ") and SECONDS >= 0, e.g. \"0>1=0.05\""));
  };
  std::string_view rest(value);
  for (;;) {
    const size_t comma = rest.find(',');
    const std::string_view item = trim(rest.substr(0, comma));
    const size_t gt = item.find('>');
    const size_t eq = item.find('=');
    if (gt == std::string_view::npos || eq == std::string_view::npos || eq < gt) throw fail(item, "malformed item");
    const auto src = parseWhole<int>(item.substr(0, gt));
    const auto dst = parseWhole<int>(item.substr(gt + 1, eq - gt - 1));
    const auto seconds = parseWhole<double>(item.substr(eq + 1));
    if (!src || !dst || !seconds) throw fail(item, "malformed item");
    if (*src < 0 || *src >= size || *dst < 0 || *dst >= size || *src == *dst) throw fail(item, "bad ranks");
    if (!std::isfinite(*seconds) || *seconds < 0) throw fail(item, "bad SECONDS");
    const bool repeated = std::any_of(delays.begin(), delays.end(),
                                      [&](const LinkDelay& d) { return d.src == *src && d.dst == *dst; });
    if (repeated) throw fail(item, "link given twice");
    delays.push_back(LinkDelay{*src, *dst, *seconds});
    if (comma == std::string_view::npos) break;
    rest.remove_prefix(comma + 1);
  }
  return delays;
}

void addInto(void* acc, const void* x, size_t count, DType dtype) {
  dispatchDType(dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* __restrict a = static_cast<T*>(acc);
    const T* __restrict b = static_cast<const T*>(x);
    // 16-bit types: each addition in float32, rounded to the type (Elem<T>).
    for (size_t i = 0; i < count; ++i) a[i] = Elem<T>::store(Elem<T>::load(a[i]) + Elem<T>::load(b[i]));
  });
}

}  // namespace efcomm::comm
