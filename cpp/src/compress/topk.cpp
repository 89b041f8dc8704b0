// TopK: keep the k entries of largest magnitude (Stich, Cordonnier, Jaggi 2018, "Sparsified SGD
// with Memory"). ||C(x) - x||^2 is the sum of the d-k smallest squares, at most (1 - k/d)||x||^2,
// so alpha = k/d; C is deterministic and positively homogeneous.
//
// The kept set is exactly that of a stable sort by |x| descending (ties go to the lower index),
// found without sorting by a radix select on magnitude keys: the bit pattern of |x| read as an
// unsigned integer orders non-negative IEEE numbers like their values (NaN above Inf above all
// finite numbers). One histogram pass over the top 16 key bits finds the bin holding the k-th
// largest key; while that bin is still crowded (ties, sparse inputs) another pass refines it on
// the next 16 bits. A last pass collects, in index order, every index whose key is above the bin
// and the bin's candidates; the exact k-th key T among the candidates decides: keys > T are kept,
// and of the keys == T the first ones in index order.
// For k <= d/8 on large inputs a single pass usually suffices: a threshold taken from a sample
// keeps slightly more than k entries, one pass collects them, and the radix select runs on that
// short list; a heavily tied threshold (small integers, sparse inputs) is checked to be the k-th
// key by one counting pass instead. When the sample misleads the full radix select runs, so the
// result never depends on the sample.
// Non-finite input is found without a pass of its own: NaN and Inf have the largest keys, so the
// kept values include one whenever x does.
//
// Wire: params = k (u64). Payload = the k kept values (input dtype, raw bits) in increasing index
// order, then the indices, coded by flags bit 0:
//   0: LEB128 varints v_0 = i_0, v_j = i_j - i_{j-1} - 1 (gaps minus one, so every stream of
//      k in-range varints decodes to strictly increasing indices);
//   1: a bitmap of ceil(d/8) bytes, bit i%8 of byte i/8 set iff index i is kept.
// The encoder takes the bitmap only when it is strictly smaller than the exact varint size.
// wireBytes(d) is therefore an upper bound: header + k*itemsize + min(ceil(d/8), W), where W is
// the longest varint stream any k increasing indices below d need (worstVarintBytes; attained).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <type_traits>

#include "common/bytes.hpp"
#include "common/rng.hpp"
#include "common/varint.hpp"
#include "compress/bitmap.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {

