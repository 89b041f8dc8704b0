// QSGD: unbiasedness and variance, the documented draw, determinism, and payload validation.
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
  Message m = Message::build(CompressorId::kQSGD, dt, {n}, flags, params, payload.size());
  if (!payload.empty()) std::memcpy(m.mutablePayload(), payload.data(), payload.size());
  m.finish(payload.size());
  return m;
}

std::vector<uint8_t> levelsParam(uint32_t s) { return ByteWriter().put<uint32_t>(s).bytes(); }

// A valid payload: norm, then codes packed at the width of 2s.
std::vector<uint8_t> payloadOf(double norm, const std::vector<uint16_t>& codes, int w) {
  std::vector<uint8_t> p(8 + packedBytes(int64_t(codes.size()), w));
  storeAs<double>(p.data(), norm);
  packBits(codes.data(), int64_t(codes.size()), w, p.data() + 8);
  return p;
}

double norm2(const std::vector<float>& x) {
  double s = 0;
  for (float v : x) s += double(v) * v;
  return std::sqrt(s);
}

// A test vector with coordinates of very different sizes (and a zero).
std::vector<float> spreadVector(size_t d, uint64_t seed) {
  auto x = test::randomVector(d, seed);
  for (size_t j = 0; j < d; ++j) x[j] *= float(1 + j % 7);
  if (d > 1) x[d / 2] = 0.0f;
  return x;
}

TEST(QSGD, SpecAndConstants) {
  auto c = makeCompressor("qsgd");
  EXPECT_EQ(c->spec(), "qsgd:levels=16,seed=0");
  EXPECT_EQ(makeCompressor("qsgd:seed=5,levels=3")->spec(), "qsgd:levels=3,seed=5");
  EXPECT_EQ(makeCompressor(c->spec())->spec(), c->spec());
  EXPECT_FALSE(c->biased());
  EXPECT_TRUE(c->randomized());
  EXPECT_DOUBLE_EQ(*c->omega(100), std::min(100.0 / 256, 10.0 / 16));
  EXPECT_DOUBLE_EQ(*c->omega(1000000), std::min(1e6 / 256, 1000.0 / 16));
  EXPECT_DOUBLE_EQ(c->alpha(100), 1 / (1 + *c->omega(100)));
  for (const char* bad : {"qsgd:levels=0", "qsgd:levels=32768", "qsgd:levels=-1", "qsgd:seed=-1", "qsgd:bits=4",
                          "qsgd:levels=2.5"})
    EXPECT_THROW(makeCompressor(bad), InvalidArgument) << bad;
  EXPECT_NO_THROW(makeCompressor("qsgd:levels=32767"));
  for (int s : {1, 2, 3, 16, 255, 32767}) {
    auto q = makeCompressor("qsgd:levels=" + std::to_string(s));
    for (size_t d : {0, 1, 13, 1000}) {
      auto x = test::randomVector(d);
      EXPECT_EQ(q->compress(test::view(x)).size(), q->wireBytes(int64_t(d))) << s << " " << d;
    }
  }
  // w = bit width of 2s: 2 bits at s = 1, 6 at s = 16, 16 at s = 32767.
  EXPECT_EQ(makeCompressor("qsgd:levels=1")->wireBytes(8), messageBytes(1, 4, 8 + 2));
  EXPECT_EQ(makeCompressor("qsgd:levels=16")->wireBytes(8), messageBytes(1, 4, 8 + 6));
  EXPECT_EQ(makeCompressor("qsgd:levels=32767")->wireBytes(8), messageBytes(1, 4, 8 + 16));
}

// Every decoded value is ||x|| sign(x_j) l / s with l one of the two levels around s|x_j|/||x||.
TEST(QSGD, ValuesAtNeighbouringLevels) {
  for (int s : {1, 4, 16, 1000}) {
    auto c = makeCompressor("qsgd:levels=" + std::to_string(s));
    for (size_t d : {1, 13, 4096, 70001}) {
      auto x = spreadVector(d, d + s);
      const Message m = c->compress(test::view(x), 3);
      const double norm = loadAs<double>(m.payload());
      EXPECT_NEAR(norm, norm2(x), 1e-12 * norm2(x));
      auto y = test::roundTrip(*c, x, 3);
      for (size_t j = 0; j < d; ++j) {
        const double a = s * std::fabs(double(x[j])) / norm, level = std::fabs(double(y[j])) * s / norm;
        ASSERT_NEAR(level, std::round(level), 1e-4) << "s=" << s << " d=" << d << " j=" << j << " y=" << y[j];
        ASSERT_TRUE(std::round(level) == std::floor(a) || std::round(level) == std::ceil(a))
            << "s=" << s << " j=" << j << " a=" << a << " level=" << level;
        if (y[j] != 0) {
          ASSERT_EQ(y[j] < 0, x[j] < 0) << j;
        }
      }
    }
  }
}

