// QSGD random dithering (Alistarh et al. 2017, "QSGD: Communication-Efficient SGD via Gradient
// Quantization and Encoding", Sec. 3.1): with a_j = s|x_j|/||x||_2 and l_j = floor(a_j),
// Q(x)_j = ||x||_2 sign(x_j) xi_j / s where xi_j = l_j + 1 with probability a_j - l_j, else l_j.
// Unbiased, and Lemma 3.1 gives E||Q(x) - x||^2 <= min(d/s^2, sqrt(d)/s) ||x||^2.
//
// Params: u32 s (levels). Payload: ||x||_2 as float64, then one code per element,
// code = s + sign(x_j) xi_j in [0, 2s] (offset binary, so every code has one meaning), packed
// at w = bit width of 2s bits (bitpack.hpp). The draw of element j is b_j = uniformBits(key, j)
// with key = drawKey(seed, step), used as u_j = int32(b_j)/2^32 + 1/2; decoding needs neither.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <utility>

#include "common/bitpack.hpp"
#include "common/bytes.hpp"
#include "common/rng.hpp"
#include "common/spec.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"
#include "compress/layouts.hpp"

namespace efcomm {

namespace {

using compress::qsgd::codeWidth;
using compress::qsgd::kMaxLevels;
using compress::qsgd::kNormBytes;

// Codes per work item: a multiple of 8 (so items pack disjoint bytes) small enough for the
// stack buffer to stay in L1.
constexpr int64_t kChunk = 2048;
// Rescaling of float64 inputs whose sum of squares leaves the normal range. On overflow: d < 2^63
// squares of at most (DBL_MAX 2^-600)^2 cannot overflow, and elements below 2^-474 that underflow
// are negligible next to one above 2^480. Below kTinySum, squares of tiny inputs underflow (to 0
// for |x_j| < 2^-538): summing (2^600 x_j)^2 keeps them.
constexpr double kOverflowScale = 0x1p-600;
constexpr double kUnderflowScale = 0x1p600;
constexpr double kTinySum = 0x1p-900;


// packBits/unpackBits compiled for each constant width (straight-line shifts instead of
// per-code branches, 1.6x faster decoding), picked once per message.
using PackFn = void (*)(const uint16_t*, int64_t, uint8_t*);
using UnpackFn = void (*)(const uint8_t*, int64_t, uint16_t*);
template <int W>
[[gnu::flatten]] void packFixed(const uint16_t* codes, int64_t n, uint8_t* out) { packBits(codes, n, W, out); }
template <int W>
[[gnu::flatten]] void unpackFixed(const uint8_t* in, int64_t n, uint16_t* codes) { unpackBits(in, n, W, codes); }
template <int... I>
PackFn packerImpl(int w, std::integer_sequence<int, I...>) {
  static constexpr PackFn kTable[] = {packFixed<I + 1>...};
  return kTable[w - 1];
}
template <int... I>
UnpackFn unpackerImpl(int w, std::integer_sequence<int, I...>) {
  static constexpr UnpackFn kTable[] = {unpackFixed<I + 1>...};
  return kTable[w - 1];
}
PackFn packer(int w) { return packerImpl(w, std::make_integer_sequence<int, 16>{}); }
UnpackFn unpacker(int w) { return unpackerImpl(w, std::make_integer_sequence<int, 16>{}); }

// Sum of (factor*x_j)^2 over [lo, hi); eight accumulators in a fixed order keep it deterministic
// while the loop vectorizes.
template <typename T>
double sumSquares(const T* in, int64_t lo, int64_t hi, double factor) {
  double acc[8] = {};
  int64_t i = lo;
  for (; i + 8 <= hi; i += 8) {
    for (int k = 0; k < 8; ++k) {
      const double v = static_cast<double>(Elem<T>::load(in[i + k])) * factor;
      acc[k] += v * v;
    }
  }
  for (int k = 0; i + k < hi; ++k) {
    const double v = static_cast<double>(Elem<T>::load(in[i + k])) * factor;
    acc[k] += v * v;
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

// Quantizes [lo, hi) (lo % 8 == 0, hi - lo <= kChunk) and packs the codes at w bits;
// a_j = |x_j| pre r is s|x_j|/||x|| computed on rescaled values. With u uniform in [0, 1),
// floor(a + u) is l + 1 with probability a - l, else l (the dithering of Sec. 3.1). The loop
// adds a + 1/2 and int32(bits)/2^32, which takes each value k/2^32 - 1/2 (k < 2^32) once (the
// signed conversion is the cheaper one), so the probability is exact up to 2^-32. a is clamped
// to s so that rounding never yields s + 1; truncation equals floor (a + u >= 0) and, unlike
// std::floor, vectorizes.
template <typename T>
void quantizeChunk(const T* in, int64_t lo, int64_t hi, double pre, double r, int s, int w, uint64_t key,
                   uint8_t* packed) {
  uint16_t codes[kChunk];
  const RunKey run = runKey(key, static_cast<uint64_t>(lo));  // the chunk lies in one run of 2^32
  const uint32_t first = static_cast<uint32_t>(lo);
  const int count = static_cast<int>(hi - lo);
  const double top = s + 0.5;
  for (int k = 0; k < count; ++k) {
    const double v = static_cast<double>(Elem<T>::load(in[lo + k]));
    const double a = std::min(std::fabs(v) * pre * r + 0.5, top);
    const double u = static_cast<double>(static_cast<int32_t>(uniformBits(run, first + k))) * 0x1p-32;
    const int level = static_cast<int>(a + u);
    codes[k] = static_cast<uint16_t>(s + (v < 0 ? -level : level));
  }
  packer(w)(codes, count, packed + packedBytes(lo, w));
}

// Decodes [lo, hi) (lo % 8 == 0, hi - lo <= kChunk): value = (code - s) * scale.
template <typename T>
void decodeChunk(const uint8_t* packed, int64_t lo, int64_t hi, int s, int w, double scale, T* o) {
  uint16_t codes[kChunk];
  unpacker(w)(packed + packedBytes(lo, w), hi - lo, codes);
  for (int64_t i = lo; i < hi; ++i) o[i] = roundFromDouble<T>(static_cast<double>(int(codes[i - lo]) - s) * scale);
}

struct CodeRange {
  int maxCode = 0;   // largest code
  int maxLevel = 0;  // largest |code - s|
  CodeRange& operator+=(const CodeRange& o) {
    maxCode = std::max(maxCode, o.maxCode);
    maxLevel = std::max(maxLevel, o.maxLevel);
    return *this;
  }
};

CodeRange scanCodes(const uint8_t* packed, int64_t n, int s) {
  const int w = codeWidth(s);
  return blockedReduce<CodeRange>(n, [&](int64_t lo, int64_t hi) {
    CodeRange r;
    uint16_t codes[kChunk];
    for (int64_t b = lo; b < hi; b += kChunk) {
      const int64_t e = std::min(hi, b + kChunk);
      unpacker(w)(packed + packedBytes(b, w), e - b, codes);
      int mc = 0, ml = 0;
      for (int64_t k = 0; k < e - b; ++k) {
        mc = std::max(mc, int(codes[k]));
        ml = std::max(ml, std::abs(int(codes[k]) - s));
      }
      r += CodeRange{mc, ml};
    }
    return r;
  });
}

class QSGD final : public Compressor {
 public:
  QSGD(int s, uint64_t seed) : s_(s), seed_(seed) {}
  std::string name() const override { return "qsgd"; }
  std::string spec() const override {
    return "qsgd:levels=" + std::to_string(s_) + ",seed=" + std::to_string(seed_);
  }
  CompressorId id() const override { return CompressorId::kQSGD; }
  bool biased() const override { return false; }
  bool randomized() const override { return true; }
  double alpha(int64_t d) const override { return 1.0 / (1.0 + *omega(d)); }
  std::optional<double> omega(int64_t d) const override {
    const double dd = static_cast<double>(std::max<int64_t>(d, 0)), s = s_;
    return std::min(dd / (s * s), std::sqrt(dd) / s);
  }
  size_t wireBytes(const std::vector<int64_t>& shape, DType) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), sizeof(uint32_t), compress::qsgd::payloadBytes(d, s_));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t step) override {
    const int64_t n = x.numel();
    const size_t bytes = compress::qsgd::payloadBytes(n, s_);
    Message m = Message::build(id(), x.dtype, x.shape, 0, ByteWriter().put<uint32_t>(uint32_t(s_)).bytes(), bytes);
    uint8_t* out = m.mutablePayload();
    uint8_t* packed = out + kNormBytes;
    const int s = s_, w = codeWidth(s_);
    const uint64_t key = drawKey(seed_, step);
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      // Pass 1: the norm. A NaN or Inf input makes the sum of squares non-finite; so does an
      // overflow of huge finite float64 inputs, which are then summed again rescaled, as are
      // tiny ones. The quantizer works on the rescaled values, where s / norm is finite.
      const auto sumsq = [&](double factor) {
        return blockedReduce<double>(n, [&](int64_t lo, int64_t hi) { return sumSquares(in, lo, hi, factor); });
      };
      double factor = 1.0, sum = sumsq(factor);
      if (!std::isfinite(sum)) {
        throwIfNonFinite(x, "qsgd.compress");
        factor = kOverflowScale;
        sum = sumsq(factor);
      } else if (std::is_same_v<T, double> && sum < kTinySum) {  // squares of narrower types never underflow
        factor = kUnderflowScale;
        sum = sumsq(factor);
      }
      const double norm = std::sqrt(sum) / factor;
      EFCOMM_CHECK_T(NonFiniteError, std::isfinite(norm), "qsgd.compress: the 2-norm of the input exceeds the float64 range");
      const double r = sum > 0 ? s / std::sqrt(sum) : 0.0;
      storeAs<double>(out, norm);
      // Pass 2: draw, quantize and pack.
      parallelBlocks(n, kChunk, [&](int64_t, int64_t lo, int64_t hi) {
        quantizeChunk(in, lo, hi, factor, r, s, w, key, packed);
      });
      // Decoded values reach at most level s, norm: only a norm beyond the dtype's range needs a
      // look at the levels actually drawn.
      if (!fits(x.dtype, s * (norm / s))) {
        const int top = scanCodes(packed, n, s).maxLevel;
        EFCOMM_CHECK_T(NonFiniteError, fits(x.dtype, top * (norm / s)), "qsgd.compress: a decoded value (",
                       top * (norm / s), ") would overflow ", dtypeName(x.dtype),
                       "; scale the input down or use fewer levels");
      }
    });
    m.finish(bytes);
    return m;
  }

 private:
  int s_;
  uint64_t seed_;
};

