// GPU compressors of helper A (identity, cast, sign, qsgd, natural, randk, quant) against the
// CPU path: GPU messages byte-identical to the CPU's (the same draws for the same seed and
// step; sums in the CPU's order; sign's scale to 1e-12, its bits exactly), CPU messages decoded on the GPU equal to the CPU's decoding
// and back, accumulate, corrupt and truncated messages, non-finite input with the step counter
// unchanged, odd sizes and every dtype, the chunked checksum beyond 1 GiB. Skips without a
// device, except the test of a CUDA build on a machine without one.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "common/half.hpp"
#include "common/wire.hpp"
#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/error.hpp"
#include "efcomm/message.hpp"
#include "gpu_test_util.hpp"

namespace efcomm {
namespace {

using gputest::Dev;

#define REQUIRE_GPU() \
  if (!cuda::available()) GTEST_SKIP() << cuda::unavailableReason()

const std::vector<std::string>& specs() {
  static const std::vector<std::string> s = {
      "identity",         "cast:dtype=bf16", "cast:dtype=fp16", "sign",          "qsgd:levels=16,seed=3",
      "qsgd:levels=1,seed=1", "qsgd:levels=300,seed=2", "natural:seed=5", "randk:ratio=0.01,seed=7",
      "randk:k=3,seed=1,scaled=false", "randk:ratio=1,seed=2", "quant:bits=8,block=256", "quant:bits=4,block=64",
      "quant:bits=2,block=8", "quant:bits=8,block=24",
      // the encoder's 32-lane (block 256) and 4-lane (block 32) kernels at other widths
      "quant:bits=2,block=256", "quant:bits=4,block=32"};
  return s;
}

const std::vector<DType>& dtypes() {
  static const std::vector<DType> d = {DType::kFloat32, DType::kFloat64, DType::kBFloat16, DType::kFloat16};
  return d;
}

// n elements of dtype dt (raw bytes), Gaussian with a few exact zeros of both signs.
std::vector<uint8_t> input(DType dt, int64_t n, uint64_t seed, double scale = 1.0) {
  const std::vector<double> g = gputest::gaussian<double>(n, seed, scale);
  std::vector<uint8_t> b(static_cast<size_t>(n) * itemSize(dt));
  for (int64_t i = 0; i < n; ++i) {
    double v = g[static_cast<size_t>(i)];
    if (i % 97 == 5) v = 0.0;
    if (i % 101 == 7) v = -0.0;
    uint8_t* p = b.data() + i * itemSize(dt);
    switch (dt) {
      case DType::kFloat32: {
        const float f = static_cast<float>(v);
        std::memcpy(p, &f, 4);
        break;
      }
      case DType::kFloat64: std::memcpy(p, &v, 8); break;
      case DType::kBFloat16: {
        const uint16_t h = floatToBf16(static_cast<float>(v));
        std::memcpy(p, &h, 2);
        break;
      }
      case DType::kFloat16: {
        const uint16_t h = floatToF16(static_cast<float>(v));
        std::memcpy(p, &h, 2);
        break;
      }
    }
  }
  return b;
}

ConstTensorView viewOf(const void* p, DType dt, int64_t n) { return {p, dt, {n}}; }

// Index of the first differing byte, or -1.
int64_t firstDiff(const std::vector<uint8_t>& a, const std::vector<uint8_t>& b) {
  if (a.size() != b.size()) return static_cast<int64_t>(std::min(a.size(), b.size()));
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] != b[i]) return static_cast<int64_t>(i);
  return -1;
}

