// PowerSGD: low-rank reproduction, projection bound, warm start, reshape rule, determinism,
// non-finite input and validation of crafted messages.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "common/half.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

/// a (m x r) times b^T (r x n), row-major, from N(0, 1) factors.
template <typename F = float>
std::vector<F> lowRank(int64_t m, int64_t n, int64_t r, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> dist;
  std::vector<double> a(m * r), b(n * r);
  for (auto& v : a) v = dist(g);
  for (auto& v : b) v = dist(g);
  std::vector<F> x(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t k = 0; k < r; ++k) s += a[i * r + k] * b[j * r + k];
      x[i * n + j] = static_cast<F>(s);
    }
  return x;
}

/// Orthonormal columns (m x k, column-major) by Gram-Schmidt on random vectors.
std::vector<double> orthonormal(int64_t m, int64_t k, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> dist;
  std::vector<double> u(m * k);
  for (int64_t c = 0; c < k; ++c) {
    double* col = &u[c * m];
    for (int64_t i = 0; i < m; ++i) col[i] = dist(g);
    for (int pass = 0; pass < 2; ++pass)
      for (int64_t l = 0; l < c; ++l) {
        double d = 0;
        for (int64_t i = 0; i < m; ++i) d += col[i] * u[l * m + i];
        for (int64_t i = 0; i < m; ++i) col[i] -= d * u[l * m + i];
      }
    double nrm = 0;
    for (int64_t i = 0; i < m; ++i) nrm += col[i] * col[i];
    for (int64_t i = 0; i < m; ++i) col[i] /= std::sqrt(nrm);
  }
  return u;
}

/// U diag(s) V^T with s_i = decay^i (i < min(m, n)); its best rank-r error^2 is sum_{i>=r} s_i^2.
std::vector<float> spectrum(int64_t m, int64_t n, double decay, uint64_t seed) {
  const int64_t k = std::min(m, n);
  auto u = orthonormal(m, k, seed), v = orthonormal(n, k, seed + 1);
  std::vector<float> x(m * n);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t c = 0; c < k; ++c) s += std::pow(decay, c) * u[c * m + i] * v[c * n + j];
      x[i * n + j] = static_cast<float>(s);
    }
  return x;
}

template <typename F>
double norm(const std::vector<F>& x) {
  double s = 0;
  for (F v : x) s += double(v) * double(v);
  return std::sqrt(s);
}
template <typename F>
double err(const std::vector<F>& x, const std::vector<F>& y) {
  double s = 0;
  for (size_t i = 0; i < x.size(); ++i) s += (double(y[i]) - double(x[i])) * (double(y[i]) - double(x[i]));
  return std::sqrt(s);
}

/// Compresses x viewed with `shape`, re-validates the bytes and decodes.
template <typename F>
std::vector<F> roundTrip(Compressor& c, const std::vector<F>& x, const std::vector<int64_t>& shape) {
  const DType dt = sizeof(F) == 8 ? DType::kFloat64 : DType::kFloat32;
  Message m = c.compress({x.data(), dt, shape});
  Message p = Message::fromBytes(m.data(), m.size());
  std::vector<F> y(x.size());
  c.decompress(p, {y.data(), dt, shape});
  return y;
}

struct Params {
  uint32_t rank;
  uint64_t m, n;
};
Params paramsOf(const Message& msg) {
  Params p;
  EXPECT_EQ(msg.paramsSize(), 20u);
  std::memcpy(&p.rank, msg.params(), 4);
  std::memcpy(&p.m, msg.params() + 4, 8);
  std::memcpy(&p.n, msg.params() + 12, 8);
  return p;
}

TEST(PowerSGD, ExactLowRankIsReproduced) {
  for (auto [m, n, r, rank] : {std::tuple{50, 30, 3, 3}, std::tuple{30, 50, 2, 4}, std::tuple{64, 64, 1, 4},
                               std::tuple{20, 20000, 4, 4}, std::tuple{5000, 40, 3, 3}, std::tuple{400, 500, 2, 2}}) {
    auto c = makeCompressor("powersgd:rank=" + std::to_string(rank));
    auto x = lowRank(m, n, r, m + n);
    for (int call = 0; call < 3; ++call) {
      auto y = roundTrip(*c, x, {m, n});
      if (call >= 1) EXPECT_LT(err(x, y), 1e-5 * norm(x)) << m << "x" << n << " call " << call;
    }
  }
  auto c = makeCompressor("powersgd:rank=3");
  auto xd = lowRank<double>(40, 25, 3, 5);
  roundTrip(*c, xd, {40, 25});
  EXPECT_LT(err(xd, roundTrip(*c, xd, {40, 25})), 1e-12 * norm(xd));
}

