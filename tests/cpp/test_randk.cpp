// RandK: the shared-seed draw (reproducible, uniform, k distinct indices), unbiasedness and the
// variance constant, spec strings and malformed payloads.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>

#include "common/bytes.hpp"
#include "common/half.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

// x[i] = i + 1: every coordinate non-zero and distinct, so the decoded support is the draw.
std::vector<float> ramp(size_t n) {
  std::vector<float> x(n);
  for (size_t i = 0; i < n; ++i) x[i] = static_cast<float>(i + 1);
  return x;
}

std::vector<int64_t> support(const std::vector<float>& y) {
  std::vector<int64_t> s;
  for (size_t i = 0; i < y.size(); ++i)
    if (y[i] != 0) s.push_back(static_cast<int64_t>(i));
  return s;
}

TEST(RandK, SameSeedAndStepGiveTheSameMessage) {
  const auto x = test::randomVector(10000, 3);
  auto a = makeCompressor("randk:ratio=0.01,seed=5");
  auto b = makeCompressor("randk:ratio=0.01,seed=5");
  for (uint64_t step : {0, 1, 17}) {
    const Message ma = a->compress(test::view(x), step), mb = b->compress(test::view(x), step);
    EXPECT_EQ(std::vector<uint8_t>(ma.data(), ma.data() + ma.size()),
              std::vector<uint8_t>(mb.data(), mb.data() + mb.size()));
  }
  // The internal step counter starts at 0 and advances.
  const Message m0 = b->compress(test::view(x), 0);
  auto c = makeCompressor("randk:ratio=0.01,seed=5");
  const Message n0 = c->compress(test::view(x));
  EXPECT_EQ(std::vector<uint8_t>(m0.data(), m0.data() + m0.size()), std::vector<uint8_t>(n0.data(), n0.data() + n0.size()));
}

TEST(RandK, DrawDependsOnStepAndSeedAndKeepsK) {
  const auto x = ramp(5000);
  auto c = makeCompressor("randk:k=50,seed=1,scaled=false");
  const auto s0 = support(test::roundTrip(*c, x, 0));
  const auto s1 = support(test::roundTrip(*c, x, 1));
  EXPECT_EQ(s0.size(), 50u);
  EXPECT_EQ(s1.size(), 50u);
  EXPECT_NE(s0, s1);
  auto other = makeCompressor("randk:k=50,seed=2,scaled=false");
  EXPECT_NE(support(test::roundTrip(*other, x, 0)), s0);
  EXPECT_EQ(support(test::roundTrip(*c, x, 0)), s0);  // decode replays the same draw
  // Unscaled values travel unchanged.
  const auto y = test::roundTrip(*c, x, 3);
  for (int64_t i : support(y)) EXPECT_EQ(y[i], x[i]);
}

TEST(RandK, KeptCountForManySizes) {
  for (size_t n : {1, 2, 63, 64, 65, 1000, 70000, 200001}) {
    for (const char* spec : {"randk:ratio=0.01,seed=3", "randk:ratio=0.5,seed=3", "randk:ratio=1,seed=3"}) {
      auto c = makeCompressor(spec);
      const auto x = ramp(n);
      const Message m = c->compress(test::view(x), 7);
      EXPECT_EQ(m.size(), c->wireBytes(static_cast<int64_t>(n)));
      std::vector<float> y(n);
      c->decompress(Message::fromBytes(m.data(), m.size()), test::mutableView(y));
      const double k = c->alpha(static_cast<int64_t>(n)) * static_cast<double>(n);
      EXPECT_EQ(static_cast<double>(support(y).size()), std::round(k)) << spec << " n " << n;
    }
  }
}

// Mean of the decoded vector over many steps -> x (unbiased), each index drawn with frequency
// k/d, and the mean squared error -> omega ||x||^2 with omega = d/k - 1. Tolerances are 5
// standard deviations of the sample means (CLT).
TEST(RandK, ScaledIsUnbiasedWithOmega) {
  const int64_t d = 200, k = 20, steps = 4000;
  const auto x = test::randomVector(d, 11);
  auto c = makeCompressor("randk:k=20,seed=9");
  ASSERT_FALSE(c->biased());
  const double omega = *c->omega(d);
  EXPECT_DOUBLE_EQ(omega, 9.0);
  EXPECT_DOUBLE_EQ(c->alpha(d), 0.1);
  std::vector<double> mean(d, 0.0), hits(d, 0.0);
  double norm = 0, errSum = 0, errSq = 0;
  for (float v : x) norm += double(v) * v;
  for (int64_t s = 0; s < steps; ++s) {
    const auto y = test::roundTrip(*c, x, static_cast<uint64_t>(s));
    double err = 0;
    for (int64_t i = 0; i < d; ++i) {
      mean[i] += y[i];
      hits[i] += y[i] != 0;
      err += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
    }
    errSum += err;
    errSq += err * err;
  }
  const double p = double(k) / d;
  for (int64_t i = 0; i < d; ++i) {
    const double sd = std::fabs(x[i]) * std::sqrt(omega / steps);
    EXPECT_NEAR(mean[i] / steps, x[i], 5 * sd + 1e-6) << i;
    EXPECT_NEAR(hits[i] / steps, p, 5 * std::sqrt(p * (1 - p) / steps)) << i;
  }
  const double errMean = errSum / steps, errSd = std::sqrt((errSq / steps - errMean * errMean) / steps);
  EXPECT_NEAR(errMean, omega * norm, 5 * errSd);
}

