// ScaledSign: C(x) = (||x||_1/d) sign(x) with sign(0) = +1 (the scaled sign of EF-SignSGD,
// Karimireddy et al. 2019). Since sign(x_j) x_j = |x_j| for every j,
// ||C(x) - x||^2 = ||x||^2 - ||x||_1^2/d exactly, so C is contractive with alpha >= 1/d.
//
// Payload: the scale ||x||_1/d as float64, then one bit per element (set = negative), packed
// LSB-first: element j is bit j % 8 of byte j / 8; unused bits of the last byte are zero.
#include <cmath>
#include <cstring>

#include "common/bytes.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {

namespace {

constexpr size_t kScaleBytes = 8;
// Rescales |x_j| when the float64 L1 sum of huge finite inputs overflows: d < 2^63 terms of at
// most DBL_MAX * 2^-64 cannot overflow.
constexpr double kOverflowScale = 0x1p-64;

size_t signPayloadBytes(int64_t n) { return kScaleBytes + static_cast<size_t>((n + 7) / 8); }

// Sums factor*|x_j| over [lo, hi) and writes the sign bits of the range (lo % 8 == 0). Eight
// accumulators in a fixed order keep the sum deterministic; the sum and the bits are two loops
// over the block (which stays in cache) because each vectorizes on its own and the fused one
// does not.
template <typename T>
double l1AndSigns(const T* in, int64_t lo, int64_t hi, double factor, uint8_t* bits) {
  using C = typename Elem<T>::Compute;
  double acc[8] = {};
  const int64_t full = lo + (hi - lo) / 8 * 8;
  for (int64_t i = lo; i < full; i += 8) {
    for (int k = 0; k < 8; ++k) acc[k] += std::fabs(static_cast<double>(Elem<T>::load(in[i + k]))) * factor;
  }
  for (int64_t i = full; i < hi; ++i) acc[i - full] += std::fabs(static_cast<double>(Elem<T>::load(in[i]))) * factor;
  for (int64_t j = lo / 8; j < full / 8; ++j) {
    unsigned byte = 0;
    for (int k = 0; k < 8; ++k) byte |= static_cast<unsigned>(Elem<T>::load(in[8 * j + k]) < C(0)) << k;
    bits[j] = static_cast<uint8_t>(byte);
  }
  if (full < hi) {
    unsigned byte = 0;
    for (int64_t i = full; i < hi; ++i) byte |= static_cast<unsigned>(Elem<T>::load(in[i]) < C(0)) << (i - full);
    bits[full / 8] = static_cast<uint8_t>(byte);
  }
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

class ScaledSign final : public Compressor {
 public:
  std::string name() const override { return "sign"; }
  std::string spec() const override { return "sign"; }
  CompressorId id() const override { return CompressorId::kSign; }
  bool biased() const override { return true; }
  double alpha(int64_t d) const override { return d > 0 ? 1.0 / static_cast<double>(d) : 1.0; }
  std::optional<double> omega(int64_t) const override { return std::nullopt; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), 0, signPayloadBytes(d));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t n = x.numel();
    const size_t bytes = signPayloadBytes(n);
    Message m = Message::build(id(), x.dtype, x.shape, 0, {}, bytes);
    uint8_t* out = m.mutablePayload();
    uint8_t* bits = out + kScaleBytes;
    // One pass: the L1 sum and the sign bits (kReduceBlock is a multiple of 8, so blocks write
    // disjoint bytes). A NaN or Inf input makes the sum non-finite.
    const auto pass = [&](double factor) {
      return dispatchDType(x.dtype, [&](auto tag) {
        using T = typename decltype(tag)::type;
        const T* in = static_cast<const T*>(x.data);
        return blockedReduce<double>(n, [&](int64_t lo, int64_t hi) { return l1AndSigns(in, lo, hi, factor, bits); });
      });
    };
    double scale = 0;
    if (n > 0) {
      const double l1 = pass(1.0);
      if (std::isfinite(l1)) {
        scale = l1 / static_cast<double>(n);
      } else {
        throwIfNonFinite(x, "sign.compress");
        scale = pass(kOverflowScale) / static_cast<double>(n) / kOverflowScale;  // <= max|x_j|
      }
    }
    storeAs<double>(out, scale);
    m.finish(bytes);
    return m;
  }
};

double scaleOf(const Message& m) { return loadAs<double>(m.payload()); }

void validate(const Message& m) {
  EFCOMM_CHECK_MSG(m.paramsSize() == 0, "sign: unexpected parameters");
  EFCOMM_CHECK_MSG(m.flags() == 0, "sign: unknown flags ", m.flags());
  const int64_t n = m.numel();
  EFCOMM_CHECK_MSG(m.payloadSize() == signPayloadBytes(n), "sign: payload of ", m.payloadSize(),
                   " bytes for ", n, " elements (expected ", signPayloadBytes(n), ")");
  const double scale = scaleOf(m);
  EFCOMM_CHECK_MSG(std::isfinite(scale) && scale >= 0, "sign: bad scale ", scale);
  EFCOMM_CHECK_MSG(fits(m.dtype(), scale), "sign: scale ", scale, " overflows ", dtypeName(m.dtype()));
  if (n % 8) {
    const uint8_t last = m.payload()[m.payloadSize() - 1];
    EFCOMM_CHECK_MSG((last >> (n % 8)) == 0, "sign: non-zero padding bits");
  }
}

void decode(const Message& m, const TensorView& out) {
  const int64_t n = m.numel();
  if (n == 0) return;
  EFCOMM_CHECK_MSG(m.payloadSize() == signPayloadBytes(n), "sign: payload size does not match the element count");
  const double scale = scaleOf(m);
  const uint8_t* bits = m.payload() + kScaleBytes;
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    // Each byte expands to 8 outputs by one copy from a 256-entry table.
    T table[256][8];
    const T pos = roundFromDouble<T>(scale), neg = roundFromDouble<T>(-scale);
    for (int b = 0; b < 256; ++b)
      for (int k = 0; k < 8; ++k) table[b][k] = (b >> k & 1) ? neg : pos;
    T* o = static_cast<T*>(out.data);
    const int64_t fullBytes = n / 8;
    parallelRanges(fullBytes, [&](int64_t lo, int64_t hi) {
      for (int64_t j = lo; j < hi; ++j) std::memcpy(o + 8 * j, table[bits[j]], sizeof(table[0]));
    }, kParallelThreshold / 8);
    if (n % 8) std::memcpy(o + 8 * fullBytes, table[bits[fullBytes]], static_cast<size_t>(n % 8) * sizeof(T));
  });
}

}  // namespace

Codec signCodec() {
  return {"sign", CompressorId::kSign,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            p.finish("");
            return std::make_unique<ScaledSign>();
          },
          validate, decode};
}

}  // namespace efcomm
