// Compresses a vector with TopK, sends it through bytes (Message::fromBytes validates the wire
// image as a receiver would), decompresses it and checks that the kept values are exact and are
// the largest in magnitude.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <vector>

#include <efcomm/efcomm.hpp>

int main() {
  constexpr int64_t kN = 10000;
  std::vector<float> x(kN);
  for (int64_t i = 0; i < kN; ++i) {
    x[i] = std::sin(0.37f * static_cast<float>(i)) * static_cast<float>(i % 97);
  }

  try {
    auto topk = efcomm::makeCompressor("topk:ratio=0.01");
    efcomm::Message sent = topk->compress({x.data(), efcomm::DType::kFloat32, {kN}});
    std::vector<uint8_t> wire(sent.data(), sent.data() + sent.size());
    efcomm::Message received = efcomm::Message::fromBytes(wire.data(), wire.size());

    std::vector<float> y(kN);
    topk->decompress(received, {y.data(), efcomm::DType::kFloat32, {kN}});

    int64_t kept = 0;
    float smallestKept = INFINITY, largestDropped = 0.0f;
    for (int64_t i = 0; i < kN; ++i) {
      if (y[i] == 0.0f) {
        largestDropped = std::fmax(largestDropped, std::fabs(x[i]));
        continue;
      }
      if (y[i] != x[i]) {
        std::fprintf(stderr, "value %lld changed: %g -> %g\n", static_cast<long long>(i), x[i],
                     y[i]);
        return 1;
      }
      smallestKept = std::fmin(smallestKept, std::fabs(x[i]));
      ++kept;
    }
    if (smallestKept < largestDropped) {
      std::fprintf(stderr, "kept |x| >= %g but dropped one of %g\n", smallestKept, largestDropped);
      return 1;
    }
    const int64_t expected = kN / 100;
    if (kept != expected) {
      std::fprintf(stderr, "kept %lld values, expected %lld\n", static_cast<long long>(kept),
                   static_cast<long long>(expected));
      return 1;
    }
    std::printf("efcomm %s: %s kept %lld of %lld floats exactly, %zu bytes on the wire (%.1fx)\n",
                efcomm::buildInfo().version.c_str(), topk->spec().c_str(),
                static_cast<long long>(kept), static_cast<long long>(kN), wire.size(),
                double(kN * sizeof(float)) / double(wire.size()));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "efcomm error: %s\n", e.what());
    return 1;
  }
  return 0;
}