TEST(PowerSGD, ErrorNeverExceedsNorm) {
  auto c = makeCompressor("powersgd:rank=2,seed=3");
  for (int call = 0; call < 6; ++call) {
    auto x = test::randomVector(37 * 23, call);
    if (call % 2) x = spectrum(37, 23, -0.9, call);  // alternating signs of the spectrum
    auto y = roundTrip(*c, x, {37, 23});
    EXPECT_LE(err(x, y), norm(x) * (1 + 1e-6)) << call;
    // A projection also never adds energy: ||P Q^T|| <= ||M||.
    EXPECT_LE(norm(y), norm(x) * (1 + 1e-6));
  }
  // Zero input: zero output, and the warm start recovers on the next input.
  std::vector<float> zero(37 * 23, 0.0f);
  auto y0 = roundTrip(*c, zero, {37, 23});
  EXPECT_EQ(norm(y0), 0.0);
  roundTrip(*c, zero, {37, 23});
  auto x = lowRank(37, 23, 2, 9);
  EXPECT_LT(err(x, roundTrip(*c, x, {37, 23})), 1e-5 * norm(x));
}

TEST(PowerSGD, WarmStartImproves) {
  const int64_t m = 60, n = 40;
  auto x = spectrum(m, n, 0.85, 21);
  double best = 0;
  for (int64_t i = 4; i < std::min(m, n); ++i) best += std::pow(0.85, 2 * i);
  best = std::sqrt(best);
  auto c = makeCompressor("powersgd:rank=4");
  std::vector<double> errs;
  for (int call = 0; call < 30; ++call) errs.push_back(err(x, roundTrip(*c, x, {m, n})));
  EXPECT_GT(errs[0], errs[3]);
  EXPECT_GT(errs[3], errs[29]);
  for (size_t i = 1; i < errs.size(); ++i) EXPECT_LE(errs[i], errs[i - 1] * (1 + 1e-5)) << i;
  EXPECT_LT(errs.back(), best * 1.01);
  EXPECT_GE(errs.back(), best * (1 - 1e-4));
}

TEST(PowerSGD, VectorsAreReshaped) {
  auto c = makeCompressor("powersgd:rank=2");
  for (int64_t d : {1, 2, 3, 10, 16, 17, 99, 100, 1000}) {
    const int64_t n = static_cast<int64_t>(std::ceil(std::sqrt(double(d)))), m = (d + n - 1) / n;
    auto x = test::randomVector(static_cast<size_t>(d), d);
    Message msg = c->compress(test::view(x));
    Params p = paramsOf(msg);
    EXPECT_EQ(p.m, uint64_t(m)) << d;
    EXPECT_EQ(p.n, uint64_t(n)) << d;
    EXPECT_EQ(p.rank, 2u);
    const int64_t r = std::min<int64_t>({2, m, n});
    EXPECT_EQ(msg.payloadSize(), size_t(r * (m + n) * 4)) << d;
    EXPECT_EQ(msg.size(), c->wireBytes(d)) << d;
    auto y = roundTrip(*c, x, {d});
    EXPECT_LE(err(x, y), norm(x) * (1 + 1e-6)) << d;
    if (m <= 2) EXPECT_LT(err(x, y), 1e-5 * norm(x)) << d;  // full rank: exact
  }
  // A vector that is a rank-1 matrix in its reshaped view (d = 12: 3 x 4) is exact.
  std::vector<float> v(12);
  for (int i = 0; i < 12; ++i) v[i] = float((i / 4 + 1) * (i % 4 - 1.5));
  EXPECT_LT(err(v, roundTrip(*c, v, {12})), 1e-6 * norm(v));
  // d = 1 and 0-d.
  std::vector<float> one = {-3.25f};
  EXPECT_EQ(roundTrip(*c, one, {1})[0], -3.25f);
  EXPECT_EQ(roundTrip(*c, one, {})[0], -3.25f);
  // d = 0.
  Message e = c->compress({nullptr, DType::kFloat32, {0}});
  Message ep = Message::fromBytes(e.data(), e.size());
  EXPECT_EQ(ep.payloadSize(), 0u);
  EXPECT_EQ(paramsOf(ep).m, 0u);
  c->decompress(ep, {nullptr, DType::kFloat32, {0}});
  EXPECT_EQ(e.size(), c->wireBytes(0));
  Message e2 = c->compress({nullptr, DType::kFloat32, {3, 0, 2}});
  c->decompress(Message::fromBytes(e2.data(), e2.size()), {nullptr, DType::kFloat32, {3, 0, 2}});
}