// GPU and CPU messages of the same input: byte-identical, except sign's scale (the GPU sums
// |x| in another fixed order, cuda.hpp), which must agree to 1e-12 relative, and so the
// trailer after it. Returns a failure description, or "" when they agree.
std::string compareMessages(const std::vector<uint8_t>& gpu, const Message& cpu) {
  const std::vector<uint8_t> ref = gputest::bytesOf(cpu);
  if (gpu.size() != ref.size()) return "size " + std::to_string(gpu.size()) + " vs " + std::to_string(ref.size());
  if (cpu.compressorId() != CompressorId::kSign) {
    const int64_t d = firstDiff(gpu, ref);
    return d < 0 ? "" : "first differing byte " + std::to_string(d);
  }
  const size_t hdr = static_cast<size_t>(cpu.payload() - cpu.data());
  std::vector<uint8_t> a = gpu, b = ref;
  double sa, sb;
  std::memcpy(&sa, a.data() + hdr, 8);
  std::memcpy(&sb, b.data() + hdr, 8);
  if (!(std::fabs(sa - sb) <= 1e-12 * std::fabs(sb)))
    return "sign scale " + std::to_string(sa) + " vs " + std::to_string(sb);
  std::memset(a.data() + hdr, 0, 8);
  std::memset(b.data() + hdr, 0, 8);
  if (sa != sb) {  // the trailer covers the scale
    std::memset(a.data() + a.size() - 4, 0, 4);
    std::memset(b.data() + b.size() - 4, 0, 4);
  }
  const int64_t d = firstDiff(a, b);
  return d < 0 ? "" : "first differing byte " + std::to_string(d);
}

// Decoded bytes of a host message.
std::vector<uint8_t> cpuDecode(const Message& m) {
  std::vector<uint8_t> out(static_cast<size_t>(m.numel()) * itemSize(m.dtype()));
  decompress(m, TensorView{out.data(), m.dtype(), {m.numel()}});
  return out;
}

// The whole cross-check of one spec, dtype and size.
void crossCheck(const std::string& spec, DType dt, int64_t n) {
  SCOPED_TRACE(spec + " " + dtypeName(dt) + " n=" + std::to_string(n));
  auto cpu = makeCompressor(spec);
  auto gpu = makeCompressor(spec);
  const std::vector<uint8_t> x = input(dt, n, static_cast<uint64_t>(n) + 17);
  Message m;
  try {
    m = cpu->compress(viewOf(x.data(), dt, n));
  } catch (const NonFiniteError&) {
    // The CPU refuses (e.g. qsgd levels overflowing float16): the GPU must refuse alike.
    Dev dx(x);
    cuda::DeviceBuffer out;
    EXPECT_THROW(cuda::compress(*gpu, viewOf(dx.p, dt, n), out), NonFiniteError);
    EXPECT_EQ(gpu->stateDict().meta, cpu->stateDict().meta);
    return;
  }
  Dev dx(x);
  cuda::DeviceBuffer out;
  const size_t size = cuda::compress(*gpu, viewOf(dx.p, dt, n), out);
  EXPECT_EQ(gpu->stateDict().meta, cpu->stateDict().meta);  // the step counter advanced alike
  ASSERT_EQ(size, m.size());
  ASSERT_EQ(out.size(), size);
  const std::vector<uint8_t> gpuBytes = gputest::bytesOf(out, size);
  EXPECT_EQ(compareMessages(gpuBytes, m), "") << "GPU message differs from the CPU's";

  // The GPU message decodes on the CPU (toHost validates it as Message::fromBytes does).
  const Message g = cuda::toHost(out.data(), size);
  const std::vector<uint8_t> refDecoded = cpuDecode(m);
  const std::vector<uint8_t> cpuOfGpu = cpuDecode(g);

  // The CPU message decodes on the GPU to the CPU's decoding.
  cuda::DeviceBuffer dm;
  cuda::toDevice(m, dm);
  Dev dy(refDecoded.size());
  cuda::decompress(dm.data(), dm.size(), TensorView{dy.p, dt, {n}});
  EXPECT_EQ(firstDiff(dy.get<uint8_t>(), refDecoded), -1) << "GPU decoding of the CPU message";
  // And the GPU message on the GPU to the CPU's decoding of it.
  cuda::decompress(out.data(), size, TensorView{dy.p, dt, {n}});
  EXPECT_EQ(firstDiff(dy.get<uint8_t>(), cpuOfGpu), -1) << "GPU decoding of the GPU message";

  // accumulate (float32/float64 outputs): out += 0.75 * decode, as on the CPU.
  if (dt == DType::kFloat32 || dt == DType::kFloat64) {
    std::vector<uint8_t> acc = input(dt, n, 99);
    Dev da(acc);
    accumulate(m, TensorView{acc.data(), dt, {n}}, 0.75);
    cuda::accumulate(dm.data(), dm.size(), TensorView{da.p, dt, {n}}, 0.75);
    const std::vector<uint8_t> got = da.get<uint8_t>();
    for (int64_t i = 0; i < n; ++i) {
      double a, b;
      if (dt == DType::kFloat32) {
        float fa, fb;
        std::memcpy(&fa, acc.data() + 4 * i, 4);
        std::memcpy(&fb, got.data() + 4 * i, 4);
        a = fa, b = fb;
      } else {
        std::memcpy(&a, acc.data() + 8 * i, 8);
        std::memcpy(&b, got.data() + 8 * i, 8);
      }
      ASSERT_NEAR(a, b, 1e-6 * (1 + std::fabs(a))) << "accumulate at " << i;
    }
  }
}

