// Natural compression (Horvath et al. 2019, "Natural Compression for Distributed Deep
// Learning", Def. 1 and Thm. 1): t = sign(t) 2^a (1 + f) with f in [0, 1) becomes sign(t) 2^(a+1)
// with probability f and sign(t) 2^a otherwise. Unbiased with omega = 1/8; only the sign and an
// 8-bit exponent code travel: 9 bits per element for every dtype (docs/compressors.md).
//
// Working on the IEEE bits, f = mantissa / 2^M (M = 23 for float32, 52 for float64) and the
// draw u is M uniform bits, so "round up iff mantissa > u" happens with probability exactly f.
//
// float32, bfloat16, float16 (16-bit inputs are widened exactly): the code is the float32
// exponent field (0 = zero). A subnormal (field 0) rounds between 0 and the smallest normal
// P = 2^-126 with the same rule, i.e. up with probability |t|/P: unbiased, its error below P
// rather than omega|t|^2.
//
// float64: 8 bits cannot hold the 11-bit field, so a message covers the window of 254 binades
// below its largest element: code c in [1, 254] is the float64 field base + c (a u16 parameter,
// base = max(0, min(E_max + 1, 2046) - 254) for the largest field E_max of the input, found in a
// first pass that also detects NaN/Inf). An element more than 253 binades below the largest one
// (field E <= base, subnormals included) rounds like a subnormal, between 0 and the window's
// smallest power P = 2^(base + 1 - 1023), up with probability floor(M 2^52 / 2^k) / 2^52 for the
// significand M (implicit bit included) and k = base + 1 - max(E, 1): unbiased up to 2^-52 P,
// and its variance below |t| P, negligible next to omega ||x||^2 since max |x_j| > 2^252 P.
//
// Rounding up the largest binade of the input dtype (2^127 for float32 and bfloat16, 2^15 for
// float16, 2^1023 for float64) would give Inf, so those elements round down instead: a bias
// confined to that binade, and decoded values never leave the input dtype's range.
//
// Payload: one 9-bit code per element, sign << 8 | c, packed with bitpack.hpp. Draws: for
// element j, uniformBits(key, j) >> 9 (32-bit family), or the top 52 bits of
// uniformBits(key, 2j) << 32 | uniformBits(key, 2j + 1) (float64); key = drawKey(seed, step).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "common/bitpack.hpp"
#include "common/bytes.hpp"
#include "common/rng.hpp"
#include "common/spec.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"
#include "compress/layouts.hpp"

