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

// ---- Row-strided decomposition (the kernels since issue 8) -------------------------------
//
// The bytes of a chunk are read as little-endian words w_k (k < n = len / 4), then t = len % 4
// tail bytes. Word k at byte offset 4k contributes w_k * x^(8 (4n - 4k)) to the register of the
// n words from 0 (raw(0, D) = XOR of each byte's value times x^(8 * its distance to the end)).
// A warp reads rows of kCrcRowWords consecutive words (one per lane, coalesced); lane l of a
// work item (segment s: rows of words s * kCrcSegWords + 32 r + l) runs the chain
//   c <- c * G ^ w,   G = x^(8 kCrcRowBytes),
// whose multiplication by the constant G is 4 byte-table lookups (crcRowStep, tables
// CrcRowTables, which a kernel replicates per lane in shared memory: no bank conflicts, one
// lookup per data byte). After its last word k_last the lane's chain is XOR of w_k * G^(...),
// so its contribution is c * x^(8 (4n - 4 k_last)) = crcMulModP(c, x4[n - k_last]) with the
// table x4[i] = x^(32 i) (crcX4Table, i <= kCrcChunkWords). The chunk's word register is the
// XOR of all lanes' contributions; then raw = rawWords * x^(8t) ^ raw(tail) and the chunk CRC
// is ~(raw ^ ~0 * x^(8 len)). The CRC of the chunk-CRC array (<= kCrcChunkWords words) uses
// the same rows, with its words computed from the chunk registers.
constexpr uint32_t kCrcRowWords = 32;                              // one word per warp lane
constexpr uint32_t kCrcRowBytes = 4 * kCrcRowWords;                // 128
constexpr uint32_t kCrcSegRows = 128;                              // rows per warp work item
constexpr uint32_t kCrcSegWords = kCrcRowWords * kCrcSegRows;      // 4096 words (16 KiB)
constexpr uint32_t kCrcChunkWords = static_cast<uint32_t>(kCrcChunk / 4);  // 16384
constexpr uint32_t kCrcSegsPerChunk = kCrcChunkWords / kCrcSegWords;       // 4
static_assert(kCrcChunkWords % kCrcSegWords == 0, "segments tile a chunk");

// Work-item sizes (since issue 8's second round): a unit is `rows` consecutive rows of a chunk
// (16, 32, 64 or kCrcSegRows = 128; one lane's chain over them), so a chunk has
// kCrcChunkRows / rows units and unit s of a chunk covers words [s * 32 rows, (s + 1) * 32 rows).
// A lane's contribution is still c * x4[n - k_last], whatever the unit size. Small messages are
// latency-bound (few units per resident warp), so crcUnitRows picks the largest size that gives
// every resident warp at least kCrcUnitsPerWarp units, down to kCrcMinUnitRows.
constexpr uint32_t kCrcChunkRows = kCrcChunkWords / kCrcRowWords;  // 512
constexpr uint32_t kCrcMinUnitRows = 16;
constexpr uint32_t kCrcUnitsPerWarp = 4;

EFCOMM_HD inline uint32_t crcUnitRows(uint64_t size, uint64_t residentWarps) {
  const uint64_t chunks = (size + kCrcChunk - 1) / kCrcChunk;
  uint32_t rows = kCrcSegRows;
  while (rows > kCrcMinUnitRows && chunks * (kCrcChunkRows / rows) < uint64_t{kCrcUnitsPerWarp} * residentWarps)
    rows /= 2;
  return rows;
}

/// t[b][v] = (v << 8b) * x^(8 kCrcRowBytes) mod P: the register c times G is the XOR of
/// t[b][byte b of c] over the 4 bytes.
struct CrcRowTables {
  uint32_t t[4][256];
};

EFCOMM_HD constexpr CrcRowTables makeCrcRowTables() {
  CrcRowTables r{};
  // G = x^(8 * 128) = x^(8 2^7)
  uint32_t g = kCrcOne >> 8;  // x^8
  for (int k = 0; k < 7; ++k) g = crcMulModP(g, g);
  for (int b = 0; b < 4; ++b)
    for (uint32_t v = 0; v < 256; ++v) r.t[b][v] = crcMulModP(v << (8 * b), g);
  return r;
}

/// One row step of a lane's chain: c * G ^ w. `tab` is CrcRowTables::t flattened, entry
/// e = 256 b + v at tab[e * stride] (kernels pass their lane's replica with stride 32).
EFCOMM_HD inline uint32_t crcRowStep(uint32_t c, uint32_t w, const uint32_t* tab, int stride = 1) {
  const uint32_t a = tab[(c & 255u) * stride];
  const uint32_t b = tab[(256u + ((c >> 8) & 255u)) * stride];
  const uint32_t d = tab[(512u + ((c >> 16) & 255u)) * stride];
  const uint32_t e = tab[(768u + (c >> 24)) * stride];
  return a ^ b ^ d ^ e ^ w;
}

/// out[i] = x^(32 i) mod P for i < count (out[0] = 1): the shift by i words.
EFCOMM_HD inline void crcX4Table(uint32_t* out, uint32_t count) {
  uint32_t v = kCrcOne;
  for (uint32_t i = 0; i < count; ++i) {
    out[i] = v;
    v = crcZeroBits(v, 32);
  }
}

/// The CRC32C of a chunk (or any byte string) of len = 4 n + t bytes from its word register
/// (XOR of the lanes' contributions), the raw register of its t < 4 tail bytes, and
/// init = ~0 * x^(8 len) mod P.
EFCOMM_HD inline uint32_t crcFromWordRegister(uint32_t words, uint32_t tailRaw, uint32_t t, uint32_t init) {
  return ~(crcZeroBits(words, static_cast<int>(8 * t)) ^ tailRaw ^ init);
}

/// CRC32C of A || B from crc(A), crc(B) and |B| (zlib crc32_combine).
EFCOMM_HD inline uint32_t crcCombine(uint32_t crcA, uint32_t crcB, uint64_t lenB, const uint32_t* pow2) {
  return crcShift(crcA, lenB, pow2) ^ crcB;
}

}  // namespace efcomm::cuda