namespace {

constexpr uint16_t kBitmapFlag = 1;
// Key bits resolved by one histogram pass (65536 bins of 4 bytes stay in L2).
constexpr int kRadixBits = 16;
// Candidate counts up to max(this, d/16) are resolved by nth_element instead of another pass.
constexpr int64_t kCandidateLimit = int64_t{1} << 12;
// Elements per histogram block at most, so 32-bit bin counts cannot overflow.
constexpr int64_t kMaxHistBlock = int64_t{1} << 30;
// Sample size of the one-pass path, and the smallest input it is tried on.
constexpr int64_t kSample = int64_t{1} << 14;
constexpr int64_t kSampleMinElements = 16 * kSample;
// Elements per step of the collection scan (one 512-bit vector of floats).
constexpr int64_t kScanChunk = 16;
// Indices per block when coding the index stream in parallel.
constexpr int64_t kCodeBlock = int64_t{1} << 16;
// Inputs (and index lists) shorter than this stay on one thread: a pass over them takes well
// under a millisecond, and the selection makes several.
constexpr int64_t kSerialBelow = int64_t{1} << 20;

// Magnitude keys: the IEEE bit pattern with the sign cleared; kInf is the smallest key of a
// non-finite value (exponent all ones).
template <typename T>
struct Mag;
template <>
struct Mag<float> {
  using Key = uint32_t;
  static constexpr Key kInf = 0x7f800000u;
};
template <>
struct Mag<double> {
  using Key = uint64_t;
  static constexpr Key kInf = 0x7ff0000000000000ull;
};
template <>
struct Mag<BF16> {
  using Key = uint16_t;
  static constexpr Key kInf = 0x7f80;
};
template <>
struct Mag<F16> {
  using Key = uint16_t;
  static constexpr Key kInf = 0x7c00;
};
template <typename T>
using KeyOf = typename Mag<T>::Key;
template <typename T>
constexpr int kKeyBits = 8 * static_cast<int>(sizeof(T)) - 1;

template <typename T>
inline KeyOf<T> magKey(T v) {
  KeyOf<T> u;
  std::memcpy(&u, &v, sizeof u);
  return static_cast<KeyOf<T>>(u & (static_cast<KeyOf<T>>(~KeyOf<T>{0}) >> 1));
}

// Increasing flat indices and their values.
template <typename T>
struct Selection {
  explicit Selection(int64_t n = 0) : size(n), idx(new int64_t[static_cast<size_t>(n)]), val(new T[static_cast<size_t>(n)]) {}
  int64_t size;
  std::unique_ptr<int64_t[]> idx;  // uninitialized until written: no pass to zero-fill
  std::unique_ptr<T[]> val;
};

// Writes, in index order, the i in [lo, hi) with a key above t or equal to it (Limited: equal
// keys only while `quota` lasts) and their values, at most `cap` of them; returns the count, or
// -1 if more would be kept. The compaction has no data-dependent branch: every element is
// written at the output position, which advances past kept ones only, so any density of kept
// keys costs no mispredictions; within kScanChunk of cap a careful loop takes over, so nothing
// is written past cap. When few keys pass (`sparse`), chunks without any key >= t are first
// skipped by a vectorized test. Keys are at most 0x7f..f, so t + 1 cannot overflow.
template <bool Limited, typename T>
int64_t scanKept(const T* x, int64_t lo, int64_t hi, KeyOf<T> t, int64_t quota, bool sparse, int64_t cap,
                 int64_t* di, T* dv) {
  int64_t m = 0;
  for (int64_t c = lo; c < hi; c += kScanChunk) {
    if constexpr (Limited) {
      if (quota == 0) {  // no ties left to keep: the rest is a plain scan for keys >= t + 1
        const int64_t rest = scanKept<false>(x, c, hi, static_cast<KeyOf<T>>(t + 1), 0, sparse, cap - m, di + m, dv + m);
        return rest < 0 ? -1 : m + rest;
      }
    }
    const int64_t e = std::min(hi, c + kScanChunk);
    if (sparse) {
      unsigned any = 0;
      for (int64_t i = c; i < e; ++i) any |= magKey(x[i]) >= t;
      if (!any) continue;
    }
    const bool roomy = m + kScanChunk <= cap;
    for (int64_t i = c; i < e; ++i) {
      const KeyOf<T> key = magKey(x[i]);
      bool keep = key >= t;
      if constexpr (Limited) {
        const bool tie = key == t;
        keep = (key > t) | (tie & (quota > 0));
        quota -= keep & tie;
      }
      if (roomy) {
        di[m] = i;
        dv[m] = x[i];
        m += keep;
      } else if (keep) {
        if (m == cap) return -1;
        di[m] = i;
        dv[m++] = x[i];
      }
    }
  }
  return m;
}

// Whether about `kept` of n keys passing a scan is few enough for the chunk test to pay off.
inline bool sparseScan(int64_t kept, int64_t n) { return kept < n / 32; }

// Fixed blocks of [0, n), one per thread and each under kMaxHistBlock elements: per-block counts
// carry between passes, and per-block outputs concatenate in index order.
struct Blocks {
  explicit Blocks(int64_t len) : n(len) {
    const int64_t want = std::max<int64_t>(numRanges(n, kSerialBelow), (n + kMaxHistBlock - 1) / kMaxHistBlock);
    size = (n + want - 1) / want;
    count = (n + size - 1) / size;
  }
  int64_t length(int64_t b) const { return std::min(n, (b + 1) * size) - b * size; }
  template <typename Fn>
  void each(Fn&& fn) const {
    parallelBlocks(n, size, fn, kSerialBelow);
  }
  int64_t n, size, count;
};

// Per-block output regions of a parallel scan: block b writes up to cap[b] entries from at[b] on.
template <typename T>
struct Regions {
  explicit Regions(const std::vector<int64_t>& capacity) : cap(capacity), at(cap.size() + 1, 0), got(cap.size(), 0) {
    for (size_t b = 0; b < cap.size(); ++b) at[b + 1] = at[b] + cap[b];
    buf = Selection<T>(at.back());
  }
  template <bool Limited>
  void scan(const T* x, const Blocks& blocks, KeyOf<T> t, const std::vector<int64_t>& quota, bool sparse) {
    blocks.each([&](int64_t b, int64_t lo, int64_t hi) {
      got[b] = scanKept<Limited>(x, lo, hi, t, quota[b], sparse, cap[b], buf.idx.get() + at[b], buf.val.get() + at[b]);
    });
  }
  // Moves the regions' entries together at the front of buf and sets buf.size.
  void compact() {
    int64_t m = 0;
    for (size_t b = 0; b < cap.size(); ++b) {
      std::memmove(buf.idx.get() + m, buf.idx.get() + at[b], static_cast<size_t>(got[b]) * sizeof(int64_t));
      std::memmove(buf.val.get() + m, buf.val.get() + at[b], static_cast<size_t>(got[b]) * sizeof(T));
      m += got[b];
    }
    buf.size = m;
  }
  std::vector<int64_t> cap, at, got;
  Selection<T> buf;
};

// quota[b]: how many of block b's ties to keep so that `need` ties are kept in index order.
std::vector<int64_t> tieQuotas(const std::vector<int64_t>& ties, int64_t need) {
  std::vector<int64_t> quota(ties.size());
  for (size_t b = 0; b < ties.size(); ++b) {
    quota[b] = std::min(ties[b], need);
    need -= quota[b];
  }
  return quota;
}

std::vector<int64_t> sums(const std::vector<int64_t>& a, const std::vector<int64_t>& b) {
  std::vector<int64_t> s(a.size());
  for (size_t i = 0; i < a.size(); ++i) s[i] = a[i] + b[i];
  return s;
}

// The k largest magnitudes of x[0, n) (0 < k <= n), ties to the lower index, by radix select.
template <typename T>
Selection<T> selectByHistogram(const T* x, int64_t n, int64_t k) {
  using K = KeyOf<T>;
  if (k == n) {
    Selection<T> all(n);
    std::iota(all.idx.get(), all.idx.get() + n, int64_t{0});
    std::copy(x, x + n, all.val.get());
    return all;
  }
  const Blocks blocks(n);
  const int64_t nb = blocks.count;
  std::vector<int64_t> above(nb, 0), cand(nb);  // per block: keys above the key range; keys in it
  for (int64_t b = 0; b < nb; ++b) cand[b] = blocks.length(b);

  // Invariant: fewer than k keys lie above the key range [klo, klo + ksize), and at least `need`
  // = k - (those above) lie inside it. Each pass narrows the range to one histogram bin.
  K klo = 0;
  uint64_t ksize = uint64_t{1} << kKeyBits<T>;
  int64_t need = k, candidates = n;
  const int64_t limit = std::max(kCandidateLimit, n / 16);
  // A large k also refines down to a single key: that pass costs less than listing k + more keys.
  while ((candidates > limit || k > n / 8) && ksize > 1) {
    const int rangeBits = __builtin_ctzll(ksize);
    const int binShift = std::max(0, rangeBits - kRadixBits);
    const int64_t nbins = int64_t{1} << (rangeBits - binShift);
    // Two histograms per block, for even and odd elements: runs of equal keys (ties, small
    // integers) would otherwise chain every increment on the previous one's store.
    std::vector<uint32_t> hist(static_cast<size_t>(nb * 2 * nbins), 0);
    blocks.each([&](int64_t b, int64_t lo, int64_t hi) {
      // Register copies: the bin stores could otherwise alias the captured variables.
      const K base = klo, last = static_cast<K>(ksize - 1);
      const int shift = binShift;
      uint32_t* h = hist.data() + b * 2 * nbins;
      uint32_t* h2 = h + nbins;
      int64_t i = lo;
      for (; i + 1 < hi; i += 2) {
        const K off = static_cast<K>(magKey(x[i]) - base), off2 = static_cast<K>(magKey(x[i + 1]) - base);
        if (off <= last) ++h[off >> shift];
        if (off2 <= last) ++h2[off2 >> shift];
      }
      if (i < hi) {
        const K off = static_cast<K>(magKey(x[i]) - base);
        if (off <= last) ++h[off >> shift];
      }
      for (int64_t j = 0; j < nbins; ++j) h[j] += h2[j];
    });
    int64_t bin = nbins - 1, over = 0, count = 0;
    for (;; --bin) {
      count = 0;
      for (int64_t b = 0; b < nb; ++b) count += hist[b * 2 * nbins + bin];
      if (over + count >= need) break;
      over += count;
    }
    for (int64_t b = 0; b < nb; ++b) {
      const uint32_t* h = hist.data() + b * 2 * nbins;
      for (int64_t j = bin + 1; j < nbins; ++j) above[b] += h[j];
      cand[b] = h[bin];
    }
    need -= over;
    candidates = count;
    klo = static_cast<K>(klo + (static_cast<K>(bin) << binShift));
    ksize = uint64_t{1} << binShift;
  }

  if (ksize == 1) {
    // The k-th key is known: one pass keeps the keys above it and the first `need` ties.
    const std::vector<int64_t> quota = tieQuotas(cand, need);
    Regions<T> kept(sums(above, quota));  // exact counts: the regions fill the buffer
    kept.template scan<true>(x, blocks, klo, quota, sparseScan(k, n));
    return std::move(kept.buf);
  }

  // Collect every key >= klo in index order, find the k-th key t among the candidates, keep the
  // keys above t and the first ties.
  Regions<T> list(sums(above, cand));
  list.template scan<false>(x, blocks, klo, std::vector<int64_t>(nb, 0), sparseScan(k + candidates, n));
  const uint64_t klast = klo + ksize - 1;  // the range's largest key
  std::vector<K> keys;
  keys.reserve(static_cast<size_t>(candidates));
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t j = list.at[b]; j < list.at[b] + list.got[b]; ++j) {
      const K key = magKey(list.buf.val[j]);
      if (key <= klast) keys.push_back(key);
    }
  }
  std::nth_element(keys.begin(), keys.begin() + (need - 1), keys.end(), std::greater<K>());
  const K t = keys[need - 1];
  // The list phases touch only the list: threads pay off only for a long one.
  const int64_t listSize = k + candidates - need;
  const auto eachListBlock = [&](auto&& fn) {
    parallelBlocks(nb, 1, [&](int64_t b, int64_t, int64_t) { fn(b); }, listSize >= kSerialBelow ? 2 : nb + 1);
  };
  std::vector<int64_t> gt(nb, 0), ties(nb, 0);
  eachListBlock([&](int64_t b) {
    for (int64_t j = list.at[b]; j < list.at[b] + list.got[b]; ++j) {
      const K key = magKey(list.buf.val[j]);
      gt[b] += key > t;
      ties[b] += key == t;
    }
  });
  int64_t keptAbove = 0;
  for (int64_t g : gt) keptAbove += g;
  const std::vector<int64_t> quota = tieQuotas(ties, k - keptAbove);
  std::vector<int64_t> off(nb + 1, 0);
  for (int64_t b = 0; b < nb; ++b) off[b + 1] = off[b] + gt[b] + quota[b];
  Selection<T> out(k);
  eachListBlock([&](int64_t b) {
    int64_t q = quota[b], m = off[b];
    for (int64_t j = list.at[b]; m < off[b + 1]; ++j) {  // stops at the block's last kept entry
      const K key = magKey(list.buf.val[j]);
      const bool tie = key == t, keep = (key > t) | (tie & (q > 0));
      q -= keep & tie;
      out.idx[m] = list.buf.idx[j];
      out.val[m] = list.buf.val[j];
      m += keep;
    }
  });
  return out;
}

