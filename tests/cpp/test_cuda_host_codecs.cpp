// Host checks of the GPU codecs' arithmetic (the EFCOMM_HD functions the kernels run) against
// the CPU path: 16-bit conversions, the counter-based generator, bit packing, RandK's parallel
// Floyd draw, Natural codes, QSGD levels and its ordered norm, the ordered L1 of sign, and
// BlockQuant's scales, codes and decoded values (FMA contraction as the CPU build does it).
// Runs without a GPU.
#include <gtest/gtest.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <type_traits>
#include <vector>

#include "../../cuda/common/hd.hpp"
#include "../../cuda/common/hd_pack.hpp"
#include "../../cuda/compress/blockquant_hd.hpp"
#include "../../cuda/compress/natural_hd.hpp"
#include "../../cuda/compress/qsgd_hd.hpp"
#include "../../cuda/compress/randk_hd.hpp"
#include "common/bitpack.hpp"
#include "common/bytes.hpp"
#include "common/half.hpp"
#include "common/parallel.hpp"
#include "common/rng.hpp"
#include "compress/layouts.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/config.hpp"

#if EFCOMM_HAVE_CUDA
namespace efcomm::cuda {
bool cpuContractsFma();  // cuda/common/runtime.cpp, compiled with the CPU kernels' flags
}
#endif

namespace efcomm::cuda {
namespace {

#if EFCOMM_HAVE_CUDA
#define REQUIRE_FMA_MODE() const bool fused = cpuContractsFma()
#else
#define REQUIRE_FMA_MODE() \
  GTEST_SKIP() << "the CPU build's FMA contraction is reported by the CUDA build only"; \
  const bool fused = false
#endif

template <typename T>
std::vector<T> gauss(size_t n, uint64_t seed, double scale = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0, scale);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(g));
  return v;
}

#if defined(__x86_64__) || defined(__i386__)
// The hardware's float16 conversions (F16C), whatever flags this file is built with.
__attribute__((target("f16c"))) float f16cToFloat(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) uint16_t f16cFromFloat(float f) { return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT); }

// The kernels (and a CPU build without F16C) convert float16 with the portable functions of
// common/half.hpp: they must give the hardware's bits.
TEST(CudaHostCodecs, PortableFloat16ConversionsMatchF16C) {
  if (!__builtin_cpu_supports("f16c")) GTEST_SKIP() << "this CPU has no F16C";
  std::mt19937 g(1);
  std::vector<uint32_t> bits = {0u, 0x80000000u, 0x7f7fffffu, 0x477fefffu, 0x477ff000u, 0x47800000u, 0x33000000u,
                                0x33000001u, 0x387fffffu, 0x38800000u, 0x00000001u, 0x7f800000u, 0xff800000u};
  for (int i = 0; i < 300000; ++i) bits.push_back(g());
  for (uint32_t b : bits) {
    const float f = bitsFloat(b);
    if (std::isnan(f)) continue;
    EXPECT_EQ(floatToF16Portable(f), f16cFromFloat(f)) << std::hex << b;
    EXPECT_EQ(floatToF16(f), f16cFromFloat(f)) << std::hex << b;
  }
  for (uint32_t h = 0; h < 65536; ++h) {
    const float want = f16cToFloat(static_cast<uint16_t>(h));
    if (std::isnan(want)) continue;
    EXPECT_EQ(floatBits(f16ToFloatPortable(static_cast<uint16_t>(h))), floatBits(want)) << h;
    EXPECT_EQ(floatBits(f16ToFloat(static_cast<uint16_t>(h))), floatBits(want)) << h;
  }
}

#endif  // x86

// SplitMix64::below (shared by the CPU and the kernels, whose 128-bit product is mulHi64)
// against Lemire's method written with a 128-bit integer.
TEST(CudaHostCodecs, GeneratorBelowIsLemiresMethod) {
  // A bound just above 2^63 rejects about half the draws.
  for (uint64_t bound : {uint64_t{1}, uint64_t{7}, uint64_t{1} << 40, (uint64_t{1} << 63) + 1, ~uint64_t{0}}) {
    SplitMix64 a(42), ref(42);
    for (int i = 0; i < 1000; ++i) {
      unsigned __int128 m = static_cast<unsigned __int128>(ref.next()) * bound;
      if (static_cast<uint64_t>(m) < bound) {
        const uint64_t t = (0 - bound) % bound;
        while (static_cast<uint64_t>(m) < t) m = static_cast<unsigned __int128>(ref.next()) * bound;
      }
      ASSERT_EQ(a.below(bound), static_cast<uint64_t>(m >> 64)) << bound << " draw " << i;
    }
  }
}

