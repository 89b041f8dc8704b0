// TopK: exact selection against a stable-sort reference, both index codings, the contraction
// identity, non-finite input, spec strings and malformed payloads.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "common/bytes.hpp"
#include "common/half.hpp"
#include "common/varint.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

// Reads the kept indices straight from the wire layout documented in topk.cpp.
std::vector<int64_t> keptIndices(const Message& m) {
  const int64_t n = m.numel();
  const auto k = static_cast<int64_t>(loadAs<uint64_t>(m.params()));
  const uint8_t* p = m.payload() + k * itemSize(m.dtype());
  const uint8_t* end = m.payload() + m.payloadSize();
  std::vector<int64_t> idx;
  if (m.flags() & 1) {
    for (int64_t i = 0; i < n; ++i)
      if (p[i / 8] >> (i % 8) & 1) idx.push_back(i);
  } else {
    int64_t prev = -1;
    for (int64_t j = 0; j < k; ++j) {
      prev += 1 + static_cast<int64_t>(getVarint(p, end));
      idx.push_back(prev);
    }
  }
  return idx;
}

// Increasing indices of the k largest |x| by a full stable sort (ties: lower index first).
template <typename Mag>
std::vector<int64_t> reference(int64_t n, int64_t k, Mag mag) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return mag(a) > mag(b); });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

enum class Kind { kNormal, kSmallInts, kSigns, kZeros, kAllEqual, kNegative, kSparse };

template <typename T>
std::vector<T> makeInput(Kind kind, int64_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(-3, 3);
  std::vector<T> x(static_cast<size_t>(n));
  for (auto& v : x) {
    switch (kind) {
      case Kind::kNormal: v = static_cast<T>(normal(g)); break;
      case Kind::kSmallInts: v = static_cast<T>(small(g)); break;
      case Kind::kSigns: v = static_cast<T>(g() & 1 ? 1.5 : -1.5); break;
      case Kind::kZeros: v = static_cast<T>(g() & 1 ? 0.0 : -0.0); break;
      case Kind::kAllEqual: v = static_cast<T>(0.75); break;
      case Kind::kNegative: v = static_cast<T>(-std::fabs(normal(g)) - 1.0); break;
      case Kind::kSparse: v = static_cast<T>(g() % 50 == 0 ? normal(g) : 0.0); break;
    }
  }
  return x;
}

template <typename T>
void checkAgainstReference(const std::vector<T>& x, int64_t k, const std::string& what) {
  const auto n = static_cast<int64_t>(x.size());
  auto c = makeCompressor("topk:k=" + std::to_string(k));
  const Message m = c->compress(test::view(x));
  const Message parsed = Message::fromBytes(m.data(), m.size());
  const int64_t kk = std::min(n, k);
  const std::vector<int64_t> want = reference(n, kk, [&](int64_t i) { return std::fabs(x[i]); });
  ASSERT_EQ(keptIndices(parsed), want) << what;
  std::vector<T> y(x.size(), T(7));
  c->decompress(parsed, test::mutableView(y));
  std::vector<T> expect(x.size(), T(0));
  for (int64_t i : want) expect[i] = x[i];
  ASSERT_EQ(y, expect) << what;
  EXPECT_LE(m.size(), c->wireBytes(n, parsed.dtype())) << what;
  // Contraction: the error is exactly the dropped part, at most (1 - k/d)||x||^2 (Stich et al. 2018).
  double err = 0, dropped = 0, norm = 0;
  std::vector<bool> kept(x.size());
  for (int64_t i : want) kept[i] = true;
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i], d = static_cast<double>(y[i]) - xi;
    err += d * d;
    norm += xi * xi;
    if (!kept[i]) dropped += xi * xi;
  }
  EXPECT_EQ(err, dropped) << what;
  EXPECT_LE(err, (1 - c->alpha(n)) * norm * (1 + 1e-12)) << what;
}

template <typename T>
void sweep(const std::vector<int64_t>& sizes) {
  for (Kind kind : {Kind::kNormal, Kind::kSmallInts, Kind::kSigns, Kind::kZeros, Kind::kAllEqual,
                    Kind::kNegative, Kind::kSparse}) {
    for (int64_t n : sizes) {
      const auto x = makeInput<T>(kind, n, static_cast<uint64_t>(n) * 31 + static_cast<uint64_t>(kind));
      for (int64_t k : {int64_t{1}, int64_t{2}, n / 100 + 1, n / 9 + 1, n / 3 + 1, std::max<int64_t>(1, n - 1), n}) {
        if (k > n || k < 1) continue;
        checkAgainstReference(x, k, "kind " + std::to_string(int(kind)) + " n " + std::to_string(n) +
                                        " k " + std::to_string(k));
      }
    }
  }
}