namespace efcomm {

namespace {

using compress::natural::kMaxCode;
using compress::natural::kWidth;
using compress::natural::payloadBytes;
// Codes per work item: a multiple of 8 (items pack disjoint bytes) that keeps the buffer in L1.
constexpr int64_t kChunk = 2048;

// The IEEE layout of the compute bits: float64 for double, float32 otherwise.
template <typename T>
struct Layout {
  static constexpr bool kWide = std::is_same_v<T, double>;
  using Bits = std::conditional_t<kWide, uint64_t, uint32_t>;
  static constexpr int kManBits = kWide ? 52 : 23;
  static constexpr int kExpBits = kWide ? 11 : 8;
  static constexpr uint32_t kExpMask = (1u << kExpBits) - 1;
  static constexpr Bits kManMask = (Bits{1} << kManBits) - 1;
  // Codes the dtype can hold as a power of two: zero and [kLowest, kHighest] (float16: 2^-24
  // to 2^15).
  static constexpr uint32_t kHighest = std::is_same_v<T, F16> ? 127 + 15 : kMaxCode;
  static constexpr uint32_t kLowest = std::is_same_v<T, F16> ? 127 - 24 : 1;
};

constexpr uint32_t kWideTop = 2046;                  // largest finite float64 exponent field
constexpr uint32_t kMaxBase = kWideTop - kMaxCode;  // largest float64 window base

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
// draw indices then share one RunKey), which holds for kChunk-aligned chunks. `base` is the
// float64 window (0 otherwise). Returns non-zero if an exponent field is all ones (NaN or Inf),
// so that the finiteness check rides on this pass.
template <typename T>
uint32_t encode(const T* in, int64_t lo, int64_t hi, uint64_t key, uint32_t base, uint16_t* codes) {
  using L = Layout<T>;
  const uint64_t index = L::kWide ? 2 * static_cast<uint64_t>(lo) : static_cast<uint64_t>(lo);
  const RunKey run = runKey(key, index);
  const uint32_t first = static_cast<uint32_t>(lo);
  const int count = static_cast<int>(hi - lo);
  uint32_t bad = 0;
  for (int k = 0; k < count; ++k) {
    const auto b = toBits(in[lo + k]);
    const uint32_t e = static_cast<uint32_t>(b >> L::kManBits) & L::kExpMask;
    const auto man = b & L::kManMask;
    const auto u = draw<T>(run, first, static_cast<uint32_t>(k));
    const uint32_t sign = static_cast<uint32_t>(b >> (L::kManBits + L::kExpBits)) & 1u;
    bad |= e == L::kExpMask;
    uint32_t c;
    if constexpr (L::kWide) {
      const uint64_t sig = e ? man | (uint64_t{1} << 52) : man;
      const uint32_t shift = base + 1 - std::max(e, 1u);  // used only below the window
      const uint32_t below = (shift < 64 ? sig >> shift : 0) > u;
      c = e > base ? std::min(e - base + static_cast<uint32_t>(man > u), kMaxCode) : below;
    } else {
      c = std::min(e + static_cast<uint32_t>(man > u), L::kHighest);
    }
    codes[k] = static_cast<uint16_t>(sign << 8 | c);
  }
  return bad;
}

struct MaxBits {
  uint64_t v = 0;
  MaxBits& operator+=(const MaxBits& o) {
    v = std::max(v, o.v);
    return *this;
  }
};

std::vector<uint8_t> naturalParams(DType dt, uint32_t base) {
  if (dt != DType::kFloat64) return {};
  return ByteWriter().put<uint16_t>(static_cast<uint16_t>(base)).bytes();
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
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), naturalParams(dt, 0).size(), payloadBytes(d));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t step) override {
    const int64_t n = x.numel();
    const size_t bytes = payloadBytes(n);
    const uint64_t key = drawKey(seed_, step);
    uint32_t base = 0;
    if (x.dtype == DType::kFloat64) {
      // The window pass: the largest |x_j| (as bits, whose order is the order of the values); an
      // all-ones exponent field means NaN or Inf.
      const auto* in = static_cast<const double*>(x.data);
      const uint64_t top = blockedReduce<MaxBits>(n, [&](int64_t lo, int64_t hi) {
                             uint64_t m = 0;
                             for (int64_t i = lo; i < hi; ++i) m = std::max(m, toBits(in[i]) & ~(uint64_t{1} << 63));
                             return MaxBits{m};
                           }).v >> 52;
      if (top == 2047) throwIfNonFinite(x, "natural.compress");
      const uint32_t highest = std::min<uint32_t>(static_cast<uint32_t>(top) + 1, kWideTop);
      base = highest > kMaxCode ? highest - kMaxCode : 0;
    }
    Message m = Message::build(id(), x.dtype, x.shape, 0, naturalParams(x.dtype, base), bytes);
    uint8_t* out = m.mutablePayload();
    const uint32_t bad = dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      return blockedReduce<uint32_t>(n, [&](int64_t lo, int64_t hi) {
        uint32_t flag = 0;
        uint16_t codes[kChunk];
        for (int64_t b = lo; b < hi; b += kChunk) {
          const int64_t e = std::min(hi, b + kChunk);
          flag |= encode(in, b, e, key, base, codes);
          packBits(codes, e - b, kWidth, out + packedBytes(b, kWidth));
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

// The float64 window base (0 for other dtypes); throws CorruptMessageError when malformed.
uint32_t baseOf(const Message& m) {
  ByteReader r(m.params(), m.paramsSize(), "natural parameters");
  uint32_t base = 0;
  if (m.dtype() == DType::kFloat64) {
    base = r.get<uint16_t>();
    EFCOMM_CHECK_MSG(base <= kMaxBase, "natural: float64 window base ", base, " above ", kMaxBase);
  }
  r.expectEnd();
  return base;
}

void validate(const Message& m) {
  baseOf(m);
  EFCOMM_CHECK_MSG(m.flags() == 0, "natural: unknown flags ", m.flags());
  const int64_t n = m.numel();
  EFCOMM_CHECK_MSG(m.payloadSize() == payloadBytes(n), "natural: payload of ", m.payloadSize(),
                   " bytes for ", n, " elements (expected ", payloadBytes(n), ")");
  const int64_t bits = n * kWidth;
  if (bits % 8) EFCOMM_CHECK_MSG((m.payload()[bits / 8] >> (bits % 8)) == 0, "natural: non-zero padding bits");
  dispatchDType(m.dtype(), [&](auto tag) {
    using L = Layout<typename decltype(tag)::type>;
    const uint32_t bad = blockedReduce<uint32_t>(n, [&](int64_t lo, int64_t hi) {
      uint32_t flag = 0;
      uint16_t codes[kChunk];
      for (int64_t b = lo; b < hi; b += kChunk) {
        const int64_t e = std::min(hi, b + kChunk);
        unpackBits(m.payload() + packedBytes(b, kWidth), e - b, kWidth, codes);
        for (int64_t k = 0; k < e - b; ++k) {
          const uint32_t c = codes[k] & 0xffu;
          flag |= (c > L::kHighest) | (c != 0 && c < L::kLowest);
        }
      }
      return flag;
    });
    EFCOMM_CHECK_MSG(!bad, "natural: exponent code outside the range of ", dtypeName(m.dtype()));
  });
}

void decode(const Message& m, const TensorView& out) {
  const int64_t n = m.numel();
  const uint32_t base = baseOf(m);
  EFCOMM_CHECK_MSG(m.payloadSize() == payloadBytes(n), "natural: payload size does not match the element count");
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using L = Layout<T>;
    using Bits = typename L::Bits;
    T* o = static_cast<T*>(out.data);
    parallelBlocks(n, kChunk, [&](int64_t, int64_t lo, int64_t hi) {
      uint16_t codes[kChunk];
      unpackBits(m.payload() + packedBytes(lo, kWidth), hi - lo, kWidth, codes);
      for (int64_t i = lo; i < hi; ++i) {
        const Bits c = codes[i - lo] & 0xffu, sign = codes[i - lo] >> 8;
        const Bits e = L::kWide ? (c ? c + base : 0) : c;
        o[i] = fromBits<T>(sign << (L::kManBits + L::kExpBits) | e << L::kManBits);
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
