// Host checks of the GPU TopK's selection arithmetic and control flow (cuda/compress/
// topk_select.hpp): the radix narrowing, the chunked compaction with tie quotas, the sampled
// one-pass path and the index coding, run on the host with the same functions the kernels call
// (a host backend that emulates the per-chunk kernels), against a stable-sort reference and
// against the CPU TopK's message bytes. Runs without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "../../cuda/compress/topk_select.hpp"
#include "common/varint.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/message.hpp"

namespace efcomm::cuda::topk {
namespace {

template <typename B>
uint64_t keyOf(B bits) {
  return magKey(bits);
}

// The host twin of the device backend: per-chunk histograms and above/cand counts.
template <typename B>
struct HostBackend {
  const std::vector<int64_t>* index;  // nullptr: identity
  const std::vector<B>* vals;
  int64_t n;
  Chunks ch;
  std::vector<std::vector<uint32_t>> hist;
  std::vector<int64_t> above, cand;
  int passes = 0;

  HostBackend(const std::vector<B>& v, const std::vector<int64_t>* idx, int64_t len)
      : index(idx), vals(&v), n(len), ch(makeChunks(len)) {
    above.assign(static_cast<size_t>(ch.count), 0);
    cand.resize(static_cast<size_t>(ch.count));
    for (int64_t b = 0; b < ch.count; ++b) cand[b] = ch.length(b);
  }
  std::vector<uint64_t> histogram(const Pass& p) {
    ++passes;
    hist.assign(static_cast<size_t>(ch.count), std::vector<uint32_t>(static_cast<size_t>(p.nbins), 0));
    std::vector<uint64_t> totals(static_cast<size_t>(p.nbins), 0);
    for (int64_t b = 0; b < ch.count; ++b) {
      for (int64_t i = ch.begin(b); i < ch.begin(b) + ch.length(b); ++i) {
        const int64_t bin = binOf(keyOf((*vals)[i]), p);
        if (bin >= 0) ++hist[b][bin];
      }
      for (int64_t j = 0; j < p.nbins; ++j) totals[j] += hist[b][j];
    }
    return totals;
  }
  void narrow(const Pass& p, int64_t bin) {
    for (int64_t b = 0; b < ch.count; ++b) {
      for (int64_t j = bin + 1; j < p.nbins; ++j) above[b] += hist[b][j];
      cand[b] = hist[b][bin];
    }
  }
  // compactKernel: chunk b keeps by keepKey in index order, writes the first cap[b] at base[b].
  std::vector<int64_t> compact(uint64_t t, bool atLeast, const std::vector<int64_t>& quota,
                               const std::vector<int64_t>& base, const std::vector<int64_t>& cap,
                               std::vector<int64_t>& outIdx, std::vector<B>& outVal) {
    std::vector<int64_t> got(static_cast<size_t>(ch.count), 0);
    for (int64_t b = 0; b < ch.count; ++b) {
      int64_t ties = 0, kept = 0;
      for (int64_t i = ch.begin(b); i < ch.begin(b) + ch.length(b); ++i) {
        const uint64_t key = keyOf((*vals)[i]);
        const bool keep = keepKey(key, t, atLeast, ties, atLeast ? 0 : quota[b]);
        ties += isTie(key, t, atLeast);
        if (keep) {
          if (kept < cap[b]) {
            outIdx[base[b] + kept] = index ? (*index)[i] : i;
            outVal[base[b] + kept] = (*vals)[i];
          }
          ++kept;
        }
      }
      got[b] = kept;
    }
    return got;
  }
};

struct Sel {
  std::vector<int64_t> idx;
  int passes = 0;
  bool sampled = false;
};

template <typename B>
void selectRadixHost(const std::vector<B>& v, const std::vector<int64_t>* index, int64_t n, int64_t k, bool onList,
                     std::vector<int64_t>& outIdx, std::vector<B>& outVal, int& passes) {
  if (k == n) {
    for (int64_t i = 0; i < n; ++i) {
      outIdx[i] = index ? (*index)[i] : i;
      outVal[i] = v[i];
    }
    return;
  }
  HostBackend<B> be(v, index, n);
  const Narrowed r = narrowRange(be, n, k, keyBits(sizeof(B)), onList);
  passes += be.passes;
  const CompactPlan plan = planCompaction(r, be.above, be.cand);
  const std::vector<int64_t> base(plan.offset.begin(), plan.offset.end() - 1);
  if (r.exact()) {
    const std::vector<int64_t> got = be.compact(plan.t, false, plan.quota, base, plan.count, outIdx, outVal);
    for (size_t b = 0; b < got.size(); ++b) EXPECT_EQ(got[b], plan.count[b]);
    EXPECT_EQ(plan.offset.back(), k);
    return;
  }
  ASSERT_FALSE(onList);
  const int64_t len = plan.offset.back();
  EXPECT_LE(len, k + std::max(kCandidateLimit, n / 16));
  std::vector<int64_t> li(static_cast<size_t>(len));
  std::vector<B> lv(static_cast<size_t>(len));
  be.compact(plan.t, true, plan.quota, base, plan.count, li, lv);
  EXPECT_TRUE(std::is_sorted(li.begin(), li.end()));
  selectRadixHost(lv, &li, len, k, true, outIdx, outVal, passes);
}

template <typename B>
Sel selectHost(const std::vector<B>& v, int64_t k) {
  const int64_t n = static_cast<int64_t>(v.size());
  Sel s;
  std::vector<int64_t> idx(static_cast<size_t>(k));
  std::vector<B> val(static_cast<size_t>(k));
  if (k == 0) return s;
  if (n >= kSampleMinElements && k <= n / 8) {
    std::vector<uint64_t> keys(static_cast<size_t>(kSample));
    for (int64_t j = 0; j < kSample; ++j) {
      const int64_t at = samplePosition(j, n);
      EXPECT_TRUE(at >= 0 && at < n);
      keys[j] = keyOf(v[at]);
    }
    const SampleCut cut = sampleThreshold(keys, n, k);
    if (cut.t != 0) {
      HostBackend<B> be(v, nullptr, n);
      std::vector<int64_t> cap(static_cast<size_t>(be.ch.count)), base(cap.size());
      int64_t at = 0;
      for (int64_t b = 0; b < be.ch.count; ++b) {
        base[b] = at;
        cap[b] = regionCapacity(be.ch.length(b), cut.r);
        at += cap[b];
      }
      std::vector<int64_t> li(static_cast<size_t>(at));
      std::vector<B> lv(static_cast<size_t>(at));
      const std::vector<int64_t> got = be.compact(cut.t, true, {}, base, cap, li, lv);
      bool ok = true;
      int64_t total = 0;
      std::vector<int64_t> gi;
      std::vector<B> gv;
      for (int64_t b = 0; b < be.ch.count; ++b) {
        ok &= got[b] <= cap[b];
        for (int64_t j = 0; j < std::min(got[b], cap[b]); ++j) {
          gi.push_back(li[base[b] + j]);
          gv.push_back(lv[base[b] + j]);
        }
        total += got[b];
      }
      if (ok && total >= k) {
        selectRadixHost(gv, &gi, total, k, true, idx, val, s.passes);
        s.idx = idx;
        s.sampled = true;
        return s;
      }
    }
  }
  selectRadixHost(v, nullptr, n, k, false, idx, val, s.passes);
  for (int64_t j = 0; j < k; ++j) EXPECT_EQ(std::memcmp(&val[j], &v[idx[j]], sizeof(B)), 0);
  s.idx = idx;
  return s;
}

// Reference: stable sort by key descending, first k, in index order.
template <typename B>
std::vector<int64_t> reference(const std::vector<B>& v, int64_t k) {
  std::vector<int64_t> order(v.size());
  std::iota(order.begin(), order.end(), int64_t{0});
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return keyOf(v[a]) > keyOf(v[b]); });
  order.resize(static_cast<size_t>(k));
  std::sort(order.begin(), order.end());
  return order;
}