// The draw is the documented function of (seed, step, j), so any process can replay it.
TEST(QSGD, DrawMatchesTheDocumentedFormula) {
  const int s = 16;
  auto c = makeCompressor("qsgd:levels=16,seed=42");
  auto x = spreadVector(5000, 11);
  const Message m = c->compress(test::view(x), 9);
  const double norm = loadAs<double>(m.payload()), r = s / norm;
  std::vector<uint16_t> codes(x.size());
  unpackBits(m.payload() + 8, int64_t(x.size()), 6, codes.data());
  const uint64_t key = drawKey(42, 9);
  int mismatches = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    const double a = std::min(std::fabs(double(x[j])) * r + 0.5, s + 0.5);
    const double u = double(int32_t(uniformBits(key, j))) * 0x1p-32;
    const int level = int(a + u);
    mismatches += codes[j] != s + (x[j] < 0 ? -level : level);
  }
  EXPECT_EQ(mismatches, 0);
}

TEST(QSGD, SameDrawForSameSeedAndStep) {
  auto x = test::randomVector(70001, 2);
  auto a = makeCompressor("qsgd:levels=8,seed=7"), b = makeCompressor("qsgd:levels=8,seed=7");
  const Message m1 = a->compress(test::view(x), 5), m2 = b->compress(test::view(x), 5);
  ASSERT_EQ(m1.size(), m2.size());
  EXPECT_EQ(std::memcmp(m1.data(), m2.data(), m1.size()), 0);
  const Message m3 = a->compress(test::view(x), 6);
  EXPECT_NE(std::memcmp(m1.data(), m3.data(), m1.size()), 0);
  const Message m4 = makeCompressor("qsgd:levels=8,seed=8")->compress(test::view(x), 5);
  EXPECT_NE(std::memcmp(m1.data(), m4.data(), m1.size()), 0);
  // The internal counter starts at 0 and advances.
  auto counter = makeCompressor("qsgd:levels=8,seed=7");
  const Message s0 = counter->compress(test::view(x)), s1 = counter->compress(test::view(x));
  const Message e0 = a->compress(test::view(x), 0), e1 = a->compress(test::view(x), 1);
  EXPECT_EQ(std::memcmp(s0.data(), e0.data(), s0.size()), 0);
  EXPECT_EQ(std::memcmp(s1.data(), e1.data(), s1.size()), 0);
}

// E C(x) = x and E||C(x) - x||^2 = sum_j (||x||/s)^2 p_j (1 - p_j) <= omega ||x||^2, checked over
// many steps against CLT bounds.
TEST(QSGD, UnbiasedWithBoundedVariance) {
  const int steps = 3000;
  for (int s : {1, 2, 16}) {
    auto c = makeCompressor("qsgd:levels=" + std::to_string(s) + ",seed=3");
    auto x = spreadVector(64, 100 + s);
    const size_t d = x.size();
    const double norm = norm2(x), step = norm / s;
    std::vector<double> var(d);
    double expectedErr = 0;
    for (size_t j = 0; j < d; ++j) {
      const double a = std::fabs(double(x[j])) / step, p = a - std::floor(a);
      var[j] = step * step * p * (1 - p);
      expectedErr += var[j];
    }
    EXPECT_LE(expectedErr, *c->omega(int64_t(d)) * norm * norm);
    const test::Moments mo = test::empiricalMoments(*c, x, steps);
    for (size_t j = 0; j < d; ++j)
      EXPECT_NEAR(mo.mean[j], x[j], 5 * std::sqrt(var[j] / steps) + 1e-6 * norm) << "s=" << s << " j=" << j;
    EXPECT_NEAR(mo.err, expectedErr, 5 * mo.sd + 1e-9 * norm * norm) << "s=" << s;
    EXPECT_LE(mo.err, *c->omega(int64_t(d)) * norm * norm + 5 * mo.sd) << "s=" << s;
  }
}