TEST(CudaBuild, UnavailableWithoutADeviceSaysWhy) {
  if (cuda::available()) GTEST_SKIP() << "a device is present";
  EXPECT_TRUE(cuda::built());
  EXPECT_EQ(cuda::deviceCount(), 0);
  EXPECT_FALSE(cuda::unavailableReason().empty());
  auto c = makeCompressor("sign");
  const std::vector<float> x(8, 1.0f);
  cuda::DeviceBuffer out;
  EXPECT_THROW(cuda::compress(*c, viewOf(x.data(), DType::kFloat32, 8), out), BackendUnavailable);
  EXPECT_EQ(c->stateDict().meta.at("step"), "0");
  EXPECT_NO_THROW(out.resize(0));
  EXPECT_THROW(out.resize(16), BackendUnavailable);
  std::vector<float> y(8);
  EXPECT_THROW(cuda::decompress(x.data(), 32, TensorView{y.data(), DType::kFloat32, {8}}), BackendUnavailable);
  EXPECT_THROW(cuda::toDevice(c->compress(viewOf(x.data(), DType::kFloat32, 8)), out), BackendUnavailable);
}

TEST(CudaCompress, EveryCompressorDtypeAndSizeMatchesTheCpu) {
  REQUIRE_GPU();
  for (const std::string& spec : specs())
    for (DType dt : dtypes())
      for (int64_t n : gputest::oddSizes()) crossCheck(spec, dt, n);
}

TEST(CudaCompress, MultiDimensionalShapesAndStepsAdvance) {
  REQUIRE_GPU();
  for (const std::string& spec : {"qsgd:levels=16,seed=3", "natural:seed=1", "randk:ratio=0.1,seed=4", "sign"}) {
    auto cpu = makeCompressor(spec), gpu = makeCompressor(spec);
    const std::vector<int64_t> shape = {3, 5, 7};
    const std::vector<uint8_t> x = input(DType::kFloat32, 105, 5);
    Dev dx(x);
    for (int step = 0; step < 3; ++step) {
      const Message m = cpu->compress(ConstTensorView{x.data(), DType::kFloat32, shape});
      cuda::DeviceBuffer out;
      const size_t size = cuda::compress(*gpu, ConstTensorView{dx.p, DType::kFloat32, shape}, out);
      EXPECT_EQ(compareMessages(gputest::bytesOf(out, size), m), "") << spec << " step " << step;
    }
    EXPECT_EQ(gpu->stateDict().meta, cpu->stateDict().meta);
    // An explicit step selects that draw and sets the counter to step + 1.
    const Message m = cpu->compress(ConstTensorView{x.data(), DType::kFloat32, shape}, 41);
    cuda::DeviceBuffer out;
    const size_t size = cuda::compress(*gpu, ConstTensorView{dx.p, DType::kFloat32, shape}, out, 41);
    EXPECT_EQ(compareMessages(gputest::bytesOf(out, size), m), "") << spec;
    EXPECT_EQ(gpu->stateDict().meta.at("step"), "42");
  }
}

