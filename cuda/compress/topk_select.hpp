#pragma once
// TopK selection on the GPU: the arithmetic and the host-side control flow, shared by the
// kernels (cuda/compress/topk.cu, cuda/feedback/) and the host tests
// (tests/cpp/test_cuda_host_topk.cpp, built with g++). No CUDA header here.
//
// The selection is that of cpp/src/compress/topk.cpp: the kept set is exactly the one of a stable
// sort by |x| descending (ties go to the lower index). Magnitude keys are the bit pattern with
// the sign cleared, read as an unsigned integer: they order non-negative IEEE numbers like their
// values (denormals included; -0 and +0 tie; NaN above Inf above every finite value).
//
// The input is cut into `nb` fixed contiguous chunks, one per CUDA block. A radix select narrows
// the key range [klo, klo + ksize) holding the k-th largest key, kRadixBits per histogram pass
// over the data (per-chunk histograms, so every chunk knows how many of its keys lie above the
// range, `above`, and inside it, `cand`). Then either
//   - the range is one key T (exact): each chunk keeps its keys > T and the first quota[b] of
//     its ties, quota from tieQuotas (ties in index order), at offset sum of the earlier
//     chunks' counts: the k kept entries, in index order; or
//   - the candidates are few (collect): each chunk lists its keys >= klo in index order (the
//     list: k + a few entries), and the exact selection runs again on that list.
// For k <= n/8 on large inputs a sample of keys first gives a threshold slightly below the k-th
// key: one pass lists the keys at or above it into per-chunk regions of fixed capacity, and the
// exact selection runs on that list; when the sample misleads (a region overflows, fewer than k
// listed) the radix path runs, so the result never depends on the sample.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "../common/hd.hpp"
#include "common/varint.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::cuda::topk {

/// Key bits resolved per histogram pass (4096 bins of 4 bytes fit a block's shared memory).
constexpr int kRadixBits = 12;
constexpr int64_t kMaxBins = int64_t{1} << kRadixBits;
/// Candidate counts up to max(this, n/16) are listed instead of refined by another pass.
constexpr int64_t kCandidateLimit = int64_t{1} << 12;
/// Chunks (CUDA blocks) at most, elements per chunk at least, and at most (32-bit bin counts).
constexpr int64_t kMaxChunks = 1024;
constexpr int64_t kMinChunk = 4096;
constexpr int64_t kMaxChunk = int64_t{1} << 30;
/// Sample size of the one-pass path and the smallest input it is tried on.
constexpr int64_t kSample = int64_t{1} << 14;
constexpr int64_t kSampleMinElements = 16 * kSample;

/// Magnitude key of the raw bits of a 16-, 32- or 64-bit float.
EFCOMM_HD inline uint64_t magKey(uint16_t bits) { return bits & 0x7fffu; }
EFCOMM_HD inline uint64_t magKey(uint32_t bits) { return bits & 0x7fffffffu; }
EFCOMM_HD inline uint64_t magKey(uint64_t bits) { return bits & 0x7fffffffffffffffull; }

/// Key bits of a storage width in bytes (15, 31, 63).
EFCOMM_HD inline int keyBits(int itemBytes) { return 8 * itemBytes - 1; }

/// The smallest key of a non-finite value of each dtype (exponent all ones).
inline uint64_t infKey(DType dt) {
  switch (dt) {
    case DType::kFloat32: return 0x7f800000u;
    case DType::kFloat64: return 0x7ff0000000000000ull;
    case DType::kBFloat16: return 0x7f80u;
    case DType::kFloat16: return 0x7c00u;
  }
  return 0;
}

/// One histogram pass over the key range [klo, klo + last]: bin = (key - klo) >> shift.
struct Pass {
  uint64_t klo = 0, last = 0;
  int shift = 0;
  int64_t nbins = 1;
};

/// The pass that splits the range [klo, klo + ksize) (ksize a power of two > 1).
EFCOMM_HD inline Pass makePass(uint64_t klo, uint64_t ksize) {
  int rangeBits = 0;
  while ((uint64_t{1} << rangeBits) < ksize) ++rangeBits;
  Pass p;
  p.klo = klo;
  p.last = ksize - 1;
  p.shift = rangeBits > kRadixBits ? rangeBits - kRadixBits : 0;
  p.nbins = int64_t{1} << (rangeBits - p.shift);
  return p;
}

/// The bin of a key, or -1 when it lies outside the pass's range (keys below klo wrap around).
EFCOMM_HD inline int64_t binOf(uint64_t key, const Pass& p) {
  const uint64_t off = key - p.klo;
  return off <= p.last ? static_cast<int64_t>(off >> p.shift) : -1;
}

