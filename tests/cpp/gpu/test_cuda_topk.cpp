// GPU TopK and PowerSGD against the CPU path: TopK messages byte-identical to the CPU's (the
// same kept set, ties included, the same index coding), CPU<->GPU cross decoding and
// accumulation, non-finite input, corrupt payloads; PowerSGD within float tolerance of the CPU
// with the warm start advancing. Skips without a device.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <vector>

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

template <typename T>
void expectSameMessage(const std::string& spec, const std::vector<T>& x, DType dt, std::vector<int64_t> shape) {
  auto cpu = makeCompressor(spec);
  auto gpu = makeCompressor(spec);
  const Message m = cpu->compress(ConstTensorView{x.data(), dt, shape}, 0);
  Dev dx(x);
  cuda::DeviceBuffer out;
  const size_t size = cuda::compress(*gpu, ConstTensorView{dx.p, dt, shape}, out, 0);
  ASSERT_EQ(size, m.size()) << spec << " n " << x.size();
  EXPECT_EQ(gputest::bytesOf(out, size), gputest::bytesOf(m)) << spec << " n " << x.size();
  EXPECT_EQ(gpu->stateDict().meta, cpu->stateDict().meta);  // the step counter advanced alike
}

TEST(CudaTopK, MessagesEqualTheCpusForDistinctAndTiedValues) {
  REQUIRE_GPU();
  for (int64_t n : gputest::oddSizes()) {
    for (const char* spec : {"topk:ratio=0.01", "topk:ratio=0.3", "topk:ratio=1", "topk:k=3"}) {
      expectSameMessage(spec, gputest::gaussian<float>(n, 1 + n), DType::kFloat32, {n});
      expectSameMessage(spec, gputest::ties<float>(n, 2 + n), DType::kFloat32, {n});
      expectSameMessage(spec, gputest::gaussian<double>(n, 3 + n), DType::kFloat64, {n});
    }
  }
}

TEST(CudaTopK, LargeInputsTakeTheSampledPathAndStillMatch) {
  REQUIRE_GPU();
  const int64_t n = (int64_t{1} << 22) + 17;
  expectSameMessage("topk:ratio=0.01", gputest::gaussian<float>(n, 5), DType::kFloat32, {n});
  expectSameMessage("topk:ratio=0.1", gputest::gaussian<float>(n, 6), DType::kFloat32, {n});
  expectSameMessage("topk:ratio=0.01", gputest::ties<float>(n, 7), DType::kFloat32, {n});
  std::vector<float> sparse(static_cast<size_t>(n), 0.0f);
  for (int64_t i = 0; i < n; i += 997) sparse[i] = static_cast<float>(i % 13) - 6.0f;
  expectSameMessage("topk:ratio=0.01", sparse, DType::kFloat32, {n});
  std::vector<float> denorm = gputest::gaussian<float>(n, 8);
  for (auto& v : denorm) v *= std::numeric_limits<float>::denorm_min() * 1000;
  expectSameMessage("topk:ratio=0.01", denorm, DType::kFloat32, {n});
}

TEST(CudaTopK, HalfPrecisionAndShapes) {
  REQUIRE_GPU();
  std::vector<uint16_t> h(70001);
  std::mt19937_64 rng(3);
  for (auto& b : h) {
    b = static_cast<uint16_t>(rng());
    if ((b & 0x7f80) == 0x7f80) b &= 0x3fff;  // finite bf16 only
  }
  auto cpu = makeCompressor("topk:ratio=0.02");
  auto gpu = makeCompressor("topk:ratio=0.02");
  const Message m = cpu->compress(ConstTensorView{h.data(), DType::kBFloat16, {70001}}, 0);
  Dev dx(h);
  cuda::DeviceBuffer out;
  const size_t size = cuda::compress(*gpu, ConstTensorView{dx.p, DType::kBFloat16, {70001}}, out, 0);
  EXPECT_EQ(gputest::bytesOf(out, size), gputest::bytesOf(m));
  expectSameMessage("topk:ratio=0.05", gputest::gaussian<float>(300 * 7, 9), DType::kFloat32, {300, 7});
}