TEST(CudaCompress, LargeInputsMatchTheCpu) {
  REQUIRE_GPU();
  // Several reduction blocks, checksum chunks and grid-stride rounds.
  for (const std::string& spec : {"sign", "quant:bits=8,block=256", "cast:dtype=bf16", "qsgd:levels=127,seed=9",
                                  "natural:seed=2", "randk:ratio=0.01,seed=3", "identity"})
    crossCheck(spec, DType::kFloat32, (int64_t{1} << 23) + 5);
}

TEST(CudaCompress, NonFiniteInputThrowsAndLeavesTheStep) {
  REQUIRE_GPU();
  const float bad[] = {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                       -std::numeric_limits<float>::infinity()};
  for (const std::string& spec : {"identity", "cast:dtype=bf16", "sign", "qsgd:levels=8,seed=1", "natural:seed=1",
                                  "randk:ratio=1,seed=1", "quant:bits=4,block=64"}) {
    for (float b : bad) {
      std::vector<float> x = gputest::gaussian<float>(70000, 3);
      x[66000] = b;
      Dev dx(x);
      auto c = makeCompressor(spec);
      cuda::DeviceBuffer out;
      EXPECT_THROW(cuda::compress(*c, viewOf(dx.p, DType::kFloat32, 70000), out, 5), NonFiniteError) << spec;
      EXPECT_EQ(c->stateDict().meta.at("step"), "0") << spec;
    }
  }
  // fp16 overflow of a finite value in cast: NonFiniteError too.
  std::vector<float> x(16, 1e6f);
  Dev dx(x);
  auto c = makeCompressor("cast:dtype=fp16");
  cuda::DeviceBuffer out;
  EXPECT_THROW(cuda::compress(*c, viewOf(dx.p, DType::kFloat32, 16), out), NonFiniteError);
}

const std::vector<std::string>& corruptionSpecs() {
  static const std::vector<std::string> s = {"identity", "sign", "qsgd:levels=16,seed=3", "natural:seed=5",
                                             "randk:ratio=0.1,seed=7", "quant:bits=8,block=256", "cast:dtype=bf16"};
  return s;
}

// Damaged, truncated and misdirected messages of one compressor are rejected, each as what it is.
void corruptionChecks(const std::string& spec) {
  auto c = makeCompressor(spec);
  const int64_t n = 70001;
  const std::vector<uint8_t> x = input(DType::kFloat32, n, 3);
  Dev dx(x);
  cuda::DeviceBuffer out;
  const size_t size = cuda::compress(*c, viewOf(dx.p, DType::kFloat32, n), out);
  std::vector<uint8_t> bytes = gputest::bytesOf(out, size);
  Dev dy(static_cast<size_t>(n) * 4);
  const TensorView y{dy.p, DType::kFloat32, {n}};
  // A flipped payload byte: checksum mismatch.
  std::vector<uint8_t> flipped = bytes;
  flipped[size - 10] ^= 0x10;
  Dev d1(flipped);
  EXPECT_THROW(cuda::decompress(d1.p, size, y), CorruptMessageError) << spec;
  EXPECT_THROW(cuda::accumulate(d1.p, size, y, 1.0), CorruptMessageError) << spec;
  // One damaged byte that must read as the checksum mismatch it is, whatever check it trips.
  const auto expectMismatch = [&](size_t at, uint8_t value, const char* what) {
    std::vector<uint8_t> damaged = bytes;
    damaged[at] = value;
    Dev d(damaged);
    try {
      cuda::decompress(d.p, size, y);
      ADD_FAILURE() << spec << ": a damaged " << what << " was accepted";
    } catch (const CorruptMessageError& e) {
      EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << spec << ": " << e.what();
    }
  };
  // The last payload byte (sign: padding bits, which a content check would reject), also where
  // the decode runs before the comparison.
  expectMismatch(size - 5, bytes[size - 5] ^ 0x80, "last payload byte");
  // The dtype byte (float32 -> float64, a valid code): the output check would refuse the
  // float32 `out` (Message::fromBytes reports the mismatch too).
  expectMismatch(6, 1, "dtype byte");
  // Truncated: the payload length no longer matches.
  Dev d2(bytes);
  EXPECT_THROW(cuda::decompress(d2.p, size - 1, y), CorruptMessageError) << spec;
  EXPECT_THROW(cuda::decompress(d2.p, 20, y), CorruptMessageError) << spec;
  // Bad magic.
  std::vector<uint8_t> magic = bytes;
  magic[0] ^= 1;
  Dev d3(magic);
  EXPECT_THROW(cuda::decompress(d3.p, size, y), CorruptMessageError) << spec;
  // The intact message at an odd address decodes (unaligned checksum and payload paths).
  Dev d4(size + 1);
  ASSERT_EQ(cudaMemcpy(static_cast<uint8_t*>(d4.p) + 1, bytes.data(), size, cudaMemcpyHostToDevice), cudaSuccess);
  EXPECT_NO_THROW(cuda::decompress(static_cast<uint8_t*>(d4.p) + 1, size, y)) << spec;
  EXPECT_EQ(dy.get<uint8_t>(), cpuDecode(Message::fromBytes(bytes.data(), size))) << spec;
  // Wrong output: dtype or size.
  EXPECT_THROW(cuda::decompress(d2.p, size, TensorView{dy.p, DType::kFloat32, {n - 1}}), InvalidArgument);
  EXPECT_THROW(cuda::decompress(d2.p, size, TensorView{dy.p, DType::kFloat16, {n}}), InvalidArgument);
}

