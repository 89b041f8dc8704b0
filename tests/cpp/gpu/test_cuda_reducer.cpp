// The Reducer on device memory: 1-4 ranks as threads sharing one GPU through
// stagedDeviceBackend (NCCL refuses two ranks on one device), against the host Reducer on the
// same inputs; bit-identical aggregates across ranks; state round trips; failures; and the
// Reducer over a one-rank NCCL communicator. Skips without a device.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <exception>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "efcomm/comm.hpp"
#include "efcomm/cuda.hpp"
#include "efcomm/device_comm.hpp"
#include "efcomm/nccl.hpp"
#include "efcomm/reducer.hpp"
#include "gpu_test_util.hpp"

namespace {

using efcomm::Backend;
using efcomm::ConstTensorView;
using efcomm::DType;
using efcomm::Reducer;
using efcomm::ReducerOptions;
using efcomm::TensorView;
using efcomm::gputest::Dev;

#define SKIP_WITHOUT_DEVICE() \
  if (!efcomm::cuda::available()) GTEST_SKIP() << efcomm::cuda::unavailableReason()

// Runs fn(rank, host backend) on n threads of one in-process group, each with device 0 current;
// rethrows the first exception after every thread has finished (the group is aborted then).
void forRanks(int n, const std::function<void(int, std::shared_ptr<Backend>)>& fn) {
  efcomm::InProcessGroup group(n, 60.0);
  std::mutex mu;
  std::exception_ptr first;
  std::vector<std::thread> threads;
  for (int r = 0; r < n; ++r) {
    threads.emplace_back([&, r] {
      try {
        efcomm::gputest::check(cudaSetDevice(0), "cudaSetDevice");
        fn(r, group.backend(r));
      } catch (...) {
        std::lock_guard<std::mutex> lock(mu);
        if (!first) first = std::current_exception();
        group.abort(r, "rank failed");
      }
    });
  }
  for (auto& t : threads) t.join();
  if (first) std::rethrow_exception(first);
}

std::vector<float> input(int rank, int step, int64_t d) {
  return efcomm::gputest::gaussian<float>(d, 1000u * static_cast<uint64_t>(rank) + static_cast<uint64_t>(step) + 7);
}

struct Case {
  const char* compressor;
  const char* feedback;
  const char* algorithm;
  // Device vs host, relative to the largest value: exact where GPU and CPU make the same
  // messages; sign's scale, bf16 rounding and 8-bit levels may differ by a last bit, which can
  // move a value by one level.
  double tol = 1e-5;
};

// Per rank and step: the device reducer's result, and the host reducer's on the same inputs.
struct Results {
  std::vector<std::vector<std::vector<float>>> device, host;  // [rank][step]
};

Results runBoth(const Case& c, int n, int64_t d, int steps) {
  Results res;
  res.device.assign(static_cast<size_t>(n), {});
  res.host.assign(static_cast<size_t>(n), {});
  ReducerOptions o;
  o.algorithm = c.algorithm;
  forRanks(n, [&](int r, std::shared_ptr<Backend> host) {
    Reducer dev(efcomm::stagedDeviceBackend(host, 0), c.compressor, c.feedback, o);
    EXPECT_TRUE(dev.onDevice());
    Dev x(static_cast<size_t>(d) * sizeof(float)), out(static_cast<size_t>(d) * sizeof(float));
    for (int t = 0; t < steps; ++t) {
      const std::vector<float> v = input(r, t, d);
      efcomm::gputest::check(cudaMemcpy(x.p, v.data(), x.bytes, cudaMemcpyHostToDevice), "H2D");
      dev.allreduce(ConstTensorView{x.p, DType::kFloat32, {d}}, TensorView{out.p, DType::kFloat32, {d}}, "g");
      res.device[static_cast<size_t>(r)].push_back(out.get<float>());
    }
    EXPECT_EQ(dev.stats().at("g").algorithm, c.algorithm);
    EXPECT_EQ(dev.stats().at("g").calls, static_cast<uint64_t>(steps));
  });
  forRanks(n, [&](int r, std::shared_ptr<Backend> host) {
    Reducer ref(host, c.compressor, c.feedback, o);
    std::vector<float> out(static_cast<size_t>(d));
    for (int t = 0; t < steps; ++t) {
      const std::vector<float> v = input(r, t, d);
      ref.allreduce(ConstTensorView{v.data(), DType::kFloat32, {d}}, TensorView{out.data(), DType::kFloat32, {d}},
                    "g");
      res.host[static_cast<size_t>(r)].push_back(out);
    }
  });
  return res;
}

TEST(CudaReducer, MatchesTheHostReducerAndIsIdenticalOnEveryRank) {
  SKIP_WITHOUT_DEVICE();
  const Case cases[] = {
      {"identity", "none", "allgather"},
      {"identity", "none", "reduce_scatter"},
      {"identity", "none", "allreduce"},
      {"topk:ratio=0.05", "ef21", "allgather"},
      {"topk:ratio=0.05", "ef21", "reduce_scatter"},
      {"topk:ratio=0.05", "none", "reduce_scatter"},
      {"randk:ratio=0.1,seed=3", "ef21", "allreduce"},
      {"cast:dtype=bf16", "none", "allreduce", 1e-2},
      {"sign", "ef14", "allgather", 1e-2},
      {"quant:bits=8,block=256", "ef21", "reduce_scatter", 2e-2},
      // The owners' EF14 on their round's sum, and explicit k shared out over the chunks.
      {"sign", "ef14", "reduce_scatter", 1e-2},
      {"topk:k=250", "ef21", "reduce_scatter"},
      {"randk:k=200,seed=3", "none", "reduce_scatter"},
  };
  const int64_t d = 5003;
  for (const Case& c : cases) {
    for (int n : {1, 2, 3, 4}) {
      SCOPED_TRACE(std::string(c.compressor) + " + " + c.feedback + " @ " + c.algorithm + ", " +
                   std::to_string(n) + " ranks");
      const Results res = runBoth(c, n, d, 3);
      for (int t = 0; t < 3; ++t) {
        const auto& first = res.device[0][static_cast<size_t>(t)];
        for (int r = 1; r < n; ++r)
          EXPECT_EQ(std::memcmp(res.device[static_cast<size_t>(r)][static_cast<size_t>(t)].data(), first.data(),
                                first.size() * sizeof(float)),
                    0)
              << "rank " << r << " step " << t << " differs from rank 0";
        const auto& ref = res.host[0][static_cast<size_t>(t)];
        double scale = 0, err = 0;
        for (size_t i = 0; i < ref.size(); ++i) {
          scale = std::max(scale, std::fabs(static_cast<double>(ref[i])));
          err = std::max(err, std::fabs(static_cast<double>(first[i]) - ref[i]));
        }
        EXPECT_LE(err, c.tol * std::max(scale, 1.0)) << "step " << t << ": device vs host reducer";
      }
    }
  }
}

TEST(CudaReducer, StateDictRestoresBitIdentically) {
  SKIP_WITHOUT_DEVICE();
  const int64_t d = 4099;
  for (const char* alg : {"allgather", "reduce_scatter"}) {
    SCOPED_TRACE(alg);
    ReducerOptions o;
    o.algorithm = alg;
    forRanks(2, [&](int r, std::shared_ptr<Backend> host) {
      auto transport = efcomm::stagedDeviceBackend(host, 0);
      Reducer a(transport, "topk:ratio=0.02", "ef21", o);
      Dev x(static_cast<size_t>(d) * sizeof(float)), out(static_cast<size_t>(d) * sizeof(float));
      const ConstTensorView xv{x.p, DType::kFloat32, {d}};
      const TensorView ov{out.p, DType::kFloat32, {d}};
      auto step = [&](Reducer& red, int t) {
        const std::vector<float> v = input(r, t, d);
        efcomm::gputest::check(cudaMemcpy(x.p, v.data(), x.bytes, cudaMemcpyHostToDevice), "H2D");
        red.allreduce(xv, ov, "w");
        return out.get<float>();
      };
      step(a, 0);
      step(a, 1);
      const efcomm::StateDict saved = a.stateDict();
      const std::vector<float> expected = step(a, 2);
      Reducer b(transport, "topk:ratio=0.02", "ef21", o);
      b.loadStateDict(saved);
      EXPECT_EQ(step(b, 2), expected);
    });
  }
}

TEST(CudaReducer, AllgatherStateIsTheHostReducersFormat) {
  SKIP_WITHOUT_DEVICE();
  const int64_t d = 777;
  ReducerOptions o;
  o.algorithm = "allgather";
  forRanks(2, [&](int r, std::shared_ptr<Backend> host) {
    Reducer dev(efcomm::stagedDeviceBackend(host, 0), "topk:ratio=0.1", "ef21", o);
    Dev x(static_cast<size_t>(d) * sizeof(float)), out(static_cast<size_t>(d) * sizeof(float));
    const std::vector<float> v = input(r, 0, d);
    efcomm::gputest::check(cudaMemcpy(x.p, v.data(), x.bytes, cudaMemcpyHostToDevice), "H2D");
    dev.allreduce(ConstTensorView{x.p, DType::kFloat32, {d}}, TensorView{out.p, DType::kFloat32, {d}}, "k");
    Reducer onHost(host, "topk:ratio=0.1", "ef21", o);
    onHost.loadStateDict(dev.stateDict());  // throws if the layouts differ
    EXPECT_EQ(onHost.stateDict().tensors.size(), dev.stateDict().tensors.size());
  });
}

TEST(CudaReducer, NonFiniteRankIsNamedOnEveryRank) {
  SKIP_WITHOUT_DEVICE();
  const int64_t d = 1000;
  for (const char* alg : {"allgather", "reduce_scatter"}) {
    SCOPED_TRACE(alg);
    ReducerOptions o;
    o.algorithm = alg;
    std::vector<std::string> errors(3);
    forRanks(3, [&](int r, std::shared_ptr<Backend> host) {
      Reducer dev(efcomm::stagedDeviceBackend(host, 0), "topk:ratio=0.1", "ef21", o);
      std::vector<float> v = input(r, 0, d);
      if (r == 1) v[17] = std::numeric_limits<float>::quiet_NaN();
      Dev x(v), out(v.size() * sizeof(float));
      try {
        dev.allreduce(ConstTensorView{x.p, DType::kFloat32, {d}}, TensorView{out.p, DType::kFloat32, {d}}, "k");
      } catch (const efcomm::NonFiniteError& e) {
        errors[static_cast<size_t>(r)] = e.what();
      }
    });
    for (int r = 0; r < 3; ++r) {
      EXPECT_FALSE(errors[static_cast<size_t>(r)].empty()) << "rank " << r << " did not raise";
      if (r != 1) EXPECT_NE(errors[static_cast<size_t>(r)].find("rank 1"), std::string::npos) << errors[r];
    }
  }
}

TEST(CudaReducer, AllreduceStartsAfreshAfterAFailedFirstRound) {
  // Rank 1's first vector is NaN (init=full): every rank raises and the round never happened; the
  // later rounds match the host reducer doing the same, on every rank.
  SKIP_WITHOUT_DEVICE();
  const int64_t d = 1000;
  ReducerOptions o;
  o.algorithm = "allreduce";
  std::vector<std::vector<std::vector<float>>> dev(2), host(2);
  std::vector<int> raised(2, 0);
  forRanks(2, [&](int r, std::shared_ptr<Backend> b) {
    Reducer red(efcomm::stagedDeviceBackend(b, 0), "randk:ratio=0.1,seed=3", "ef21", o);
    Reducer ref(b, "randk:ratio=0.1,seed=3", "ef21", o);
    for (int t = 0; t < 3; ++t) {
      std::vector<float> v = input(r, t, d);
      if (t == 0 && r == 1) v[5] = std::numeric_limits<float>::quiet_NaN();
      Dev x(v), out(v.size() * sizeof(float));
      std::vector<float> y(v.size());
      try {
        red.allreduce(ConstTensorView{x.p, DType::kFloat32, {d}}, TensorView{out.p, DType::kFloat32, {d}}, "k");
        dev[static_cast<size_t>(r)].push_back(out.get<float>());
      } catch (const efcomm::NonFiniteError&) {
        ++raised[static_cast<size_t>(r)];
      }
      try {
        ref.allreduce(ConstTensorView{v.data(), DType::kFloat32, {d}}, TensorView{y.data(), DType::kFloat32, {d}},
                      "k");
        host[static_cast<size_t>(r)].push_back(y);
      } catch (const efcomm::NonFiniteError&) {
      }
    }
  });
  EXPECT_EQ(raised, (std::vector<int>{1, 1}));
  ASSERT_EQ(dev[0].size(), 2u);
  for (size_t t = 0; t < 2; ++t) {
    EXPECT_EQ(dev[0][t], dev[1][t]) << t;
    EXPECT_EQ(dev[0][t], host[0][t]) << t;
  }
}

TEST(CudaReducer, RejectsHostMemoryAndPowerSgdAllreduce) {
  SKIP_WITHOUT_DEVICE();
  forRanks(1, [&](int, std::shared_ptr<Backend> host) {
    auto transport = efcomm::stagedDeviceBackend(host, 0);
    std::vector<float> v(64, 1.0f), out(64);
    Reducer dev(transport, "topk:ratio=0.1", "ef21");
    EXPECT_THROW(dev.allreduce(ConstTensorView{v.data(), DType::kFloat32, {64}},
                               TensorView{out.data(), DType::kFloat32, {64}}, "k"),
                 efcomm::InvalidArgument);
    EXPECT_THROW(dev.allreduceCoalesced({ConstTensorView{v.data(), DType::kFloat32, {64}}},
                                        {TensorView{out.data(), DType::kFloat32, {64}}}, "c"),
                 efcomm::InvalidArgument);
    ReducerOptions o;
    o.algorithm = "allreduce";
    EXPECT_THROW(Reducer(transport, "powersgd:rank=2", "none", o), efcomm::InvalidArgument);
  });
}

TEST(CudaReducer, CoalescedBucketsMatchTheHostReducer) {
  SKIP_WITHOUT_DEVICE();
  const std::vector<int64_t> sizes = {100, 300, 50, 700};
  ReducerOptions o;
  o.algorithm = "allgather";
  o.bucketBytes = 400 * sizeof(float);  // buckets {100, 300}, {50}, {700}
  std::vector<std::vector<std::vector<float>>> got(2), want(2);
  auto inputs = [&](int r) {
    std::vector<std::vector<float>> xs;
    for (size_t i = 0; i < sizes.size(); ++i) xs.push_back(input(r, static_cast<int>(i), sizes[i]));
    return xs;
  };
  forRanks(2, [&](int r, std::shared_ptr<Backend> host) {
    Reducer dev(efcomm::stagedDeviceBackend(host, 0), "topk:ratio=0.1", "ef21", o);
    const auto xs = inputs(r);
    std::vector<std::unique_ptr<Dev>> in, out;
    std::vector<ConstTensorView> xv;
    std::vector<TensorView> ov;
    for (size_t i = 0; i < xs.size(); ++i) {
      in.push_back(std::make_unique<Dev>(xs[i]));
      out.push_back(std::make_unique<Dev>(xs[i].size() * sizeof(float)));
      xv.push_back(ConstTensorView{in.back()->p, DType::kFloat32, {sizes[i]}});
      ov.push_back(TensorView{out.back()->p, DType::kFloat32, {sizes[i]}});
    }
    dev.allreduceCoalesced(xv, ov, "c");
    for (auto& b : out) got[static_cast<size_t>(r)].push_back(b->get<float>());
    EXPECT_EQ(dev.stats().size(), 3u);  // keys c#0, c#1, c#2
  });
  forRanks(2, [&](int r, std::shared_ptr<Backend> host) {
    Reducer ref(host, "topk:ratio=0.1", "ef21", o);
    auto xs = inputs(r);
    std::vector<std::vector<float>> outs(xs.size());
    std::vector<ConstTensorView> xv;
    std::vector<TensorView> ov;
    for (size_t i = 0; i < xs.size(); ++i) {
      outs[i].resize(xs[i].size());
      xv.push_back(ConstTensorView{xs[i].data(), DType::kFloat32, {sizes[i]}});
      ov.push_back(TensorView{outs[i].data(), DType::kFloat32, {sizes[i]}});
    }
    ref.allreduceCoalesced(xv, ov, "c");
    want[static_cast<size_t>(r)] = outs;
  });
  EXPECT_EQ(got[0], got[1]);
  for (size_t i = 0; i < sizes.size(); ++i)
    for (size_t j = 0; j < got[0][i].size(); ++j)
      ASSERT_NEAR(got[0][i][j], want[0][i][j], 1e-5 * (1 + std::fabs(want[0][i][j]))) << "tensor " << i << " at " << j;
}

TEST(CudaReducer, RunsOnOneRankOfNccl) {
  SKIP_WITHOUT_DEVICE();
  try {
    efcomm::ncclVersion();
  } catch (const efcomm::BackendUnavailable& e) {
    GTEST_SKIP() << e.what();
  }
  auto comm = std::make_shared<efcomm::NcclCommunicator>(0, 1, efcomm::NcclCommunicator::uniqueId(), 0, 60.0);
  const int64_t d = 3001;
  const std::vector<float> v = input(0, 0, d);
  efcomm::InProcessGroup one(1);
  for (const char* alg : {"allgather", "reduce_scatter", "allreduce"}) {
    SCOPED_TRACE(alg);
    ReducerOptions o;
    o.algorithm = alg;
    const char* compressor = std::string(alg) == "allreduce" ? "randk:ratio=0.1" : "topk:ratio=0.1";
    Reducer dev(std::static_pointer_cast<efcomm::DeviceBackend>(comm), compressor, "ef21", o);
    Dev x(v), out(v.size() * sizeof(float));
    cudaStream_t s;
    GPU_OK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    dev.allreduce(ConstTensorView{x.p, DType::kFloat32, {d}}, TensorView{out.p, DType::kFloat32, {d}}, "k", s);
    GPU_OK(cudaStreamSynchronize(s));
    GPU_OK(cudaStreamDestroy(s));
    Reducer ref(one.backend(0), compressor, "ef21", o);
    std::vector<float> expected(v.size());
    ref.allreduce(ConstTensorView{v.data(), DType::kFloat32, {d}}, TensorView{expected.data(), DType::kFloat32, {d}},
                  "k");
    EXPECT_EQ(out.get<float>(), expected);
    EXPECT_GT(dev.stats().at("k").controlBytes, 0u);
  }
}

}  // namespace