int levelsOf(const Message& m) {
  ByteReader r(m.params(), m.paramsSize(), "qsgd parameters");
  const uint32_t s = r.get<uint32_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(s >= 1 && s <= kMaxLevels, "qsgd: levels ", s, " outside [1, ", kMaxLevels, "]");
  return static_cast<int>(s);
}

void validate(const Message& m) {
  const int s = levelsOf(m);
  EFCOMM_CHECK_MSG(m.flags() == 0, "qsgd: unknown flags ", m.flags());
  const int64_t n = m.numel();
  const int w = codeWidth(s);
  EFCOMM_CHECK_MSG(m.payloadSize() == compress::qsgd::payloadBytes(n, s), "qsgd: payload of ", m.payloadSize(),
                   " bytes for ", n, " elements at ", s, " levels (expected ", compress::qsgd::payloadBytes(n, s), ")");
  const double norm = loadAs<double>(m.payload());
  EFCOMM_CHECK_MSG(std::isfinite(norm) && norm >= 0, "qsgd: bad norm ", norm);
  const uint8_t* packed = m.payload() + kNormBytes;
  const int64_t bits = n * w;
  if (bits % 8) EFCOMM_CHECK_MSG((packed[bits / 8] >> (bits % 8)) == 0, "qsgd: non-zero padding bits");
  const CodeRange range = scanCodes(packed, n, s);
  EFCOMM_CHECK_MSG(range.maxCode <= 2 * s, "qsgd: code ", range.maxCode, " outside [0, ", 2 * s, "]");
  EFCOMM_CHECK_MSG(fits(m.dtype(), range.maxLevel * (norm / s)), "qsgd: decoded values overflow ",
                   dtypeName(m.dtype()));
}