TEST(PowerSGD, NdInputs) {
  auto c = makeCompressor("powersgd:rank=2");
  // [6, 2, 5] is a 6 x 10 matrix: an exactly rank-1 one is reproduced.
  auto x = lowRank(6, 10, 1, 3);
  Message msg = c->compress({x.data(), DType::kFloat32, {6, 2, 5}});
  EXPECT_EQ(paramsOf(msg).m, 6u);
  EXPECT_EQ(paramsOf(msg).n, 10u);
  EXPECT_LT(err(x, roundTrip(*c, x, {6, 2, 5})), 1e-5 * norm(x));
  auto z = test::randomVector(4 * 3 * 3 * 3, 8);
  auto y = roundTrip(*c, z, {4, 3, 3, 3});
  EXPECT_LE(err(z, y), norm(z) * (1 + 1e-6));
  // A shape change re-initializes the warm start: same bytes as a fresh compressor.
  auto fresh = makeCompressor("powersgd:rank=2");
  Message a = c->compress({x.data(), DType::kFloat32, {10, 6}});
  Message b = fresh->compress({x.data(), DType::kFloat32, {10, 6}});
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size()));
}

TEST(PowerSGD, HalfPrecisionInputs) {
  auto c = makeCompressor("powersgd:rank=1");
  auto x = lowRank(16, 12, 1, 4);
  std::vector<BF16> xb(x.size()), yb(x.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = BF16{floatToBf16(x[i])};
  Message m = c->compress({xb.data(), DType::kBFloat16, {16, 12}});
  EXPECT_EQ(m.payloadSize(), size_t(1 * (16 + 12) * 4));
  c->decompress(Message::fromBytes(m.data(), m.size()), {yb.data(), DType::kBFloat16, {16, 12}});
  double e = 0, nn = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double a = bf16ToFloat(xb[i].bits), b = bf16ToFloat(yb[i].bits);
    e += (a - b) * (a - b);
    nn += a * a;
  }
  EXPECT_LT(std::sqrt(e), 0.02 * std::sqrt(nn));  // bf16 inputs are rank 1 up to bf16 rounding
}

TEST(PowerSGD, DeterministicGivenSeedAndHistory) {
  auto a = makeCompressor("powersgd:rank=3,seed=5"), b = makeCompressor("powersgd:rank=3,seed=5");
  auto other = makeCompressor("powersgd:rank=3,seed=6");
  for (int call = 0; call < 3; ++call) {
    auto x = test::randomVector(300 * 250, call);
    Message ma = a->compress({x.data(), DType::kFloat32, {300, 250}});
    Message mb = b->compress({x.data(), DType::kFloat32, {300, 250}}, 99);
    Message mo = other->compress({x.data(), DType::kFloat32, {300, 250}});
    ASSERT_EQ(ma.size(), mb.size());
    EXPECT_EQ(0, std::memcmp(ma.data(), mb.data(), ma.size())) << call;
    EXPECT_NE(0, std::memcmp(ma.payload(), mo.payload(), ma.payloadSize())) << call;
  }
}

TEST(PowerSGD, NonFiniteRaisesAndKeepsState) {
  auto x1 = test::randomVector(40 * 30, 1), x2 = test::randomVector(40 * 30, 2);
  auto ref = makeCompressor("powersgd:rank=2");
  ref->compress({x1.data(), DType::kFloat32, {40, 30}});
  Message want = ref->compress({x2.data(), DType::kFloat32, {40, 30}});
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    for (size_t pos : {size_t{0}, size_t{617}, size_t{40 * 30 - 1}}) {
      auto c = makeCompressor("powersgd:rank=2");
      auto xb = x2;
      xb[pos] = bad;
      EXPECT_THROW(c->compress({xb.data(), DType::kFloat32, {40, 30}}), NonFiniteError);  // fresh state
      c->compress({x1.data(), DType::kFloat32, {40, 30}});
      EXPECT_THROW(c->compress({xb.data(), DType::kFloat32, {40, 30}}), NonFiniteError);  // warm state
      Message got = c->compress({x2.data(), DType::kFloat32, {40, 30}});
      ASSERT_EQ(got.size(), want.size());
      EXPECT_EQ(0, std::memcmp(got.data(), want.data(), got.size())) << pos;
    }
  }
  std::vector<double> big(1000, 1.0);
  big[999] = -std::numeric_limits<double>::infinity();
  EXPECT_THROW(makeCompressor("powersgd")->compress(test::view(big)), NonFiniteError);
}

