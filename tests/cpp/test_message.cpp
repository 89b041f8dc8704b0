// Wire format, registry and the Identity/Cast compressors.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>

#include "efcomm/state.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

TEST(Message, IdentityRoundTripIsExact) {
  auto c = makeCompressor("identity");
  auto x = test::randomVector(1000);
  EXPECT_EQ(test::roundTrip(*c, x), x);
  EXPECT_EQ(c->compress(test::view(x)).size(), c->wireBytes(1000));
}

TEST(Message, HeaderFields) {
  auto c = makeCompressor("identity");
  std::vector<float> x(12, 1.0f);
  Message m = c->compress({x.data(), DType::kFloat32, {3, 4}});
  Message p = Message::fromBytes(m.data(), m.size());
  EXPECT_EQ(p.version(), kWireVersion);
  EXPECT_EQ(p.compressorId(), CompressorId::kIdentity);
  EXPECT_EQ(p.shape(), (std::vector<int64_t>{3, 4}));
  EXPECT_EQ(p.numel(), 12);
  EXPECT_EQ(p.dtype(), DType::kFloat32);
  EXPECT_EQ(p.checksum(), m.checksum());
}

TEST(Message, BuildRefusesWhatNoMessageCanHold) {
  // build() checks its arguments (a wrapping capacity overflowed the heap, a bad dtype or id made
  // a message no decoder knows), and a message made with build/finish is validated before it is
  // decoded as fromBytes validates one (a 16-byte payload for 1000 floats was read past).
  EXPECT_THROW(Message::build(CompressorId::kIdentity, DType::kFloat32, {4}, 0, {}, SIZE_MAX - 40), InvalidArgument);
  EXPECT_THROW(Message::build(CompressorId::kIdentity, static_cast<DType>(9), {4}, 0, {}, 16), InvalidArgument);
  EXPECT_THROW(Message::build(static_cast<CompressorId>(0), DType::kFloat32, {4}, 0, {}, 16), InvalidArgument);
  EXPECT_THROW(Message::build(CompressorId::kIdentity, DType::kFloat32, {-4}, 0, {}, 16), InvalidArgument);
  Message m = Message::build(CompressorId::kIdentity, DType::kFloat32, {1000}, 0, {}, 16);
  std::memset(m.mutablePayload(), 0, 16);
  m.finish(16);
  EXPECT_FALSE(m.validated());
  std::vector<float> out(1000);
  EXPECT_THROW(decompress(m, test::mutableView(out)), CorruptMessageError);
  EXPECT_THROW(accumulate(m, test::mutableView(out), 1.0), CorruptMessageError);
  // A copy of a message under construction shares its bytes: neither may be filled or finished.
  Message a = Message::build(CompressorId::kIdentity, DType::kFloat32, {4}, 0, {}, 16);
  Message b = a;
  EXPECT_THROW(a.finish(16), InvalidArgument);
  EXPECT_THROW(b.mutablePayload(), InvalidArgument);
  // efcomm's own messages and parsed ones are validated.
  auto c = makeCompressor("identity");
  std::vector<float> x(4, 1.0f);
  const Message own = c->compress(test::view(x));
  EXPECT_TRUE(own.validated());
  EXPECT_TRUE(Message::fromBytes(own.data(), own.size()).validated());
  EXPECT_THROW(StateTensor::fromView({nullptr, DType::kFloat32, {4}}), InvalidArgument);
}

TEST(Message, EveryByteFlipIsDetected) {
  auto c = makeCompressor("identity");
  auto x = test::randomVector(8);
  Message m = c->compress(test::view(x));
  std::vector<uint8_t> bytes(m.data(), m.data() + m.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    auto b = bytes;
    b[i] ^= 0x10;
    EXPECT_THROW(Message::fromBytes(b.data(), b.size()), CorruptMessageError) << "byte " << i;
  }
  for (size_t n = 0; n < bytes.size(); ++n)
    EXPECT_THROW(Message::fromBytes(bytes.data(), n), CorruptMessageError) << "truncated to " << n;
}

