// Natural compression (Horvath et al. 2019, "Natural Compression for Distributed Deep
// Learning", Def. 1 and Thm. 1): t = sign(t) 2^a (1 + f) with f in [0, 1) becomes sign(t) 2^(a+1)
// with probability f and sign(t) 2^a otherwise. Unbiased with omega = 1/8; only the sign and the
// exponent travel.
//
// Working on the IEEE bits, f = mantissa / 2^M (M = 23 for float32, 52 for float64) and the
// draw u is M uniform bits, so "round up iff mantissa > u" happens with probability exactly f.
// A subnormal (exponent field 0) rounds between 0 and the smallest normal with the same rule,
// which keeps it unbiased; its error is below that normal, not omega|t|^2. Rounding up the
// largest binade of the input dtype (2^127 for float32 and bfloat16, 2^15 for float16, 2^1023
// for float64) would give Inf, so those elements round down instead: a bias confined to
// |t| >= 2^127 (2^15 for float16), and decoded values never leave the input dtype's range.
//
// Payload: one code per element, sign << E | exponent field, packed with bitpack.hpp:
// 9 bits (E = 8, the float32 exponent field; 0 = zero) for float32, bfloat16 and float16
// inputs (16-bit inputs are widened exactly), 12 bits (E = 11, the float64 field) for float64.
// Draws: uniformBits(key, j) >> 9 for element j of a 32-bit-family input; for float64, the top
// 52 bits of uniformBits(key, 2j) << 32 | uniformBits(key, 2j + 1); key = drawKey(seed, step).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/bitpack.hpp"
#include "common/rng.hpp"
#include "common/spec.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {

namespace {

// Codes per work item: a multiple of 8 (items pack disjoint bytes) that keeps the buffer in L1.
constexpr int64_t kChunk = 2048;

// The IEEE layout whose exponent the codes carry: float64 for double, float32 otherwise.
template <typename T>
struct Layout {
  static constexpr bool kWide = std::is_same_v<T, double>;
  using Bits = std::conditional_t<kWide, uint64_t, uint32_t>;
  static constexpr int kManBits = kWide ? 52 : 23;
  static constexpr int kExpBits = kWide ? 11 : 8;
  static constexpr int kWidth = 1 + kExpBits;
  static constexpr uint32_t kExpMask = (1u << kExpBits) - 1;
  static constexpr Bits kManMask = (Bits{1} << kManBits) - 1;
  // Exponent fields the dtype can hold as a power of two: zero and [kMinExp, kMaxExp].
  static constexpr uint32_t kMaxExp = std::is_same_v<T, F16> ? 127 + 15 : kExpMask - 1;
  static constexpr uint32_t kMinExp = std::is_same_v<T, F16> ? 127 - 24 : 1;
};

template <typename T>
typename Layout<T>::Bits toBits(T v) {
  if constexpr (std::is_same_v<T, BF16>) {
    return static_cast<uint32_t>(v.bits) << 16;
  } else {
    const auto c = Elem<T>::load(v);
    typename Layout<T>::Bits b;
    std::memcpy(&b, &c, sizeof b);
    return b;
  }
}

template <typename T>
T fromBits(typename Layout<T>::Bits b) {
  if constexpr (std::is_same_v<T, BF16>) {
    return BF16{static_cast<uint16_t>(b >> 16)};  // a power of two: the low half is zero
  } else {
    typename Elem<T>::Compute c;
    std::memcpy(&c, &b, sizeof c);
    return Elem<T>::store(c);
  }
}

// kManBits uniform bits for index k of a range starting at `first` inside run `run`.
template <typename T>
typename Layout<T>::Bits draw(RunKey run, uint32_t first, uint32_t k) {
  if constexpr (Layout<T>::kWide) {
    const uint32_t j = 2 * (first + k);
    return (static_cast<uint64_t>(uniformBits(run, j)) << 32 | uniformBits(run, j + 1)) >> 12;
  } else {
    return uniformBits(run, first + k) >> 9;
  }
}

// Codes of [lo, hi) into codes[0, hi - lo); the range must not cross a multiple of 2^31 (the
// draw indices then share one RunKey), which holds for kChunk-aligned chunks. Returns non-zero
// if an exponent field is all ones (NaN or Inf), so the finiteness check rides on this pass.
template <typename T>
uint32_t encode(const T* in, int64_t lo, int64_t hi, uint64_t key, uint16_t* codes) {
  using L = Layout<T>;
  const uint64_t index = L::kWide ? 2 * static_cast<uint64_t>(lo) : static_cast<uint64_t>(lo);
  const RunKey run = runKey(key, index);
  const uint32_t first = static_cast<uint32_t>(lo);
  const int count = static_cast<int>(hi - lo);
  uint32_t bad = 0;
  for (int k = 0; k < count; ++k) {
    const auto b = toBits(in[lo + k]);
    const uint32_t e = static_cast<uint32_t>(b >> L::kManBits) & L::kExpMask;
    bad |= e == L::kExpMask;
    const uint32_t up = (b & L::kManMask) > draw<T>(run, first, static_cast<uint32_t>(k));
    const uint32_t sign = static_cast<uint32_t>(b >> (L::kManBits + L::kExpBits)) & 1u;
    codes[k] = static_cast<uint16_t>(sign << L::kExpBits | std::min(e + up, L::kMaxExp));
  }
  return bad;
}

size_t naturalPayloadBytes(int64_t n, DType dt) {
  return dispatchDType(dt, [&](auto tag) { return packedBytes(n, Layout<typename decltype(tag)::type>::kWidth); });
}

class Natural final : public Compressor {
 public:
  explicit Natural(uint64_t seed) : seed_(seed) {}
  std::string name() const override { return "natural"; }
  std::string spec() const override { return "natural:seed=" + std::to_string(seed_); }
  CompressorId id() const override { return CompressorId::kNatural; }
  bool biased() const override { return false; }
  bool randomized() const override { return true; }
  double alpha(int64_t) const override { return 8.0 / 9.0; }
  std::optional<double> omega(int64_t) const override { return 1.0 / 8.0; }
  size_t wireBytes(int64_t d, DType dt) const override { return messageBytes(1, 0, naturalPayloadBytes(d, dt)); }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t step) override {
    const int64_t n = x.numel();
    const size_t bytes = naturalPayloadBytes(n, x.dtype);
    Message m = Message::build(id(), x.dtype, x.shape, 0, {}, bytes);
    uint8_t* out = m.mutablePayload();
    const uint64_t key = drawKey(seed_, step);
    const uint32_t bad = dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      constexpr int w = Layout<T>::kWidth;
      const T* in = static_cast<const T*>(x.data);
      return blockedReduce<uint32_t>(n, [&](int64_t lo, int64_t hi) {
        uint32_t flag = 0;
        uint16_t codes[kChunk];
        for (int64_t b = lo; b < hi; b += kChunk) {
          const int64_t e = std::min(hi, b + kChunk);
          flag |= encode(in, b, e, key, codes);
          packBits(codes, e - b, w, out + packedBytes(b, w));
        }
        return flag;
      });
    });
    if (bad) throwIfNonFinite(x, "natural.compress");
    m.finish(bytes);
    return m;
  }

 private:
  uint64_t seed_;
};