// The kernels' division by a run-time constant (hd.hpp DivisorU64) against the CPU's division:
// small and large divisors, powers of two and their neighbours, dividends at and around
// multiples of the divisor and at the top of the range.
TEST(CudaHostCodecs, DivisorMatchesIntegerDivision) {
  std::vector<uint64_t> divisors;
  for (uint64_t d = 1; d <= 300; ++d) divisors.push_back(d);
  for (int k = 1; k < 64; ++k)
    for (int64_t delta : {-1, 0, 1}) divisors.push_back((uint64_t{1} << k) + static_cast<uint64_t>(delta));
  std::mt19937_64 g(11);
  for (int i = 0; i < 200; ++i) divisors.push_back(g() >> (g() % 64) | 1);
  divisors.push_back(~uint64_t{0});
  for (uint64_t d : divisors) {
    const DivisorU64 div = makeDivisorU64(d);
    std::vector<uint64_t> ns = {0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, ~uint64_t{0}, ~uint64_t{0} - d,
                                ~uint64_t{0} / d * d, ~uint64_t{0} / d * d - 1};
    for (int i = 0; i < 64; ++i) ns.push_back(g() >> (g() % 64));
    for (int i = 0; i < 16; ++i) {
      const uint64_t top = ~uint64_t{0} / d;  // a multiple of d (at most top d) and its neighbours
      const uint64_t m = (top == ~uint64_t{0} ? g() : g() % (top + 1)) * d;
      ns.insert(ns.end(), {m, m - 1, m + 1});
    }
    for (uint64_t n : ns) ASSERT_EQ(divide(n, div), n / d) << n << " / " << d;
  }
}

TEST(CudaHostCodecs, GroupPackingMatchesBitpack) {
  std::mt19937 g(2);
  for (int w = 1; w <= 16; ++w) {
    for (int64_t n : {1, 5, 8, 13, 64, 67}) {
      std::vector<uint16_t> codes(static_cast<size_t>(n));
      for (auto& c : codes) c = static_cast<uint16_t>(g() & ((1u << w) - 1));
      std::vector<uint8_t> ref(packedBytes(n, w));
      packBits(codes.data(), n, w, ref.data());
      std::vector<uint8_t> got(ref.size(), 0xee);
      for (int64_t gi = 0; gi * 8 < n; ++gi) {
        const int count = static_cast<int>(std::min<int64_t>(8, n - 8 * gi));
        PackedGroup pg;
        for (int k = 0; k < count; ++k) packCode(pg, k, w, codes[8 * gi + k]);
        for (uint64_t b = 0; b < packedBytes(count, w); ++b) got[gi * w + b] = pg.byte(static_cast<int>(b));
        PackedGroup back;
        for (uint64_t b = 0; b < packedBytes(count, w); ++b) back.setByte(static_cast<int>(b), ref[gi * w + b]);
        for (int k = 0; k < count; ++k) EXPECT_EQ(unpackCode(back, k, w), codes[8 * gi + k]);
      }
      EXPECT_EQ(got, ref) << "w " << w << " n " << n;
    }
  }
  EXPECT_EQ(compress::qsgd::codeWidth(1), 2);
  EXPECT_EQ(compress::qsgd::codeWidth(16), 6);
  EXPECT_EQ(compress::qsgd::codeWidth(32767), 16);
}

// randk.cpp's drawIndices, written out: Floyd over a set.
std::vector<uint64_t> cpuFloyd(uint64_t seed, uint64_t step, uint64_t d, uint64_t k) {
  std::vector<bool> marked(d, false);
  SplitMix64 g(drawKey(seed, step));
  for (uint64_t j = d - k; j < d; ++j) {
    uint64_t t = g.below(j + 1);
    if (marked[t]) t = j;
    marked[t] = true;
  }
  std::vector<uint64_t> out;
  for (uint64_t i = 0; i < d; ++i)
    if (marked[i]) out.push_back(i);
  return out;
}