// Selection when the k-th largest key is probably t: one counting pass (vectorized, no
// histogram) checks that fewer than k keys lie above t and at least k at or above it; then one
// scan keeps the keys above t and the first ties. Returns false if t is not the k-th key.
template <typename T>
bool selectAtKey(const T* x, const Blocks& blocks, int64_t k, KeyOf<T> t, Selection<T>& out) {
  const int64_t nb = blocks.count;
  std::vector<int64_t> gt(nb), eq(nb);
  blocks.each([&](int64_t b, int64_t lo, int64_t hi) {
    const KeyOf<T> key = t;
    int64_t g = 0, e = 0;
    for (int64_t i = lo; i < hi; ++i) {
      const KeyOf<T> v = magKey(x[i]);
      g += v > key;
      e += v == key;
    }
    gt[b] = g;
    eq[b] = e;
  });
  const int64_t above = std::accumulate(gt.begin(), gt.end(), int64_t{0});
  const int64_t ties = std::accumulate(eq.begin(), eq.end(), int64_t{0});
  if (above >= k || above + ties < k) return false;
  const std::vector<int64_t> quota = tieQuotas(eq, k - above);
  Regions<T> kept(sums(gt, quota));  // exact counts: the regions fill the buffer
  kept.template scan<true>(x, blocks, t, quota, sparseScan(k, blocks.n));
  out = std::move(kept.buf);
  return true;
}