TEST(CudaCompress, CorruptAndTruncatedMessagesAreRejected) {
  REQUIRE_GPU();
  for (const std::string& spec : corruptionSpecs()) corruptionChecks(spec);
}

// The experiment that bench/gpu_check.sh times (EFCOMM_CUDA_OVERLAP_CHECKSUM=1: the checksum on a
// second stream beside the decode): the same decodings and the same rejections.
TEST(CudaCompress, ChecksumBesideTheDecodeGivesTheSameResults) {
  REQUIRE_GPU();
  ASSERT_EQ(setenv("EFCOMM_CUDA_OVERLAP_CHECKSUM", "1", 1), 0);
  struct Unset {
    ~Unset() { unsetenv("EFCOMM_CUDA_OVERLAP_CHECKSUM"); }
  } unset;
  for (const std::string& spec : specs())
    for (int64_t n : {int64_t{1}, int64_t{70001}, (int64_t{1} << 22) + 3}) crossCheck(spec, DType::kFloat32, n);
  for (const std::string& spec : corruptionSpecs()) corruptionChecks(spec);
  // TopK's decode waits for the checksum: it stays on the call's stream, results alike.
  {
    auto topk = makeCompressor("topk:ratio=0.01");
    const std::vector<uint8_t> x = input(DType::kFloat32, 70001, 4);
    Dev dx(x), beside(x.size()), plain(x.size());
    cuda::DeviceBuffer m;
    const size_t size = cuda::compress(*topk, viewOf(dx.p, DType::kFloat32, 70001), m);
    cuda::decompress(m.data(), size, TensorView{beside.p, DType::kFloat32, {70001}});
    unsetenv("EFCOMM_CUDA_OVERLAP_CHECKSUM");
    cuda::decompress(m.data(), size, TensorView{plain.p, DType::kFloat32, {70001}});
    ASSERT_EQ(setenv("EFCOMM_CUDA_OVERLAP_CHECKSUM", "1", 1), 0);
    EXPECT_EQ(beside.get<uint8_t>(), plain.get<uint8_t>());
  }
  corruptionChecks("topk:ratio=0.01");
  // A fixed share, and a bad value refused.
  ASSERT_EQ(setenv("EFCOMM_CUDA_OVERLAP_CHECKSUM", "0.25", 1), 0);
  crossCheck("sign", DType::kFloat32, 70001);
  ASSERT_EQ(setenv("EFCOMM_CUDA_OVERLAP_CHECKSUM", "2", 1), 0);
  auto c = makeCompressor("identity");
  const std::vector<uint8_t> x = input(DType::kFloat32, 64, 1);
  Dev dx(x), dy(x.size());
  cuda::DeviceBuffer m;
  const size_t size = cuda::compress(*c, viewOf(dx.p, DType::kFloat32, 64), m);
  EXPECT_THROW(cuda::decompress(m.data(), size, TensorView{dy.p, DType::kFloat32, {64}}), InvalidArgument);
}

