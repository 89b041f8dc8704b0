// Host checks of the GPU wire checksum's arithmetic (cuda/common/hd_crc.hpp): the kernels'
// decomposition (per-slice raw registers, GF(2) shift constants, chunk finish, the CRC of the
// chunk-CRC array, combine) reproduces efcomm::wireChecksum. Runs without a GPU.
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <vector>

#include "../../cuda/common/hd_crc.hpp"
#include "common/crc32c.hpp"
#include "efcomm/message.hpp"

namespace efcomm::cuda {
namespace {

const CrcTables& tables() {
  static constexpr CrcTables t = makeCrcTables();
  return t;
}

// Raw register (from 0) of len bytes as one kernel thread computes it: words, then bytes.
uint32_t sliceRaw(const uint8_t* p, uint32_t len) {
  const uint32_t* nib = &tables().nib[0][0];
  uint32_t c = 0, i = 0;
  for (; i + 4 <= len; i += 4) {
    uint32_t w;
    std::memcpy(&w, p + i, 4);
    c = crcWord(c, w, nib);
  }
  for (; i < len; ++i) c = crcByte(c, p[i]);
  return c;
}

// One block of crcChunksKernel: the CRC32C of a chunk of len (1..kCrcChunk) bytes.
uint32_t chunkCrc(const uint8_t* p, uint32_t len) {
  const uint32_t q = len / kCrcSlice, r = len % kCrcSlice;
  uint32_t x = 0, partial = 0;
  for (uint32_t i = 0; i < q; ++i) x ^= crcMulModP(sliceRaw(p + i * kCrcSlice, kCrcSlice), tables().slice[q - 1 - i]);
  if (r) partial = sliceRaw(p + q * kCrcSlice, r);
  return crcChunkFinish(x, partial, len, tables().pow2);
}

std::vector<uint32_t> chunkCrcs(const uint8_t* p, uint64_t size) {
  std::vector<uint32_t> out;
  for (uint64_t s = 0; s < size; s += kCrcChunk)
    out.push_back(chunkCrc(p + s, static_cast<uint32_t>(std::min<uint64_t>(kCrcChunk, size - s))));
  return out;
}

// crcFinishKernel: the CRC32C of `total` bytes from its chunk CRCs.
uint32_t finish(const std::vector<uint32_t>& crcs, uint64_t total) {
  uint32_t v = 0;
  for (uint64_t j = 0; j < crcs.size(); ++j) {
    const uint64_t end = std::min<uint64_t>((j + 1) * kCrcChunk, total);
    v ^= crcShift(crcs[j], total - end, tables().pow2);
  }
  return v;
}

// The whole of deviceWireChecksum.
uint32_t emulatedWireChecksum(const uint8_t* p, uint64_t size) {
  const std::vector<uint32_t> l1 = chunkCrcs(p, size);
  if (l1.size() <= 1) return finish(l1, size);
  const auto* arr = reinterpret_cast<const uint8_t*>(l1.data());
  return finish(chunkCrcs(arr, 4 * l1.size()), 4 * l1.size());
}

std::vector<uint8_t> randomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(g());
  return v;
}

TEST(CudaHostWire, MulModPIsPolynomialProduct) {
  // x^0 is the identity; x^8 * x^8 = x^16; multiplication commutes.
  EXPECT_EQ(crcMulModP(kCrcOne, 0x12345678u), 0x12345678u);
  EXPECT_EQ(crcMulModP(tables().pow2[0], tables().pow2[0]), tables().pow2[1]);
  EXPECT_EQ(crcMulModP(0xdeadbeefu, 0x1234567u), crcMulModP(0x1234567u, 0xdeadbeefu));
  // Shifting a register by n zero bytes equals feeding n zero bytes.
  uint32_t c = 0xabcdef01u;
  for (int i = 0; i < 1000; ++i) c = crcByte(c, 0);
  EXPECT_EQ(crcShift(0xabcdef01u, 1000, tables().pow2), c);
}

TEST(CudaHostWire, WordUpdateEqualsFourByteUpdates) {
  std::mt19937 g(3);
  for (int t = 0; t < 1000; ++t) {
    const uint32_t c = g(), w = g();
    uint32_t ref = c;
    for (int b = 0; b < 4; ++b) ref = crcByte(ref, static_cast<uint8_t>(w >> (8 * b)));
    EXPECT_EQ(crcWord(c, w, &tables().nib[0][0]), ref);
  }
}

TEST(CudaHostWire, SliceTableIsShiftBySlices) {
  for (uint32_t m : {0u, 1u, 2u, 77u, 511u})
    EXPECT_EQ(tables().slice[m], crcShift(kCrcOne, uint64_t{m} * kCrcSlice, tables().pow2)) << m;
}

TEST(CudaHostWire, ChunkCrcEqualsCrc32c) {
  const std::vector<uint8_t> buf = randomBytes(kCrcChunk, 5);
  for (uint32_t len : {1u, 3u, 4u, 5u, 127u, 128u, 129u, 1000u, 4096u, 65535u, 65536u})
    EXPECT_EQ(chunkCrc(buf.data(), len), crc32c(0, buf.data(), len)) << len;
}

TEST(CudaHostWire, ParallelChecksumEqualsWireChecksum) {
  const size_t sizes[] = {0, 1, 7, 36, 100, 65535, 65536, 65537, 3 * 65536 + 77, 40 * 65536, 40 * 65536 + 1};
  for (size_t n : sizes) {
    const std::vector<uint8_t> buf = randomBytes(n, n + 11);
    EXPECT_EQ(emulatedWireChecksum(buf.data(), n), wireChecksum(buf.data(), n)) << n;
  }
}

TEST(CudaHostWire, ChunkedCrcOfLongArraysEqualsCrc32c) {
  // The second level (the CRC32C of the chunk-CRC array) spans several chunks for messages of
  // more than 1 GiB; the same chunk-then-finish computation is exercised here on a long array.
  for (size_t n : {size_t{65537}, size_t{5 * 65536 + 3}, size_t{17 * 65536}}) {
    const std::vector<uint8_t> buf = randomBytes(n, n);
    EXPECT_EQ(finish(chunkCrcs(buf.data(), n), n), crc32c(0, buf.data(), n)) << n;
  }
}

TEST(CudaHostWire, CombineJoinsCrcs) {
  const std::vector<uint8_t> buf = randomBytes(1000, 9);
  const uint32_t a = crc32c(0, buf.data(), 300), b = crc32c(0, buf.data() + 300, 700);
  EXPECT_EQ(crcCombine(a, b, 700, tables().pow2), crc32c(0, buf.data(), 1000));
}

// ---- The row-strided decomposition of the kernels (hd_crc.hpp, sealKernel) ----

const CrcRowTables& rowTables() {
  static constexpr CrcRowTables t = makeCrcRowTables();
  return t;
}

const std::vector<uint32_t>& x4() {
  static const std::vector<uint32_t> v = [] {
    std::vector<uint32_t> t(kCrcChunkWords + 1);
    crcX4Table(t.data(), static_cast<uint32_t>(t.size()));
    return t;
  }();
  return v;
}

// Lane `lane`'s contribution for a run of words word(k), k = first + 32 r + lane (r < rows,
// k < count), to the word register of `count` words (segmentContribution, blockWordRegister).
template <class Word>
uint32_t laneContribution(uint64_t first, uint32_t rows, uint32_t lane, uint64_t count, Word word) {
  uint32_t c = 0;
  int64_t last = -1;
  for (uint32_t r = 0; r < rows; ++r) {
    const uint64_t k = first + uint64_t{kCrcRowWords} * r + lane;
    if (k >= count) break;
    c = crcRowStep(c, word(k), &rowTables().t[0][0]);
    last = static_cast<int64_t>(k);
  }
  return last < 0 ? 0u : crcMulModP(c, x4()[count - static_cast<uint64_t>(last)]);
}

uint32_t wordAt(const uint8_t* p, uint64_t k) {
  uint32_t w;
  std::memcpy(&w, p + 4 * k, 4);
  return w;
}

// The seal kernel's work items: unit registers, kCrcChunkRows / rows units of `rows` rows per
// chunk (crcUnitRows picks rows from the message size).
std::vector<uint32_t> segmentPartials(const uint8_t* p, uint64_t size, uint32_t rows = kCrcSegRows) {
  std::vector<uint32_t> out;
  const uint32_t units = kCrcChunkRows / rows;
  for (uint64_t start = 0; start < size; start += kCrcChunk) {
    const uint32_t n = static_cast<uint32_t>(std::min<uint64_t>(kCrcChunk, size - start) / 4);
    for (uint32_t s = 0; s < units; ++s) {
      uint32_t v = 0;
      for (uint32_t lane = 0; lane < kCrcRowWords; ++lane)
        v ^= laneContribution(uint64_t{s} * kCrcRowWords * rows, rows, lane, n,
                              [&](uint64_t k) { return wordAt(p + start, k); });
      out.push_back(v);
    }
  }
  return out;
}

// chunkCrcAt (host init constants as enqueueChecksum computes them).
uint32_t rowChunkCrc(const uint8_t* p, uint64_t size, const std::vector<uint32_t>& partials, uint64_t j,
                     uint32_t rows = kCrcSegRows) {
  const uint64_t chunks = (size + kCrcChunk - 1) / kCrcChunk;
  const uint32_t units = kCrcChunkRows / rows;
  uint32_t words = 0;
  for (uint32_t s = 0; s < units; ++s) words ^= partials[uint64_t{units} * j + s];
  const uint32_t fullInit = crcShift(0xffffffffu, kCrcChunk, tables().pow2);
  if (j + 1 < chunks) return ~(words ^ fullInit);
  const uint64_t start = j * kCrcChunk;
  const uint32_t len = static_cast<uint32_t>(size - start), t = len & 3u;
  uint32_t tailRaw = 0;
  for (uint32_t i = len - t; i < len; ++i) tailRaw = crcByte(tailRaw, p[start + i]);
  return crcFromWordRegister(words, tailRaw, t, crcShift(0xffffffffu, len, tables().pow2));
}

// The whole of the row-strided deviceWireChecksum (one level; two levels beyond 1 GiB) with
// units of `unitRows` rows.
uint32_t rowWireChecksum(const uint8_t* p, uint64_t size, uint32_t unitRows = kCrcSegRows) {
  const uint64_t chunks = (size + kCrcChunk - 1) / kCrcChunk;
  const std::vector<uint32_t> partials = segmentPartials(p, size, unitRows);
  if (chunks == 0) return 0;
  if (chunks == 1) return rowChunkCrc(p, size, partials, 0, unitRows);
  const uint32_t arrayInit = crcShift(0xffffffffu, 4 * chunks, tables().pow2);
  if (chunks <= kCrcChunkWords) {
    // blockWordRegister: 32 warps, each a run of rows.
    const uint32_t rows = static_cast<uint32_t>((chunks + 31) / 32), per = (rows + 31) / 32;
    uint32_t words = 0;
    for (uint32_t warp = 0; warp < 32; ++warp) {
      const uint32_t r0 = warp * per, r1 = std::min(rows, r0 + per);
      if (r0 >= r1) continue;
      for (uint32_t lane = 0; lane < 32; ++lane)
        words ^= laneContribution(uint64_t{32} * r0, r1 - r0, lane, chunks,
                                  [&](uint64_t k) { return rowChunkCrc(p, size, partials, k, unitRows); });
    }
    return ~(words ^ arrayInit);
  }
  std::vector<uint32_t> crcs(chunks);
  for (uint64_t j = 0; j < chunks; ++j) crcs[j] = rowChunkCrc(p, size, partials, j, unitRows);
  const auto* arr = reinterpret_cast<const uint8_t*>(crcs.data());
  const std::vector<uint32_t> p2 = segmentPartials(arr, 4 * chunks);
  const uint64_t pieces = p2.size() / kCrcSegsPerChunk, total = 4 * chunks;
  uint32_t words = 0;
  for (uint64_t i = 0; i < pieces; ++i) {
    uint32_t raw = 0;
    for (uint32_t s = 0; s < kCrcSegsPerChunk; ++s) raw ^= p2[kCrcSegsPerChunk * i + s];
    words ^= crcShift(raw, total - std::min<uint64_t>((i + 1) * kCrcChunk, total), tables().pow2);
  }
  return ~(words ^ arrayInit);
}

TEST(CudaHostWire, RowTablesMultiplyByRowShift) {
  std::mt19937 g(21);
  const uint32_t rowShift = crcShift(kCrcOne, kCrcRowBytes, tables().pow2);
  for (int t = 0; t < 1000; ++t) {
    const uint32_t c = g(), w = g();
    EXPECT_EQ(crcRowStep(c, w, &rowTables().t[0][0]), crcMulModP(c, rowShift) ^ w);
  }
  for (uint32_t i : {0u, 1u, 2u, 3u, 100u, 4095u, 16383u, 16384u})
    EXPECT_EQ(x4()[i], crcShift(kCrcOne, uint64_t{4} * i, tables().pow2)) << i;
}

TEST(CudaHostWire, RowStridedChunkCrcEqualsCrc32c) {
  const std::vector<uint8_t> buf = randomBytes(kCrcChunk, 17);
  for (uint32_t len : {1u, 2u, 3u, 4u, 5u, 127u, 128u, 129u, 131u, 4095u, 16384u, 16387u, 16389u, 40000u, 65533u,
                       65535u, 65536u}) {
    const std::vector<uint32_t> partials = segmentPartials(buf.data(), len);
    EXPECT_EQ(rowChunkCrc(buf.data(), len, partials, 0), crc32c(0, buf.data(), len)) << len;
  }
}

TEST(CudaHostWire, RowStridedChecksumEqualsWireChecksum) {
  const size_t sizes[] = {0,          1,          3,          7,          36,         100,       65535,
                          65536,      65537,      65539,      3 * 65536 + 77, 40 * 65536, 40 * 65536 + 1,
                          33 * 65536 + 2, 70 * 65536 + 4099};
  for (size_t n : sizes) {
    const std::vector<uint8_t> buf = randomBytes(n, n + 29);
    EXPECT_EQ(rowWireChecksum(buf.data(), n), wireChecksum(buf.data(), n)) << n;
  }
}

TEST(CudaHostWire, EveryUnitSizeGivesTheWireChecksum) {
  // Units of 16, 32, 64 and 128 rows (crcUnitRows), full and partial units, unaligned tails.
  const size_t sizes[] = {0, 1, 5, 2047, 2048, 2049, 8191, 8195, 65535, 65536, 65537, 5 * 65536 + 4097,
                          9 * 65536 + 16 * 128 + 3};
  for (uint32_t rows : {16u, 32u, 64u, 128u})
    for (size_t n : sizes) {
      const std::vector<uint8_t> buf = randomBytes(n, n + rows);
      EXPECT_EQ(rowWireChecksum(buf.data(), n, rows), wireChecksum(buf.data(), n)) << n << " bytes, rows " << rows;
      if (n && n <= kCrcChunk) {
        const std::vector<uint32_t> partials = segmentPartials(buf.data(), n, rows);
        EXPECT_EQ(partials.size(), kCrcChunkRows / rows);
        EXPECT_EQ(rowChunkCrc(buf.data(), n, partials, 0, rows), crc32c(0, buf.data(), n)) << n;
      }
    }
}

TEST(CudaHostWire, UnitRowsFollowTheMessageSize) {
  const uint64_t warps = 132 * 32;  // H100 SXM / H200: 132 multiprocessors, 32 warps each
  EXPECT_EQ(crcUnitRows(0, warps), kCrcMinUnitRows);
  EXPECT_EQ(crcUnitRows(3540595, warps), 16u);
  EXPECT_EQ(crcUnitRows(8388668, warps), 16u);
  EXPECT_EQ(crcUnitRows(69206068, warps), 32u);
  EXPECT_EQ(crcUnitRows(134217780, warps), 32u);
  EXPECT_EQ(crcUnitRows(268435508, warps), 64u);
  EXPECT_EQ(crcUnitRows(uint64_t{1} << 30, warps), 128u);
  for (uint64_t size : {uint64_t{1}, uint64_t{1} << 20, uint64_t{1} << 26, uint64_t{1} << 34}) {
    const uint32_t rows = crcUnitRows(size, warps);
    EXPECT_TRUE(rows == 16 || rows == 32 || rows == 64 || rows == 128) << rows;
    EXPECT_EQ(kCrcChunkRows % rows, 0u);
  }
}

TEST(CudaHostWire, RowStridedArrayCrcAtFullSizeAndSecondLevel) {
  // The finisher's array CRC at the one-level limit (kCrcChunkWords chunk CRCs, 1 GiB) and the
  // second level's pieces, on arrays standing in for the chunk CRCs (random words).
  for (uint64_t count : {uint64_t{2}, uint64_t{33}, uint64_t{1000}, uint64_t{kCrcChunkWords},
                         uint64_t{kCrcChunkWords} + 1, uint64_t{3 * kCrcChunkWords + 7}}) {
    const std::vector<uint8_t> arr = randomBytes(4 * count, count);
    uint32_t words;
    if (count <= kCrcChunkWords) {
      const uint32_t rows = static_cast<uint32_t>((count + 31) / 32), per = (rows + 31) / 32;
      words = 0;
      for (uint32_t warp = 0; warp < 32; ++warp) {
        const uint32_t r0 = warp * per, r1 = std::min(rows, r0 + per);
        if (r0 >= r1) continue;
        for (uint32_t lane = 0; lane < 32; ++lane)
          words ^= laneContribution(uint64_t{32} * r0, r1 - r0, lane, count,
                                    [&](uint64_t k) { return wordAt(arr.data(), k); });
      }
    } else {
      const std::vector<uint32_t> p2 = segmentPartials(arr.data(), 4 * count);
      const uint64_t pieces = p2.size() / kCrcSegsPerChunk, total = 4 * count;
      words = 0;
      for (uint64_t i = 0; i < pieces; ++i) {
        uint32_t raw = 0;
        for (uint32_t s = 0; s < kCrcSegsPerChunk; ++s) raw ^= p2[kCrcSegsPerChunk * i + s];
        words ^= crcShift(raw, total - std::min<uint64_t>((i + 1) * kCrcChunk, total), tables().pow2);
      }
    }
    EXPECT_EQ(~(words ^ crcShift(0xffffffffu, 4 * count, tables().pow2)), crc32c(0, arr.data(), 4 * count))
        << count;
  }
}

TEST(CudaHostWire, HeaderOfEmptyBuildIsTheMessageHeader) {
  // beginMessage copies the header of Message::build(..., payloadCapacity = 0): it must be the
  // header bytes of the real message except payload_len, which finishMessage patches.
  const std::vector<uint8_t> params = {1, 2, 3, 4, 5};
  Message full = Message::build(CompressorId::kQSGD, DType::kFloat32, {3, 5}, 0, params, 40);
  std::memset(full.mutablePayload(), 7, 40);
  full.finish(40);
  const Message head = Message::build(CompressorId::kQSGD, DType::kFloat32, {3, 5}, 0, params, 0);
  const size_t hdr = static_cast<size_t>(head.payload() - head.data());
  EXPECT_EQ(hdr, static_cast<size_t>(full.payload() - full.data()));
  std::vector<uint8_t> a(head.data(), head.data() + hdr), b(full.data(), full.data() + hdr);
  for (int i = 24; i < 32; ++i) a[i] = b[i];  // payload_len
  EXPECT_EQ(a, b);
  EXPECT_EQ(b[24], 40);
}

}  // namespace
}  // namespace efcomm::cuda