/// Whether a key is kept by a compaction at threshold t. atLeast (collect): key >= t.
/// Otherwise (exact): key > t, or key == t for the chunk's first `quota` ties (tieRank counts
/// the chunk's ties before this one in index order).
EFCOMM_HD inline bool keepKey(uint64_t key, uint64_t t, bool atLeast, int64_t tieRank, int64_t quota) {
  if (atLeast) return key >= t;
  return key > t || (key == t && tieRank < quota);
}
EFCOMM_HD inline bool isTie(uint64_t key, uint64_t t, bool atLeast) { return !atLeast && key == t; }

/// Fixed contiguous chunks of [0, n), one per CUDA block.
struct Chunks {
  int64_t n = 0, size = 1, count = 0;
  int64_t begin(int64_t b) const { return b * size; }
  int64_t length(int64_t b) const { return std::min(n, (b + 1) * size) - b * size; }
};
/// The chunks wanted for n > 0 elements: an upper bound of makeChunks(m).count for m <= n
/// (the grid of a kernel whose element count is only known on the device).
EFCOMM_HD inline int64_t chunksWanted(int64_t n) {
  int64_t want = (n + kMinChunk - 1) / kMinChunk;
  want = want < kMaxChunks ? want : kMaxChunks;
  const int64_t atLeast = (n + kMaxChunk - 1) / kMaxChunk;
  return want > atLeast ? want : atLeast;
}
/// makeChunks's size and count (host and device).
EFCOMM_HD inline void chunkGeometry(int64_t n, int64_t* size, int64_t* count) {
  if (n <= 0) {
    *size = 1;
    *count = 0;
    return;
  }
  const int64_t want = chunksWanted(n);
  *size = (n + want - 1) / want;
  *count = (n + *size - 1) / *size;
}
inline Chunks makeChunks(int64_t n) {
  Chunks c;
  c.n = n;
  chunkGeometry(n, &c.size, &c.count);
  return c;
}

/// The bin holding the need-th largest key, counting from the top: over = keys in higher bins,
/// count = keys in the bin (over < need <= over + count).
struct Pick {
  int64_t bin = 0, over = 0, count = 0;
};
inline Pick pickBin(const std::vector<uint64_t>& totals, int64_t need) {
  Pick p;
  for (int64_t bin = static_cast<int64_t>(totals.size()) - 1; bin >= 0; --bin) {
    const int64_t c = static_cast<int64_t>(totals[static_cast<size_t>(bin)]);
    if (p.over + c >= need || bin == 0) {
      p.bin = bin;
      p.count = c;
      return p;
    }
    p.over += c;
  }
  return p;
}

/// quota[b]: how many of chunk b's ties to keep so that `need` ties are kept in index order.
inline std::vector<int64_t> tieQuotas(const std::vector<int64_t>& ties, int64_t need) {
  std::vector<int64_t> quota(ties.size());
  for (size_t b = 0; b < ties.size(); ++b) {
    quota[b] = std::min(ties[b], need);
    need -= quota[b];
  }
  return quota;
}

/// Where the radix narrowing ended.
struct Narrowed {
  uint64_t klo = 0, ksize = 0;
  int64_t need = 0, candidates = 0;
  bool exact() const { return ksize == 1; }
};

/// Runs the histogram passes (see the file comment) for the k largest keys (0 < k < n) of
/// `keyBitsOf`-bit keys. Backend:
///   std::vector<uint64_t> histogram(const Pass&)   per-chunk histograms; returns the totals
///   void narrow(const Pass&, int64_t bin)          per chunk: above += keys in bins > bin,
///                                                  cand = keys in bin
/// Before the first pass every chunk has above = 0 and cand = its length. `exact` refines down to
/// one key whatever the candidate count (the selection on a list).
template <typename Backend>
Narrowed narrowRange(Backend& be, int64_t n, int64_t k, int keyBitsOf, bool exact) {
  Narrowed r;
  r.klo = 0;
  r.ksize = uint64_t{1} << keyBitsOf;
  r.need = k;
  r.candidates = n;
  const int64_t limit = std::max(kCandidateLimit, n / 16);
  // A large k also refines down to a single key: that pass costs less than listing k + more keys.
  while ((exact || r.candidates > limit || k > n / 8) && r.ksize > 1) {
    const Pass p = makePass(r.klo, r.ksize);
    const std::vector<uint64_t> totals = be.histogram(p);
    const Pick pick = pickBin(totals, r.need);
    be.narrow(p, pick.bin);
    r.need -= pick.over;
    r.candidates = pick.count;
    r.klo += static_cast<uint64_t>(pick.bin) << p.shift;
    r.ksize = uint64_t{1} << p.shift;
  }
  return r;
}

