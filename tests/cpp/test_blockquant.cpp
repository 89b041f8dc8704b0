// BlockQuant: per-element error bound, exact constant blocks, the alpha bound, layout and
// validation of crafted messages.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>

#include "test_util.hpp"

namespace efcomm {
namespace {

std::string spec(int bits, int block) {
  return "quant:bits=" + std::to_string(bits) + ",block=" + std::to_string(block);
}

template <typename F>
std::vector<F> roundTripT(Compressor& c, const std::vector<F>& x) {
  Message m = c.compress(test::view(x));
  Message parsed = Message::fromBytes(m.data(), m.size());
  std::vector<F> y(x.size());
  c.decompress(parsed, test::mutableView(y));
  return y;
}

/// Checks |y - x| <= (hi - lo) / (2 L) per block (plus float rounding) and lo <= y <= hi.
template <typename F>
void expectWithinHalfStep(const std::vector<F>& x, const std::vector<F>& y, int bits, int block) {
  const double L = (1 << bits) - 1;
  const double eps = 4 * std::numeric_limits<F>::epsilon();
  for (size_t b = 0; b < x.size(); b += block) {
    const size_t e = std::min(x.size(), b + block);
    const F lo = *std::min_element(x.begin() + b, x.begin() + e);
    const F hi = *std::max_element(x.begin() + b, x.begin() + e);
    const double mag = std::max(std::abs(double(lo)), std::abs(double(hi)));
    const double bound = (double(hi) - double(lo)) / (2 * L) + eps * mag;
    for (size_t i = b; i < e; ++i) {
      ASSERT_LE(std::abs(double(y[i]) - double(x[i])), bound) << "element " << i << " bits " << bits;
      ASSERT_GE(y[i], lo);
      ASSERT_LE(y[i], hi);
    }
  }
}

double sqErr(const std::vector<float>& x, const std::vector<float>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
  return s;
}
double sqNorm(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return s;
}

TEST(BlockQuant, ErrorWithinHalfStepEveryBlock) {
  for (int bits : {2, 4, 8}) {
    for (int block : {8, 24, 256}) {
      for (size_t d : {1, 7, 9, 100, 1000, 4099}) {
        auto c = makeCompressor(spec(bits, block));
        auto x = test::randomVector(d, d + bits);
        for (size_t i = 0; i < d; ++i) x[i] = x[i] * (1 + i % 5) + float(i % 3);  // varied ranges
        expectWithinHalfStep(x, roundTripT(*c, x), bits, block);
      }
    }
  }
}

TEST(BlockQuant, LargeInputUsesThreads) {
  for (int bits : {2, 4, 8}) {
    auto c = makeCompressor(spec(bits, 40));
    auto x = test::randomVector((1 << 18) + 13, 5);
    expectWithinHalfStep(x, roundTripT(*c, x), bits, 40);
  }
}

TEST(BlockQuant, Float64Input) {
  for (int bits : {2, 4, 8}) {
    auto c = makeCompressor(spec(bits, 32));
    std::vector<double> x(1001);
    auto r = test::randomVector(x.size(), 3);
    for (size_t i = 0; i < x.size(); ++i) x[i] = 1e-3 * r[i] + 1e-9 * double(i);
    expectWithinHalfStep(x, roundTripT(*c, x), bits, 32);
    // Scales travel as float64: 16 bytes per block.
    Message m = c->compress(test::view(x));
    EXPECT_EQ(m.payloadSize(), 32u * 16 + (x.size() * bits + 7) / 8);
    EXPECT_EQ(m.size(), c->wireBytes(1001, DType::kFloat64));
  }
}

TEST(BlockQuant, ConstantBlocksAreExact) {
  for (int bits : {2, 4, 8}) {
    auto c = makeCompressor(spec(bits, 16));
    std::vector<float> x(16 * 3 + 5);
    for (size_t i = 0; i < x.size(); ++i) x[i] = i < 16 ? 3.7f : i < 32 ? -1e-30f : i < 48 ? 0.0f : 1e38f;
    EXPECT_EQ(roundTripT(*c, x), x) << bits;
  }
}

TEST(BlockQuant, ExtremeRanges) {
  const float big = std::numeric_limits<float>::max();
  const float tiny = std::numeric_limits<float>::denorm_min();
  for (int bits : {2, 4, 8}) {
    auto c = makeCompressor(spec(bits, 8));
    std::vector<float> x = {big, -big, 0.0f, big / 3, -big / 7, 1.0f, big, -big,  // range overflows
                            tiny, 0.0f, 5 * tiny, 2 * tiny, 3 * tiny, 0.0f, tiny, 7 * tiny,  // subnormal
                            1e-30f, 1e-30f + 1e-37f, 1e-30f, 1e-30f, 1e-30f, 1e-30f, 1e-30f, 1e-30f};
    auto y = roundTripT(*c, x);
    for (float v : y) EXPECT_TRUE(std::isfinite(v));
    expectWithinHalfStep(x, y, bits, 8);
  }
}

TEST(BlockQuant, DeterministicBytes) {
  auto x = test::randomVector(3000, 9);
  auto a = makeCompressor("quant:bits=4,block=64"), b = makeCompressor("quant:bits=4,block=64");
  Message m1 = a->compress(test::view(x)), m2 = a->compress(test::view(x)), m3 = b->compress(test::view(x), 7);
  ASSERT_EQ(m1.size(), m2.size());
  EXPECT_EQ(0, std::memcmp(m1.data(), m2.data(), m1.size()));
  EXPECT_EQ(0, std::memcmp(m1.data(), m3.data(), m1.size()));
}

TEST(BlockQuant, LayoutIsDocumented) {
  // One block of 8 in [0, 3] at 2 bits: step 1, codes are the values; LSB-first, 4 per byte.
  auto c = makeCompressor("quant:bits=2,block=8");
  std::vector<float> x = {0, 1, 2, 3, 3, 2, 1, 0};
  Message m = c->compress(test::view(x));
  ASSERT_EQ(m.payloadSize(), 8u + 2u);
  float lo, hi;
  std::memcpy(&lo, m.payload(), 4);
  std::memcpy(&hi, m.payload() + 4, 4);
  EXPECT_EQ(lo, 0.0f);
  EXPECT_EQ(hi, 3.0f);
  EXPECT_EQ(m.payload()[8], 0b11100100);
  EXPECT_EQ(m.payload()[9], 0b00011011);
  // 4 bits: low nibble first. Round half to even: 0.5 -> 0, 1.5 -> 2.
  auto c4 = makeCompressor("quant:bits=4,block=8");
  std::vector<float> y = {0, 15, 0.5f, 1.5f, 2, 3, 4, 5};
  Message m4 = c4->compress(test::view(y));
  EXPECT_EQ(m4.payload()[8], 0xf0);
  EXPECT_EQ(m4.payload()[9], 0x20);
}

TEST(BlockQuant, AlphaBoundHolds) {
  struct Case {
    int bits, block;
    size_t d;
  };
  // The cases where alpha > 0: 8 bits, or a dimension below L^2.
  for (Case cs : {Case{8, 256, 5000}, Case{8, 8, 100}, Case{8, 1024, 3000}, Case{4, 256, 200},
                  Case{4, 8, 1000}, Case{2, 8, 8}}) {
    auto c = makeCompressor(spec(cs.bits, cs.block));
    const double alpha = c->alpha(static_cast<int64_t>(cs.d));
    ASSERT_GT(alpha, 0.0);
    std::vector<std::vector<float>> inputs;
    inputs.push_back(test::randomVector(cs.d, 11));
    std::vector<float> spikes(cs.d, 0.0f), pm(cs.d, 0.0f), mid(cs.d), skew(cs.d);
    for (size_t i = 0; i < cs.d; i += cs.block) spikes[i] = 1.0f;
    // (M, -M, 0, ...): every 0 sits on the midpoint between two levels when L is odd.
    for (size_t i = 0; i + 1 < cs.d; i += cs.block) pm[i] = 1.0f, pm[i + 1] = -1.0f;
    const double L = (1 << cs.bits) - 1;
    for (size_t i = 0; i < cs.d; ++i) {
      mid[i] = (i % cs.block == 0) ? 1.0f : (i % cs.block == 1) ? -1.0f : float(-1 + 1 / L);  // first midpoint
      skew[i] = (i % 2) ? 1e-3f : 1.0f;
    }
    for (auto* v : {&spikes, &pm, &mid, &skew}) inputs.push_back(*v);
    for (const auto& x : inputs) {
      auto y = roundTripT(*c, x);
      EXPECT_LE(sqErr(x, y), (1 - alpha) * sqNorm(x) * (1 + 1e-6)) << spec(cs.bits, cs.block) << " d=" << cs.d;
    }
  }
  EXPECT_EQ(makeCompressor("quant:bits=4,block=256")->alpha(100000), 0.0);
  EXPECT_DOUBLE_EQ(makeCompressor("quant")->alpha(100000), 1 - 256.0 / (255.0 * 255.0));
  EXPECT_DOUBLE_EQ(makeCompressor("quant:bits=4")->alpha(100), 1 - 100.0 / 225.0);
}

TEST(BlockQuant, SpecsAndShapes) {
  EXPECT_EQ(makeCompressor("quant")->spec(), "quant:bits=8,block=256");
  auto c = makeCompressor("quant:bits=2,block=64");
  EXPECT_EQ(makeCompressor(c->spec())->spec(), c->spec());
  EXPECT_TRUE(c->biased());
  EXPECT_FALSE(c->randomized());
  EXPECT_FALSE(c->omega(10).has_value());
  for (const char* bad : {"quant:bits=3", "quant:bits=16", "quant:bits=1", "quant:block=12", "quant:block=4",
                          "quant:block=0", "quant:block=-8", "quant:block=8589934592", "quant:levels=8"})
    EXPECT_THROW(makeCompressor(bad), InvalidArgument) << bad;

  // Empty, scalar and multi-dimensional inputs.
  Message e = c->compress({nullptr, DType::kFloat32, {0, 3}});
  Message ep = Message::fromBytes(e.data(), e.size());
  EXPECT_EQ(ep.payloadSize(), 0u);
  c->decompress(ep, {nullptr, DType::kFloat32, {0, 3}});
  float s = 2.5f, so = 0;
  Message sm = c->compress({&s, DType::kFloat32, {}});
  c->decompress(Message::fromBytes(sm.data(), sm.size()), {&so, DType::kFloat32, {}});
  EXPECT_EQ(so, 2.5f);
  auto x = test::randomVector(2 * 3 * 50, 4);
  Message mm = c->compress({x.data(), DType::kFloat32, {2, 3, 50}});
  EXPECT_EQ(mm.payloadSize(), 5u * 8 + 300 / 4);  // wireBytes is for 1-d inputs
  for (int64_t d : {0, 1, 63, 64, 65, 1000}) {
    auto v = test::randomVector(static_cast<size_t>(d), 2);
    EXPECT_EQ(c->compress(test::view(v)).size(), c->wireBytes(d)) << d;
  }
}

TEST(BlockQuant, NonFiniteRaises) {
  for (int bits : {2, 8}) {
    auto c = makeCompressor(spec(bits, 16));
    for (size_t pos : {size_t{0}, size_t{5}, size_t{16}, size_t{99}, size_t{100}}) {
      for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()}) {
        auto x = test::randomVector(101, 1);
        x[pos] = bad;
        EXPECT_THROW(c->compress(test::view(x)), NonFiniteError) << pos;
      }
    }
    std::vector<double> xd(300000, 1.0);
    xd[299999] = std::numeric_limits<double>::quiet_NaN();
    EXPECT_THROW(c->compress(test::view(xd)), NonFiniteError);
  }
}

