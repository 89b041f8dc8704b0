// Natural compression: powers of two only, unbiasedness and variance, the documented draw,
// range clamping, dtypes, and payload validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common/bitpack.hpp"
#include "common/bytes.hpp"
#include "common/half.hpp"
#include "common/rng.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

Message craft(DType dt, int64_t n, const std::vector<uint8_t>& params, const std::vector<uint8_t>& payload,
              uint16_t flags = 0) {
  Message m = Message::build(CompressorId::kNatural, dt, {n}, flags, params, payload.size());
  if (!payload.empty()) std::memcpy(m.mutablePayload(), payload.data(), payload.size());
  m.finish(payload.size());
  return m;
}

std::vector<uint8_t> packed(const std::vector<uint16_t>& codes, int w) {
  std::vector<uint8_t> p(packedBytes(int64_t(codes.size()), w));
  packBits(codes.data(), int64_t(codes.size()), w, p.data());
  return p;
}

// 2^floor(log2 |t|) for t != 0.
double lowerPower(double t) {
  int e;
  std::frexp(std::fabs(t), &e);
  return std::ldexp(1.0, e - 1);
}

// Values over many binades, exact powers of two, a zero and a negative zero.
std::vector<float> spreadVector(size_t d, uint64_t seed) {
  auto x = test::randomVector(d, seed);
  for (size_t j = 0; j < d; ++j) x[j] = std::ldexp(x[j], int(j % 41) - 20);
  if (d > 4) {
    x[1] = 0.0f;
    x[2] = -0.0f;
    x[3] = 0.25f;
    x[4] = -1024.0f;
  }
  return x;
}

TEST(Natural, SpecAndConstants) {
  auto c = makeCompressor("natural");
  EXPECT_EQ(c->spec(), "natural:seed=0");
  EXPECT_EQ(makeCompressor("natural:seed=12")->spec(), "natural:seed=12");
  EXPECT_EQ(makeCompressor(c->spec())->spec(), c->spec());
  EXPECT_FALSE(c->biased());
  EXPECT_TRUE(c->randomized());
  EXPECT_DOUBLE_EQ(*c->omega(10), 0.125);
  EXPECT_DOUBLE_EQ(c->alpha(10), 8.0 / 9.0);
  EXPECT_THROW(makeCompressor("natural:seed=-2"), InvalidArgument);
  EXPECT_THROW(makeCompressor("natural:levels=2"), InvalidArgument);
  // 9 bits per element for every dtype; float64 adds a 2-byte window parameter.
  EXPECT_EQ(c->wireBytes(13), messageBytes(1, 0, 15));
  EXPECT_EQ(c->wireBytes(13, DType::kBFloat16), messageBytes(1, 0, 15));
  EXPECT_EQ(c->wireBytes(13, DType::kFloat64), messageBytes(1, 2, 15));
  for (size_t d : {0, 1, 13, 64, 70001}) {
    auto x = spreadVector(d, 1);
    std::vector<double> xd(x.begin(), x.end());
    EXPECT_EQ(c->compress(test::view(x)).size(), c->wireBytes(int64_t(d))) << d;
    EXPECT_EQ(c->compress(test::view(xd)).size(), c->wireBytes(int64_t(d), DType::kFloat64)) << d;
  }
}

TEST(Natural, ValuesAreNeighbouringPowersOfTwo) {
  auto c = makeCompressor("natural:seed=4");
  for (size_t d : {1, 13, 4096, 70001}) {
    auto x = spreadVector(d, d);
    std::vector<double> xd(x.begin(), x.end()), yd(d);
    auto y = test::roundTrip(*c, x, 2);
    const Message md = c->compress(test::view(xd), 2);
    c->decompress(Message::fromBytes(md.data(), md.size()), test::mutableView(yd));
    for (size_t j = 0; j < d; ++j) {
      for (double v : {double(y[j]), yd[j]}) {
        if (x[j] == 0) {
          ASSERT_EQ(v, 0.0) << j;
          ASSERT_EQ(std::signbit(v), std::signbit(x[j])) << j;
          continue;
        }
        const double lo = lowerPower(x[j]);
        ASSERT_TRUE(std::fabs(v) == lo || std::fabs(v) == 2 * lo) << "d=" << d << " j=" << j << " x=" << x[j] << " y=" << v;
        if (std::fabs(double(x[j])) == lo) {
          ASSERT_EQ(std::fabs(v), lo) << "powers of two are kept";
        }
        ASSERT_EQ(std::signbit(v), std::signbit(x[j])) << j;
      }
    }
  }
}

