// RandK: keep k coordinates drawn uniformly without replacement (Stich, Cordonnier, Jaggi 2018).
// Scaled by d/k it is unbiased with omega = d/k - 1 (E||C(x)-x||^2 = (d/k - 1)||x||^2); unscaled
// it is biased and contractive with alpha = k/d in expectation.
//
// The draw is a pure function of (seed, step, d, k): Robert Floyd's sampling algorithm (Bentley
// and Floyd 1987, "Programming Pearls: A Sample of Brilliance") fed by SplitMix64(drawKey(seed,
// step)) marks k distinct positions in a d-bit bitmap, read out in increasing order. So only the
// values travel and the receiver redraws the indices.
//
// Non-finite input: the kept values are checked while they are gathered. The other coordinates
// are never read and never leave the worker, so RandK raises NonFiniteError only for a NaN/Inf
// among the coordinates it sends; checking all of x would cost a pass the compressor otherwise
// does not make.
//
// Wire: params = k (u64), seed (u64), step (u64), scaled (u8). Payload = the k values in the input
// dtype (raw bits), in increasing index order, unscaled: the receiver applies d/k, so payloads
// of the same draw from several ranks can be summed before decoding.
#include <algorithm>
#include <type_traits>

#include "common/bytes.hpp"
#include "common/rng.hpp"
#include "compress/bitmap.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {

namespace {

constexpr size_t kParamsBytes = 8 + 8 + 8 + 1;

// The draw as 64-bit words of a d-bit bitmap (bit i%64 of word i/64 marks index i).
std::vector<uint64_t> drawIndices(uint64_t seed, uint64_t step, int64_t d, int64_t k) {
  std::vector<uint64_t> words(static_cast<size_t>((d + 63) / 64), 0);
  SplitMix64 g(drawKey(seed, step));
  // Floyd: for j = d-k .. d-1 add a uniform t in [0, j], or j itself if t is already taken;
  // every k-subset comes out with probability 1 / C(d, k).
  for (auto j = static_cast<uint64_t>(d - k); j < static_cast<uint64_t>(d); ++j) {
    uint64_t t = g.below(j + 1);
    if (words[t / 64] >> (t % 64) & 1) t = j;
    words[t / 64] |= uint64_t{1} << (t % 64);
  }
  return words;
}

const uint8_t* asBytes(const std::vector<uint64_t>& words) { return reinterpret_cast<const uint8_t*>(words.data()); }

class RandK final : public Compressor {
 public:
  RandK(double ratio, int64_t k, uint64_t seed, bool scaled) : ratio_(ratio), k_(k), seed_(seed), scaled_(scaled) {}
  std::string name() const override { return "randk"; }
  std::string spec() const override {
    return "randk:" + keepSpec(ratio_, k_) + ",seed=" + std::to_string(seed_) +
           ",scaled=" + (scaled_ ? "true" : "false");
  }
  CompressorId id() const override { return CompressorId::kRandK; }
  bool biased() const override { return !scaled_; }
  bool randomized() const override { return true; }
  bool readsEveryElement() const override { return false; }
  double alpha(int64_t d) const override {
    return d > 0 ? static_cast<double>(keepCount(d, ratio_, k_)) / static_cast<double>(d) : 1.0;
  }
  std::optional<double> omega(int64_t d) const override {
    if (!scaled_) return std::nullopt;
    return d > 0 ? static_cast<double>(d) / static_cast<double>(keepCount(d, ratio_, k_)) - 1.0 : 0.0;
  }
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), kParamsBytes, static_cast<size_t>(keepCount(d, ratio_, k_)) * itemSize(dt));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t step) override {
    const int64_t n = x.numel();
    const int64_t k = keepCount(n, ratio_, k_);
    const std::vector<uint8_t> params = ByteWriter()
                                            .put<uint64_t>(static_cast<uint64_t>(k))
                                            .put<uint64_t>(seed_)
                                            .put<uint64_t>(step)
                                            .put<uint8_t>(scaled_)
                                            .bytes();
    const std::vector<uint64_t> draw = drawIndices(seed_, step, n, k);
    const std::vector<int64_t> starts = bitBlockStarts(asBytes(draw), n);
    return dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      const size_t bytes = static_cast<size_t>(k) * sizeof(T);
      Message m = Message::build(id(), x.dtype, x.shape, 0, params, bytes);
      uint8_t* p = m.mutablePayload();
      // Gather and check the sent values in one pass. The check covers the value the receiver
      // will produce (times d/k, in T, exactly as decode computes it), so a finite input near
      // the top of T's range cannot decode to Inf silently.
      using C = typename Elem<T>::Compute;
      const C scale = scaled_ ? C(static_cast<double>(n) / static_cast<double>(k)) : C(1);
      std::vector<uint32_t> bad(starts.size(), 0);
      parallelBlocks(n, kBitBlock, [&](int64_t b, int64_t lo, int64_t hi) {
        uint32_t flag = 0;
        forEachSetBit(asBytes(draw), n, lo, hi, starts[b], [&](int64_t i, int64_t r) {
          storeAs<T>(p + r * sizeof(T), in[i]);
          flag |= nonFiniteBit(Elem<T>::store(Elem<T>::load(in[i]) * scale));
        });
        bad[b] = flag;
      });
      if (std::find(bad.begin(), bad.end(), 1u) != bad.end()) {
        throwIfNonFinite(x, "randk.compress");
        throw NonFiniteError("randk.compress: a sent value times d/k = " + std::to_string(static_cast<double>(scale)) +
                             " overflows " + dtypeName(x.dtype) + "; scale the input down or use scaled=false");
      }
      m.finish(bytes);
      return m;
    });
  }

 private:
  double ratio_;
  int64_t k_;
  uint64_t seed_;
  bool scaled_;
};