TEST(PowerSGD, SpecAndConstants) {
  auto c = makeCompressor("powersgd");
  EXPECT_EQ(c->spec(), "powersgd:rank=4,seed=0");
  auto d = makeCompressor("powersgd:seed=7,rank=16");
  EXPECT_EQ(makeCompressor(d->spec())->spec(), d->spec());
  EXPECT_EQ(c->alpha(1000), 0.0);
  EXPECT_TRUE(c->biased());
  EXPECT_FALSE(c->randomized());
  EXPECT_FALSE(c->omega(10).has_value());
  EXPECT_EQ(c->wireBytes(10000, DType::kFloat64), messageBytes(1, 20, 4 * 200 * 8));
  for (const char* bad : {"powersgd:rank=0", "powersgd:rank=-1", "powersgd:seed=-1", "powersgd:rank=4294967296",
                          "powersgd:levels=3"})
    EXPECT_THROW(makeCompressor(bad), InvalidArgument) << bad;
}

Message craft(const std::vector<int64_t>& shape, uint32_t rank, uint64_t m, uint64_t n,
              const std::vector<float>& values, size_t extraParamBytes = 0) {
  std::vector<uint8_t> params(20 + extraParamBytes, 0);
  std::memcpy(params.data(), &rank, 4);
  std::memcpy(params.data() + 4, &m, 8);
  std::memcpy(params.data() + 12, &n, 8);
  Message msg = Message::build(CompressorId::kPowerSGD, DType::kFloat32, shape, 0, params, values.size() * 4);
  if (!values.empty()) std::memcpy(msg.mutablePayload(), values.data(), values.size() * 4);
  msg.finish(values.size() * 4);
  return msg;
}

void expectRejected(const Message& m, const char* what) {
  EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError) << what;
}

TEST(PowerSGD, CorruptMessagesAreRejected) {
  // A 10-element vector is a 3 x 4 matrix; rank 2 carries 2 * (3 + 4) values.
  std::vector<float> v(14, 0.5f);
  EXPECT_NO_THROW(Message::fromBytes(craft({10}, 2, 3, 4, v).data(), craft({10}, 2, 3, 4, v).size()));
  auto check = [&](const Message& m, const char* what) { expectRejected(m, what); };
  check(craft({10}, 2, 4, 3, v), "m and n swapped");
  check(craft({10}, 2, 2, 5, v), "another split of 10");
  check(craft({10}, 2, 5, 4, v), "too much padding");
  check(craft({3, 4}, 2, 3, 5, v), "2-d shape mismatch");
  check(craft({10}, 0, 3, 4, v), "rank 0");
  check(craft({10}, 3, 3, 4, v), "rank 3 needs more values");
  check(craft({10}, 2, 3, 4, std::vector<float>(13, 0.5f)), "short payload");
  check(craft({10}, 2, 3, 4, std::vector<float>(15, 0.5f)), "long payload");
  check(craft({10}, 2, 3, 4, v, 1), "extra parameter byte");
  auto withValue = [&](size_t i, float x) {
    auto w = v;
    w[i] = x;
    return craft({10}, 2, 3, 4, w);
  };
  check(withValue(0, std::numeric_limits<float>::quiet_NaN()), "NaN in P");
  check(withValue(13, std::numeric_limits<float>::infinity()), "Inf in Q");
  Message truncated = Message::build(CompressorId::kPowerSGD, DType::kFloat32, {10}, 0, {2, 0, 0, 0, 3}, 0);
  truncated.finish(0);
  check(truncated, "truncated parameters");
  // decode stays in bounds even when validation is bypassed.
  std::vector<float> out(10);
  EXPECT_THROW(decompress(craft({10}, 3, 3, 4, v), test::mutableView(out)), CorruptMessageError);
  // An unvalidated but well-formed message decodes to P Q^T.
  decompress(craft({10}, 2, 3, 4, v), test::mutableView(out));
  for (float o : out) EXPECT_FLOAT_EQ(o, 0.5f);
}

}  // namespace
}  // namespace efcomm