// The one-pass path for small k: the r-th largest key t of a sample, r four standard deviations
// above the expected s*k/n, keeps a little more than k keys with high probability; one pass
// collects them and the radix select runs on that short list. When t keeps far more than
// expected, t is a heavily tied key (small integers, sparse inputs) and usually the k-th key
// itself: selectAtKey settles that in two passes. Returns false (the caller falls back to
// selectByHistogram) when neither holds.
template <typename T>
bool selectBySample(const T* x, int64_t n, int64_t k, Selection<T>& out) {
  using K = KeyOf<T>;
  const int64_t stride = n / kSample;
  std::vector<K> sample(static_cast<size_t>(kSample));
  for (int64_t j = 0; j < kSample; ++j) {  // stratified, so no stride in the data can bias it
    sample[j] = magKey(x[j * stride + static_cast<int64_t>(mix64(static_cast<uint64_t>(j)) % stride)]);
  }
  const double expect = static_cast<double>(kSample) * static_cast<double>(k) / static_cast<double>(n);
  const int64_t r = std::min(kSample, static_cast<int64_t>(std::ceil(expect + 4 * std::sqrt(expect))) + 8);
  std::nth_element(sample.begin(), sample.begin() + (r - 1), sample.end(), std::greater<K>());
  const K t = sample[r - 1];
  const Blocks blocks(n);
  if (t == 0) return selectAtKey(x, blocks, k, t, out);

  std::vector<int64_t> room(blocks.count);
  for (int64_t b = 0; b < blocks.count; ++b) room[b] = 2 * blocks.length(b) * r / kSample;
  Regions<T> list(room);
  list.template scan<false>(x, blocks, t, std::vector<int64_t>(blocks.count, 0), sparseScan(n / kSample * r, n));
  for (int64_t got : list.got)
    if (got < 0) return selectAtKey(x, blocks, k, t, out);
  list.compact();
  if (list.buf.size < k) return false;
  out = selectByHistogram(list.buf.val.get(), list.buf.size, k);
  for (int64_t j = 0; j < k; ++j) out.idx[j] = list.buf.idx[out.idx[j]];
  return true;
}