struct Params {
  int64_t k;
  uint64_t seed, step;
  bool scaled;
};

// Parameters and payload size: cheap, so decode checks them too.
Params paramsOf(const Message& m) {
  ByteReader r(m.params(), m.paramsSize(), "randk parameters");
  const uint64_t k = r.get<uint64_t>();
  const uint64_t seed = r.get<uint64_t>(), step = r.get<uint64_t>();
  const uint8_t scaled = r.get<uint8_t>();
  r.expectEnd();
  const auto n = static_cast<uint64_t>(m.numel());
  EFCOMM_CHECK_MSG(m.flags() == 0, "randk: unknown flags ", m.flags());
  EFCOMM_CHECK_MSG(k <= n && (k == 0) == (n == 0), "randk: k = ", k, " for ", n, " elements");
  EFCOMM_CHECK_MSG(scaled <= 1, "randk: bad scaled flag ", int(scaled));
  const size_t item = itemSize(m.dtype());
  EFCOMM_CHECK_MSG(m.payloadSize() % item == 0 && m.payloadSize() / item == k, "randk: payload of ",
                   m.payloadSize(), " bytes for ", k, " values");
  return {static_cast<int64_t>(k), seed, step, scaled == 1};
}

void validate(const Message& m) {
  const Params p = paramsOf(m);
  checkPayloadValues(m.payload(), p.k, m.dtype(), "randk",
                     p.scaled && p.k ? static_cast<double>(m.numel()) / static_cast<double>(p.k) : 1.0);
}

// The coordinates a message's values belong to, redrawn from its (seed, step).
struct Redraw {
  explicit Redraw(const Message& m)
      : pr(paramsOf(m)), n(m.numel()), draw(drawIndices(pr.seed, pr.step, n, pr.k)),
        starts(bitBlockStarts(asBytes(draw), n)), vals(m.payload()) {}
  Params pr;
  int64_t n;
  std::vector<uint64_t> draw;
  std::vector<int64_t> starts;
  const uint8_t* vals;
};

void decode(const Message& m, const TensorView& out) {
  const Redraw r(m);
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = typename Elem<T>::Compute;
    const C scale = r.pr.scaled ? C(static_cast<double>(r.n) / static_cast<double>(r.pr.k)) : C(1);
    expandBitmap(asBytes(r.draw), r.n, r.starts, static_cast<T*>(out.data), [&](int64_t j) {
      return Elem<T>::store(Elem<T>::load(loadAs<T>(r.vals + j * sizeof(T))) * scale);
    });
  });
}

// Sparse scatter-add of the k drawn coordinates, with the value decode would produce.
void accumulateInto(const Message& m, const TensorView& out, double weight) {
  const Redraw r(m);
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T>) {
      T* o = static_cast<T*>(out.data);
      const T w = static_cast<T>(weight);
      const T scale = r.pr.scaled ? T(static_cast<double>(r.n) / static_cast<double>(r.pr.k)) : T(1);
      parallelBlocks(r.n, kBitBlock, [&](int64_t b, int64_t lo, int64_t hi) {
        forEachSetBit(asBytes(r.draw), r.n, lo, hi, r.starts[b], [&](int64_t i, int64_t j) {
          const T decoded = loadAs<T>(r.vals + j * sizeof(T)) * scale;
          o[i] += w * decoded;
        });
      });
    }
  });
}

}  // namespace

Codec randkCodec() {
  return {"randk", CompressorId::kRandK,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            const std::optional<double> ratio = p.getDouble("ratio");
            const std::optional<int64_t> k = p.getInt("k");
            const int64_t seed = p.getInt("seed").value_or(0);
            const bool scaled = p.getBool("scaled").value_or(true);
            p.finish("ratio, k, seed, scaled");
            EFCOMM_CHECK(!(ratio && k), "randk: give ratio or k, not both");
            EFCOMM_CHECK(!ratio || (*ratio > 0 && *ratio <= 1), "randk: ratio must be in (0, 1], got ", *ratio);
            EFCOMM_CHECK(!k || *k >= 1, "randk: k must be >= 1, got ", *k);
            EFCOMM_CHECK(seed >= 0, "randk: seed must be >= 0, got ", seed);
            return std::make_unique<RandK>(k ? 0.0 : ratio.value_or(0.01), k.value_or(0),
                                           static_cast<uint64_t>(seed), scaled);
          },
          validate, decode, accumulateInto};
}

}  // namespace efcomm
