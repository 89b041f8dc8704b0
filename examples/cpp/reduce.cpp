// Compressed allreduce with error feedback on 4 ranks (in-process, one thread each; with MPI,
// efcomm::mpiBackend(MPI_COMM_WORLD) gives the backend instead): every rank gets the same
// aggregate, bit for bit, having sent a fraction of the bytes.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <vector>

#include <efcomm/efcomm.hpp>

int main() {
  constexpr int kRanks = 4;
  constexpr int64_t kN = 1 << 16;
  std::vector<std::vector<float>> results(kRanks);
  std::vector<efcomm::ReducerStats> stats(kRanks);
  try {
    efcomm::runRanks(kRanks, [&](efcomm::Backend& backend) {
      const int rank = backend.rank();
      // The reducer shares the backend without owning it (runRanks owns it).
      efcomm::Reducer reducer(std::shared_ptr<efcomm::Backend>(&backend, [](efcomm::Backend*) {}),
                              "topk:ratio=0.01", "ef21:init=compressed", efcomm::ReducerOptions{"reduce_scatter"});
      std::vector<float> grad(kN), out(kN);
      for (int step = 0; step < 5; ++step) {
        for (int64_t i = 0; i < kN; ++i) grad[i] = static_cast<float>((i * (rank + 3) + step) % 101) - 50.0f;
        reducer.allreduce({grad.data(), efcomm::DType::kFloat32, {kN}}, {out.data(), efcomm::DType::kFloat32, {kN}},
                          "layer0");
      }
      results[rank] = out;
      stats[rank] = reducer.stats().at("layer0");
    });
  } catch (const std::exception& e) {
    std::fprintf(stderr, "efcomm error: %s\n", e.what());
    return 1;
  }
  for (int r = 1; r < kRanks; ++r) {
    if (std::memcmp(results[r].data(), results[0].data(), kN * sizeof(float)) != 0) {
      std::fprintf(stderr, "rank %d's aggregate differs from rank 0's\n", r);
      return 1;
    }
  }
  const double full = 5.0 * kN * sizeof(float);
  std::printf("reduce: %d ranks, aggregate bit-identical; rank 0 sent %llu bytes in 5 calls (%s), %.1fx less than %g\n",
              kRanks, static_cast<unsigned long long>(stats[0].bytesSent), stats[0].algorithm.c_str(),
              full / static_cast<double>(stats[0].bytesSent), full);
  return 0;
}