// E C(x) = x and E||C(x) - x||^2 = sum_j lo_j^2 f_j (1 - f_j) <= ||x||^2 / 8, checked over many
// steps against CLT bounds (|x_j| = lo_j (1 + f_j)).
TEST(Natural, UnbiasedWithBoundedVariance) {
  const int steps = 4000;
  auto c = makeCompressor("natural:seed=9");
  auto x = spreadVector(64, 77);
  x[5] = 4.0f / 3.0f;  // where the variance bound is attained
  const size_t d = x.size();
  std::vector<double> var(d, 0.0);
  double norm = 0, expectedErr = 0;
  for (size_t j = 0; j < d; ++j) {
    norm += double(x[j]) * x[j];
    if (x[j] == 0) continue;
    const double lo = lowerPower(x[j]), f = std::fabs(double(x[j])) / lo - 1;
    var[j] = lo * lo * f * (1 - f);
    expectedErr += var[j];
  }
  EXPECT_LE(expectedErr, *c->omega(int64_t(d)) * norm);
  EXPECT_NEAR(var[5], double(x[5]) * x[5] / 8, 1e-6);
  const test::Moments mo = test::empiricalMoments(*c, x, steps);
  for (size_t j = 0; j < d; ++j)
    EXPECT_NEAR(mo.mean[j], x[j], 5 * std::sqrt(var[j] / steps) + 1e-7 * std::fabs(x[j])) << j;
  EXPECT_NEAR(mo.err, expectedErr, 5 * mo.sd);
  EXPECT_LE(mo.err, *c->omega(int64_t(d)) * norm + 5 * mo.sd);
}

// The draw is the documented function of (seed, step, j): round up iff the mantissa exceeds
// uniformBits(key, j) >> 9 (float32); for float64 the top 52 bits of two draws, with codes
// relative to the window base.
TEST(Natural, DrawMatchesTheDocumentedFormula) {
  auto c = makeCompressor("natural:seed=31");
  auto x = spreadVector(3000, 5);
  const uint64_t key = drawKey(31, 6);
  {
    const Message m = c->compress(test::view(x), 6);
    std::vector<uint16_t> codes(x.size());
    unpackBits(m.payload(), int64_t(x.size()), 9, codes.data());
    int mismatches = 0;
    for (size_t j = 0; j < x.size(); ++j) {
      uint32_t b;
      std::memcpy(&b, &x[j], 4);
      const uint32_t e = (b >> 23) & 0xff, up = (b & 0x7fffff) > (uniformBits(key, j) >> 9);
      mismatches += codes[j] != ((b >> 31) << 8 | std::min(e + up, 254u));
    }
    EXPECT_EQ(mismatches, 0);
  }
  {
    std::vector<double> xd(x.begin(), x.end());
    for (size_t j = 0; j < xd.size(); ++j) xd[j] *= 1 + 1e-9 * double(j);  // use low mantissa bits
    xd[9] = 0x1p-300;                                                       // below the window
    const Message m = c->compress(test::view(xd), 6);
    uint32_t emax = 0;
    for (double v : xd) {
      if (v != 0) emax = std::max(emax, uint32_t(std::ilogb(v) + 1023));
    }
    const uint32_t base = emax + 1 - 254;
    ASSERT_EQ(m.paramsSize(), 2u);
    EXPECT_EQ(loadAs<uint16_t>(m.params()), base);
    std::vector<uint16_t> codes(xd.size());
    unpackBits(m.payload(), int64_t(xd.size()), 9, codes.data());
    int mismatches = 0;
    for (size_t j = 0; j < xd.size(); ++j) {
      uint64_t b;
      std::memcpy(&b, &xd[j], 8);
      const uint64_t u = (uint64_t(uniformBits(key, 2 * j)) << 32 | uniformBits(key, 2 * j + 1)) >> 12;
      const uint64_t man = b & ((uint64_t{1} << 52) - 1);
      const uint32_t e = uint32_t(b >> 52) & 0x7ff;
      uint32_t code;
      if (e > base) {
        code = e - base + (man > u);
      } else {
        const uint64_t sig = e ? man | (uint64_t{1} << 52) : man;
        const uint32_t k = base + 1 - std::max(e, 1u);
        code = (k < 64 ? sig >> k : 0) > u;
      }
      mismatches += codes[j] != (uint32_t(b >> 63) << 8 | code);
    }
    EXPECT_EQ(mismatches, 0);
  }
}

