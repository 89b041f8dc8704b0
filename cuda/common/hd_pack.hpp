#pragma once
// Bit packing of one group of 8 codes at w bits (1..16), the unit of cpp/src/common/bitpack.hpp:
// code j of the group occupies bits [j w, (j + 1) w) of w little-endian bytes, so a kernel
// thread packs or unpacks one group on its own. A short last group packs its missing codes
// as 0 (the CPU zero-fills the same bits).
#include <cstdint>

#include "common/bitpack.hpp"  // packedBytes
#include "hd.hpp"

namespace efcomm::cuda {

/// 128 bits holding one packed group: byte b of the group is bits [8b, 8b + 8).
struct PackedGroup {
  uint64_t lo = 0, hi = 0;
  EFCOMM_HD uint8_t byte(int b) const {
    return static_cast<uint8_t>(b < 8 ? lo >> (8 * b) : hi >> (8 * (b - 8)));
  }
  EFCOMM_HD void setByte(int b, uint8_t v) {
    if (b < 8) lo |= static_cast<uint64_t>(v) << (8 * b);
    else hi |= static_cast<uint64_t>(v) << (8 * (b - 8));
  }
};

/// Adds code c (< 2^w) as code j (0..7) of the group.
EFCOMM_HD inline void packCode(PackedGroup& g, int j, int w, uint32_t c) {
  const int bit = j * w;
  const uint64_t v = c;
  if (bit < 64) {
    g.lo |= v << bit;
    if (bit + w > 64) g.hi |= v >> (64 - bit);
  } else {
    g.hi |= v << (bit - 64);
  }
}

/// Code j (0..7) of a packed group of w-bit codes.
EFCOMM_HD inline uint32_t unpackCode(const PackedGroup& g, int j, int w) {
  const int bit = j * w;
  uint64_t c;
  if (bit < 64) {
    c = g.lo >> bit;
    if (bit + w > 64) c |= g.hi << (64 - bit);
  } else {
    c = g.hi >> (bit - 64);
  }
  return static_cast<uint32_t>(c & ((uint64_t{1} << w) - 1));
}

}  // namespace efcomm::cuda