std::vector<uint32_t> floatBitsOf(const std::vector<float>& x) {
  std::vector<uint32_t> b(x.size());
  std::memcpy(b.data(), x.data(), x.size() * 4);
  return b;
}

TEST(CudaHostTopK, PassAndBinMath) {
  const Pass p = makePass(0, uint64_t{1} << 31);
  EXPECT_EQ(p.shift, 19);
  EXPECT_EQ(p.nbins, 4096);
  EXPECT_EQ(binOf(0x7fffffffu, p), 4095);
  EXPECT_EQ(binOf(0, p), 0);
  const Pass q = makePass(uint64_t{5} << 19, uint64_t{1} << 19);
  EXPECT_EQ(q.shift, 7);
  EXPECT_EQ(binOf((uint64_t{5} << 19) - 1, q), -1);  // below the range wraps around
  EXPECT_EQ(binOf(uint64_t{6} << 19, q), -1);
  EXPECT_EQ(binOf((uint64_t{5} << 19) + 128, q), 1);
  const Pass d = makePass(0, uint64_t{1} << 63);
  EXPECT_EQ(d.shift, 51);
  EXPECT_EQ(binOf(0x7fffffffffffffffull, d), 4095);
  const Pass h = makePass(0, uint64_t{1} << 15);
  EXPECT_EQ(h.shift, 3);
  EXPECT_EQ(makePass(8, 8).nbins, 8);
  EXPECT_EQ(makePass(8, 8).shift, 0);
  // Keys order magnitudes: denormals above zero, -0 ties +0, Inf below NaN.
  EXPECT_LT(magKey(floatBits(0.0f)), magKey(floatBits(std::numeric_limits<float>::denorm_min())));
  EXPECT_EQ(magKey(floatBits(-0.0f)), magKey(floatBits(0.0f)));
  EXPECT_EQ(magKey(floatBits(-2.5f)), magKey(floatBits(2.5f)));
  EXPECT_LT(magKey(floatBits(std::numeric_limits<float>::infinity())),
            magKey(floatBits(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_EQ(magKey(floatBits(std::numeric_limits<float>::infinity())), infKey(DType::kFloat32));
}

TEST(CudaHostTopK, PickBinAndQuotas) {
  const std::vector<uint64_t> totals = {5, 0, 3, 2};
  Pick p = pickBin(totals, 1);
  EXPECT_EQ(p.bin, 3);
  EXPECT_EQ(p.over, 0);
  p = pickBin(totals, 3);
  EXPECT_EQ(p.bin, 2);
  EXPECT_EQ(p.over, 2);
  EXPECT_EQ(p.count, 3);
  p = pickBin(totals, 6);
  EXPECT_EQ(p.bin, 0);
  EXPECT_EQ(p.over, 5);
  EXPECT_EQ(tieQuotas({3, 0, 4, 2}, 5), (std::vector<int64_t>{3, 0, 2, 0}));
}

TEST(CudaHostTopK, ChunksCoverTheInput) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{4096}, int64_t{65537}, (int64_t{1} << 20) + 3,
                    int64_t{64} << 20, int64_t{3} << 31}) {
    const Chunks c = makeChunks(n);
    EXPECT_LE(c.count, std::max<int64_t>(kMaxChunks, (n + kMaxChunk - 1) / kMaxChunk));
    EXPECT_LE(c.size, kMaxChunk);
    EXPECT_EQ(c.begin(c.count - 1) + c.length(c.count - 1), n);
    EXPECT_GT(c.length(c.count - 1), 0);
  }
  EXPECT_EQ(makeChunks(0).count, 0);
}