void validate(const Message& m) {
  EFCOMM_CHECK_MSG(m.paramsSize() == 0, "natural: unexpected parameters");
  EFCOMM_CHECK_MSG(m.flags() == 0, "natural: unknown flags ", m.flags());
  const int64_t n = m.numel();
  EFCOMM_CHECK_MSG(m.payloadSize() == naturalPayloadBytes(n, m.dtype()), "natural: payload of ", m.payloadSize(),
                   " bytes for ", n, " ", dtypeName(m.dtype()), " elements (expected ",
                   naturalPayloadBytes(n, m.dtype()), ")");
  dispatchDType(m.dtype(), [&](auto tag) {
    using L = Layout<typename decltype(tag)::type>;
    const int64_t bits = n * L::kWidth;
    if (bits % 8) EFCOMM_CHECK_MSG((m.payload()[bits / 8] >> (bits % 8)) == 0, "natural: non-zero padding bits");
    const uint32_t bad = blockedReduce<uint32_t>(n, [&](int64_t lo, int64_t hi) {
      uint32_t flag = 0;
      uint16_t codes[kChunk];
      for (int64_t b = lo; b < hi; b += kChunk) {
        const int64_t e = std::min(hi, b + kChunk);
        unpackBits(m.payload() + packedBytes(b, L::kWidth), e - b, L::kWidth, codes);
        for (int64_t k = 0; k < e - b; ++k) {
          const uint32_t x = codes[k] & L::kExpMask;
          flag |= (x > L::kMaxExp) | (x != 0 && x < L::kMinExp);
        }
      }
      return flag;
    });
    EFCOMM_CHECK_MSG(!bad, "natural: exponent outside the range of ", dtypeName(m.dtype()));
  });
}

void decode(const Message& m, const TensorView& out) {
  const int64_t n = m.numel();
  EFCOMM_CHECK_MSG(m.payloadSize() == naturalPayloadBytes(n, m.dtype()),
                   "natural: payload size does not match the element count");
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using L = Layout<T>;
    using Bits = typename L::Bits;
    T* o = static_cast<T*>(out.data);
    parallelBlocks(n, kChunk, [&](int64_t, int64_t lo, int64_t hi) {
      uint16_t codes[kChunk];
      unpackBits(m.payload() + packedBytes(lo, L::kWidth), hi - lo, L::kWidth, codes);
      for (int64_t i = lo; i < hi; ++i) {
        const Bits c = codes[i - lo];
        o[i] = fromBits<T>((c >> L::kExpBits) << (L::kManBits + L::kExpBits) | (c & L::kExpMask) << L::kManBits);
      }
    });
  });
}

}  // namespace

Codec naturalCodec() {
  return {"natural", CompressorId::kNatural,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            const int64_t seed = p.getInt("seed").value_or(0);
            p.finish("seed (>= 0)");
            EFCOMM_CHECK(seed >= 0, "natural: seed must be >= 0, got ", seed);
            return std::make_unique<Natural>(static_cast<uint64_t>(seed));
          },
          validate, decode};
}

}  // namespace efcomm