void decode(const Message& m, const TensorView& out) {
  const int s = levelsOf(m);
  const int64_t n = m.numel();
  const int w = codeWidth(s);
  EFCOMM_CHECK_MSG(m.payloadSize() == compress::qsgd::payloadBytes(n, s), "qsgd: payload size does not match the element count");
  const double scale = loadAs<double>(m.payload()) / s;
  const uint8_t* packed = m.payload() + kNormBytes;
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.data);
    parallelBlocks(n, kChunk, [&](int64_t, int64_t lo, int64_t hi) { decodeChunk(packed, lo, hi, s, w, scale, o); });
  });
}

}  // namespace

Codec qsgdCodec() {
  return {"qsgd", CompressorId::kQSGD,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            const int64_t s = p.getInt("levels").value_or(16);
            const int64_t seed = p.getInt("seed").value_or(0);
            p.finish("levels (1..32767), seed (>= 0)");
            EFCOMM_CHECK(s >= 1 && s <= kMaxLevels, "qsgd: levels must be in [1, ", kMaxLevels, "], got ", s);
            EFCOMM_CHECK(seed >= 0, "qsgd: seed must be >= 0, got ", seed);
            return std::make_unique<QSGD>(static_cast<int>(s), static_cast<uint64_t>(seed));
          },
          validate, decode};
}

}  // namespace efcomm