// Random data of several kinds: distinct, heavy ties, zeros, negatives, denormals, small ints.
std::vector<float> makeData(int kind, int64_t n, std::mt19937_64& rng) {
  std::vector<float> x(static_cast<size_t>(n));
  std::normal_distribution<float> g(0.f, 1.f);
  std::uniform_int_distribution<int> small(-3, 3);
  for (int64_t i = 0; i < n; ++i) {
    switch (kind) {
      case 0: x[i] = g(rng); break;                                                   // distinct
      case 1: x[i] = static_cast<float>(small(rng)); break;                           // heavy ties
      case 2: x[i] = (rng() % 50 == 0) ? g(rng) : 0.0f; break;                        // sparse
      case 3: x[i] = g(rng) * std::numeric_limits<float>::denorm_min() * 100; break;  // denormals
      case 4: x[i] = (i % 2 ? -1.f : 1.f) * 0.5f; break;                              // all tie
      case 5: x[i] = (rng() % 3 == 0) ? -0.0f : g(rng); break;                        // signed zeros
      default: x[i] = std::ldexp(g(rng), static_cast<int>(rng() % 60) - 30); break;   // wide range
    }
  }
  return x;
}

TEST(CudaHostTopK, SelectionMatchesStableSortReference) {
  std::mt19937_64 rng(7);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{100}, int64_t{4097}, int64_t{65537}}) {
    for (int kind = 0; kind < 7; ++kind) {
      const std::vector<uint32_t> v = floatBitsOf(makeData(kind, n, rng));
      for (int64_t k : {int64_t{1}, n / 100, n / 9, n / 8, n / 2, n - 1, n}) {
        if (k < 1) continue;
        const Sel s = selectHost(v, k);
        ASSERT_EQ(s.idx, reference(v, k)) << "n " << n << " kind " << kind << " k " << k;
      }
    }
  }
}

