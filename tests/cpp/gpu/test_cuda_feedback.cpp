// GPU error feedback (efcomm::cuda::DeviceFeedback) against the CPU's Feedback: for every
// method, the same step sequence on the same inputs gives the same messages and estimate
// (bit-identical where the arithmetic is the same, within float tolerance where a reduction or
// a fused multiply-add may round differently), state dicts move CPU<->GPU and continue, NaN
// throws NonFiniteError with the state unchanged. Skips without a device.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/error.hpp"
#include "efcomm/feedback.hpp"
#include "gpu_test_util.hpp"

namespace efcomm {
namespace {

using gputest::Dev;

#define REQUIRE_GPU() \
  if (!cuda::available()) GTEST_SKIP() << cuda::unavailableReason()

// Methods whose GPU step with TopK does exactly the CPU's arithmetic (no product that a compiler
// may fuse into an FMA on one side only): messages and states are compared bit for bit.
bool exactWithTopK(const std::string& method) {
  return method == "none" || method == "ef14" || method.rfind("ef21:", 0) == 0 || method == "ef21" ||
         method == "econtrol:eta=0,init=compressed" || method == "ef21sgdm:momentum=1";
}

const std::vector<std::string>& methods() {
  static const std::vector<std::string> m = {
      "none", "ef14", "ef21", "ef21:init=compressed", "ef21w:weight=0.25,n=4", "ef21w:weight=0.5,n=2,init=compressed",
      "ef21sgdm:momentum=0.1", "ef21sgdm:momentum=0.3,init=compressed", "ef21sgdm:momentum=1",
      "econtrol:eta=0.1", "econtrol:eta=0,init=compressed"};
  return m;
}

std::vector<float> decoded(const Message& m) {
  std::vector<float> v(static_cast<size_t>(m.numel()));
  decompress(m, TensorView{v.data(), DType::kFloat32, m.shape()});
  return v;
}

void expectClose(const std::vector<float>& a, const std::vector<float>& b, double rel, const std::string& what) {
  ASSERT_EQ(a.size(), b.size()) << what;
  double scale = 0;
  for (float x : b) scale = std::max(scale, std::fabs(static_cast<double>(x)));
  size_t bad = 0;
  for (size_t i = 0; i < a.size(); ++i) bad += std::fabs(static_cast<double>(a[i]) - b[i]) > rel * (scale + 1e-30);
  // A last-bit difference can swap a TopK choice near the threshold: allow a handful.
  EXPECT_LE(bad, 4 + a.size() / 10000) << what;
}

std::vector<float> estimateOf(const cuda::DeviceFeedback& f) {
  const ConstTensorView e = f.estimate();
  return gputest::fromDevice<float>(e.data, static_cast<size_t>(e.numel()));
}
std::vector<float> estimateOf(const Feedback& f) {
  const ConstTensorView e = f.estimate();
  const auto* p = static_cast<const float*>(e.data);
  return std::vector<float>(p, p + e.numel());
}

// Runs `steps` steps on both and compares messages and estimates.
void compareRun(const std::string& method, const std::string& comp, int64_t n, int steps, bool exact) {
  auto cpu = makeFeedback(method, makeCompressor(comp));
  cuda::DeviceFeedback gpu(method, comp);
  EXPECT_EQ(gpu.spec(), cpu->spec());
  const std::string what = method + " / " + comp + " n " + std::to_string(n);
  for (int s = 0; s < steps; ++s) {
    const std::vector<float> v = gputest::gaussian<float>(n, 100 * s + 7, 1.0 + s);
    const Message m = cpu->step(ConstTensorView{v.data(), DType::kFloat32, {n}});
    Dev dv(v);
    cuda::DeviceBuffer out;
    const size_t size = gpu.step(ConstTensorView{dv.p, DType::kFloat32, {n}}, out);
    const Message g = cuda::toHost(out.data(), size);
    if (exact) {
      EXPECT_EQ(gputest::bytesOf(g), gputest::bytesOf(m)) << what << " step " << s;
      EXPECT_EQ(estimateOf(gpu), estimateOf(*cpu)) << what << " step " << s;
    } else {
      expectClose(decoded(g), decoded(m), 1e-4, what + " message step " + std::to_string(s));
      expectClose(estimateOf(gpu), estimateOf(*cpu), 1e-4, what + " estimate step " + std::to_string(s));
    }
    EXPECT_EQ(gpu.initialized(), cpu->initialized());
    EXPECT_EQ(gpu.compressor().stateDict().meta.at("step"), cpu->compressor()->stateDict().meta.at("step"));
  }
}

TEST(CudaFeedback, EveryMethodWithTopKMatchesTheCpu) {
  REQUIRE_GPU();
  for (const std::string& method : methods()) compareRun(method, "topk:ratio=0.05", 65537, 4, exactWithTopK(method));
}

TEST(CudaFeedback, OddSizes) {
  REQUIRE_GPU();
  for (int64_t n : gputest::oddSizes()) {
    compareRun("ef21", "topk:ratio=0.01", n, 3, true);
    compareRun("ef14", "topk:k=5", n, 3, true);
    compareRun("econtrol:eta=0.1", "topk:ratio=0.01", n, 3, false);
  }
}

TEST(CudaFeedback, LargeInputFusedPath) {
  REQUIRE_GPU();
  compareRun("ef21", "topk:ratio=0.01", int64_t{1} << 22, 3, true);
  compareRun("ef14", "topk:ratio=0.01", int64_t{1} << 22, 2, true);
}

// The fused passes read 16 bytes at a time when every array is 16-byte aligned and one element
// at a time otherwise: a view one float into its allocation must give the same bytes and state.
TEST(CudaFeedback, MisalignedInputGivesTheSameResult) {
  REQUIRE_GPU();
  const int64_t n = (int64_t{1} << 20) + 3;
  const auto host = gputest::gaussian<float>(n + 1, 11);
  Dev buf(host);
  for (const std::string& method : {"ef21", "ef21sgdm:momentum=0.9", "econtrol:eta=0.1", "ef14"}) {
    std::vector<std::vector<uint8_t>> msgs[2];
    std::vector<float> est[2];
    for (int offset = 0; offset < 2; ++offset) {
      // The aligned run reads a copy of the same n values at offset 0.
      Dev aligned(std::vector<float>(host.begin() + 1, host.end()));
      const float* x = offset ? static_cast<const float*>(buf.p) + 1 : static_cast<const float*>(aligned.p);
      cuda::DeviceFeedback f(method, "topk:ratio=0.01");
      cuda::DeviceBuffer out;
      for (int step = 0; step < 3; ++step) {
        const size_t size = f.step(ConstTensorView{x, DType::kFloat32, {n}}, out);
        msgs[offset].push_back(gputest::bytesOf(out, size));
      }
      est[offset] = estimateOf(f);
    }
    EXPECT_EQ(msgs[0], msgs[1]) << method;
    EXPECT_EQ(est[0], est[1]) << method;
  }
}

TEST(CudaFeedback, GenericCompressors) {
  REQUIRE_GPU();
  for (const std::string& method : methods()) {
    compareRun(method, "identity", 1003, 3, exactWithTopK(method));
    compareRun(method, "sign", 65537, 3, false);
    compareRun(method, "powersgd:rank=2", 4096, 3, false);
  }
}

TEST(CudaFeedback, StateDictsMoveBetweenCpuAndGpu) {
  REQUIRE_GPU();
  const int64_t n = 65537;
  for (const std::string& method : methods()) {
    const bool exact = exactWithTopK(method);
    const std::string comp = "topk:ratio=0.02";
    cuda::DeviceFeedback g1(method, comp);
    cuda::DeviceBuffer out;
    for (int s = 0; s < 2; ++s) {
      Dev dv(gputest::gaussian<float>(n, 300 + s));
      g1.step(ConstTensorView{dv.p, DType::kFloat32, {n}}, out);
    }
    // GPU -> CPU: the CPU continues as the GPU does
    const StateDict sd = g1.stateDict();
    auto cpu = makeFeedback(method, makeCompressor(comp));
    cpu->loadStateDict(sd);
    const StateDict cd = cpu->stateDict();
    EXPECT_EQ(cd.meta, sd.meta) << method;
    for (const auto& [name, t] : sd.tensors) {
      ASSERT_EQ(cd.tensors.count(name), 1u) << name;
      EXPECT_EQ(cd.tensors.at(name).bytes, t.bytes) << method << " " << name;
      EXPECT_EQ(cd.tensors.at(name).shape, t.shape);
      EXPECT_EQ(cd.tensors.at(name).dtype, t.dtype);
    }
    // CPU -> GPU: a fresh GPU object continues bit-identically to the original
    cuda::DeviceFeedback g2(method, comp);
    g2.loadStateDict(cd);
    const std::vector<float> v = gputest::gaussian<float>(n, 999);
    Dev dv(v);
    cuda::DeviceBuffer o1, o2;
    const size_t s1 = g1.step(ConstTensorView{dv.p, DType::kFloat32, {n}}, o1);
    const size_t s2 = g2.step(ConstTensorView{dv.p, DType::kFloat32, {n}}, o2);
    EXPECT_EQ(gputest::bytesOf(o1, s1), gputest::bytesOf(o2, s2)) << method;
    EXPECT_EQ(estimateOf(g1), estimateOf(g2)) << method;
    const Message m = cpu->step(ConstTensorView{v.data(), DType::kFloat32, {n}});
    if (exact) {
      EXPECT_EQ(gputest::bytesOf(m), gputest::bytesOf(o1, s1)) << method;
    } else {
      expectClose(decoded(cuda::toHost(o1.data(), s1)), decoded(m), 1e-4, method);
    }
  }
}

TEST(CudaFeedback, NonFiniteInputLeavesTheStateUnchanged) {
  REQUIRE_GPU();
  const int64_t n = 65537;
  // One finite step, then a NaN at index `bad`: NonFiniteError, and the state as it was.
  const auto expectRefused = [&](const std::string& method, const std::string& comp, int64_t bad) {
    cuda::DeviceFeedback g(method, comp);
    cuda::DeviceBuffer out;
    Dev d0(gputest::gaussian<float>(n, 1));
    g.step(ConstTensorView{d0.p, DType::kFloat32, {n}}, out);
    const StateDict before = g.stateDict();
    std::vector<float> v = gputest::gaussian<float>(n, 2);
    v[bad] = std::numeric_limits<float>::quiet_NaN();
    Dev dv(v);
    EXPECT_THROW(g.step(ConstTensorView{dv.p, DType::kFloat32, {n}}, out), NonFiniteError) << method << " " << comp;
    const StateDict after = g.stateDict();
    EXPECT_EQ(after.meta, before.meta) << method;
    for (const auto& [name, t] : before.tensors) EXPECT_EQ(after.tensors.at(name).bytes, t.bytes) << method << name;
  };
  for (const std::string& method : methods())
    for (const char* comp : {"topk:ratio=0.01", "sign"}) expectRefused(method, comp, 777);
  // RandK reads only the coordinates it sends; the step checks the whole vector, every element of
  // which enters the state: a NaN where its first draws send nothing still throws (as on the CPU).
  const std::string randk = "randk:k=16,seed=9";
  std::vector<float> sent(n, 0.0f);
  const std::vector<float> ones(n, 1.0f);
  for (uint64_t step = 0; step < 2; ++step) {
    auto c = makeCompressor(randk);
    const Message m = c->compress(ConstTensorView{ones.data(), DType::kFloat32, {n}}, step);
    const std::vector<float> y = decoded(m);
    for (int64_t i = 0; i < n; ++i) sent[i] += y[i];
  }
  const int64_t unsent = std::find(sent.begin(), sent.end(), 0.0f) - sent.begin();
  ASSERT_LT(unsent, n);
  for (const std::string& method : methods())
    if (method != "none") expectRefused(method, randk, unsent);  // none: RandK alone, which checks what it sends
  // A NaN in the very first step leaves the object uninitialized.
  cuda::DeviceFeedback g("ef21", "topk:ratio=0.01");
  std::vector<float> v(100, 1.0f);
  v[3] = std::numeric_limits<float>::infinity();
  Dev dv(v);
  cuda::DeviceBuffer out;
  EXPECT_THROW(g.step(ConstTensorView{dv.p, DType::kFloat32, {100}}, out), NonFiniteError);
  EXPECT_FALSE(g.initialized());
}

TEST(CudaFeedback, ArgumentErrors) {
  REQUIRE_GPU();
  EXPECT_THROW(cuda::DeviceFeedback("ef99", "topk"), InvalidArgument);
  EXPECT_THROW(cuda::DeviceFeedback("ef21w:weight=2,n=1", "topk"), InvalidArgument);
  cuda::DeviceFeedback g("ef21", "topk:ratio=0.1");
  std::vector<float> host(10, 1.0f);
  cuda::DeviceBuffer out;
  EXPECT_THROW(g.step(ConstTensorView{host.data(), DType::kFloat32, {10}}, out), InvalidArgument);  // host memory
  Dev dv(host);
  g.step(ConstTensorView{dv.p, DType::kFloat32, {10}}, out);
  EXPECT_THROW(g.step(ConstTensorView{dv.p, DType::kFloat32, {5}}, out), InvalidArgument);  // shape changed
  auto other = makeFeedback("ef14", makeCompressor("topk:ratio=0.1"));
  EXPECT_THROW(g.loadStateDict(other->stateDict()), MismatchError);
}

TEST(CudaFeedback, Float64) {
  REQUIRE_GPU();
  const int64_t n = 20001;
  auto cpu = makeFeedback("ef21", makeCompressor("topk:ratio=0.01"));
  cuda::DeviceFeedback gpu("ef21", "topk:ratio=0.01");
  for (int s = 0; s < 3; ++s) {
    const std::vector<double> v = gputest::gaussian<double>(n, 50 + s);
    const Message m = cpu->step(ConstTensorView{v.data(), DType::kFloat64, {n}});
    Dev dv(v);
    cuda::DeviceBuffer out;
    const size_t size = gpu.step(ConstTensorView{dv.p, DType::kFloat64, {n}}, out);
    EXPECT_EQ(gputest::bytesOf(out, size), gputest::bytesOf(m));
  }
}

}  // namespace
}  // namespace efcomm