TEST(RandK, UnscaledContractsInExpectation) {
  const int64_t d = 300, steps = 3000;
  const auto x = test::randomVector(d, 12);
  auto c = makeCompressor("randk:ratio=0.1,seed=4,scaled=false");
  EXPECT_TRUE(c->biased());
  EXPECT_TRUE(c->randomized());
  EXPECT_FALSE(c->omega(d).has_value());
  double norm = 0, errSum = 0, errSq = 0;
  for (float v : x) norm += double(v) * v;
  for (int64_t s = 0; s < steps; ++s) {
    const auto y = test::roundTrip(*c, x, static_cast<uint64_t>(s));
    double err = 0;
    for (int64_t i = 0; i < d; ++i) err += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
    errSum += err;
    errSq += err * err;
  }
  const double errMean = errSum / steps, errSd = std::sqrt((errSq / steps - errMean * errMean) / steps);
  EXPECT_NEAR(errMean, (1 - c->alpha(d)) * norm, 5 * errSd);
}

TEST(RandK, OtherDtypesAndEmpty) {
  std::vector<double> xd(1000);
  for (size_t i = 0; i < xd.size(); ++i) xd[i] = 0.5 + static_cast<double>(i);
  auto c = makeCompressor("randk:k=10,seed=2");
  const Message m = c->compress(test::view(xd), 4);
  std::vector<double> yd(xd.size());
  c->decompress(Message::fromBytes(m.data(), m.size()), test::mutableView(yd));
  int kept = 0;
  for (size_t i = 0; i < xd.size(); ++i) {
    if (yd[i] != 0) {
      ++kept;
      EXPECT_EQ(yd[i], xd[i] * 100.0);
    }
  }
  EXPECT_EQ(kept, 10);

  std::vector<uint16_t> bf(1000, floatToBf16(1.5f));
  const Message mb = c->compress({bf.data(), DType::kBFloat16, {10, 100}}, 4);
  std::vector<uint16_t> yb(bf.size());
  c->decompress(mb, {yb.data(), DType::kBFloat16, {10, 100}});
  int keptB = 0;
  for (uint16_t v : yb) {
    if (v == 0) continue;
    ++keptB;
    EXPECT_EQ(bf16ToFloat(v), 150.0f);
  }
  EXPECT_EQ(keptB, 10);

  const Message e = c->compress({nullptr, DType::kFloat32, {0}});
  const Message pe = Message::fromBytes(e.data(), e.size());
  c->decompress(pe, {nullptr, DType::kFloat32, {0}});
  EXPECT_EQ(e.size(), c->wireBytes(0));
}

// RandK checks only the coordinates it sends: the others never leave the worker.
TEST(RandK, NonFiniteInSentCoordinatesRaises) {
  auto all = makeCompressor("randk:ratio=1,seed=1");
  auto x = test::randomVector(100, 1);
  x[42] = std::numeric_limits<float>::infinity();
  EXPECT_THROW(all->compress(test::view(x)), NonFiniteError);

  auto one = makeCompressor("randk:k=1,seed=1,scaled=false");
  const auto r = ramp(100);
  const int64_t sent = support(test::roundTrip(*one, r, 0))[0];
  auto y = r;
  y[sent] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(one->compress(test::view(y), 0), NonFiniteError);
  y = r;
  y[(sent + 1) % 100] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_NO_THROW(one->compress(test::view(y), 0));
}

TEST(RandK, SpecRoundTrip) {
  EXPECT_EQ(makeCompressor("randk")->spec(), "randk:ratio=0.01,seed=0,scaled=true");
  EXPECT_EQ(makeCompressor("randk:ratio=0.01,seed=1")->spec(), "randk:ratio=0.01,seed=1,scaled=true");
  for (const char* spec : {"randk:k=5,seed=3,scaled=false", "randk:ratio=0.25,seed=18446744073,scaled=true"}) {
    auto c = makeCompressor(spec);
    EXPECT_EQ(c->spec(), spec);
    EXPECT_EQ(makeCompressor(c->spec())->spec(), spec);
  }
  for (const char* bad : {"randk:seed=-1", "randk:ratio=0.1,k=3", "randk:ratio=2", "randk:k=0",
                          "randk:scaled=maybe", "randk:levels=3"})
    EXPECT_THROW(makeCompressor(bad), InvalidArgument) << bad;
}

std::vector<uint8_t> craft(int64_t n, const std::vector<uint8_t>& params, uint16_t flags, size_t payload) {
  Message m = Message::build(CompressorId::kRandK, DType::kFloat32, {n}, flags, params, payload);
  std::fill(m.mutablePayload(), m.mutablePayload() + payload, uint8_t{0});
  m.finish(payload);
  return {m.data(), m.data() + m.size()};
}

std::vector<uint8_t> params(uint64_t k, uint8_t scaled = 1) {
  return ByteWriter().put<uint64_t>(k).put<uint64_t>(1).put<uint64_t>(2).put<uint8_t>(scaled).bytes();
}

TEST(RandK, MalformedPayloadsAreRejected) {
  EXPECT_FALSE(test::rejected(craft(100, params(5), 0, 20)));
  EXPECT_TRUE(test::rejected(craft(100, params(5), 0, 16)));   // four values for k = 5
  EXPECT_TRUE(test::rejected(craft(100, params(5), 0, 21)));   // not whole values
  EXPECT_TRUE(test::rejected(craft(100, params(101), 0, 404))); // k > n
  EXPECT_TRUE(test::rejected(craft(100, params(0), 0, 0)));    // k = 0 for n > 0
  EXPECT_TRUE(test::rejected(craft(100, params(5, 2), 0, 20)));  // scaled is 0 or 1
  EXPECT_TRUE(test::rejected(craft(100, params(5), 1, 20)));   // no flags defined
  auto shortParams = params(5);
  shortParams.pop_back();
  EXPECT_TRUE(test::rejected(craft(100, shortParams, 0, 20)));
}

}  // namespace
}  // namespace efcomm