// The GPU's parallel formulation (randk.cu drawIndices), step by step.
std::vector<uint64_t> parallelFloyd(uint64_t seed, uint64_t step, uint64_t d, uint64_t k) {
  const uint64_t base = d - k, s0 = drawKey(seed, step);
  std::vector<uint64_t> t(k);
  bool rejected = false;
  for (uint64_t i = 0; i < k; ++i) t[i] = floydDraw(s0, i, base + i + 1, rejected);
  if (rejected) floydDrawSequential(s0, base, k, t.data());
  std::vector<uint64_t> order(k);
  for (uint64_t i = 0; i < k; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) { return t[a] < t[b]; });
  std::vector<uint8_t> notFirst(k, 0);
  for (uint64_t p = 1; p < k; ++p) notFirst[order[p]] = t[order[p - 1]] == t[order[p]];
  std::vector<uint64_t> kept(k);
  for (uint64_t i = 0; i < k; ++i) kept[i] = floydKept(i, base, t.data(), notFirst.data());
  std::sort(kept.begin(), kept.end());
  return kept;
}

TEST(CudaHostCodecs, ParallelFloydDrawsTheCpusIndices) {
  for (uint64_t d : {1ull, 2ull, 7ull, 100ull, 1000ull, 65537ull})
    for (uint64_t k : {uint64_t{1}, d / 2 + 1, d - d / 10, d})
      for (uint64_t seed : {0ull, 3ull})
        for (uint64_t step : {0ull, 5ull}) {
          if (k == 0 || k > d) continue;
          ASSERT_EQ(parallelFloyd(seed, step, d, k), cpuFloyd(seed, step, d, k))
              << "d " << d << " k " << k << " seed " << seed << " step " << step;
        }
  // The CPU compressor agrees: with x_i = i the payload lists the kept indices in order.
  const int64_t n = 50000;
  std::vector<float> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<float>(i);
  auto c = makeCompressor("randk:ratio=0.3,seed=11,scaled=false");
  const Message m = c->compress({x.data(), DType::kFloat32, {n}}, 4);
  const std::vector<uint64_t> kept = parallelFloyd(11, 4, n, m.payloadSize() / 4);
  for (size_t r = 0; r < kept.size(); ++r) ASSERT_EQ(loadAs<float>(m.payload() + 4 * r), static_cast<float>(kept[r]));
}

TEST(CudaHostCodecs, FloydDrawFlagsRejections) {
  bool rejected = false;
  int count = 0;
  for (uint64_t i = 0; i < 200; ++i) {
    rejected = false;
    floydDraw(1, i, (uint64_t{1} << 63) + 1, rejected);
    count += rejected;
  }
  EXPECT_GT(count, 50);  // about half reject at this bound
}

template <typename T>
void checkNatural(const std::vector<T>& x, DType dt) {
  const int64_t n = static_cast<int64_t>(x.size());
  auto c = makeCompressor("natural:seed=9");
  const Message m = c->compress({x.data(), dt, {n}}, 6);
  uint32_t base = 0;
  if constexpr (std::is_same_v<T, double>) {
    uint64_t top = 0;
    for (double v : x) top = std::max(top, doubleBits(v) & ~(uint64_t{1} << 63));
    base = naturalWindowBase(static_cast<uint32_t>(top >> 52));
    EXPECT_EQ(loadAs<uint16_t>(m.params()), base);
  }
  std::vector<uint16_t> codes(static_cast<size_t>(n));
  unpackBits(m.payload(), n, kNaturalWidth, codes.data());
  const uint64_t key = drawKey(9, 6);
  std::vector<T> decoded(static_cast<size_t>(n));
  decompress(m, {decoded.data(), dt, {n}});
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bad = 0;
    ASSERT_EQ(naturalCode(x[i], key, static_cast<uint64_t>(i), base, bad), codes[i]) << dtypeName(dt) << " at " << i;
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(naturalCodeInvalid<T>(codes[i]), 0u);
    const T v = naturalValue<T>(codes[i], base);
    ASSERT_EQ(std::memcmp(&v, &decoded[i], sizeof(T)), 0) << dtypeName(dt) << " at " << i;
  }
}