TEST(CudaTopK, CrossDecodingAndAccumulate) {
  REQUIRE_GPU();
  for (int64_t n : gputest::oddSizes()) {
    for (const char* spec : {"topk:ratio=0.01", "topk:ratio=0.5"}) {  // varints and a bitmap
      const std::vector<float> x = gputest::gaussian<float>(n, 11 + n);
      auto c = makeCompressor(spec);
      const Message m = c->compress(ConstTensorView{x.data(), DType::kFloat32, {n}}, 0);
      std::vector<float> want(static_cast<size_t>(n));
      decompress(m, TensorView{want.data(), DType::kFloat32, {n}});
      // CPU message -> device -> GPU decode
      cuda::DeviceBuffer dm;
      cuda::toDevice(m, dm);
      Dev out(static_cast<size_t>(n) * 4);
      cuda::decompress(dm.data(), m.size(), TensorView{out.p, DType::kFloat32, {n}});
      EXPECT_EQ(out.get<float>(), want) << spec << " n " << n;
      // GPU accumulate with a weight equals the CPU's
      const std::vector<float> base = gputest::gaussian<float>(n, 99);
      std::vector<float> acc = base;
      accumulate(m, TensorView{acc.data(), DType::kFloat32, {n}}, 0.5);
      Dev dacc(base);
      cuda::accumulate(dm.data(), m.size(), TensorView{dacc.p, DType::kFloat32, {n}}, 0.5);
      EXPECT_EQ(dacc.get<float>(), acc) << spec << " n " << n;
      // GPU message -> host -> CPU decode
      Dev dx(x);
      cuda::DeviceBuffer gm;
      const size_t size = cuda::compress(*makeCompressor(spec), ConstTensorView{dx.p, DType::kFloat32, {n}}, gm);
      const Message back = cuda::toHost(gm.data(), size);
      std::vector<float> got(static_cast<size_t>(n));
      decompress(back, TensorView{got.data(), DType::kFloat32, {n}});
      EXPECT_EQ(got, want);
    }
  }
}

TEST(CudaTopK, NonFiniteInputThrowsAndLeavesTheCounter) {
  REQUIRE_GPU();
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> x = gputest::gaussian<float>(65537, 4);
    x[12345] = bad;
    Dev dx(x);
    auto c = makeCompressor("topk:ratio=0.01");
    cuda::DeviceBuffer out;
    EXPECT_THROW(cuda::compress(*c, ConstTensorView{dx.p, DType::kFloat32, {65537}}, out), NonFiniteError);
    EXPECT_EQ(c->stateDict().meta.at("step"), "0");
  }
}

TEST(CudaTopK, CorruptPayloadsAreRejected) {
  REQUIRE_GPU();
  const int64_t n = 1000;
  // k = 2 varints, the second out of range; a valid checksum.
  const auto build = [&](const std::vector<uint8_t>& index, uint64_t k) {
    std::vector<uint8_t> params(8);
    for (int i = 0; i < 8; ++i) params[i] = static_cast<uint8_t>(k >> (8 * i));
    Message m = Message::build(CompressorId::kTopK, DType::kFloat32, {n}, 0, params, k * 4 + index.size());
    std::memset(m.mutablePayload(), 0, k * 4);
    std::memcpy(m.mutablePayload() + k * 4, index.data(), index.size());
    m.finish(k * 4 + index.size());
    return m;
  };
  Dev out(n * 4);
  for (const auto& index : std::vector<std::vector<uint8_t>>{{5, 0xe7, 0x07}, {5}, {5, 1, 2}, {5, 0x81}}) {
    const Message m = build(index, 2);
    EXPECT_THROW(Message::fromBytes(m.data(), m.size()), CorruptMessageError);
    cuda::DeviceBuffer dm;
    cuda::toDevice(m, dm);
    EXPECT_THROW(cuda::decompress(dm.data(), m.size(), TensorView{out.p, DType::kFloat32, {n}}), CorruptMessageError);
  }
}

