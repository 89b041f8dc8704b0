// The efcomm::cuda functions, stagedDeviceBackend and the device Reducer's algorithms of a build
// without CUDA kernels (cuda/ defines them otherwise):
// queries answer "not available" and everything else throws BackendUnavailable saying why.
#include "efcomm/config.hpp"

#if !EFCOMM_HAVE_CUDA
#include "comm/reducer_algorithms.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/device_comm.hpp"
#include "efcomm/error.hpp"

namespace efcomm::cuda {

namespace {
constexpr const char* kReason =
    "efcomm was built without CUDA kernels (nvcc was not found when it was built); rebuild with "
    "the CUDA toolkit on PATH (or -DEFCOMM_CUDA=ON to make its absence an error)";
[[noreturn]] void unavailable() { throw BackendUnavailable(kReason); }
}  // namespace

bool built() { return false; }
int deviceCount() { return 0; }
bool available() { return false; }
bool isDevicePointer(const void*) { return false; }
bool isDevicePointer(const void*, int) { return false; }
std::string unavailableReason() { return kReason; }

void setDevice(int) { unavailable(); }
DeviceGuard::DeviceGuard(int device) : device_(device) { unavailable(); }
DeviceGuard::~DeviceGuard() = default;

DeviceBuffer::~DeviceBuffer() = default;
DeviceBuffer::DeviceBuffer(DeviceBuffer&&) noexcept = default;
DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&&) noexcept = default;
void DeviceBuffer::resize(size_t bytes) {
  if (bytes > 0) unavailable();
}

size_t compress(Compressor&, const ConstTensorView&, DeviceBuffer&, std::optional<uint64_t>, Stream) { unavailable(); }
void decompress(const void*, size_t, const TensorView&, Stream) { unavailable(); }
void accumulate(const void*, size_t, const TensorView&, double, Stream) { unavailable(); }
Message toHost(const void*, size_t, Stream) { unavailable(); }
void copy(void*, const void*, size_t, Stream) { unavailable(); }
void synchronize(Stream) { unavailable(); }
void toDevice(const Message&, DeviceBuffer&, Stream) { unavailable(); }

struct DeviceFeedback::Impl {};
DeviceFeedback::DeviceFeedback(const std::string&, const std::string&) { unavailable(); }
DeviceFeedback::~DeviceFeedback() = default;
std::string DeviceFeedback::spec() const { unavailable(); }
const Compressor& DeviceFeedback::compressor() const { unavailable(); }
size_t DeviceFeedback::step(const ConstTensorView&, DeviceBuffer&, std::optional<uint64_t>, Stream) { unavailable(); }
ConstTensorView DeviceFeedback::estimate() const { unavailable(); }
bool DeviceFeedback::initialized() const { return false; }
StateDict DeviceFeedback::stateDict() const { unavailable(); }
void DeviceFeedback::loadStateDict(const StateDict&) { unavailable(); }

}  // namespace efcomm::cuda

namespace efcomm {
std::shared_ptr<DeviceBackend> stagedDeviceBackend(std::shared_ptr<Backend>, int) { cuda::unavailable(); }
}  // namespace efcomm

namespace efcomm::comm {
std::unique_ptr<Algorithm> makeDeviceAlgorithm(const std::string&, const SlotSetup&) { cuda::unavailable(); }
}  // namespace efcomm::comm
#endif
