// Backends that stage bytes between host and device memory (device_comm.hpp):
// - stagedDeviceBackend: device collectives over a host Backend (GPUs without NCCL; several
//   ranks sharing one GPU in tests);
// - ncclHostBackend: host collectives over an NCCL communicator, for the Reducer's small control
//   messages (agreement headers, statuses, descriptors) on the NCCL path.
// Every call synchronizes its stream around the copies, so the returned Work is complete.
#include "comm/staged.hpp"

#include <cuda_runtime.h>

#include <numeric>
#include <utility>

#include "common/runtime.hpp"
#include "efcomm/error.hpp"
#include "efcomm/nccl.hpp"

namespace efcomm::comm {

namespace {

// The Work of a collective that completed inside the call.
class DoneWork final : public Work {
 public:
  void wait(std::optional<double>) override {}
  bool completed() const override { return true; }
};

void toDeviceSync(const void* host, size_t bytes, void* dev, cudaStream_t s) {
  if (bytes == 0) return;
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, s));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
}

void toHostSync(const void* dev, size_t bytes, void* host, cudaStream_t s) {
  if (bytes == 0) return;
  EFCOMM_CUDA_CHECK(cudaMemcpyAsync(host, dev, bytes, cudaMemcpyDeviceToHost, s));
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(s));
}

std::vector<uint8_t> hostCopy(const void* dev, size_t bytes, cudaStream_t s) {
  std::vector<uint8_t> h(bytes);
  toHostSync(dev, bytes, h.data(), s);
  return h;
}

size_t totalOf(const std::vector<size_t>& counts) { return std::accumulate(counts.begin(), counts.end(), size_t{0}); }

void fill(DeviceByteBlocks& out, const ByteBlocks& in, cudaStream_t s) {
  out.data.resize(in.data.size());
  toDeviceSync(in.data.data(), in.data.size(), out.data.data(), s);
  out.offsets = in.offsets;
}

void fill(ByteBlocks& out, const DeviceByteBlocks& in, cudaStream_t s) {
  out.data.resize(in.data.size());
  toHostSync(in.data.data(), in.data.size(), out.data.data(), s);
  out.offsets = in.offsets;
}

class StagedDeviceBackend final : public DeviceBackend {
 public:
  StagedDeviceBackend(std::shared_ptr<Backend> host, int device) : host_(std::move(host)), device_(device) {}

  int rank() const override { return host_->rank(); }
  int size() const override { return host_->size(); }
  int device() const override { return device_; }
  Backend& host() override { return *host_; }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, DeviceByteBlocks& recv, cuda::Stream stream,
                                   std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(device_);
    const auto s = cuda::nativeStream(stream);
    const std::vector<uint8_t> mine = hostCopy(send, bytes, s);
    ByteBlocks all;
    host_->allgatherv(mine.data(), mine.size(), all, timeoutSeconds)->wait();
    fill(recv, all, s);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, DeviceByteBlocks& recv,
                                  cuda::Stream stream, std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(device_);
    const auto s = cuda::nativeStream(stream);
    const size_t total = totalOf(sendCounts);
    const std::vector<uint8_t> mine = hostCopy(send, total, s);
    ByteBlocks chunks;
    host_->alltoallv(mine.data(), sendCounts, chunks, timeoutSeconds)->wait();
    fill(recv, chunks, s);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype, cuda::Stream stream,
                                     std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(device_);
    const auto s = cuda::nativeStream(stream);
    const size_t bytes = count * itemSize(dtype);
    std::vector<uint8_t> h = hostCopy(buf, bytes, s);
    host_->allreduceSum(h.data(), count, dtype, timeoutSeconds)->wait();
    toDeviceSync(h.data(), bytes, buf, s);
    return std::make_shared<DoneWork>();
  }

 private:
  std::shared_ptr<Backend> host_;
  int device_;
};

// Host bytes through the communicator's device, on the legacy default stream. Its staging
// buffers are kept between calls (allocated once: a cudaFree waits for the whole device); a
// communicator is driven by one thread at a time (nccl.hpp).
class NcclHostBackend final : public Backend {
 public:
  explicit NcclHostBackend(NcclCommunicator& c) : c_(c) {}

  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                   std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(c_.device());
    staging_.resize(bytes);
    toDeviceSync(send, bytes, staging_.data(), nullptr);
    c_.allgatherv(staging_.data(), bytes, received_, nullptr, timeoutSeconds)->wait();
    fill(recv, received_, nullptr);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, ByteBlocks& recv,
                                  std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(c_.device());
    const size_t total = totalOf(sendCounts);
    staging_.resize(total);
    toDeviceSync(send, total, staging_.data(), nullptr);
    c_.alltoallv(staging_.data(), sendCounts, received_, nullptr, timeoutSeconds)->wait();
    fill(recv, received_, nullptr);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(c_.device());
    staging_.resize(bytes);
    toDeviceSync(buf, bytes, staging_.data(), nullptr);
    c_.broadcast(staging_.data(), bytes, root, nullptr, timeoutSeconds)->wait();
    toHostSync(staging_.data(), bytes, buf, nullptr);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype,
                                     std::optional<double> timeoutSeconds) override {
    cuda::DeviceGuard guard(c_.device());
    const size_t bytes = count * itemSize(dtype);
    staging_.resize(bytes);
    toDeviceSync(buf, bytes, staging_.data(), nullptr);
    c_.allreduceSum(staging_.data(), count, dtype, nullptr, timeoutSeconds)->wait();
    toHostSync(staging_.data(), bytes, buf, nullptr);
    return std::make_shared<DoneWork>();
  }

  std::shared_ptr<Work> barrier(std::optional<double> timeoutSeconds) override {
    return c_.barrier(nullptr, timeoutSeconds);
  }

  void abort(const CollectiveTimeout& error) override { c_.abort(error); }

 private:
  NcclCommunicator& c_;
  cuda::DeviceBuffer staging_;
  DeviceByteBlocks received_;
};

}  // namespace

std::unique_ptr<Backend> ncclHostBackend(NcclCommunicator& communicator) {
  return std::make_unique<NcclHostBackend>(communicator);
}

}  // namespace efcomm::comm

namespace efcomm {

std::shared_ptr<DeviceBackend> stagedDeviceBackend(std::shared_ptr<Backend> host, int device) {
  EFCOMM_CHECK(host != nullptr, "stagedDeviceBackend: null host backend");
  cuda::requireDevice();
  int count = 0;
  EFCOMM_CUDA_CHECK(cudaGetDeviceCount(&count));
  EFCOMM_CHECK(device >= 0 && device < count, "stagedDeviceBackend: device ", device, " does not exist (", count,
               " CUDA devices)");
  return std::make_shared<comm::StagedDeviceBackend>(std::move(host), device);
}

}  // namespace efcomm