TEST(CudaHostCodecs, NaturalCodesAndValuesMatchTheCpu) {
  std::vector<float> f = gauss<float>(5000, 4);
  f[0] = 0.0f, f[1] = -0.0f, f[2] = 1e-40f, f[3] = std::numeric_limits<float>::max(), f[4] = -3e38f;
  checkNatural(f, DType::kFloat32);
  std::vector<double> d = gauss<double>(5000, 5, 1e10);
  d[0] = 1e-300, d[1] = -0.0, d[2] = 4.9e-324, d[3] = 1e300;
  checkNatural(d, DType::kFloat64);
  std::vector<BF16> b(3000);
  std::vector<F16> h(3000);
  const std::vector<float> src = gauss<float>(3000, 6, 100);
  for (size_t i = 0; i < src.size(); ++i) b[i] = BF16{floatToBf16(src[i])}, h[i] = F16{floatToF16(src[i])};
  h[0] = F16{floatToF16(6e-8f)};
  h[1] = F16{floatToF16(60000.f)};
  checkNatural(b, DType::kBFloat16);
  checkNatural(h, DType::kFloat16);
  EXPECT_EQ(naturalCodeInvalid<float>(255), 1u);
  EXPECT_EQ(naturalCodeInvalid<F16>(150), 1u);
  EXPECT_EQ(naturalCodeInvalid<F16>(50), 1u);
}

// The kernels' ordered reduction: blocks of kCpuReduceBlock, accumulator k takes elements
// lo + 8j + k in order of j, the tree ((a0+a1)+(a2+a3))+((a4+a5)+(a6+a7)), blocks in order.
template <typename Term>
double orderedSum(int64_t n, Term term) {
  double total = 0;
  for (int64_t lo = 0; lo < n; lo += kCpuReduceBlock) {
    const int64_t hi = std::min(n, lo + kCpuReduceBlock);
    double acc[8] = {};
    for (int64_t i = lo; i < hi; ++i) acc[(i - lo) % 8] = term(i, acc[(i - lo) % 8]);
    double s[8];
    for (int k = 0; k < 8; ++k) s[k] = acc[k] + acc[k ^ 1];
    double q[8];
    for (int k = 0; k < 8; ++k) q[k] = s[k] + s[k ^ 2];
    total += q[0] + q[4];
  }
  return total;
}

TEST(CudaHostCodecs, SignScaleFollowsTheCpusOrder) {
  EXPECT_EQ(kCpuReduceBlock, kReduceBlock);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{65537}, int64_t{200003}}) {
    const std::vector<float> x = gauss<float>(static_cast<size_t>(n), static_cast<uint64_t>(n));
    auto c = makeCompressor("sign");
    const Message m = c->compress({x.data(), DType::kFloat32, {n}});
    const double l1 = orderedSum(n, [&](int64_t i, double acc) { return acc + std::fabs(static_cast<double>(x[i])); });
    EXPECT_EQ(doubleBits(l1 / static_cast<double>(n)), doubleBits(loadAs<double>(m.payload()))) << n;
  }
}

TEST(CudaHostCodecs, QsgdNormAndCodesMatchTheCpu) {
  REQUIRE_FMA_MODE();
  for (int s : {1, 16, 300}) {
    for (int64_t n : {int64_t{1}, int64_t{13}, int64_t{40000}}) {
      const std::vector<float> x = gauss<float>(static_cast<size_t>(n), static_cast<uint64_t>(n + s));
      auto c = makeCompressor("qsgd:levels=" + std::to_string(s) + ",seed=4");
      const Message m = c->compress({x.data(), DType::kFloat32, {n}}, 2);
      const double sum = orderedSum(n, [&](int64_t i, double acc) {
        const double v = static_cast<double>(x[i]);
        return madd(fused, v, v, acc);
      });
      const double norm = std::sqrt(sum);
      ASSERT_EQ(doubleBits(norm), doubleBits(loadAs<double>(m.payload()))) << "s " << s << " n " << n;
      const double r = sum > 0 ? s / std::sqrt(sum) : 0.0;
      const int w = compress::qsgd::codeWidth(s);
      std::vector<uint16_t> codes(static_cast<size_t>(n));
      unpackBits(m.payload() + 8, n, w, codes.data());
      const uint64_t key = drawKey(4, 2);
      for (int64_t i = 0; i < n; ++i) {
        const double v = static_cast<double>(x[i]);
        ASSERT_EQ(qsgdCode(v, qsgdLevel(v, 1.0, r, s, fused, key, static_cast<uint64_t>(i)), s), codes[i])
            << "s " << s << " at " << i;
      }
    }
  }
}

