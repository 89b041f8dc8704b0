#pragma once
// The wire checksum's arithmetic for kernels (docs/wire-format.md: CRC32C per 64 KiB chunk,
// then the CRC32C of the little-endian u32 array of chunk CRCs), split for parallel threads:
//
// A CRC register update is linear over GF(2), so with raw(r, D) the register after bytes D from
// register r, raw(r, A || B) = shift(raw(r, A), |B|) ^ raw(0, B), where shift(c, n) multiplies
// c by x^(8n) modulo the Castagnoli polynomial P (zlib's crc32_combine). A chunk is cut into
// slices of kCrcSlice bytes; thread i computes raw(0, slice i), multiplies it by x^(8 d_i) for
// the d_i bytes after its slice, and the XOR of all of them with shift(~0, L) is the chunk's
// register: its CRC32C is the complement. Constants are computed at compile time (constexpr)
// and shared by the kernels and the host tests.
//
// Register updates use nibble tables: the 4-byte update of register c is the XOR over the 8
// nibbles v_k of c ^ word of nib[k][v_k] (8 lookups of 16 entries, which a kernel replicates
// per warp lane in shared memory so that lookups never conflict on a bank).
#include <cstddef>
#include <cstdint>

#include "hd.hpp"

namespace efcomm::cuda {

constexpr uint32_t kCrcPoly = 0x82f63b78u;  // reflected Castagnoli polynomial
constexpr uint64_t kCrcChunk = uint64_t{1} << 16;
constexpr uint32_t kCrcSlice = 128;                                      // bytes per thread
constexpr uint32_t kCrcSlicesPerChunk = static_cast<uint32_t>(kCrcChunk / kCrcSlice);  // 512
constexpr uint32_t kCrcOne = 0x80000000u;  // the polynomial 1 (x^0) in reflected order

/// a * b mod P (reflected bit order; zlib multmodp), branch-free.
EFCOMM_HD constexpr uint32_t crcMulModP(uint32_t a, uint32_t b) {
  uint32_t p = 0;
  for (int i = 0; i < 32; ++i) {
    p ^= (0u - ((a >> 31) & 1u)) & b;
    a <<= 1;
    b = (b >> 1) ^ ((0u - (b & 1u)) & kCrcPoly);
  }
  return p;
}

/// The register after 8 zero bits from register v (one bit step at a time).
EFCOMM_HD constexpr uint32_t crcZeroBits(uint32_t v, int bits) {
  for (int i = 0; i < bits; ++i) v = (v >> 1) ^ ((0u - (v & 1u)) & kCrcPoly);
  return v;
}

struct CrcTables {
  uint32_t nib[8][16];                  // 4-byte register update, per nibble of c ^ word
  uint32_t slice[kCrcSlicesPerChunk];   // slice[m] = x^(8 kCrcSlice m) mod P
  uint32_t pow2[64];                    // pow2[k] = x^(8 2^k) mod P
};

EFCOMM_HD constexpr CrcTables makeCrcTables() {
  CrcTables t{};
  for (int k = 0; k < 8; ++k)
    for (uint32_t v = 0; v < 16; ++v) t.nib[k][v] = crcZeroBits(v << (4 * k), 32);
  t.pow2[0] = kCrcOne >> 8;  // x^8
  for (int k = 1; k < 64; ++k) t.pow2[k] = crcMulModP(t.pow2[k - 1], t.pow2[k - 1]);
  // x^(8 kCrcSlice) = x^(8 2^7)
  const uint32_t step = t.pow2[7];
  t.slice[0] = kCrcOne;
  for (uint32_t m = 1; m < kCrcSlicesPerChunk; ++m) t.slice[m] = crcMulModP(t.slice[m - 1], step);
  return t;
}
static_assert(kCrcSlice == 128, "slice table step is pow2[7]");

/// c * x^(8 n) mod P: the register c followed by n zero bytes, minus the zero bytes' own part.
EFCOMM_HD inline uint32_t crcShift(uint32_t c, uint64_t n, const uint32_t* pow2) {
  for (int k = 0; n; ++k, n >>= 1)
    if (n & 1) c = crcMulModP(c, pow2[k]);
  return c;
}

/// Register update by one little-endian 4-byte word. `nib` is CrcTables::nib flattened, entry
/// e = 16 k + v at nib[e * stride] (kernels pass their lane's replica with stride 32).
EFCOMM_HD inline uint32_t crcWord(uint32_t c, uint32_t word, const uint32_t* nib, int stride = 1) {
  const uint32_t x = c ^ word;
  uint32_t r = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int k = 0; k < 8; ++k) r ^= nib[(16 * k + ((x >> (4 * k)) & 15u)) * stride];
  return r;
}

/// Register update by one byte (bitwise; for the few unaligned bytes of a slice).
EFCOMM_HD inline uint32_t crcByte(uint32_t c, uint8_t b) { return crcZeroBits(c ^ b, 8); }

/// Multiplier of slice i's raw register in a chunk of `len` bytes (0 < len <= kCrcChunk), with
/// q = len / kCrcSlice full slices and r = len % kCrcSlice: slice i < q is followed by
/// (q - 1 - i) full slices and r bytes, so its weight is slice[q - 1 - i] times x^(8r); the
/// kernel XORs the full slices' slice[q - 1 - i] products first and applies x^(8r) once.
/// The partial slice q (r bytes) has weight 1.

/// The chunk's CRC32C from X = XOR over full slices i < q of raw_i * slice[q - 1 - i] and the
/// partial slice's raw register (0 if r = 0).
EFCOMM_HD inline uint32_t crcChunkFinish(uint32_t x, uint32_t partial, uint64_t len, const uint32_t* pow2) {
  const uint64_t r = len % kCrcSlice;
  const uint32_t reg = crcShift(x, r, pow2) ^ partial ^ crcShift(0xffffffffu, len, pow2);
  return ~reg;
}

/// CRC32C of A || B from crc(A), crc(B) and |B| (zlib crc32_combine).
EFCOMM_HD inline uint32_t crcCombine(uint32_t crcA, uint32_t crcB, uint64_t lenB, const uint32_t* pow2) {
  return crcShift(crcA, lenB, pow2) ^ crcB;
}

}  // namespace efcomm::cuda
