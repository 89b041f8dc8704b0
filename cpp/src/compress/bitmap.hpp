#pragma once
// Index sets stored as bitmaps: bit i is bit i%8 of byte i/8 (least significant first), which is
// TopK's wire bitmap and, read as little-endian 64-bit words, RandK's in-memory draw. Bits are
// processed a word at a time in fixed blocks of kBitBlock positions; a prefix count of each
// block's set bits gives its first rank, so blocks run in parallel and the result does not
// depend on the thread count.
#include <cstdint>
#include <vector>

#include "common/bytes.hpp"
#include "common/parallel.hpp"

namespace efcomm {

/// Positions per parallel block (a multiple of 64).
constexpr int64_t kBitBlock = int64_t{1} << 15;

/// Bytes of a bitmap over d positions.
inline int64_t bitmapBytes(int64_t d) { return (d + 7) / 8; }

/// Word w (positions 64w .. 64w+63) of a bitmap over d positions; positions >= d read as 0,
/// and no byte past bitmapBytes(d) is read.
inline uint64_t bitmapWord(const uint8_t* bits, int64_t d, int64_t w) {
  const int64_t at = 8 * w, nbytes = bitmapBytes(d);
  uint64_t v = 0;
  if (at + 8 <= nbytes) {
    v = loadAs<uint64_t>(bits + at);
  } else {
    for (int64_t b = at; b < nbytes; ++b) v |= static_cast<uint64_t>(bits[b]) << (8 * (b - at));
  }
  const int64_t valid = d - 64 * w;
  return valid >= 64 ? v : v & ((uint64_t{1} << valid) - 1);
}

/// starts[b] = number of set bits before position b*kBitBlock (below d); starts.back() = total.
inline std::vector<int64_t> bitBlockStarts(const uint8_t* bits, int64_t d) {
  const int64_t nb = (d + kBitBlock - 1) / kBitBlock;
  std::vector<int64_t> starts(static_cast<size_t>(nb) + 1, 0);
  parallelBlocks(d, kBitBlock, [&](int64_t b, int64_t lo, int64_t hi) {
    int64_t c = 0;
    for (int64_t w = lo / 64; w * 64 < hi; ++w) c += __builtin_popcountll(bitmapWord(bits, d, w));
    starts[b + 1] = c;
  });
  for (int64_t b = 0; b < nb; ++b) starts[b + 1] += starts[b];
  return starts;
}

/// Calls fn(i, r) for each set bit i in [lo, hi) in increasing order, with ranks r = r0, r0+1, ...
/// lo must be a multiple of 64 and hi <= d. Returns the next rank.
template <typename Fn>
int64_t forEachSetBit(const uint8_t* bits, int64_t d, int64_t lo, int64_t hi, int64_t r0, Fn&& fn) {
  int64_t r = r0;
  for (int64_t w = lo / 64; w * 64 < hi; ++w) {
    uint64_t word = bitmapWord(bits, d, w);
    const int64_t valid = hi - 64 * w;
    if (valid < 64) word &= (uint64_t{1} << valid) - 1;
    while (word) {
      fn(64 * w + __builtin_ctzll(word), r++);
      word &= word - 1;
    }
  }
  return r;
}

/// Expands a bitmap over out[0, d): out[i] = zero where bit i is clear, set(i, rank) where set,
/// block by block in parallel so each block is zero-filled and scattered while it is in cache.
/// `starts` comes from bitBlockStarts(bits, d).
template <typename T, typename Set>
void expandBitmap(const uint8_t* bits, int64_t d, const std::vector<int64_t>& starts, T* out, Set&& set) {
  parallelBlocks(d, kBitBlock, [&](int64_t b, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) out[i] = T{};
    forEachSetBit(bits, d, lo, hi, starts[b], [&](int64_t i, int64_t r) { out[i] = set(r); });
  });
}

}  // namespace efcomm