TEST(CudaHostTopK, SampledPathOnLargeInputs) {
  std::mt19937_64 rng(11);
  const int64_t n = kSampleMinElements + 12345;
  int sampled = 0;
  for (int kind : {0, 1, 2, 5, 6}) {
    const std::vector<uint32_t> v = floatBitsOf(makeData(kind, n, rng));
    for (int64_t k : {int64_t{1}, n / 100, n / 8}) {
      const Sel s = selectHost(v, k);
      ASSERT_EQ(s.idx, reference(v, k)) << "kind " << kind << " k " << k;
      sampled += s.sampled;
    }
  }
  EXPECT_GE(sampled, 5);  // distinct and wide-range data take the one-pass path
}

TEST(CudaHostTopK, DoubleAndHalfKeys) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> g(0., 1.);
  std::vector<uint64_t> d(20000);
  for (auto& b : d) b = doubleBits(rng() % 4 ? g(rng) : 1.0);
  for (int64_t k : {1, 77, 2500, 19999}) ASSERT_EQ(selectHost(d, k).idx, reference(d, k));
  std::vector<uint16_t> h(30000);
  for (auto& b : h) b = static_cast<uint16_t>(rng());  // every bf16 pattern, NaNs included
  for (int64_t k : {1, 300, 7000}) ASSERT_EQ(selectHost(h, k).idx, reference(h, k));
}

TEST(CudaHostTopK, DistinctValuesUseFewPasses) {
  std::mt19937_64 rng(5);
  const std::vector<uint32_t> v = floatBitsOf(makeData(0, 65537, rng));
  const Sel s = selectHost(v, 655);
  EXPECT_LE(s.passes, 4);  // one data pass, then the list's passes
}