/// A message with the given parameters and payload and a valid checksum.
Message craft(const std::vector<uint8_t>& params, const std::vector<uint8_t>& payload, int64_t d,
              DType dt = DType::kFloat32) {
  Message m = Message::build(CompressorId::kBlockQuant, dt, {d}, 0, params, payload.size());
  if (!payload.empty()) std::memcpy(m.mutablePayload(), payload.data(), payload.size());
  m.finish(payload.size());
  return m;
}

std::vector<uint8_t> quantParams(uint8_t bits, uint32_t block) {
  std::vector<uint8_t> p(5);
  p[0] = bits;
  std::memcpy(p.data() + 1, &block, 4);
  return p;
}

void expectRejected(const Message& m, const char* what) {
  EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << what;
}

TEST(BlockQuant, CorruptMessagesAreRejected) {
  auto c = makeCompressor("quant:bits=4,block=16");
  auto x = test::randomVector(40, 6);
  Message good = c->compress(test::view(x));
  std::vector<uint8_t> payload(good.payload(), good.payload() + good.payloadSize());
  ASSERT_EQ(payload.size(), 3u * 8 + 20);
  EXPECT_NO_THROW(Message::fromBytes(good.data(), good.size()));
  Message same = craft(quantParams(4, 16), payload, 40);
  EXPECT_NO_THROW(Message::fromBytes(same.data(), same.size()));

  auto shorter = payload, longer = payload;
  shorter.pop_back();
  longer.push_back(0);
  expectRejected(craft(quantParams(4, 16), shorter, 40), "short payload");
  expectRejected(craft(quantParams(4, 16), longer, 40), "long payload");
  expectRejected(craft(quantParams(4, 16), payload, 41), "numel mismatch");
  expectRejected(craft(quantParams(4, 16), payload, 40, DType::kFloat64), "dtype changes scale size");
  expectRejected(craft(quantParams(3, 16), payload, 40), "bits 3");
  expectRejected(craft(quantParams(8, 16), payload, 40), "bits 8 needs more bytes");
  expectRejected(craft(quantParams(4, 12), payload, 40), "block 12");
  expectRejected(craft(quantParams(4, 0), payload, 40), "block 0");
  expectRejected(craft({4, 16, 0, 0}, payload, 40), "truncated params");
  expectRejected(craft({4, 16, 0, 0, 0, 0}, payload, 40), "extra params");

  auto setScale = [&](size_t idx, float v) {
    auto p = payload;
    std::memcpy(p.data() + 4 * idx, &v, 4);
    return craft(quantParams(4, 16), p, 40);
  };
  expectRejected(setScale(0, std::numeric_limits<float>::quiet_NaN()), "NaN min");
  expectRejected(setScale(3, std::numeric_limits<float>::infinity()), "Inf max");
  expectRejected(setScale(5, -1e30f), "max < min");

  // decode stays in bounds even when validation is bypassed.
  std::vector<float> out(40);
  EXPECT_THROW(decompress(craft(quantParams(4, 16), shorter, 40), test::mutableView(out)), CorruptMessageError);
}

}  // namespace
}  // namespace efcomm
