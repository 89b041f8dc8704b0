#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#include "common/dispatch.hpp"
#include "common/parallel.hpp"
#include "compress/codec.hpp"
#include "efcomm/error.hpp"

namespace efcomm {

namespace {

struct Registry {
  std::map<std::string, Codec> byName;
  const Codec* byId[256] = {};
  std::mutex mu;
};

Registry& registry() {
  static Registry r;
  return r;
}

void ensureBuiltins() {
  static std::once_flag once;
  std::call_once(once, registerBuiltins);
}

}  // namespace

void registerCodec(Codec codec) {
  Registry& r = registry();
  std::lock_guard<std::mutex> lock(r.mu);
  const auto raw = static_cast<uint8_t>(codec.id);
  EFCOMM_CHECK(!r.byName.count(codec.name), "compressor '", codec.name, "' is already registered");
  EFCOMM_CHECK(r.byId[raw] == nullptr, "compressor id ", int(raw), " is already registered");
  auto it = r.byName.emplace(codec.name, std::move(codec)).first;
  r.byId[raw] = &it->second;
}

void registerBuiltins() {
  for (auto make : {identityCodec, castCodec, topkCodec, randkCodec, signCodec, qsgdCodec,
                    naturalCodec, blockquantCodec, powersgdCodec})
    registerCodec(make());
}

const Codec* codecByIdOrNull(uint8_t raw) {
  ensureBuiltins();
  return registry().byId[raw];
}

const Codec& codecById(CompressorId id) {
  const Codec* c = codecByIdOrNull(static_cast<uint8_t>(id));
  EFCOMM_CHECK_MSG(c != nullptr, "unknown compressor id ", int(id));
  return *c;
}

std::string compressorName(CompressorId id) { return codecById(id).name; }

std::vector<std::string> compressorNames() {
  ensureBuiltins();
  std::vector<std::string> names;
  for (const auto& kv : registry().byName) names.push_back(kv.first);
  return names;
}

std::unique_ptr<Compressor> makeCompressor(const std::string& spec) {
  ensureBuiltins();
  SpecParams params = SpecParams::parse(spec);
  auto& r = registry();
  auto it = r.byName.find(params.name());
  if (it == r.byName.end()) {
    std::string known;
    for (const auto& kv : r.byName) known += (known.empty() ? "" : ", ") + kv.first;
    throw InvalidArgument("unknown compressor '" + params.name() + "' in spec '" + spec +
                          "'; known: " + known);
  }
  return it->second.make(params);
}

namespace {

void checkOutput(const Message& msg, const TensorView& out) {
  EFCOMM_CHECK(!msg.empty(), "cannot decompress an empty (unfinished) message");
  // A message made with build/finish is checked as fromBytes checks one: decoders rely on it.
  if (!msg.validated()) codecById(msg.compressorId()).validate(msg);
  EFCOMM_CHECK(out.dtype == msg.dtype(), "output dtype ", dtypeName(out.dtype),
               " does not match the message's ", dtypeName(msg.dtype()));
  EFCOMM_CHECK(out.numel() == msg.numel(), "output has ", out.numel(), " elements ",
               shapeString(out.shape), "; the message holds ", msg.numel(), " ",
               shapeString(msg.shape()));
  EFCOMM_CHECK(out.data != nullptr || msg.numel() == 0, "output buffer is null");
}

// The generic accumulate: decode into a temporary, then add it in one parallel pass.
void accumulateDecoded(const Message& msg, const TensorView& out, double weight) {
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T>) {
      std::vector<T> tmp(static_cast<size_t>(msg.numel()));
      const Codec& codec = codecById(msg.compressorId());
      codec.decode(msg, {tmp.data(), out.dtype, out.shape});
      T* o = static_cast<T*>(out.data);
      const T w = static_cast<T>(weight);
      const T* d = tmp.data();
      parallelRanges(msg.numel(), [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) o[i] += w * d[i];
      });
    }
  });
}

}  // namespace

void decompress(const Message& msg, const TensorView& out) {
  checkOutput(msg, out);
  codecById(msg.compressorId()).decode(msg, out);
}

void accumulate(const Message& msg, const TensorView& out, double weight) {
  checkOutput(msg, out);
  EFCOMM_CHECK(out.dtype == DType::kFloat32 || out.dtype == DType::kFloat64,
               "accumulate: float32 or float64 output required, got ", dtypeName(out.dtype));
  const Codec& codec = codecById(msg.compressorId());
  if (codec.accumulate) {
    codec.accumulate(msg, out, weight);
  } else {
    accumulateDecoded(msg, out, weight);
  }
}

}  // namespace efcomm