// The increasing flat indices of the k largest magnitudes of x[0, n) and their values, ties to
// the lower index.
template <typename T>
Selection<T> selectTopK(const T* x, int64_t n, int64_t k) {
  Selection<T> out;
  if (k == 0) return out;
  if (n >= kSampleMinElements && k <= n / 8 && selectBySample(x, n, k, out)) return out;
  return selectByHistogram(x, n, k);
}

// Byte offset of each kCodeBlock-index block in the varint stream; back() = the stream size.
std::vector<int64_t> varintOffsets(const int64_t* idx, int64_t k) {
  const int64_t nb = (k + kCodeBlock - 1) / kCodeBlock;
  std::vector<int64_t> off(static_cast<size_t>(nb) + 1, 0);
  parallelBlocks(k, kCodeBlock, [&](int64_t b, int64_t lo, int64_t hi) {
    int64_t s = 0;
    for (int64_t j = lo; j < hi; ++j) s += varintSize(gapCode(idx, j));
    off[b + 1] = s;
  }, kSerialBelow);
  for (int64_t b = 0; b < nb; ++b) off[b + 1] += off[b];
  return off;
}

void writeVarints(const int64_t* idx, int64_t k, const std::vector<int64_t>& off, uint8_t* p) {
  parallelBlocks(k, kCodeBlock, [&](int64_t b, int64_t lo, int64_t hi) {
    uint8_t* q = p + off[b];
    for (int64_t j = lo; j < hi; ++j) q += putVarint(q, gapCode(idx, j));
  }, kSerialBelow);
}

void writeBitmap(const int64_t* idx, int64_t k, int64_t d, uint8_t* p) {
  parallelBlocks(bitmapBytes(d), kCodeBlock, [&](int64_t, int64_t lo, int64_t hi) {
    std::memset(p + lo, 0, static_cast<size_t>(hi - lo));
    const int64_t* j = std::lower_bound(idx, idx + k, 8 * lo);
    const int64_t* e = std::lower_bound(j, idx + k, 8 * hi);
    for (; j != e; ++j) p[*j / 8] |= static_cast<uint8_t>(1u << (*j % 8));
  }, kSerialBelow / 8);
}

