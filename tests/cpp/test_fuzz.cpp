// Decoder robustness, run under AddressSanitizer/UndefinedBehaviorSanitizer by the test command:
// mutated messages (with their checksum recomputed, so that the mutations reach the header and
// payload validation) must be rejected with CorruptMessageError or decode cleanly.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstring>
#include <random>

#include "common/bytes.hpp"
#include "test_util.hpp"

namespace efcomm {
namespace {

// EFCOMM_FUZZ_ITERS scales the run (the nightly size is 100000 per compressor).
int iterations() {
  const char* env = std::getenv("EFCOMM_FUZZ_ITERS");
  return env ? std::max(1, std::atoi(env)) : 5000;
}

std::vector<uint8_t> mutate(std::vector<uint8_t> b, std::mt19937_64& g) {
  const auto pick = [&](size_t n) { return static_cast<size_t>(g() % std::max<size_t>(n, 1)); };
  const size_t body = b.size() - 4;
  switch (g() % 6) {
    case 0:  // flip one bit anywhere before the trailer
      b[pick(body)] ^= static_cast<uint8_t>(1u << (g() % 8));
      break;
    case 1:  // overwrite a header byte (ids, dtype, ndim, flags, lengths, shape, params)
      b[pick(std::min<size_t>(body, 64))] = static_cast<uint8_t>(g());
      break;
    case 2:  // random bytes in the payload
      for (int i = 0; i < 4; ++i) b[pick(body)] = static_cast<uint8_t>(g());
      break;
    case 3:  // truncate or extend, keeping the size field consistent
      if (g() % 2) b.resize(b.size() - std::min(b.size() - 36, pick(16) + 1));
      else b.insert(b.end() - 4, pick(16) + 1, static_cast<uint8_t>(g()));
      break;
    case 4:  // extreme values in a 64-bit field (numel, payload length, a dimension)
      storeAs<uint64_t>(b.data() + 8 * (2 + pick(4)) % (body - 7), g() % 2 ? ~uint64_t{0} : uint64_t{1} << (g() % 64));
      break;
    default:  // a run of identical bytes (all-ones codes, 0xff exponents)
      std::memset(b.data() + pick(body), g() % 2 ? 0xff : 0x00, 1);
      break;
  }
  if (b.size() >= 36 && g() % 2) {  // keep the payload length consistent so deeper checks run
    const uint32_t hdr = loadAs<uint32_t>(b.data() + 12);
    if (hdr <= b.size() - 4) storeAs<uint64_t>(b.data() + 24, b.size() - 4 - hdr);
  }
  storeAs<uint32_t>(b.data() + b.size() - 4, wireChecksum(b.data(), b.size() - 4));
  return b;
}

TEST(Fuzz, MutatedMessagesAreRejectedOrDecodeCleanly) {
  const int iters = iterations();
  std::mt19937_64 g(20261127);
  for (const char* spec : {"identity", "cast:dtype=bf16", "topk:ratio=0.05", "topk:ratio=0.6", "randk:ratio=0.1,seed=3",
                           "sign", "qsgd:levels=5", "natural", "quant:bits=2,block=16", "quant:bits=8,block=64",
                           "powersgd:rank=2"}) {
    auto c = makeCompressor(spec);
    const auto xf = test::randomVector(300, 7);
    const std::vector<double> xd(xf.begin(), xf.end());
    std::vector<std::vector<uint8_t>> seeds;
    for (const Message& m : {c->compress({xf.data(), DType::kFloat32, {300}}), c->compress({xf.data(), DType::kFloat32, {12, 25}}),
                             c->compress({xd.data(), DType::kFloat64, {3, 100}})})
      seeds.emplace_back(m.data(), m.data() + m.size());
    int accepted = 0;
    for (int it = 0; it < iters; ++it) {
      const auto bytes = mutate(seeds[static_cast<size_t>(it) % seeds.size()], g);
      try {
        const Message m = Message::fromBytes(bytes.data(), bytes.size());
        ASSERT_LE(m.numel(), int64_t{1} << 24) << spec;  // the mutations never grow a message that far
        std::vector<double> out(static_cast<size_t>(m.numel()) + 1);
        decompress(m, {out.data(), m.dtype(), {m.numel()}});
        ++accepted;
      } catch (const CorruptMessageError&) {
      }
    }
    // Some mutations (a flipped value bit) leave a valid message: the decoders did run.
    EXPECT_GT(accepted, 0) << spec;
    std::printf("fuzz %-24s %d of %d mutations accepted and decoded\n", spec, accepted, iters);
  }
}

}  // namespace
}  // namespace efcomm
