// GPU kernel benchmark of the device check (bench/gpu_check.sh): times every compressor's device
// compress and decompress and the error-feedback steps on one float32 vector in device memory
// (64M elements by default, standard normal from a fixed seed), against a device-to-device copy
// measured in the same run. Prints one JSON object on stdout; bench/gpu/gpu_report.py adds the
// torch.topk baseline and renders the table. Last, the Reducer on device memory over a
// one-rank NCCL communicator (when libnccl loads): one allreduce of the vector per algorithm,
// against the bare EF21 step it contains.
//
// Timing: wall time around each call on the host, the stream synchronized (efcomm::cuda::compress
// and ::decompress synchronize before returning: their error checks and sizes need it), the median
// of --repeats calls after one warm-up. Bandwidth counts bytes read + written: input + message for
// compress, message + output for decompress, 2 x the vector for the copy.
//
// Then the streaming compressors at n/64 .. n elements and a synchronization's floor, to split
// their calls into a fixed cost and a rate. Decompress is also timed with the checksum beside
// the decode (EFCOMM_CUDA_OVERLAP_CHECKSUM=1 and =0.25, an experiment; TopK's decode still
// waits for the checksum, which then runs before it as by default).
//
// Usage: efcomm_gpu_bench [--size N] [--repeats R]
#include <cuda_runtime.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "efcomm/compressor.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/error.hpp"
#include "efcomm/nccl.hpp"
#include "efcomm/reducer.hpp"

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    std::fprintf(stderr, "efcomm_gpu_bench: %s: %s\n", what, cudaGetErrorString(err));
    std::exit(2);
  }
}

double medianSeconds(const std::function<void()>& fn, int repeats) {
  fn();  // warm-up: allocations, scratch growth, first-launch costs
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const auto start = std::chrono::steady_clock::now();
    fn();
    t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// Sets an environment variable for a scope (unset after, whatever happens).
struct EnvGuard {
  const char* name;
  EnvGuard(const char* n, const char* value) : name(n) { setenv(n, value, 1); }
  ~EnvGuard() { unsetenv(name); }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;
};

std::string jsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

}  // namespace