// Copies the kept values to the payload; true if one is non-finite. The largest magnitude is
// always kept and NaN/Inf have the largest keys, so this sees any non-finite input.
template <typename T>
bool copyValues(const T* val, int64_t k, uint8_t* dst) {
  std::vector<uint8_t> bad(static_cast<size_t>((k + kCodeBlock - 1) / kCodeBlock), 0);
  parallelBlocks(k, kCodeBlock, [&](int64_t b, int64_t lo, int64_t hi) {
    uint8_t flag = 0;
    for (int64_t j = lo; j < hi; ++j) {
      storeAs<T>(dst + j * sizeof(T), val[j]);
      flag |= magKey(val[j]) >= Mag<T>::kInf;
    }
    bad[b] = flag;
  }, kSerialBelow);
  return std::find(bad.begin(), bad.end(), 1) != bad.end();
}

class TopK final : public Compressor {
 public:
  TopK(double ratio, int64_t k) : ratio_(ratio), k_(k) {}
  std::string name() const override { return "topk"; }
  std::string spec() const override { return "topk:" + keepSpec(ratio_, k_); }
  CompressorId id() const override { return CompressorId::kTopK; }
  bool biased() const override { return true; }
  double alpha(int64_t d) const override {
    return d > 0 ? static_cast<double>(keepCount(d, ratio_, k_)) / static_cast<double>(d) : 1.0;
  }
  std::optional<double> omega(int64_t) const override { return std::nullopt; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    const int64_t k = keepCount(d, ratio_, k_);
    const size_t indexBytes = std::min(static_cast<size_t>(bitmapBytes(d)), worstVarintBytes(d, k));
    return messageBytes(static_cast<int>(shape.size()), 8, static_cast<size_t>(k) * itemSize(dt) + indexBytes);
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t n = x.numel();
    const int64_t k = keepCount(n, ratio_, k_);
    return dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      const Selection<T> sel = selectTopK(in, n, k);
      const std::vector<int64_t> voff = varintOffsets(sel.idx.get(), k);
      const bool bitmap = bitmapBytes(n) < voff.back();
      const size_t valueBytes = static_cast<size_t>(k) * sizeof(T);
      const size_t payload = valueBytes + static_cast<size_t>(bitmap ? bitmapBytes(n) : voff.back());
      Message m = Message::build(id(), x.dtype, x.shape, bitmap ? kBitmapFlag : 0,
                                 ByteWriter().put<uint64_t>(static_cast<uint64_t>(k)).bytes(), payload);
      uint8_t* p = m.mutablePayload();
      if (copyValues(sel.val.get(), k, p)) throwIfNonFinite(x, "topk.compress");
      if (bitmap) {
        writeBitmap(sel.idx.get(), k, n, p + valueBytes);
      } else {
        writeVarints(sel.idx.get(), k, voff, p + valueBytes);
      }
      m.finish(payload);
      return m;
    });
  }

 private:
  double ratio_;
  int64_t k_;
};

// The parts of a message every reader checks (cheap): parameters, flags and sizes.
struct Layout {
  int64_t k;
  bool bitmap;
  const uint8_t* values;
  const uint8_t* index;
  const uint8_t* end;
};

Layout layoutOf(const Message& m) {
  ByteReader r(m.params(), m.paramsSize(), "topk parameters");
  const uint64_t k = r.get<uint64_t>();
  r.expectEnd();
  const auto n = static_cast<uint64_t>(m.numel());
  EFCOMM_CHECK_MSG((m.flags() & ~kBitmapFlag) == 0, "topk: unknown flags ", m.flags());
  EFCOMM_CHECK_MSG(k <= n && (k == 0) == (n == 0), "topk: k = ", k, " for ", n, " elements");
  const size_t item = itemSize(m.dtype());
  EFCOMM_CHECK_MSG(k <= m.payloadSize() / item, "topk: payload of ", m.payloadSize(),
                   " bytes cannot hold ", k, " values");
  const size_t indexBytes = m.payloadSize() - k * item;
  const bool bitmap = (m.flags() & kBitmapFlag) != 0;
  EFCOMM_CHECK_MSG(!bitmap || indexBytes == static_cast<size_t>(bitmapBytes(m.numel())), "topk: bitmap of ",
                   indexBytes, " bytes for ", n, " elements");
  return {static_cast<int64_t>(k), bitmap, m.payload(), m.payload() + k * item, m.payload() + m.payloadSize()};
}