TEST(QSGD, ZeroAndEmptyInputs) {
  auto c = makeCompressor("qsgd:levels=5");
  std::vector<float> z(13, 0.0f);
  z[4] = -0.0f;
  const Message m = c->compress(test::view(z));
  EXPECT_EQ(loadAs<double>(m.payload()), 0.0);
  std::vector<uint16_t> codes(13);
  unpackBits(m.payload() + 8, 13, 4, codes.data());
  for (uint16_t code : codes) EXPECT_EQ(code, 5);  // level 0
  for (float v : test::roundTrip(*c, z)) EXPECT_EQ(v, 0.0f);

  const Message e = c->compress({nullptr, DType::kFloat32, {0}});
  const Message p = Message::fromBytes(e.data(), e.size());
  c->decompress(p, {nullptr, DType::kFloat32, {3, 0}});
}

TEST(QSGD, OtherDtypes) {
  auto c = makeCompressor("qsgd:levels=4,seed=1");
  auto f = spreadVector(1001, 8);
  std::vector<double> xd(f.begin(), f.end()), yd(f.size());
  const Message md = c->compress(test::view(xd), 2);
  c->decompress(Message::fromBytes(md.data(), md.size()), test::mutableView(yd));
  const double norm = loadAs<double>(md.payload());
  for (size_t j = 0; j < f.size(); ++j) {
    const double a = 4 * std::fabs(xd[j]) / norm, level = std::fabs(yd[j]) * 4 / norm;
    ASSERT_NEAR(level, std::round(level), 1e-9);
    ASSERT_TRUE(std::round(level) == std::floor(a) || std::round(level) == std::ceil(a)) << j;
  }
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    std::vector<uint16_t> x(f.size()), y(f.size());
    for (size_t j = 0; j < f.size(); ++j) x[j] = dt == DType::kBFloat16 ? floatToBf16(f[j]) : floatToF16(f[j]);
    const Message m = c->compress({x.data(), dt, {7, 11, 13}}, 2);
    c->decompress(Message::fromBytes(m.data(), m.size()), {y.data(), dt, {1001}});
    const double n16 = loadAs<double>(m.payload());
    for (size_t j = 0; j < f.size(); ++j) {
      const float xv = dt == DType::kBFloat16 ? bf16ToFloat(x[j]) : f16ToFloat(x[j]);
      const float yv = dt == DType::kBFloat16 ? bf16ToFloat(y[j]) : f16ToFloat(y[j]);
      const double a = 4 * std::fabs(double(xv)) / n16, level = std::fabs(double(yv)) * 4 / n16;
      ASSERT_NEAR(level, std::round(level), 0.02);  // the output is rounded to 16 bits
      ASSERT_TRUE(std::round(level) == std::floor(a) || std::round(level) == std::ceil(a)) << j;
    }
  }
}

TEST(QSGD, NonFiniteRaises) {
  auto c = makeCompressor("qsgd");
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x(100000, 1.0f);
    x[54321] = bad;
    EXPECT_THROW(c->compress(test::view(x)), NonFiniteError);
    std::vector<double> xd(10, 1.0);
    xd[9] = -double(bad);
    EXPECT_THROW(c->compress(test::view(xd)), NonFiniteError);
  }
}

TEST(QSGD, ExtremeMagnitudes) {
  auto c = makeCompressor("qsgd:levels=16");
  // The float64 sum of squares overflows, the norm does not: no NonFiniteError.
  std::vector<double> huge(100, 1e200), y(100);
  huge[3] = -1e300;
  const Message m = c->compress(test::view(huge));
  EXPECT_NEAR(loadAs<double>(m.payload()), 1e300, 1e286);
  c->decompress(Message::fromBytes(m.data(), m.size()), test::mutableView(y));
  EXPECT_EQ(y[3], -loadAs<double>(m.payload()));  // |x_3| is essentially the norm: level s
  // A norm beyond the float64 range cannot be sent.
  std::vector<double> over(4, 1.5e308);
  EXPECT_THROW(c->compress(test::view(over)), NonFiniteError);
  // Tiny (subnormal) inputs: s/||x|| overflows, the levels are still right.
  std::vector<double> tiny(50, 3e-320), ty(50);
  tiny[7] = -1e-318;
  const Message t = c->compress(test::view(tiny));
  c->decompress(Message::fromBytes(t.data(), t.size()), test::mutableView(ty));
  const double tn = loadAs<double>(t.payload());
  EXPECT_GT(tn, 0);
  for (size_t j = 0; j < tiny.size(); ++j) {
    const double a = 16 * std::fabs(tiny[j]) / tn;
    std::vector<uint16_t> codes(50);
    unpackBits(t.payload() + 8, 50, 6, codes.data());
    const int level = std::abs(int(codes[j]) - 16);
    EXPECT_TRUE(level == int(std::floor(a)) || level == int(std::ceil(a))) << j << " " << a << " " << level;
  }
}