// The coding helpers write exactly the CPU TopK's payload.
TEST(CudaHostTopK, EncodingMatchesCpuMessage) {
  std::mt19937_64 rng(9);
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{65537}}) {
    for (double ratio : {0.01, 0.3, 1.0}) {
      const std::vector<float> x = makeData(0, n, rng);
      auto c = makeCompressor("topk:ratio=" + std::to_string(ratio));
      const Message m = c->compress(ConstTensorView{x.data(), DType::kFloat32, {n}}, 0);
      const auto k = static_cast<int64_t>(m.paramsSize() == 8 ? *reinterpret_cast<const uint64_t*>(m.params()) : 0);
      const std::vector<uint32_t> v = floatBitsOf(x);
      const Sel s = selectHost(v, k);
      // varint sizes, stream and bitmap
      std::vector<long long> ends(static_cast<size_t>(k));
      long long total = 0;
      for (int64_t j = 0; j < k; ++j) {
        total += varintSize(gapCode(s.idx.data(), j));
        ends[j] = total;
      }
      const bool bitmap = (n + 7) / 8 < total;
      std::vector<uint8_t> payload(static_cast<size_t>(k) * 4);
      for (int64_t j = 0; j < k; ++j) std::memcpy(&payload[j * 4], &v[s.idx[j]], 4);
      if (bitmap) {
        for (int64_t b = 0; b < (n + 7) / 8; ++b) payload.push_back(bitmapByte(s.idx.data(), k, b));
      } else {
        std::vector<uint8_t> stream(static_cast<size_t>(total));
        for (int64_t j = 0; j < k; ++j)
          putVarint(stream.data() + (ends[j] - varintSize(gapCode(s.idx.data(), j))), gapCode(s.idx.data(), j));
        payload.insert(payload.end(), stream.begin(), stream.end());
      }
      EXPECT_EQ(m.flags(), bitmap ? 1 : 0);
      ASSERT_EQ(payload.size(), m.payloadSize()) << n << " " << ratio;
      EXPECT_EQ(std::memcmp(payload.data(), m.payload(), payload.size()), 0);
      EXPECT_LE(m.payloadSize(), static_cast<size_t>(k) * 4 + std::min<size_t>((n + 7) / 8, worstVarintBytes(n, k)));
    }
  }
}

TEST(CudaHostTopK, ParallelVarintParse) {
  std::mt19937_64 rng(1);
  std::vector<uint64_t> vals = {0, 1, 127, 128, 300, 16383, 16384, uint64_t{1} << 40, ~uint64_t{0}};
  for (int i = 0; i < 100; ++i) vals.push_back(rng() >> (rng() % 64));
  std::vector<uint8_t> s(vals.size() * 10);
  size_t at = 0;
  for (uint64_t v : vals) at += putVarint(s.data() + at, v);
  s.resize(at);
  // Each terminator with the start found by walking back to the previous terminator.
  size_t j = 0;
  for (int64_t b = 0; b < static_cast<int64_t>(s.size()); ++b) {
    if (s[b] >= 0x80) continue;
    int64_t start = b;
    while (start > 0 && s[start - 1] >= 0x80) --start;
    uint64_t v = 0;
    ASSERT_TRUE(readVarintAt(s.data(), start, b, &v));
    const uint8_t* p = s.data() + start;
    EXPECT_EQ(v, getVarint(p, s.data() + s.size()));
    EXPECT_EQ(v, vals[j++]);
  }
  EXPECT_EQ(j, vals.size());
  // 11 bytes, and a 10th byte above 1, are rejected as the CPU does.
  std::vector<uint8_t> longer(10, 0x80);
  longer.push_back(0);
  uint64_t v;
  EXPECT_FALSE(readVarintAt(longer.data(), 0, 10, &v));
  std::vector<uint8_t> over(9, 0xff);
  over.push_back(2);
  EXPECT_FALSE(readVarintAt(over.data(), 0, 9, &v));
}

}  // namespace
}  // namespace efcomm::cuda::topk