// Reads the k varint-coded indices, calling fn(j, index) for each; throws on a truncated stream
// or an index outside [0, n). Returns the end of the stream.
template <typename Fn>
const uint8_t* readVarintIndices(const Layout& l, int64_t n, Fn&& fn) {
  const uint8_t* p = l.index;
  int64_t prev = -1;
  for (int64_t j = 0; j < l.k; ++j) {
    const uint64_t v = getVarint(p, l.end);
    EFCOMM_CHECK_MSG(v < static_cast<uint64_t>(n - prev - 1), "topk: index ", j, " out of range");
    prev += 1 + static_cast<int64_t>(v);
    fn(j, prev);
  }
  return p;
}

void validate(const Message& m) {
  const Layout l = layoutOf(m);
  const int64_t n = m.numel();
  if (l.bitmap) {
    EFCOMM_CHECK_MSG(bitBlockStarts(l.index, n).back() == l.k, "topk: bitmap does not hold ", l.k, " indices");
    EFCOMM_CHECK_MSG(n % 8 == 0 || (l.index[n / 8] >> (n % 8)) == 0, "topk: bitmap bits set past the end");
  } else {
    const uint8_t* end = readVarintIndices(l, n, [](int64_t, int64_t) {});
    EFCOMM_CHECK_MSG(end == l.end, "topk: ", l.end - end, " bytes after the index stream");
  }
  checkPayloadValues(l.values, l.k, m.dtype(), "topk");
}

void decode(const Message& m, const TensorView& out) {
  const Layout l = layoutOf(m);
  const int64_t n = m.numel();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.data);
    const auto value = [&](int64_t j) { return loadAs<T>(l.values + j * sizeof(T)); };
    if (l.bitmap) {
      const std::vector<int64_t> starts = bitBlockStarts(l.index, n);
      EFCOMM_CHECK_MSG(starts.back() == l.k, "topk: bitmap does not hold ", l.k, " indices");
      expandBitmap(l.index, n, starts, o, value);
    } else {
      parallelRanges(n, [&](int64_t lo, int64_t hi) { std::fill(o + lo, o + hi, T{}); });
      readVarintIndices(l, n, [&](int64_t j, int64_t i) { o[i] = value(j); });
    }
  });
}

// Sparse scatter-add: touches the k kept entries of out only.
void accumulateInto(const Message& m, const TensorView& out, double weight) {
  const Layout l = layoutOf(m);
  const int64_t n = m.numel();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T>) {
      T* o = static_cast<T*>(out.data);
      const T w = static_cast<T>(weight);
      const auto value = [&](int64_t j) { return loadAs<T>(l.values + j * sizeof(T)); };
      if (l.bitmap) {
        const std::vector<int64_t> starts = bitBlockStarts(l.index, n);
        EFCOMM_CHECK_MSG(starts.back() == l.k, "topk: bitmap does not hold ", l.k, " indices");
        parallelBlocks(n, kBitBlock, [&](int64_t b, int64_t lo, int64_t hi) {
          forEachSetBit(l.index, n, lo, hi, starts[b], [&](int64_t i, int64_t r) { o[i] += w * value(r); });
        });
      } else {
        readVarintIndices(l, n, [&](int64_t j, int64_t i) { o[i] += w * value(j); });
      }
    }
  });
}

}  // namespace

Codec topkCodec() {
  return {"topk", CompressorId::kTopK,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            const std::optional<double> ratio = p.getDouble("ratio");
            const std::optional<int64_t> k = p.getInt("k");
            p.finish("ratio, k");
            EFCOMM_CHECK(!(ratio && k), "topk: give ratio or k, not both");
            EFCOMM_CHECK(!ratio || (*ratio > 0 && *ratio <= 1), "topk: ratio must be in (0, 1], got ", *ratio);
            EFCOMM_CHECK(!k || *k >= 1, "topk: k must be >= 1, got ", *k);
            return std::make_unique<TopK>(k ? 0.0 : ratio.value_or(0.01), k.value_or(0));
          },
          validate, decode, accumulateInto};
}

}  // namespace efcomm