TEST(CudaCompress, PayloadContentRulesAreChecked) {
  REQUIRE_GPU();
  // A sign message with non-zero padding bits, a qsgd code above 2s, a natural code of 255 and
  // a quant block with min > max: valid checksums, invalid content.
  const int64_t n = 13;
  auto craft = [&](CompressorId id, const std::vector<uint8_t>& params, std::vector<uint8_t> payload) {
    Message m = Message::build(id, DType::kFloat32, {n}, 0, params, payload.size());
    std::memcpy(m.mutablePayload(), payload.data(), payload.size());
    m.finish(payload.size());
    return m;
  };
  std::vector<Message> bad;
  {
    std::vector<uint8_t> p(8 + 2, 0);
    p[9] = 0xff;  // bits 5..7 of the last byte are padding
    bad.push_back(craft(CompressorId::kSign, {}, p));
  }
  {
    std::vector<uint8_t> p(8 + (13 * 3 + 7) / 8, 0);  // s = 1: 2-bit codes; code 3 > 2s
    const double norm = 1.0;
    std::memcpy(p.data(), &norm, 8);
    p[8] = 0x03;
    bad.push_back(craft(CompressorId::kQSGD, {1, 0, 0, 0}, p));
  }
  {
    std::vector<uint8_t> p((13 * 9 + 7) / 8, 0);
    p[0] = 0xff;  // code 0 = 255
    bad.push_back(craft(CompressorId::kNatural, {}, p));
  }
  {
    std::vector<uint8_t> p(2 * 4 * 2 + 13, 0);  // bits 8, block 8: 2 blocks
    const float lo = 1.0f, hi = 0.5f;
    std::memcpy(p.data(), &lo, 4);
    std::memcpy(p.data() + 4, &hi, 4);
    bad.push_back(craft(CompressorId::kBlockQuant, {8, 8, 0, 0, 0}, p));
  }
  Dev dy(static_cast<size_t>(n) * 4);
  for (const Message& m : bad) {
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError);
    cuda::DeviceBuffer dm;
    cuda::toDevice(m, dm);
    EXPECT_THROW(cuda::decompress(dm.data(), dm.size(), TensorView{dy.p, DType::kFloat32, {n}}), CorruptMessageError)
        << compressorName(m.compressorId());
    EXPECT_THROW(cuda::toHost(dm.data(), dm.size()), CorruptMessageError);
  }
}

TEST(CudaCompress, HostMemoryIsRejected) {
  REQUIRE_GPU();
  auto c = makeCompressor("sign");
  std::vector<float> x(64, 1.0f);
  cuda::DeviceBuffer out;
  EXPECT_THROW(cuda::compress(*c, viewOf(x.data(), DType::kFloat32, 64), out), InvalidArgument);
}

TEST(CudaWire, ChecksumBeyondOneGibibyteEqualsTheCpus) {
  REQUIRE_GPU();
  // More than 16384 chunks: the CRC of the chunk-CRC array spans several chunks itself.
  const size_t size = (size_t{1} << 30) + (size_t{3} << 16) + 5;
  std::vector<uint8_t> h(size);
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < size; i += 8) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
    std::memcpy(h.data() + i, &s, std::min<size_t>(8, size - i));
  }
  Dev d(h);
  Dev result(4);
  cuda::deviceWireChecksum(d.p, size, static_cast<uint32_t*>(result.p), nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(result.get<uint32_t>()[0], wireChecksum(h.data(), size));
  // And a few small sizes at an odd address.
  for (size_t n : {size_t{0}, size_t{1}, size_t{100}, size_t{65536}, size_t{65537}, size_t{200000}}) {
    cuda::deviceWireChecksum(static_cast<uint8_t*>(d.p) + 3, n, static_cast<uint32_t*>(result.p), nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(result.get<uint32_t>()[0], wireChecksum(h.data() + 3, n)) << n;
  }
}

}  // namespace
}  // namespace efcomm