int main(int argc, char** argv) {
  int64_t n = int64_t{1} << 26;
  int repeats = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!std::strcmp(argv[i], "--size")) n = std::atoll(argv[i + 1]);
    else if (!std::strcmp(argv[i], "--repeats")) repeats = std::atoi(argv[i + 1]);
  }
  if (!efcomm::cuda::available()) {
    std::fprintf(stderr, "efcomm_gpu_bench: %s\n", efcomm::cuda::unavailableReason().c_str());
    return 2;
  }
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
  cudaStream_t stream;
  check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const efcomm::cuda::Stream s = stream;

  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  std::vector<float> host(static_cast<size_t>(n));
  std::mt19937_64 gen(0);
  std::normal_distribution<float> normal(0.f, 1.f);
  for (auto& v : host) v = normal(gen);
  float *x = nullptr, *y = nullptr;
  check(cudaMalloc(&x, bytes), "cudaMalloc x");
  check(cudaMalloc(&y, bytes), "cudaMalloc y");
  check(cudaMemcpy(x, host.data(), bytes, cudaMemcpyHostToDevice), "upload");

  const double copy = medianSeconds([&] {
    check(cudaMemcpyAsync(y, x, bytes, cudaMemcpyDeviceToDevice, stream), "copy");
    check(cudaStreamSynchronize(stream), "sync");
  }, repeats);
  const double copyGBps = 2.0 * bytes / copy / 1e9;

  std::printf("{\"device\": %s, \"size\": %lld, \"repeats\": %d, \"copy_seconds\": %.9g, \"copy_gbps\": %.6g,\n",
              jsonString(prop.name).c_str(), static_cast<long long>(n), repeats, copy, copyGBps);
  std::printf(" \"compressors\": [");
  const std::vector<std::string> specs = {"identity", "cast:dtype=bf16", "cast:dtype=fp16", "sign",
                                          "quant:bits=8,block=256", "quant:bits=4,block=256", "topk:ratio=0.01",
                                          "randk:ratio=0.01", "qsgd:levels=16", "natural", "powersgd:rank=4"};
  efcomm::cuda::DeviceBuffer msg;
  bool first = true;
  double topkSeconds = 0;
  for (const auto& spec : specs) {
    std::printf("%s\n  {\"spec\": %s", first ? "" : ",", jsonString(spec).c_str());
    first = false;
    try {
      auto c = efcomm::makeCompressor(spec);
      // PowerSGD compresses matrices: the vector as a near-square 2-d view.
      std::vector<int64_t> shape = {n};
      if (spec.rfind("powersgd", 0) == 0) {
        int64_t rows = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
        while (n % rows) --rows;
        shape = {rows, n / rows};
      }
      efcomm::ConstTensorView in{x, efcomm::DType::kFloat32, shape};
      efcomm::TensorView out{y, efcomm::DType::kFloat32, shape};
      size_t size = 0;
      const double tc = medianSeconds([&] { size = efcomm::cuda::compress(*c, in, msg, std::nullopt, s); }, repeats);
      const double td = medianSeconds([&] { efcomm::cuda::decompress(msg.data(), size, out, s); }, repeats);
      if (spec == "topk:ratio=0.01") topkSeconds = tc;
      std::printf(", \"message_bytes\": %zu, \"compress_seconds\": %.9g, \"decompress_seconds\": %.9g, "
                  "\"compress_gbps\": %.6g, \"decompress_gbps\": %.6g",
                  size, tc, td, (bytes + size) / tc / 1e9, (bytes + size) / td / 1e9);
      // The experiment: the checksum on a second stream beside the decode, on a share of the
      // multiprocessors by bytes moved ("1") and on a quarter of them. Not in the traced run:
      // its breakdown keeps one (the default) decompress line per compressor.
      if (std::getenv("EFCOMM_CUDA_TRACE") == nullptr) {
        for (const auto& [share, name] : {std::pair<const char*, const char*>{"1", "beside"}, {"0.25", "beside_quarter"}}) {
          try {
            const EnvGuard env("EFCOMM_CUDA_OVERLAP_CHECKSUM", share);
            const double to = medianSeconds([&] { efcomm::cuda::decompress(msg.data(), size, out, s); }, repeats);
            std::printf(", \"decompress_%s_seconds\": %.9g", name, to);
          } catch (const std::exception& e) {
            std::printf(", \"decompress_%s_error\": %s", name, jsonString(e.what()).c_str());
          }
        }
      }
      std::printf("}");
    } catch (const std::exception& e) {
      std::printf(", \"error\": %s}", jsonString(e.what()).c_str());
    }
  }
  // Where the calls' time goes against the message size: the same calls at n/64 .. n elements,
  // and the floor of any call (a 4-byte memset and a synchronization), so that gpu_report.py
  // splits each call into a fixed cost and a per-byte rate (issue 8's targets at 60 % of the
  // copy: missed for the fixed cost, or for the bandwidth?).
  const double floor = medianSeconds([&] {
    check(cudaMemsetAsync(y, 0, 4, stream), "memset");
    check(cudaStreamSynchronize(stream), "sync");
  }, repeats);
  std::printf("],\n \"sync_floor_seconds\": %.9g,\n \"scaling\": [", floor);
  first = true;
  for (const char* spec : {"identity", "cast:dtype=bf16", "sign", "quant:bits=8,block=256"}) {
    for (int64_t m = n / 64; m <= n && m > 0; m *= 4) {
      std::printf("%s\n  {\"spec\": %s, \"size\": %lld", first ? "" : ",", jsonString(spec).c_str(),
                  static_cast<long long>(m));
      first = false;
      try {
        auto c = efcomm::makeCompressor(spec);
        efcomm::ConstTensorView in{x, efcomm::DType::kFloat32, {m}};
        efcomm::TensorView out{y, efcomm::DType::kFloat32, {m}};
        size_t size = 0;
        const double tc = medianSeconds([&] { size = efcomm::cuda::compress(*c, in, msg, std::nullopt, s); }, repeats);
        const double td = medianSeconds([&] { efcomm::cuda::decompress(msg.data(), size, out, s); }, repeats);
        std::printf(", \"message_bytes\": %zu, \"compress_seconds\": %.9g, \"decompress_seconds\": %.9g}", size, tc,
                    td);
      } catch (const std::exception& e) {
        std::printf(", \"error\": %s}", jsonString(e.what()).c_str());
      }
    }
  }
  std::printf("],\n \"feedback\": [");
  const std::vector<std::pair<std::string, std::string>> steps = {
      {"ef21", "topk:ratio=0.01"}, {"ef14", "topk:ratio=0.01"}, {"ef21sgdm", "topk:ratio=0.01"},
      {"econtrol", "topk:ratio=0.01"}, {"ef21", "sign"}, {"ef21", "quant:bits=8,block=256"}};
  first = true;
  for (const auto& [method, spec] : steps) {
    std::printf("%s\n  {\"feedback\": %s, \"compressor\": %s", first ? "" : ",", jsonString(method).c_str(),
                jsonString(spec).c_str());
    first = false;
    try {
      // init=compressed: every timed step compresses (init=full sends the first vector whole).
      efcomm::cuda::DeviceFeedback fb(method == "ef14" ? method : method + ":init=compressed", spec);
      efcomm::ConstTensorView in{x, efcomm::DType::kFloat32, {n}};
      size_t size = 0;
      const double t = medianSeconds([&] { size = fb.step(in, msg, std::nullopt, s); }, repeats);
      std::printf(", \"message_bytes\": %zu, \"step_seconds\": %.9g, \"step_gbps_in\": %.6g", size, t, bytes / t / 1e9);
      if (spec == "topk:ratio=0.01" && topkSeconds > 0) std::printf(", \"over_topk\": %.6g", t / topkSeconds);
      std::printf("}");
    } catch (const std::exception& e) {
      std::printf(", \"error\": %s}", jsonString(e.what()).c_str());
    }
  }
  std::printf("],\n \"reducer\": [");
  double ef21Seconds = 0;
  try {
    efcomm::cuda::DeviceFeedback fb("ef21:init=compressed", "topk:ratio=0.01");
    efcomm::ConstTensorView in{x, efcomm::DType::kFloat32, {n}};
    ef21Seconds = medianSeconds([&] { fb.step(in, msg, std::nullopt, s); }, repeats);
  } catch (const std::exception&) {
  }
  first = true;
  std::shared_ptr<efcomm::NcclCommunicator> comm;
  std::string why;
  try {
    comm = std::make_shared<efcomm::NcclCommunicator>(0, 1, efcomm::NcclCommunicator::uniqueId(), 0, 60.0);
  } catch (const std::exception& e) {
    why = e.what();
  }
  for (const char* alg : {"allgather", "reduce_scatter"}) {
    std::printf("%s\n  {\"algorithm\": %s, \"compressor\": \"topk:ratio=0.01\", \"feedback\": \"ef21\"",
                first ? "" : ",", jsonString(alg).c_str());
    first = false;
    try {
      if (!comm) throw efcomm::BackendUnavailable(why);
      efcomm::ReducerOptions o;
      o.algorithm = alg;
      efcomm::Reducer red(std::static_pointer_cast<efcomm::DeviceBackend>(comm), "topk:ratio=0.01",
                          "ef21:init=compressed", o);
      efcomm::ConstTensorView in{x, efcomm::DType::kFloat32, {n}};
      efcomm::TensorView out{y, efcomm::DType::kFloat32, {n}};
      const double t = medianSeconds([&] { red.allreduce(in, out, "g", s); }, repeats);
      std::printf(", \"ranks\": 1, \"allreduce_seconds\": %.9g", t);
      if (ef21Seconds > 0) std::printf(", \"over_ef21_step\": %.6g", t / ef21Seconds);
      std::printf("}");
    } catch (const std::exception& e) {
      std::printf(", \"error\": %s}", jsonString(e.what()).c_str());
    }
  }
  std::printf("]}\n");
  cudaFree(x);
  cudaFree(y);
  cudaStreamDestroy(stream);
  return 0;
}