TEST(TopK, MatchesStableSortFloat32) { sweep<float>({1, 2, 7, 64, 1000, 5000, 70000}); }
TEST(TopK, MatchesStableSortFloat64) { sweep<double>({1, 3, 100, 4097, 70000}); }

// Inputs long enough for the sampled one-pass path, including ties that defeat it.
TEST(TopK, LargeInputs) {
  for (Kind kind : {Kind::kNormal, Kind::kSmallInts, Kind::kSparse, Kind::kAllEqual}) {
    const auto x = makeInput<float>(kind, 300000, 5 + static_cast<uint64_t>(kind));
    for (int64_t k : {1, 100, 3000, 30000, 200000}) checkAgainstReference(x, k, "large kind " + std::to_string(int(kind)));
  }
  const auto xd = makeInput<double>(Kind::kAllEqual, 300000, 1);
  checkAgainstReference(xd, 3000, "large f64 all equal");
  auto sorted = makeInput<float>(Kind::kNormal, 400000, 9);
  std::sort(sorted.begin(), sorted.end(), [](float a, float b) { return std::fabs(a) < std::fabs(b); });
  checkAgainstReference(sorted, 4000, "sorted by magnitude");
}

// Long enough for the multi-threaded passes: per-block counts, tie quotas spanning blocks.
TEST(TopK, ParallelBlocks) {
  const int64_t n = (int64_t{1} << 20) + 12345;
  for (Kind kind : {Kind::kNormal, Kind::kSmallInts, Kind::kAllEqual, Kind::kSparse}) {
    const auto x = makeInput<float>(kind, n, 21 + static_cast<uint64_t>(kind));
    checkAgainstReference(x, kind == Kind::kNormal ? n / 100 : n * 7 / 10, "parallel kind " + std::to_string(int(kind)));
    // Small k on tied inputs: the sampled threshold is the k-th key itself (selectAtKey).
    if (kind != Kind::kNormal) checkAgainstReference(x, n / 100, "parallel tied kind " + std::to_string(int(kind)));
  }
}

TEST(TopK, HalfPrecision) {
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const auto xf = makeInput<float>(Kind::kSmallInts, 5000, 3);
    std::vector<uint16_t> bits(xf.size());
    for (size_t i = 0; i < xf.size(); ++i) {
      const float v = xf[i] * 0.37f;
      bits[i] = dt == DType::kBFloat16 ? floatToBf16(v) : floatToF16(v);
    }
    const auto widen = [&](int64_t i) {
      return std::fabs(dt == DType::kBFloat16 ? bf16ToFloat(bits[i]) : f16ToFloat(bits[i]));
    };
    auto c = makeCompressor("topk:k=700");
    const Message m = c->compress({bits.data(), dt, {5000}});
    EXPECT_EQ(keptIndices(Message::fromBytes(m.data(), m.size())), reference(5000, 700, widen));
    std::vector<uint16_t> y(bits.size(), 1);
    c->decompress(m, {y.data(), dt, {5000}});
    for (int64_t i : reference(5000, 700, widen)) EXPECT_EQ(y[i], bits[i]);
  }
}

TEST(TopK, EmptyAndShapes) {
  auto c = makeCompressor("topk:ratio=0.1");
  const Message e = c->compress({nullptr, DType::kFloat32, {0}});
  const Message pe = Message::fromBytes(e.data(), e.size());
  EXPECT_EQ(pe.numel(), 0);
  c->decompress(pe, {nullptr, DType::kFloat32, {0}});
  EXPECT_EQ(e.size(), c->wireBytes(0));

  const auto x = test::randomVector(3 * 5 * 7, 4);
  const Message m = c->compress({x.data(), DType::kFloat32, {3, 5, 7}});
  EXPECT_EQ(m.shape(), (std::vector<int64_t>{3, 5, 7}));
  std::vector<float> y(x.size());
  c->decompress(Message::fromBytes(m.data(), m.size()), {y.data(), DType::kFloat32, {3, 5, 7}});
  EXPECT_EQ(std::count_if(y.begin(), y.end(), [](float v) { return v != 0; }), 11);  // round(10.5)
}

