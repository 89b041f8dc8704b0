// ScaledSign: the exact contraction identity, determinism, dtypes, and payload validation.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "common/bytes.hpp"
#include "common/half.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

// A message with a hand-made payload and a valid checksum.
Message craft(DType dt, int64_t n, const std::vector<uint8_t>& params, const std::vector<uint8_t>& payload,
              uint16_t flags = 0) {
  Message m = Message::build(CompressorId::kSign, dt, {n}, flags, params, payload.size());
  if (!payload.empty()) std::memcpy(m.mutablePayload(), payload.data(), payload.size());
  m.finish(payload.size());
  return m;
}

double payloadScale(const Message& m) { return loadAs<double>(m.payload()); }

// ||C(x) - x||^2 and ||x||^2 - ||x||_1^2/d, with C(x) rebuilt in double from the payload's scale
// and the decoded signs (so float32 rounding of the output does not enter).
template <typename V>
std::pair<double, double> identitySides(const V& x, const V& decoded, double scale) {
  double err = 0, sq = 0, l1 = 0;
  for (size_t j = 0; j < x.size(); ++j) {
    const double c = decoded[j] < 0 ? -scale : scale;
    err += (c - double(x[j])) * (c - double(x[j]));
    sq += double(x[j]) * double(x[j]);
    l1 += std::fabs(double(x[j]));
  }
  return {err, sq - l1 * l1 / double(x.size())};
}

TEST(Sign, ExactContractionIdentity) {
  auto c = makeCompressor("sign");
  for (size_t d : {1, 7, 8, 1000, 1001, 70001}) {
    std::vector<double> x(d);
    auto f = test::randomVector(d, d);
    for (size_t j = 0; j < d; ++j) x[j] = f[j] * (1 + j % 5);
    if (d > 8) {
      x[3] = 0.0;
      x[5] = -0.0;
    }
    const Message raw = c->compress(test::view(x));
    const Message m = Message::fromBytes(raw.data(), raw.size());
    std::vector<double> y(d);
    c->decompress(m, test::mutableView(y));
    const auto [err, expected] = identitySides(x, y, payloadScale(m));
    double norm = 0;
    for (double v : x) norm += v * v;
    EXPECT_NEAR(err, expected, 1e-9 * norm) << "d=" << d;
    EXPECT_LE(err, (1 - c->alpha(d)) * norm * (1 + 1e-12)) << "d=" << d;
    for (size_t j = 0; j < d; ++j) EXPECT_EQ(std::fabs(y[j]), payloadScale(m));
  }
}

TEST(Sign, Float32IdentityAndSigns) {
  auto c = makeCompressor("sign");
  auto x = test::randomVector(4099, 5);
  x[10] = 0.0f;
  x[11] = -0.0f;
  Message m = c->compress(test::view(x));
  auto y = test::roundTrip(*c, x);
  const auto [err, expected] = identitySides(x, y, payloadScale(m));
  double norm = 0, l1 = 0;
  for (float v : x) norm += double(v) * v, l1 += std::fabs(double(v));
  EXPECT_NEAR(err, expected, 1e-9 * norm);
  EXPECT_NEAR(payloadScale(m), l1 / 4099, 1e-12 * l1);
  for (size_t j = 0; j < x.size(); ++j) {
    EXPECT_EQ(y[j], x[j] < 0 ? -float(payloadScale(m)) : float(payloadScale(m))) << j;  // sign(0) = +1
  }
}

TEST(Sign, PropertiesAndWireSize) {
  auto c = makeCompressor("sign");
  EXPECT_EQ(c->spec(), "sign");
  EXPECT_EQ(makeCompressor(c->spec())->spec(), "sign");
  EXPECT_TRUE(c->biased());
  EXPECT_FALSE(c->randomized());
  EXPECT_FALSE(c->omega(10).has_value());
  EXPECT_DOUBLE_EQ(c->alpha(10), 0.1);
  EXPECT_THROW(makeCompressor("sign:scale=1"), InvalidArgument);
  for (size_t d : {0, 1, 9, 64, 1000, 70001}) {
    auto x = test::randomVector(d);
    EXPECT_EQ(c->compress(test::view(x)).size(), c->wireBytes(int64_t(d))) << d;
    EXPECT_EQ(c->compress(test::view(x)).size(), messageBytes(1, 0, 8 + (d + 7) / 8)) << d;
  }
}

TEST(Sign, DeterministicBytes) {
  auto x = test::randomVector(100003, 9);
  auto a = makeCompressor("sign"), b = makeCompressor("sign");
  Message m1 = a->compress(test::view(x), 0), m2 = b->compress(test::view(x), 17), m3 = a->compress(test::view(x));
  ASSERT_EQ(m1.size(), m2.size());
  EXPECT_EQ(std::memcmp(m1.data(), m2.data(), m1.size()), 0);
  EXPECT_EQ(std::memcmp(m1.data(), m3.data(), m1.size()), 0);
}

TEST(Sign, ZerosAndEmpty) {
  auto c = makeCompressor("sign");
  std::vector<float> z(13, 0.0f);
  Message m = c->compress(test::view(z));
  EXPECT_EQ(payloadScale(m), 0.0);
  auto y = test::roundTrip(*c, z);
  for (float v : y) EXPECT_EQ(v, 0.0f);

  Message e = c->compress({nullptr, DType::kFloat32, {0}});
  Message p = Message::fromBytes(e.data(), e.size());
  EXPECT_EQ(p.numel(), 0);
  EXPECT_EQ(payloadScale(p), 0.0);
  c->decompress(p, {nullptr, DType::kFloat32, {0}});
}

