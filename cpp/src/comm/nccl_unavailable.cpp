// The NCCL backend of a build without it (cuda/comm/nccl.cpp defines it when the CUDA kernels
// are built): every entry point throws BackendUnavailable saying why and how to fix it.
#include "efcomm/config.hpp"

#if !EFCOMM_HAVE_NCCL
#include "efcomm/error.hpp"
#include "efcomm/nccl.hpp"

namespace efcomm {

namespace {
constexpr const char* kReason =
    "efcomm was built without the NCCL backend (it comes with the CUDA kernels: nvcc was not found when efcomm was "
    "built, or EFCOMM_NCCL=OFF); rebuild with the CUDA toolkit on PATH, and pip install nvidia-nccl-cu13 for libnccl";
[[noreturn]] void unavailable() { throw BackendUnavailable(kReason); }
}  // namespace

struct NcclCommunicator::State {};

bool ncclBuilt() { return false; }
int ncclVersion(const std::string&) { unavailable(); }
std::string ncclLibrary() { return std::string(); }

NcclUniqueId NcclCommunicator::uniqueId(const std::string&) { unavailable(); }
NcclCommunicator::NcclCommunicator(int, int, const NcclUniqueId&, int, double, const std::string&) { unavailable(); }
NcclCommunicator::~NcclCommunicator() = default;
int NcclCommunicator::rank() const { unavailable(); }
int NcclCommunicator::size() const { unavailable(); }
int NcclCommunicator::device() const { unavailable(); }
double NcclCommunicator::defaultTimeout() const { unavailable(); }
std::shared_ptr<Work> NcclCommunicator::allreduceSum(void*, size_t, DType, cuda::Stream, std::optional<double>) {
  unavailable();
}
std::shared_ptr<Work> NcclCommunicator::broadcast(void*, size_t, int, cuda::Stream, std::optional<double>) {
  unavailable();
}
std::vector<size_t> NcclCommunicator::exchangeSizes(size_t, cuda::Stream, std::optional<double>) { unavailable(); }
std::shared_ptr<Work> NcclCommunicator::allgatherv(const void*, size_t, DeviceByteBlocks&, cuda::Stream,
                                                   std::optional<double>) {
  unavailable();
}
std::shared_ptr<Work> NcclCommunicator::allgathervInto(const void*, void*, const std::vector<size_t>&, cuda::Stream,
                                                       std::optional<double>) {
  unavailable();
}
std::shared_ptr<Work> NcclCommunicator::alltoallv(const void*, const std::vector<size_t>&, DeviceByteBlocks&,
                                                  cuda::Stream, std::optional<double>) {
  unavailable();
}
std::shared_ptr<Work> NcclCommunicator::barrier(cuda::Stream, std::optional<double>) { unavailable(); }
void NcclCommunicator::abort(const CollectiveTimeout&) { unavailable(); }
bool NcclCommunicator::aborted() const { return false; }
Backend& NcclCommunicator::host() { unavailable(); }

}  // namespace efcomm
#endif