// Bitwise CRC32C: the definition, independent of the table/hardware implementation.
uint32_t referenceCrc32c(const uint8_t* p, size_t n) {
  uint32_t crc = 0xffffffffu;
  for (size_t i = 0; i < n; ++i) {
    crc ^= p[i];
    for (int k = 0; k < 8; ++k) crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
  }
  return ~crc;
}

TEST(Message, ChecksumMatchesTheDocumentedDefinition) {
  EXPECT_EQ(referenceCrc32c(reinterpret_cast<const uint8_t*>("123456789"), 9), 0xe3069283u);
  constexpr size_t kChunk = 1 << 16;
  for (size_t n : {size_t{100}, kChunk, kChunk + 1, 3 * kChunk, 7 * kChunk + 123}) {
    std::vector<uint8_t> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = static_cast<uint8_t>(i * 2654435761u >> 13);
    uint32_t expected;
    if (n <= kChunk) {
      expected = referenceCrc32c(data.data(), n);
    } else {
      std::vector<uint8_t> crcs;
      for (size_t off = 0; off < n; off += kChunk) {
        const uint32_t c = referenceCrc32c(data.data() + off, std::min(kChunk, n - off));
        for (int b = 0; b < 4; ++b) crcs.push_back(static_cast<uint8_t>(c >> (8 * b)));
      }
      expected = referenceCrc32c(crcs.data(), crcs.size());
    }
    EXPECT_EQ(wireChecksum(data.data(), n), expected) << n;
  }
}

TEST(Message, EmptyInput) {
  auto c = makeCompressor("identity");
  std::vector<float> x;
  Message m = c->compress({nullptr, DType::kFloat32, {0}});
  Message p = Message::fromBytes(m.data(), m.size());
  EXPECT_EQ(p.numel(), 0);
  c->decompress(p, {nullptr, DType::kFloat32, {0}});
}

TEST(Registry, UnknownNamesAndParameters) {
  EXPECT_THROW(makeCompressor("nope"), InvalidArgument);
  EXPECT_THROW(makeCompressor("identity:x=1"), InvalidArgument);
  EXPECT_THROW(makeCompressor("cast:dtype=int8"), InvalidArgument);
  EXPECT_EQ(makeCompressor("cast:dtype=fp16")->spec(), "cast:dtype=fp16");
}

TEST(Cast, ErrorWithinUnitRoundoff) {
  for (const char* spec : {"cast:dtype=bf16", "cast:dtype=fp16"}) {
    auto c = makeCompressor(spec);
    auto x = test::randomVector(4096);
    auto y = test::roundTrip(*c, x);
    double err = 0, norm = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      err += (double(y[i]) - x[i]) * (double(y[i]) - x[i]);
      norm += double(x[i]) * x[i];
    }
    EXPECT_LE(err, (1 - c->alpha(4096)) * norm) << spec;
  }
}

TEST(Cast, NonFiniteAndOverflowRaise) {
  auto c = makeCompressor("cast:dtype=fp16");
  std::vector<float> x(100, 1.0f);
  x[37] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(c->compress(test::view(x)), NonFiniteError);
  x[37] = 1e6f;
  EXPECT_THROW(c->compress(test::view(x)), NonFiniteError);
  x[37] = 1e6f;
  EXPECT_NO_THROW(makeCompressor("cast:dtype=bf16")->compress(test::view(x)));
}

TEST(Decompress, MismatchedOutputIsRejected) {
  auto c = makeCompressor("identity");
  auto x = test::randomVector(10);
  Message m = c->compress(test::view(x));
  std::vector<double> wrongType(10);
  EXPECT_THROW(c->decompress(m, test::mutableView(wrongType)), InvalidArgument);
  std::vector<float> wrongSize(11);
  EXPECT_THROW(c->decompress(m, test::mutableView(wrongSize)), InvalidArgument);
  auto other = makeCompressor("cast:dtype=bf16");
  std::vector<float> out(10);
  EXPECT_THROW(other->decompress(m, test::mutableView(out)), InvalidArgument);
}

}  // namespace
}  // namespace efcomm