TEST(Sign, PartialLastByte) {
  auto c = makeCompressor("sign");
  for (size_t d : {1, 3, 13, 17, 65539}) {
    auto x = test::randomVector(d, 3);
    Message m = c->compress(test::view(x));
    const uint8_t last = m.payload()[m.payloadSize() - 1];
    if (d % 8) {
      EXPECT_EQ(last >> (d % 8), 0) << d;
    }
    auto y = test::roundTrip(*c, x);
    for (size_t j = 0; j < d; ++j) EXPECT_EQ(y[j] < 0, x[j] < 0) << d << " " << j;
  }
}

TEST(Sign, SixteenBitAndShapedInputs) {
  auto c = makeCompressor("sign");
  auto f = test::randomVector(1003, 4);
  for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
    std::vector<uint16_t> x(f.size()), y(f.size());
    double l1 = 0;
    for (size_t j = 0; j < f.size(); ++j) {
      x[j] = dt == DType::kBFloat16 ? floatToBf16(f[j]) : floatToF16(f[j]);
      const float back = dt == DType::kBFloat16 ? bf16ToFloat(x[j]) : f16ToFloat(x[j]);
      l1 += std::fabs(double(back));
    }
    Message m = c->compress({x.data(), dt, {17, 59}});
    EXPECT_NEAR(payloadScale(m), l1 / 1003, 1e-12 * l1);
    Message p = Message::fromBytes(m.data(), m.size());
    EXPECT_EQ(p.shape(), (std::vector<int64_t>{17, 59}));
    c->decompress(p, {y.data(), dt, {17, 59}});
    const uint16_t pos = dt == DType::kBFloat16 ? floatToBf16(float(payloadScale(m))) : floatToF16(float(payloadScale(m)));
    for (size_t j = 0; j < f.size(); ++j) {
      const float xv = dt == DType::kBFloat16 ? bf16ToFloat(x[j]) : f16ToFloat(x[j]);
      EXPECT_EQ(y[j], xv < 0 ? uint16_t(pos | 0x8000) : pos) << j;
    }
  }
}

TEST(Sign, NonFiniteRaises) {
  auto c = makeCompressor("sign");
  const float kBad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                        -std::numeric_limits<float>::infinity()};
  for (float bad : kBad) {
    for (size_t at : {size_t{0}, size_t{77}, size_t{99999}}) {
      std::vector<float> x(100000, 1.0f);
      x[at] = bad;
      EXPECT_THROW(c->compress(test::view(x)), NonFiniteError) << at;
      std::vector<double> xd(100, 1.0);
      xd[at % 100] = bad;
      EXPECT_THROW(c->compress(test::view(xd)), NonFiniteError) << at;
    }
  }
  std::vector<uint16_t> h(40, floatToF16(1.0f));
  h[39] = 0x7c00;  // +Inf
  EXPECT_THROW(c->compress({h.data(), DType::kFloat16, {40}}), NonFiniteError);
}

TEST(Sign, HugeFiniteDoublesDoNotOverflow) {
  auto c = makeCompressor("sign");
  std::vector<double> x(1000, 1.5e308);
  x[1] = -1.5e308;
  x[2] = 1.0;
  Message m = c->compress(test::view(x));
  const double expected = 1.5e308 * 0.999 + 0.001;
  EXPECT_NEAR(payloadScale(m), expected, 1e-12 * expected);
  std::vector<double> y(1000);
  c->decompress(Message::fromBytes(m.data(), m.size()), test::mutableView(y));
  EXPECT_EQ(y[1], -payloadScale(m));
  EXPECT_TRUE(std::isfinite(y[0]));
}

TEST(Sign, MalformedPayloadsAreRejected) {
  std::vector<uint8_t> ok(8 + 2, 0);
  storeAs<double>(ok.data(), 0.5);
  const Message good = craft(DType::kFloat32, 13, {}, ok);
  EXPECT_NO_THROW(Message::fromBytes(good.data(), good.size()));
  for (size_t size : {0, 7, 8, 9, 11, 100}) {
    std::vector<uint8_t> p(size, 0);
    if (size >= 8) storeAs<double>(p.data(), 0.5);
    const Message m = craft(DType::kFloat32, 13, {}, p);
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << size;
  }
  const Message params = craft(DType::kFloat32, 13, {1}, ok);
  EXPECT_THROW(Message::fromBytes(params.data(), params.size()), CorruptMessageError);
  const Message flags = craft(DType::kFloat32, 13, {}, ok, 1);
  EXPECT_THROW(Message::fromBytes(flags.data(), flags.size()), CorruptMessageError);
  for (double scale : {-1.0, std::numeric_limits<double>::quiet_NaN(), std::numeric_limits<double>::infinity()}) {
    auto p = ok;
    storeAs<double>(p.data(), scale);
    const Message m = craft(DType::kFloat32, 13, {}, p);
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << scale;
  }
  auto big = ok;
  storeAs<double>(big.data(), 1e6);  // beyond float16
  const Message half = craft(DType::kFloat16, 13, {}, big);
  EXPECT_THROW(Message::fromBytes(half.data(), half.size()), CorruptMessageError);
  auto pad = ok;
  pad[9] = 0x20;  // bit 13 of 13 elements
  const Message padded = craft(DType::kFloat32, 13, {}, pad);
  EXPECT_THROW(Message::fromBytes(padded.data(), padded.size()), CorruptMessageError);
}

}  // namespace
}  // namespace efcomm