// float64 codes cover the 254 binades below the largest element; an element further down
// rounds, unbiased, between 0 and the smallest power of the window.
TEST(Natural, Float64Window) {
  auto c = makeCompressor("natural:seed=8");
  std::vector<double> x(5000, 1.5 * 0x1p40), y(x.size());
  x[0] = 0x1p300;  // window base 1323 + 1 - 254 = 1070: powers 2^48 .. 2^301
  x[1] = 0x1p-1074;
  x[2] = -0x1.8p60;
  x[3] = 0.0;
  const double p = 1.5 * 0x1p40 / 0x1p48;
  double ups = 0;
  const int steps = 20;
  for (int t = 0; t < steps; ++t) {
    const Message m = c->compress(test::view(x), uint64_t(t));
    EXPECT_EQ(loadAs<uint16_t>(m.params()), 1070);
    c->decompress(Message::fromBytes(m.data(), m.size()), test::mutableView(y));
    EXPECT_EQ(y[0], 0x1p300);
    EXPECT_EQ(y[1], 0.0);
    EXPECT_TRUE(y[2] == -0x1p60 || y[2] == -0x1p61) << y[2];
    EXPECT_EQ(y[3], 0.0);
    for (size_t j = 4; j < x.size(); ++j) {
      ASSERT_TRUE(y[j] == 0.0 || y[j] == 0x1p48) << y[j];
      ups += y[j] != 0;
    }
  }
  const double trials = steps * (x.size() - 4.0);
  EXPECT_NEAR(ups / trials, p, 5 * std::sqrt(p * (1 - p) / trials));
  // The largest binade of float64 is clamped: the window then ends at field 2046.
  std::vector<double> big = {std::numeric_limits<double>::max(), 1.0};
  const Message mb = c->compress(test::view(big));
  EXPECT_EQ(loadAs<uint16_t>(mb.params()), 2046 - 254);
}

TEST(Natural, SameDrawForSameSeedAndStep) {
  auto x = spreadVector(70001, 3);
  auto a = makeCompressor("natural:seed=2"), b = makeCompressor("natural:seed=2");
  const Message m1 = a->compress(test::view(x), 8), m2 = b->compress(test::view(x), 8);
  ASSERT_EQ(m1.size(), m2.size());
  EXPECT_EQ(std::memcmp(m1.data(), m2.data(), m1.size()), 0);
  const Message m3 = a->compress(test::view(x), 9);
  EXPECT_NE(std::memcmp(m1.data(), m3.data(), m1.size()), 0);
  const Message m4 = makeCompressor("natural:seed=3")->compress(test::view(x), 8);
  EXPECT_NE(std::memcmp(m1.data(), m4.data(), m1.size()), 0);
}

TEST(Natural, ZeroAndEmptyInputs) {
  auto c = makeCompressor("natural");
  std::vector<float> z(13, 0.0f);
  const Message m = c->compress(test::view(z));
  for (size_t i = 0; i < m.payloadSize(); ++i) EXPECT_EQ(m.payload()[i], 0);
  for (float v : test::roundTrip(*c, z)) EXPECT_EQ(v, 0.0f);
  const Message e = c->compress({nullptr, DType::kFloat64, {0, 4}});
  const Message p = Message::fromBytes(e.data(), e.size());
  EXPECT_EQ(p.payloadSize(), 0u);
  c->decompress(p, {nullptr, DType::kFloat64, {0}});
}

