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