namespace efcomm::cuda::topk {
namespace {

// sampleSelectKernel's rounds (8-bit digits from the top, pickDigit) give nth_element's key.
uint64_t digitSelect(const std::vector<uint64_t>& keys, int64_t r, int keyBitsOf) {
  uint64_t prefix = 0, mask = 0;
  int64_t need = r;
  for (int shift = (keyBitsOf + 7) / 8 * 8 - 8; shift >= 0; shift -= 8) {
    uint32_t hist[256] = {};
    for (uint64_t k : keys)
      if ((k & mask) == prefix) ++hist[(k >> shift) & 255u];
    int64_t over = 0;
    const int d = pickDigit(hist, need, &over);
    prefix |= static_cast<uint64_t>(d) << shift;
    need -= over;
    mask |= uint64_t{255} << shift;
  }
  return prefix;
}

TEST(CudaHostTopK, DeviceSampleSelectEqualsNthElement) {
  std::mt19937_64 rng(21);
  for (int kind = 0; kind < 7; ++kind) {
    const std::vector<uint32_t> v = floatBitsOf(makeData(kind, kSample, rng));
    std::vector<uint64_t> keys(v.size());
    for (size_t i = 0; i < v.size(); ++i) keys[i] = magKey(v[i]);
    for (int64_t n : {kSampleMinElements, int64_t{64} << 20}) {
      for (int64_t k : {int64_t{1}, n / 1000, n / 100, n / 8}) {
        std::vector<uint64_t> copy = keys;
        const SampleCut cut = sampleThreshold(copy, n, k);
        EXPECT_EQ(cut.r, sampleRank(kSample, n, k));
        EXPECT_EQ(digitSelect(keys, cut.r, 31), cut.t) << "kind " << kind << " k " << k;
      }
    }
  }
  std::vector<uint64_t> d(kSample);
  for (auto& x : d) x = rng() >> 1;
  std::vector<uint64_t> copy = d;
  const SampleCut cut = sampleThreshold(copy, int64_t{1} << 30, 1 << 20);
  EXPECT_EQ(digitSelect(d, cut.r, 63), cut.t);
}

// The device grids: chunksWanted(n) bounds the chunk count of every m <= n.
TEST(CudaHostTopK, DeviceChunkGridBoundsEveryShorterList) {
  for (int64_t n : {int64_t{1}, int64_t{4095}, int64_t{4097}, int64_t{913000}, int64_t{1830000}, int64_t{1} << 26}) {
    for (int64_t m : {int64_t{1}, n / 3, n / 2 + 1, n - 1, n}) {
      if (m < 1) continue;
      const Chunks c = makeChunks(m);
      EXPECT_LE(c.count, chunksWanted(n)) << n << " " << m;
      EXPECT_LE(c.count, kMaxChunks);
      EXPECT_GE(c.count * c.size, m);
    }
  }
}

// pickKernel's rule (thread g owns bins [4g, 4g + 4), prefix sums from the top) is pickBin's;
// planKernel's clamp is tieQuotas.
TEST(CudaHostTopK, DevicePickAndPlanRulesMatchTheHost) {
  std::mt19937_64 rng(4);
  for (int trial = 0; trial < 200; ++trial) {
    const int64_t nbins = trial % 3 == 0 ? 128 : 4096;
    std::vector<uint64_t> totals(static_cast<size_t>(nbins));
    int64_t sum = 0;
    for (auto& t : totals) {
      t = rng() % 5 == 0 ? rng() % 50 : 0;
      sum += static_cast<int64_t>(t);
    }
    if (sum == 0) continue;
    const int64_t need = 1 + static_cast<int64_t>(rng() % static_cast<uint64_t>(sum));
    int64_t excl = 0, found = -1, foundOver = 0;
    for (int g = 1023; g >= 0; --g) {
      int64_t c[4], s = 0;
      for (int j = 0; j < 4; ++j) {
        c[j] = 4 * g + j < nbins ? static_cast<int64_t>(totals[4 * g + j]) : 0;
        s += c[j];
      }
      if ((excl < need && excl + s >= need) || (g == 0 && excl + s < need)) {
        int64_t over = excl;
        int bin = 4 * g;
        for (int j = 3; j >= 0; --j) {
          if (over + c[j] >= need || j == 0) {
            bin = 4 * g + j;
            break;
          }
          over += c[j];
        }
        EXPECT_EQ(found, -1);
        found = bin;
        foundOver = over;
      }
      excl += s;
    }
    const Pick p = pickBin(totals, need);
    EXPECT_EQ(found, p.bin);
    EXPECT_EQ(foundOver, p.over);
  }
  const std::vector<int64_t> ties{3, 0, 4, 2};
  for (int64_t need : {0, 1, 5, 9, 20}) {
    const std::vector<int64_t> q = tieQuotas(ties, need);
    int64_t before = 0;
    for (size_t b = 0; b < ties.size(); ++b) {
      int64_t x = need - before;
      x = x < 0 ? 0 : (x > ties[b] ? ties[b] : x);
      EXPECT_EQ(x, q[b]);
      before += ties[b];
    }
  }
}

}  // namespace
}  // namespace efcomm::cuda::topk