// Rounding up the top binade would overflow: those elements round down, never to Inf.
TEST(Natural, TopBinadeIsClamped) {
  auto c = makeCompressor("natural");
  std::vector<float> x = {std::numeric_limits<float>::max(), -1.5f * 0x1p127f, 0x1p127f};
  std::vector<double> xd = {std::numeric_limits<double>::max(), -1.75 * 0x1p1023};
  std::vector<uint16_t> h = {floatToF16(65504.0f), floatToF16(-40000.0f)};
  for (uint64_t step = 0; step < 50; ++step) {
    const auto y = test::roundTrip(*c, x, step);
    EXPECT_EQ(y, (std::vector<float>{0x1p127f, -0x1p127f, 0x1p127f}));
    std::vector<double> yd(2);
    const Message md = c->compress(test::view(xd), step);
    c->decompress(Message::fromBytes(md.data(), md.size()), test::mutableView(yd));
    EXPECT_EQ(yd, (std::vector<double>{0x1p1023, -0x1p1023}));
    std::vector<uint16_t> yh(2);
    const Message mh = c->compress({h.data(), DType::kFloat16, {2}}, step);
    c->decompress(Message::fromBytes(mh.data(), mh.size()), {yh.data(), DType::kFloat16, {2}});
    EXPECT_EQ(f16ToFloat(yh[0]), 32768.0f);
    EXPECT_EQ(f16ToFloat(yh[1]), -32768.0f);
  }
}

// A subnormal rounds between 0 and the smallest normal, unbiased.
TEST(Natural, SubnormalsRoundToZeroOrTheSmallestNormal) {
  auto c = makeCompressor("natural:seed=1");
  const float sub = 0x1p-128f * 1.5f;  // = 0.375 * 2^-126
  std::vector<float> x(1000, sub);
  double sum = 0;
  for (uint64_t step = 0; step < 20; ++step) {
    for (float v : test::roundTrip(*c, x, step)) {
      ASSERT_TRUE(v == 0.0f || v == 0x1p-126f) << v;
      sum += v;
    }
  }
  const double mean = sum / 20000, sd = std::sqrt(0.375 * 0.625 / 20000) * 0x1p-126;
  EXPECT_NEAR(mean, double(sub), 5 * sd);
}

TEST(Natural, SixteenBitInputs) {
  auto c = makeCompressor("natural:seed=6");
  auto f = test::randomVector(2001, 12);
  for (size_t j = 0; j < f.size(); ++j) f[j] = std::ldexp(f[j], int(j % 25) - 14);  // inside the fp16 range
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    const bool bf = dt == DType::kBFloat16;
    std::vector<uint16_t> x(f.size()), y(f.size());
    for (size_t j = 0; j < f.size(); ++j) x[j] = bf ? floatToBf16(f[j]) : floatToF16(f[j]);
    x[7] = bf ? floatToBf16(0x1p-130f) : uint16_t(3);  // subnormals: bf16 0x1p-130, fp16 3 * 2^-24
    const Message m = c->compress({x.data(), dt, {3, 667}}, 1);
    EXPECT_EQ(m.payloadSize(), packedBytes(2001, 9));
    c->decompress(Message::fromBytes(m.data(), m.size()), {y.data(), dt, {2001}});
    for (size_t j = 0; j < f.size(); ++j) {
      const double xv = bf ? bf16ToFloat(x[j]) : f16ToFloat(x[j]), yv = bf ? bf16ToFloat(y[j]) : f16ToFloat(y[j]);
      if (xv == 0) {
        ASSERT_EQ(yv, 0.0) << j;
        continue;
      }
      if (bf && j == 7) {
        ASSERT_TRUE(yv == 0.0 || yv == 0x1p-126) << yv;
        continue;
      }
      const double lo = lowerPower(xv);
      ASSERT_TRUE(std::fabs(yv) == lo || std::fabs(yv) == 2 * lo) << dtypeName(dt) << " j=" << j << " " << xv << " " << yv;
      ASSERT_EQ(std::signbit(yv), std::signbit(xv));
    }
  }
}