// A float16 input whose 2-norm exceeds the float16 range: a level that would decode to Inf is
// reported instead of sent.
TEST(QSGD, Float16DecodedOverflowRaises) {
  auto c = makeCompressor("qsgd:levels=1");
  std::vector<uint16_t> x(2, floatToF16(60000.0f)), y(2);
  int raised = 0, sent = 0;
  for (uint64_t step = 0; step < 40; ++step) {
    try {
      const Message m = c->compress({x.data(), DType::kFloat16, {2}}, step);
      c->decompress(Message::fromBytes(m.data(), m.size()), {y.data(), DType::kFloat16, {2}});
      for (uint16_t v : y) EXPECT_EQ(v, 0);  // level 0 is the only level that fits
      ++sent;
    } catch (const NonFiniteError&) {
      ++raised;
    }
  }
  EXPECT_GT(raised, 0);
  EXPECT_GT(sent, 0);  // P(level 0 for both) = (1 - 0.707)^2
}

TEST(QSGD, MalformedMessagesAreRejected) {
  const std::vector<uint16_t> codes = {0, 1, 2, 3, 4, 2, 2, 2, 2, 1, 3, 0, 4};  // s = 2, w = 3
  const auto ok = payloadOf(1.0, codes, 3);
  const Message good = craft(DType::kFloat32, 13, levelsParam(2), ok);
  EXPECT_NO_THROW(Message::fromBytes(good.data(), good.size()));
  std::vector<float> y(13);
  makeCompressor("qsgd:levels=2")->decompress(Message::fromBytes(good.data(), good.size()), test::mutableView(y));
  EXPECT_EQ(y[0], -1.0f);
  EXPECT_EQ(y[3], 0.5f);

  const auto reject = [](const Message& m, const char* what) {
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << what;
  };
  for (size_t size : {size_t{0}, size_t{8}, ok.size() - 1, ok.size() + 1}) {
    std::vector<uint8_t> p(ok.begin(), ok.begin() + std::min(size, ok.size()));
    p.resize(size, 0);
    reject(craft(DType::kFloat32, 13, levelsParam(2), p), "payload size");
  }
  reject(craft(DType::kFloat32, 13, {}, ok), "no parameters");
  reject(craft(DType::kFloat32, 13, {2, 0}, ok), "short parameters");
  reject(craft(DType::kFloat32, 13, {2, 0, 0, 0, 0}, ok), "long parameters");
  reject(craft(DType::kFloat32, 13, levelsParam(0), payloadOf(1.0, codes, 1)), "levels 0");
  reject(craft(DType::kFloat32, 13, levelsParam(40000), payloadOf(1.0, codes, 16)), "levels too large");
  reject(craft(DType::kFloat32, 13, levelsParam(4), ok), "levels do not match the size");
  reject(craft(DType::kFloat32, 13, levelsParam(2), ok, 4), "flags");
  for (uint16_t code : {5, 6, 7}) {
    auto bad = codes;
    bad[11] = code;
    reject(craft(DType::kFloat32, 13, levelsParam(2), payloadOf(1.0, bad, 3)), "code > 2s");
  }
  for (double norm : {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()})
    reject(craft(DType::kFloat32, 13, levelsParam(2), payloadOf(norm, codes, 3)), "norm");
  reject(craft(DType::kFloat32, 13, levelsParam(2), payloadOf(1e300, codes, 3)), "overflows float32");
  reject(craft(DType::kFloat16, 13, levelsParam(2), payloadOf(1e6, codes, 3)), "overflows float16");
  auto pad = ok;
  pad[8 + 4] |= 0x80;  // 13 * 3 = 39 bits: bit 39 is padding
  reject(craft(DType::kFloat32, 13, levelsParam(2), pad), "padding");
  // A huge norm with only level-0 codes decodes to zeros: valid.
  const Message zeros = craft(DType::kFloat16, 13, levelsParam(2), payloadOf(1e6, std::vector<uint16_t>(13, 2), 3));
  EXPECT_NO_THROW(Message::fromBytes(zeros.data(), zeros.size()));
}

}  // namespace
}  // namespace efcomm