/// Per-chunk output counts and offsets of the compaction after narrowRange, from the chunks'
/// `above` and `cand` counts: exact: above + quota (quota from tieQuotas(cand, need)); collect:
/// above + cand. offset has count + 1 entries (offset.back() = total).
struct CompactPlan {
  uint64_t t = 0;
  bool atLeast = false;
  std::vector<int64_t> quota, count, offset;
};
inline CompactPlan planCompaction(const Narrowed& r, const std::vector<int64_t>& above,
                                  const std::vector<int64_t>& cand) {
  CompactPlan c;
  c.t = r.klo;
  c.atLeast = !r.exact();
  c.quota = r.exact() ? tieQuotas(cand, r.need) : std::vector<int64_t>(cand.size(), 0);
  c.count.resize(above.size());
  c.offset.assign(above.size() + 1, 0);
  for (size_t b = 0; b < above.size(); ++b) {
    c.count[b] = above[b] + (r.exact() ? c.quota[b] : cand[b]);
    c.offset[b + 1] = c.offset[b] + c.count[b];
  }
  return c;
}

/// Sample position j of kSample over n >= kSampleMinElements elements: stratified (one draw in
/// each stride), so no stride in the data can bias it.
EFCOMM_HD inline int64_t samplePosition(int64_t j, int64_t n) {
  const int64_t stride = n / kSample;
  uint64_t z = static_cast<uint64_t>(j) + 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return j * stride + static_cast<int64_t>(z % static_cast<uint64_t>(stride));
}

/// The sample threshold: the r-th largest of the sample keys, r four standard deviations above
/// the expected kSample k / n, so that a little more than k keys lie at or above it with high
/// probability. Returns {t, r}. `keys` is reordered.
struct SampleCut {
  uint64_t t = 0;
  int64_t r = 0;
};
/// The sample rank r of sampleThreshold for s sample keys.
inline int64_t sampleRank(int64_t s, int64_t n, int64_t k) {
  const double expect = static_cast<double>(s) * static_cast<double>(k) / static_cast<double>(n);
  return std::min(s, static_cast<int64_t>(std::ceil(expect + 4 * std::sqrt(expect))) + 8);
}
inline SampleCut sampleThreshold(std::vector<uint64_t>& keys, int64_t n, int64_t k) {
  const int64_t s = static_cast<int64_t>(keys.size());
  SampleCut c;
  c.r = sampleRank(s, n, k);
  std::nth_element(keys.begin(), keys.begin() + (c.r - 1), keys.end(), std::greater<uint64_t>());
  c.t = keys[static_cast<size_t>(c.r - 1)];
  return c;
}
/// Candidate list capacity of the device's sampled pass (one list, tiles appended in any order,
/// then put in index order): twice the expected count r n / kSample plus slack; more candidates
/// than this (or fewer than k) send the selection to the exact radix path.
inline int64_t sampleListCapacity(int64_t n, int64_t r) {
  const double expect = static_cast<double>(n) * static_cast<double>(r) / static_cast<double>(kSample);
  return std::min<int64_t>(n, static_cast<int64_t>(2 * expect) + 4096);
}

/// The need-th largest key (1 <= need <= the keys counted) from the 256-bin digit histogram of
/// the keys matching the current prefix, from the top: returns the digit; *over = keys in higher
/// digits. The single-block sample select of the device path, one 8-bit digit per round.
EFCOMM_HD inline int pickDigit(const uint32_t* hist256, int64_t need, int64_t* over) {
  int64_t cum = 0;
  for (int d = 255; d > 0; --d) {
    if (cum + hist256[d] >= need) {
      *over = cum;
      return d;
    }
    cum += hist256[d];
  }
  *over = cum;
  return 0;
}

/// Region capacity of a chunk of `len` elements in the sampled collect pass: twice the expected
/// count plus slack.
inline int64_t regionCapacity(int64_t len, int64_t r) { return 2 * len * r / kSample + 64; }

// ---- index coding (topk.cpp's wire format; the varint codes are common/varint.hpp's) ----

/// Byte `b` of the bitmap of the increasing indices idx[0, k): bit i%8 of byte i/8.
EFCOMM_HD inline uint8_t bitmapByte(const int64_t* idx, int64_t k, int64_t b) {
  int64_t lo = 0, hi = k;  // first j with idx[j] >= 8b
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (idx[mid] < 8 * b) lo = mid + 1;
    else hi = mid;
  }
  uint8_t v = 0;
  for (int64_t j = lo; j < k && idx[j] < 8 * b + 8; ++j) v = static_cast<uint8_t>(v | (1u << (idx[j] - 8 * b)));
  return v;
}

// ---- decoding a varint index stream in parallel ----

/// Decodes the varint ending at byte `end` (p[end] < 0x80) whose first byte is `start`:
/// returns false if it is longer than 10 bytes or overflows 64 bits.
EFCOMM_HD inline bool readVarintAt(const uint8_t* p, int64_t start, int64_t end, uint64_t* v) {
  if (end - start >= 10) return false;
  uint64_t x = 0;
  for (int64_t b = start; b <= end; ++b) {
    const int shift = static_cast<int>(7 * (b - start));
    const uint8_t byte = p[b];
    if (shift >= 63 && byte > 1) return false;
    x |= static_cast<uint64_t>(byte & 0x7f) << shift;
  }
  *v = x;
  return true;
}

}  // namespace efcomm::cuda::topk
