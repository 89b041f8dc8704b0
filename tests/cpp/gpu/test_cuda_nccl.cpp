// The NCCL backend on one rank (one GPU: NCCL refuses two ranks on one device): every collective
// on device memory, argument checks, and abort. Skips without a device or without libnccl.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <vector>

#include "efcomm/cuda.hpp"
#include "efcomm/nccl.hpp"

namespace {

using efcomm::DeviceByteBlocks;
using efcomm::DType;
using efcomm::NcclCommunicator;

#define SKIP_WITHOUT_NCCL()                                                         \
  do {                                                                              \
    if (!efcomm::cuda::available()) GTEST_SKIP() << efcomm::cuda::unavailableReason(); \
    try {                                                                           \
      efcomm::ncclVersion();                                                        \
    } catch (const efcomm::BackendUnavailable& e) {                                 \
      GTEST_SKIP() << e.what();                                                     \
    }                                                                               \
  } while (0)

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

// Device memory for a test.
struct Dev {
  void* p = nullptr;
  explicit Dev(size_t bytes) { EXPECT_EQ(cudaMalloc(&p, bytes == 0 ? 1 : bytes), cudaSuccess); }
  ~Dev() { cudaFree(p); }
};

std::unique_ptr<NcclCommunicator> oneRank(double timeout = 60) {
  return std::make_unique<NcclCommunicator>(0, 1, NcclCommunicator::uniqueId(), 0, timeout);
}

TEST(CudaNccl, VersionAndLibrary) {
  SKIP_WITHOUT_NCCL();
  EXPECT_TRUE(efcomm::ncclBuilt());
  EXPECT_GE(efcomm::ncclVersion(), 20700);
  EXPECT_FALSE(efcomm::ncclLibrary().empty());
  // For the log: which libnccl these tests ran on (the Python tests may load another one).
  std::printf("[ NCCL     ] version %d from %s\n", efcomm::ncclVersion(), efcomm::ncclLibrary().c_str());
  const auto a = NcclCommunicator::uniqueId();
  const auto b = NcclCommunicator::uniqueId();
  EXPECT_NE(std::memcmp(a.data(), b.data(), a.size()), 0);
}

TEST(CudaNccl, OneRankProperties) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank(42);
  EXPECT_EQ(c->rank(), 0);
  EXPECT_EQ(c->size(), 1);
  EXPECT_EQ(c->device(), 0);
  EXPECT_DOUBLE_EQ(c->defaultTimeout(), 42);
  EXPECT_FALSE(c->aborted());
}

TEST(CudaNccl, AllreduceSumKeepsTheOnlyRanksValues) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  std::vector<float> host(100003);
  std::iota(host.begin(), host.end(), -50000.0f);
  Dev buf(host.size() * sizeof(float));
  CUDA_OK(cudaMemcpyAsync(buf.p, host.data(), host.size() * sizeof(float), cudaMemcpyHostToDevice, s));
  auto w = c->allreduceSum(buf.p, host.size(), DType::kFloat32, s);
  w->wait();
  EXPECT_TRUE(w->completed());
  w->wait();  // again: same result
  std::vector<float> back(host.size());
  CUDA_OK(cudaMemcpyAsync(back.data(), buf.p, back.size() * sizeof(float), cudaMemcpyDeviceToHost, s));
  CUDA_OK(cudaStreamSynchronize(s));
  EXPECT_EQ(back, host);
  for (DType dt : {DType::kFloat64, DType::kBFloat16, DType::kFloat16}) {
    Dev b(64 * 8);
    CUDA_OK(cudaMemsetAsync(b.p, 0, 64 * 8, s));
    c->allreduceSum(b.p, 64, dt, s)->wait();
  }
  Dev zero(8);
  c->allreduceSum(zero.p, 0, DType::kFloat32, s)->wait();
  CUDA_OK(cudaStreamDestroy(s));
}

TEST(CudaNccl, BroadcastAndBarrierOnTheDefaultStream) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  std::vector<uint8_t> host(777);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>(i * 7);
  Dev buf(host.size());
  CUDA_OK(cudaMemcpy(buf.p, host.data(), host.size(), cudaMemcpyHostToDevice));
  c->broadcast(buf.p, host.size(), 0, nullptr)->wait();
  std::vector<uint8_t> back(host.size());
  CUDA_OK(cudaMemcpy(back.data(), buf.p, back.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);
  c->barrier(nullptr)->wait(10.0);
  EXPECT_THROW(c->broadcast(buf.p, 4, 1, nullptr), efcomm::InvalidArgument);
}

