#pragma once
// LEB128 unsigned varints for delta-coded indices.
#include <cstdint>

#include "efcomm/error.hpp"

namespace efcomm {

inline int varintSize(uint64_t v) {
  int n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

/// Writes v at p; returns the bytes written (<= 10).
inline int putVarint(uint8_t* p, uint64_t v) {
  int n = 0;
  while (v >= 0x80) {
    p[n++] = static_cast<uint8_t>(v | 0x80);
    v >>= 7;
  }
  p[n++] = static_cast<uint8_t>(v);
  return n;
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