TEST(CudaPowerSgd, CloseToTheCpuAndTheWarmStartAdvances) {
  REQUIRE_GPU();
  for (std::vector<int64_t> shape : {std::vector<int64_t>{65537}, std::vector<int64_t>{96, 130},
                                     std::vector<int64_t>{7}, std::vector<int64_t>{1}}) {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    auto cpu = makeCompressor("powersgd:rank=3,seed=5");
    auto gpu = makeCompressor("powersgd:rank=3,seed=5");
    for (int step = 0; step < 3; ++step) {
      const std::vector<float> x = gputest::gaussian<float>(n, 21 + step);
      const Message m = cpu->compress(ConstTensorView{x.data(), DType::kFloat32, shape}, std::nullopt);
      Dev dx(x);
      cuda::DeviceBuffer out;
      const size_t size = cuda::compress(*gpu, ConstTensorView{dx.p, DType::kFloat32, shape}, out);
      ASSERT_EQ(size, m.size());
      std::vector<float> want(static_cast<size_t>(n)), got(static_cast<size_t>(n));
      decompress(m, TensorView{want.data(), DType::kFloat32, shape});
      decompress(cuda::toHost(out.data(), size), TensorView{got.data(), DType::kFloat32, shape});
      double err = 0, norm = 0;
      for (int64_t i = 0; i < n; ++i) {
        err = std::max(err, std::fabs(static_cast<double>(got[i]) - want[i]));
        norm = std::max(norm, std::fabs(static_cast<double>(want[i])));
      }
      EXPECT_LE(err, 1e-3 * (norm + 1e-30)) << "step " << step << " n " << n;
      // GPU decode of the CPU message equals the CPU's decode up to rounding
      cuda::DeviceBuffer dm;
      cuda::toDevice(m, dm);
      Dev dout(static_cast<size_t>(n) * 4);
      cuda::decompress(dm.data(), m.size(), TensorView{dout.p, DType::kFloat32, shape});
      const std::vector<float> gd = dout.get<float>();
      for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(gd[i], want[i], 1e-5 * (norm + 1e-30));
      const StateDict cs = cpu->stateDict(), gs = gpu->stateDict();
      EXPECT_EQ(gs.meta, cs.meta);
      ASSERT_EQ(gs.tensors.count("q"), 1u);
      const auto& cq = cs.tensors.at("q").bytes;
      const auto& gq = gs.tensors.at("q").bytes;
      ASSERT_EQ(cq.size(), gq.size());
      for (size_t i = 0; i < cq.size() / 8; ++i) {
        double a, b;
        std::memcpy(&a, &cq[8 * i], 8);
        std::memcpy(&b, &gq[8 * i], 8);
        EXPECT_NEAR(a, b, 1e-3 * (std::fabs(a) + 1));
      }
      EXPECT_EQ(gs.tensors.at("init").bytes, cs.tensors.at("init").bytes);
    }
  }
}

TEST(CudaPowerSgd, NonFiniteInputThrowsAndKeepsTheWarmStart) {
  REQUIRE_GPU();
  auto c = makeCompressor("powersgd:rank=2");
  std::vector<float> x = gputest::gaussian<float>(4096, 1);
  Dev dx(x);
  cuda::DeviceBuffer out;
  cuda::compress(*c, ConstTensorView{dx.p, DType::kFloat32, {64, 64}}, out);
  const StateDict before = c->stateDict();
  x[100] = std::numeric_limits<float>::quiet_NaN();
  Dev bad(x);
  EXPECT_THROW(cuda::compress(*c, ConstTensorView{bad.p, DType::kFloat32, {64, 64}}, out), NonFiniteError);
  const StateDict after = c->stateDict();
  EXPECT_EQ(after.meta, before.meta);
  EXPECT_EQ(after.tensors.at("q").bytes, before.tensors.at("q").bytes);
}

}  // namespace
}  // namespace efcomm