TEST(TopK, BothIndexCodings) {
  const auto x = test::randomVector(1000, 2);
  const Message sparse = makeCompressor("topk:k=10")->compress(test::view(x));
  EXPECT_EQ(sparse.flags() & 1, 0);  // 10 varints beat a 125-byte bitmap
  const Message dense = makeCompressor("topk:k=500")->compress(test::view(x));
  EXPECT_EQ(dense.flags() & 1, 1);
  EXPECT_EQ(dense.payloadSize(), 500 * 4 + 125u);
}

TEST(TopK, WireBytesIsATightBound) {
  // Two indices 129 apart at d = 300 need two 2-byte varints: the worst case the bound allows.
  std::vector<float> x(300, 0.5f);
  x[128] = x[257] = 2;
  auto c = makeCompressor("topk:k=2");
  const Message m = c->compress(test::view(x));
  EXPECT_EQ(m.payloadSize(), 2 * 4 + 4u);
  EXPECT_EQ(m.size(), c->wireBytes(300));
  for (int64_t d : {1, 10, 1000, 100000}) {
    for (const char* spec : {"topk:ratio=0.01", "topk:ratio=0.2", "topk:k=5"}) {
      auto t = makeCompressor(spec);
      const auto v = test::randomVector(static_cast<size_t>(d), static_cast<uint64_t>(d));
      EXPECT_LE(t->compress(test::view(v)).size(), t->wireBytes(d)) << spec << " d " << d;
    }
  }
}

TEST(TopK, NonFiniteRaises) {
  for (int64_t n : {10, 5000, 300000}) {
    for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                      -std::numeric_limits<float>::infinity()}) {
      auto x = test::randomVector(static_cast<size_t>(n), 8);
      x[n / 3] = bad;
      EXPECT_THROW(makeCompressor("topk:k=1")->compress(test::view(x)), NonFiniteError) << n;
      EXPECT_THROW(makeCompressor("topk:ratio=0.01")->compress(test::view(x)), NonFiniteError) << n;
    }
    std::vector<double> xd(static_cast<size_t>(n), 1.0);
    xd[n - 1] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THROW(makeCompressor("topk:ratio=0.5")->compress(test::view(xd)), NonFiniteError) << n;
  }
}

TEST(TopK, SpecAndConstants) {
  EXPECT_EQ(makeCompressor("topk")->spec(), "topk:ratio=0.01");
  for (const char* spec : {"topk:ratio=0.01", "topk:k=100", "topk:ratio=1", "topk:ratio=0.125"}) {
    auto c = makeCompressor(spec);
    EXPECT_EQ(c->spec(), spec);
    EXPECT_EQ(makeCompressor(c->spec())->spec(), c->spec());
  }
  for (const char* bad : {"topk:ratio=0", "topk:ratio=1.5", "topk:k=0", "topk:k=-3", "topk:ratio=0.1,k=5",
                          "topk:seed=1", "topk:ratio=x"})
    EXPECT_THROW(makeCompressor(bad), InvalidArgument) << bad;
  auto c = makeCompressor("topk:k=10");
  EXPECT_TRUE(c->biased());
  EXPECT_FALSE(c->randomized());
  EXPECT_DOUBLE_EQ(c->alpha(1000), 0.01);
  EXPECT_DOUBLE_EQ(c->alpha(5), 1.0);
  EXPECT_FALSE(c->omega(1000).has_value());
  EXPECT_EQ(c->id(), CompressorId::kTopK);
}

// A message with a valid checksum but the given parameters and payload.
std::vector<uint8_t> craft(int64_t n, const std::vector<uint8_t>& params, uint16_t flags,
                           const std::vector<uint8_t>& payload) {
  Message m = Message::build(CompressorId::kTopK, DType::kFloat32, {n}, flags, params, payload.size());
  std::copy(payload.begin(), payload.end(), m.mutablePayload());
  m.finish(payload.size());
  return {m.data(), m.data() + m.size()};
}

std::vector<uint8_t> kParam(uint64_t k) { return ByteWriter().put<uint64_t>(k).bytes(); }

std::vector<uint8_t> varintPayload(int64_t k, const std::vector<uint64_t>& codes) {
  std::vector<uint8_t> p(static_cast<size_t>(k) * 4, 0);
  uint8_t buf[10];
  for (uint64_t v : codes) p.insert(p.end(), buf, buf + putVarint(buf, v));
  return p;
}