TEST(CudaNccl, AllgathervSizesAndData) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  EXPECT_EQ(c->exchangeSizes(12345, s), std::vector<size_t>({12345}));
  std::vector<uint8_t> host(65537 + 3);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>(i ^ (i >> 8));
  Dev send(host.size());
  CUDA_OK(cudaMemcpy(send.p, host.data(), host.size(), cudaMemcpyHostToDevice));
  DeviceByteBlocks recv;
  c->allgatherv(send.p, host.size(), recv, s)->wait();
  ASSERT_EQ(recv.size(), 1u);
  ASSERT_EQ(recv.blockBytes(0), host.size());
  std::vector<uint8_t> back(host.size());
  CUDA_OK(cudaMemcpy(back.data(), recv.block(0), back.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);
  // Known sizes: straight into the caller's buffer.
  Dev out(host.size());
  c->allgathervInto(send.p, out.p, {host.size()}, s)->wait();
  CUDA_OK(cudaMemcpy(back.data(), out.p, back.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);
  // Zero bytes.
  DeviceByteBlocks none;
  c->allgatherv(nullptr, 0, none, s)->wait();
  ASSERT_EQ(none.size(), 1u);
  EXPECT_EQ(none.blockBytes(0), 0u);
  EXPECT_THROW(c->allgathervInto(send.p, out.p, {1, 2}, s), efcomm::InvalidArgument);
  CUDA_OK(cudaStreamDestroy(s));
}

TEST(CudaNccl, AlltoallvOwnChunk) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  std::vector<uint8_t> host(1000);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<uint8_t>(255 - i % 251);
  Dev send(host.size());
  CUDA_OK(cudaMemcpy(send.p, host.data(), host.size(), cudaMemcpyHostToDevice));
  DeviceByteBlocks recv;
  c->alltoallv(send.p, {host.size()}, recv, nullptr)->wait();
  ASSERT_EQ(recv.size(), 1u);
  ASSERT_EQ(recv.blockBytes(0), host.size());
  std::vector<uint8_t> back(host.size());
  CUDA_OK(cudaMemcpy(back.data(), recv.block(0), back.size(), cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);
  EXPECT_THROW(c->alltoallv(send.p, {1, 2}, recv, nullptr), efcomm::InvalidArgument);
}

TEST(CudaNccl, RejectsHostMemoryAndBadArguments) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  std::vector<float> host(16);
  EXPECT_THROW(c->allreduceSum(host.data(), host.size(), DType::kFloat32, nullptr), efcomm::InvalidArgument);
  EXPECT_THROW(c->broadcast(host.data(), 64, 0, nullptr), efcomm::InvalidArgument);
  Dev d(64);
  EXPECT_THROW(c->allreduceSum(d.p, 16, DType::kFloat32, nullptr, -1.0), efcomm::InvalidArgument);
  EXPECT_THROW(NcclCommunicator(1, 1, NcclCommunicator::uniqueId(), 0), efcomm::InvalidArgument);
  EXPECT_THROW(NcclCommunicator(0, 1, NcclCommunicator::uniqueId(), efcomm::cuda::deviceCount()),
               efcomm::InvalidArgument);
}

TEST(CudaNccl, AbortFailsLaterCollectives) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  Dev d(64);
  c->allreduceSum(d.p, 16, DType::kFloat32, nullptr)->wait();
  c->abort(efcomm::CollectiveTimeout("test abort", {}));
  EXPECT_TRUE(c->aborted());
  try {
    c->allreduceSum(d.p, 16, DType::kFloat32, nullptr);
    FAIL() << "no throw after abort";
  } catch (const efcomm::CollectiveTimeout& e) {
    EXPECT_NE(std::string(e.what()).find("test abort"), std::string::npos) << e.what();
  }
  EXPECT_THROW(c->barrier(nullptr), efcomm::CollectiveTimeout);
  c->abort(efcomm::CollectiveTimeout("second abort is ignored", {}));
}

TEST(CudaNccl, ManyCollectivesInFlight) {
  SKIP_WITHOUT_NCCL();
  auto c = oneRank();
  cudaStream_t s;
  CUDA_OK(cudaStreamCreate(&s));
  Dev d(1 << 20);
  CUDA_OK(cudaMemsetAsync(d.p, 0, 1 << 20, s));
  std::vector<std::shared_ptr<efcomm::Work>> works;
  for (int i = 0; i < 32; ++i) works.push_back(c->allreduceSum(d.p, (1 << 20) / 4, DType::kFloat32, s));
  for (auto& w : works) w->wait();
  for (auto& w : works) EXPECT_TRUE(w->completed());
  CUDA_OK(cudaStreamDestroy(s));
}

}  // namespace
