#pragma once
// Fixed-width bit packing: code j of width w (1..16) occupies bits [j*w, (j+1)*w) of a
// little-endian bit stream. Packing is done in groups of 8 codes (= w bytes), so any range of
// codes that starts at a multiple of 8 can be packed or unpacked independently by a thread.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "common/host_device.hpp"

namespace efcomm {

/// Bytes needed for n codes of w bits.
EFCOMM_HD inline size_t packedBytes(int64_t n, int w) { return static_cast<size_t>((n * w + 7) / 8); }

/// Packs codes[0..n) (each < 2^w) into out, which starts at bit offset 0 of code `first`
/// where first % 8 == 0. Writes exactly packedBytes(n, w) bytes.
inline void packBits(const uint16_t* codes, int64_t n, int w, uint8_t* out) {
  const int64_t groups = n / 8;
  const int64_t total = static_cast<int64_t>(packedBytes(n, w));
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t acc0 = 0, acc1 = 0;  // 8 codes * up to 16 bits = up to 128 bits
    for (int j = 0; j < 8; ++j) {
      const uint64_t c = codes[g * 8 + j];
      const int bit = j * w;
      if (bit < 64) {
        acc0 |= c << bit;
        if (bit + w > 64) acc1 |= c >> (64 - bit);
      } else {
        acc1 |= c << (bit - 64);
      }
    }
    if (g * w + 16 <= total) {
      // Two fixed-size stores instead of a w-byte copy (a libc call when w is not a constant);
      // the zero bytes past the group are overwritten by the groups that follow.
      std::memcpy(out + g * w, &acc0, 8);
      std::memcpy(out + g * w + 8, &acc1, 8);
    } else {
      uint8_t tmp[16];
      std::memcpy(tmp, &acc0, 8);
      std::memcpy(tmp + 8, &acc1, 8);
      std::memcpy(out + g * w, tmp, static_cast<size_t>(w));
    }
  }
  const int64_t rest = n - groups * 8;
  if (rest > 0) {
    uint8_t* o = out + groups * w;
    std::memset(o, 0, packedBytes(rest, w));
    for (int64_t j = 0; j < rest; ++j) {
      const uint32_t c = codes[groups * 8 + j];
      for (int b = 0; b < w; ++b) {
        const int64_t bit = j * w + b;
        if (c >> b & 1u) o[bit >> 3] |= static_cast<uint8_t>(1u << (bit & 7));
      }
    }
  }
}

/// Inverse of packBits: reads packedBytes(n, w) bytes.
inline void unpackBits(const uint8_t* in, int64_t n, int w, uint16_t* codes) {
  const uint64_t mask = (1ull << w) - 1;
  const int64_t groups = n / 8;
  const int64_t total = static_cast<int64_t>(packedBytes(n, w));
  for (int64_t g = 0; g < groups; ++g) {
    uint64_t acc0, acc1;
    if (g * w + 16 <= total) {
      // Load straight from the input (bits past the group are masked off below): going through
      // a zeroed buffer stalls on store forwarding, which made unpacking 4x slower.
      std::memcpy(&acc0, in + g * w, 8);
      std::memcpy(&acc1, in + g * w + 8, 8);
    } else {
      uint8_t tmp[16] = {0};
      std::memcpy(tmp, in + g * w, static_cast<size_t>(w));
      std::memcpy(&acc0, tmp, 8);
      std::memcpy(&acc1, tmp + 8, 8);
    }
    for (int j = 0; j < 8; ++j) {
      const int bit = j * w;
      uint64_t c;
      if (bit < 64) {
        c = acc0 >> bit;
        if (bit + w > 64) c |= acc1 << (64 - bit);
      } else {
        c = acc1 >> (bit - 64);
      }
      codes[g * 8 + j] = static_cast<uint16_t>(c & mask);
    }
  }
  const int64_t rest = n - groups * 8;
  const uint8_t* p = in + groups * w;
  for (int64_t j = 0; j < rest; ++j) {
    uint32_t c = 0;
    for (int b = 0; b < w; ++b) {
      const int64_t bit = j * w + b;
      c |= static_cast<uint32_t>(p[bit >> 3] >> (bit & 7) & 1u) << b;
    }
    codes[groups * 8 + j] = static_cast<uint16_t>(c);
  }
}

}  // namespace efcomm