TEST(TopK, MalformedPayloadsAreRejected) {
  const int64_t n = 20;
  // Indices 3, 4, 10: codes 3, 0, 5.
  EXPECT_FALSE(test::rejected(craft(n, kParam(3), 0, varintPayload(3, {3, 0, 5}))));
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 0, varintPayload(3, {3, 0, 16}))));  // index 20 out of range
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 0, varintPayload(3, {3, ~uint64_t{1}, 0}))));  // wraps: decreasing
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 0, varintPayload(3, {3, 0}))));        // two indices for k = 3
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 0, varintPayload(3, {3, 0, 5, 1}))));  // trailing index
  EXPECT_TRUE(test::rejected(craft(n, kParam(21), 0, varintPayload(21, std::vector<uint64_t>(21, 0)))));  // k > n
  EXPECT_TRUE(test::rejected(craft(n, kParam(0), 0, {})));                              // k = 0 for n > 0
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 4, varintPayload(3, {3, 0, 5}))));     // unknown flag
  EXPECT_TRUE(test::rejected(craft(n, ByteWriter().put<uint32_t>(3).bytes(), 0, varintPayload(3, {3, 0, 5}))));
  EXPECT_TRUE(test::rejected(craft(n, kParam(uint64_t{1} << 62), 0, {})));               // values cannot fit

  std::vector<uint8_t> bitmap(3 * 4, 0);
  bitmap.insert(bitmap.end(), {0x18, 0x04, 0x00});  // indices 3, 4, 10
  EXPECT_FALSE(test::rejected(craft(n, kParam(3), 1, bitmap)));
  auto wrongCount = bitmap;
  wrongCount[12] = 0x19;
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 1, wrongCount)));  // popcount 4 for k = 3
  auto pastEnd = bitmap;
  pastEnd[14] = 0x10;  // bit 20 >= n, besides the three valid ones
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 1, pastEnd)));
  auto shortMap = bitmap;
  shortMap.pop_back();
  EXPECT_TRUE(test::rejected(craft(n, kParam(3), 1, shortMap)));
}

// Random damage to parameters, flags and payload behind a valid checksum: parsing either rejects
// the message or accepts one that decodes (run under the sanitizers in CI).
TEST(TopK, MutatedPayloadsParseOrDecode) {
  std::mt19937_64 g(17);
  for (int64_t k : {5, 60}) {
    const auto x = test::randomVector(100, static_cast<uint64_t>(k));
    const Message m = makeCompressor("topk:k=" + std::to_string(k))->compress(test::view(x));
    const std::vector<uint8_t> payload(m.payload(), m.payload() + m.payloadSize());
    for (int trial = 0; trial < 3000; ++trial) {
      auto p = payload;
      uint64_t kk = static_cast<uint64_t>(k);
      uint16_t flags = m.flags();
      for (int e = 0, edits = 1 + static_cast<int>(g() % 3); e < edits; ++e) {
        switch (g() % 6) {
          case 0: kk = g() % 3 == 0 ? g() : g() % 120; break;
          case 1: flags ^= static_cast<uint16_t>(1u << (g() % 3)); break;
          case 2: if (!p.empty()) p.pop_back(); break;
          case 3: p.push_back(static_cast<uint8_t>(g())); break;
          default: if (!p.empty()) p[g() % p.size()] ^= static_cast<uint8_t>(1u << (g() % 8)); break;
        }
      }
      const auto bytes = craft(100, kParam(kk), flags, p);
      Message parsed;
      try {
        parsed = Message::fromBytes(bytes.data(), bytes.size());
      } catch (const CorruptMessageError&) {
        continue;
      }
      std::vector<float> out(100);
      decompress(parsed, test::mutableView(out));
    }
  }
}

TEST(TopK, DecodeChecksUnvalidatedMessages) {
  // Built in memory, never parsed: decode itself must refuse to write outside the output.
  auto build = [](uint16_t flags, const std::vector<uint8_t>& payload, uint64_t k) {
    Message m = Message::build(CompressorId::kTopK, DType::kFloat32, {20}, flags, kParam(k), payload.size());
    std::copy(payload.begin(), payload.end(), m.mutablePayload());
    m.finish(payload.size());
    return m;
  };
  std::vector<float> out(20);
  auto c = makeCompressor("topk:k=3");
  EXPECT_THROW(c->decompress(build(0, varintPayload(3, {3, 0, 40}), 3), test::mutableView(out)), CorruptMessageError);
  std::vector<uint8_t> bitmap(3 * 4, 0);
  bitmap.insert(bitmap.end(), {0xff, 0xff, 0x0f});
  EXPECT_THROW(c->decompress(build(1, bitmap, 3), test::mutableView(out)), CorruptMessageError);
}

}  // namespace
}  // namespace efcomm