// BlockQuant as the kernels compute it, for float32 input.
std::vector<uint8_t> emulateQuant(const std::vector<float>& x, int bits, int64_t block, bool fused) {
  const int64_t d = static_cast<int64_t>(x.size());
  const int64_t nb = (d + block - 1) / block;
  std::vector<uint8_t> out(static_cast<size_t>(nb) * 8 + packedBytes(d, bits), 0);
  uint8_t* codes = out.data() + nb * 8;
  for (int64_t b = 0; b < nb; ++b) {
    const int64_t start = b * block, len = std::min(block, d - start);
    float lo = x[start], hi = x[start];
    uint64_t rlo = 0, rhi = 0;
    for (int64_t i = 0; i < len; ++i) {
      const float v = x[start + i];
      const uint64_t r = quantRank(i);
      if (v < lo || (v == lo && r < rlo)) lo = v, rlo = r;
      if (v > hi || (v == hi && r < rhi)) hi = v, rhi = r;
    }
    storeAs<float>(out.data() + 8 * b, lo);
    storeAs<float>(out.data() + 8 * b + 4, hi);
    const QuantAffine<float> f = quantAffine(lo, hi, (1 << bits) - 1, fused);
    for (int64_t i = 0; i < len; ++i) {
      const int64_t bit = (start + i) * bits;
      codes[bit / 8] |= static_cast<uint8_t>(quantCode(x[start + i], f, fused) << (bit % 8));
    }
  }
  return out;
}

TEST(CudaHostCodecs, BlockQuantMatchesTheCpu) {
  REQUIRE_FMA_MODE();
  std::vector<float> x = gauss<float>(10007, 8);
  for (int i = 0; i < 64; ++i) x[i] = (i % 3 == 0) ? -0.0f : (i % 3 == 1 ? 0.0f : 1.0f);  // ±0 ties in min
  for (int i = 64; i < 128; ++i) x[i] = (i % 2) ? -0.0f : 0.0f;                         // a constant block
  x[200] = 3e38f, x[201] = -3e38f;                                                       // range overflows
  for (int i = 256; i < 320; ++i) x[i] = 1.0f + static_cast<float>(i) * 1e-37f;         // tiny range
  for (int bits : {2, 4, 8}) {
    for (int64_t block : {int64_t{8}, int64_t{64}, int64_t{256}, int64_t{24}}) {
      auto c = makeCompressor("quant:bits=" + std::to_string(bits) + ",block=" + std::to_string(block));
      const int64_t n = static_cast<int64_t>(x.size());
      const Message m = c->compress({x.data(), DType::kFloat32, {n}});
      const std::vector<uint8_t> want(m.payload(), m.payload() + m.payloadSize());
      ASSERT_EQ(emulateQuant(x, bits, block, fused), want) << "bits " << bits << " block " << block;
      std::vector<float> decoded(x.size());
      decompress(m, {decoded.data(), DType::kFloat32, {n}});
      const int64_t nb = (n + block - 1) / block;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t b = i / block;
        const QuantAffine<float> f =
            quantAffine(loadAs<float>(want.data() + 8 * b), loadAs<float>(want.data() + 8 * b + 4), (1 << bits) - 1, fused);
        const int64_t bit = i * bits;
        const uint32_t q = (want[nb * 8 + bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
        ASSERT_EQ(floatBits(quantValue(q, f, fused)), floatBits(decoded[i])) << "at " << i;
      }
    }
  }
}

}  // namespace
}  // namespace efcomm::cuda