TEST(Natural, NonFiniteRaises) {
  auto c = makeCompressor("natural");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
    for (size_t at : {size_t{0}, size_t{4097}, size_t{99999}}) {
      std::vector<float> x(100000, 1.0f);
      x[at] = bad;
      EXPECT_THROW(c->compress(test::view(x)), NonFiniteError) << at;
    }
    std::vector<double> xd(9, 2.0);
    xd[8] = bad;
    EXPECT_THROW(c->compress(test::view(xd)), NonFiniteError);
  }
  std::vector<uint16_t> b(5, 0x3f80), h(5, 0x3c00);
  b[2] = 0x7f80;  // bf16 +Inf
  h[4] = 0x7e00;  // fp16 NaN
  EXPECT_THROW(c->compress({b.data(), DType::kBFloat16, {5}}), NonFiniteError);
  EXPECT_THROW(c->compress({h.data(), DType::kFloat16, {5}}), NonFiniteError);
}

TEST(Natural, MalformedMessagesAreRejected) {
  const auto reject = [](const Message& m, const char* what) {
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << what;
  };
  std::vector<uint16_t> codes(13, 127);
  codes[0] = 0;
  codes[1] = 0x100 | 254;
  const auto ok = packed(codes, 9);
  ASSERT_EQ(ok.size(), 15u);
  const Message good = craft(DType::kFloat32, 13, {}, ok);
  EXPECT_NO_THROW(Message::fromBytes(good.data(), good.size()));
  std::vector<float> y(13);
  makeCompressor("natural")->decompress(Message::fromBytes(good.data(), good.size()), test::mutableView(y));
  EXPECT_EQ(y[0], 0.0f);
  EXPECT_EQ(y[1], -0x1p127f);
  EXPECT_EQ(y[2], 1.0f);

  for (size_t size : {0, 14, 16, 20}) {
    auto p = ok;
    p.resize(size, 0);
    reject(craft(DType::kFloat32, 13, {}, p), "payload size");
  }
  reject(craft(DType::kFloat64, 13, {}, ok), "float64 without its window base");
  reject(craft(DType::kFloat64, 13, {0, 0, 0}, ok), "float64 long parameters");
  reject(craft(DType::kFloat64, 13, {0x01, 0x07}, ok), "float64 window base 1793");
  const Message wideOk = craft(DType::kFloat64, 13, {0x00, 0x07}, ok);  // base 1792
  EXPECT_NO_THROW(Message::fromBytes(wideOk.data(), wideOk.size()));
  std::vector<double> yd(13);
  makeCompressor("natural")->decompress(Message::fromBytes(wideOk.data(), wideOk.size()), test::mutableView(yd));
  EXPECT_EQ(yd[0], 0.0);
  EXPECT_EQ(yd[1], -0x1p1023);
  EXPECT_EQ(yd[2], 0x1p896);
  reject(craft(DType::kFloat32, 13, {0}, ok), "parameters");
  reject(craft(DType::kFloat32, 13, {}, ok, 2), "flags");
  auto inf = codes;
  inf[12] = 255;
  reject(craft(DType::kFloat32, 13, {}, packed(inf, 9)), "exponent 255");
  reject(craft(DType::kBFloat16, 13, {}, packed(inf, 9)), "bf16 exponent 255");
  for (uint16_t e : {143, 200, 102, 1}) {
    auto h = codes;
    h[5] = e;
    reject(craft(DType::kFloat16, 13, {}, packed(h, 9)), "outside float16");
  }
  auto h = codes;
  h[1] = 142;
  h[2] = 0x100 | 103;
  const Message half = craft(DType::kFloat16, 13, {}, packed(h, 9));
  EXPECT_NO_THROW(Message::fromBytes(half.data(), half.size()));
  reject(craft(DType::kFloat64, 13, {0, 0}, packed(inf, 9)), "float64 code 255");
  auto pad = ok;
  pad[14] |= 0x80;  // 13 * 9 = 117 bits: bit 119 is padding
  reject(craft(DType::kFloat32, 13, {}, pad), "padding");
}

}  // namespace
}  // namespace efcomm
