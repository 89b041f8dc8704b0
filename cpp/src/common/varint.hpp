#pragma once
// LEB128 unsigned varints for delta-coded indices. The encoding side is shared with the CUDA
// kernels (EFCOMM_HD).
#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "common/host_device.hpp"
#include "efcomm/error.hpp"

namespace efcomm {

EFCOMM_HD inline int varintSize(uint64_t v) {
  int n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

/// Writes v at p; returns the bytes written (<= 10).
EFCOMM_HD inline int putVarint(uint8_t* p, uint64_t v) {
  int n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  p[n++] = static_cast<uint8_t>(v);
  return n;
}

/// Gap code of the j-th of the increasing indices idx: i_0, then i_j - i_{j-1} - 1.
EFCOMM_HD inline uint64_t gapCode(const int64_t* idx, int64_t j) {
  return static_cast<uint64_t>(j == 0 ? idx[0] : idx[j] - idx[j - 1] - 1);
}

/// Longest varint stream of the gap codes of k increasing indices below d (attained). The gap
/// codes sum to at most d - k; a code's (j+1)-th byte needs it raised from 2^(7(j-1)) (0 for
/// j = 1) to 2^(7j), a cost that grows with j, so buying the cheapest bytes first, for all k
/// codes at a time, is optimal.
inline size_t worstVarintBytes(int64_t d, int64_t k) {
  uint64_t bytes = static_cast<uint64_t>(k), budget = static_cast<uint64_t>(d - k);
  for (int j = 1; j <= 9 && k > 0; ++j) {
    const uint64_t cost = (uint64_t{1} << (7 * j)) - (j > 1 ? uint64_t{1} << (7 * (j - 1)) : 0);
    const uint64_t can = std::min<uint64_t>(static_cast<uint64_t>(k), budget / cost);
    bytes += can;
    budget -= can * cost;
    if (can < static_cast<uint64_t>(k)) break;
  }
  return static_cast<size_t>(bytes);
}

/// Reads a varint from [p, end); advances p. Throws CorruptMessageError on truncation or a
/// value longer than 10 bytes.
inline uint64_t getVarint(const uint8_t*& p, const uint8_t* end) {
  uint64_t v = 0;
  for (int shift = 0; shift < 70; shift += 7) {
    EFCOMM_CHECK_MSG(p < end, "index stream truncated inside a varint");
    const uint8_t b = *p++;
    EFCOMM_CHECK_MSG(shift < 63 || b <= 1, "varint overflows 64 bits");
    v |= static_cast<uint64_t>(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  throw CorruptMessageError("varint longer than 10 bytes");
}

}  // namespace efcomm
