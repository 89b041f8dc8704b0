// Cast: round each element to bfloat16 or float16 (round to nearest even); 2 bytes travel per
// element. Biased; the relative error of a normal number is at most the unit roundoff u
// (2^-8 for bf16, 2^-11 for fp16), so alpha = 1 - u^2.
#include <cmath>
#include <string>

#include "common/bytes.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"
#include "compress/layouts.hpp"

namespace efcomm {

namespace {

float widen(uint16_t b, DType target) {
  return target == DType::kBFloat16 ? bf16ToFloat(b) : f16ToFloat(b);
}
// Converts n elements (rounded once: float64 through floatForNarrowing) and returns 1 if a
// result has an all-ones exponent, or, for float16 input to bfloat16, decodes beyond float16's
// range (|x| >= 65408 rounds to bfloat16 65536, which the decoder's float16 output cannot hold).
template <typename T, bool kBf16>
uint32_t convertBlock(const T* __restrict in, uint16_t* __restrict out, int64_t n) {
  uint32_t flag = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = floatForNarrowing(Elem<T>::load(in[i]));
    const uint16_t b = kBf16 ? floatToBf16(v) : floatToF16(v);
    out[i] = b;
    flag |= compress::cast::decodesNonFinite<T, kBf16>(b);
  }
  return flag;
}

class Cast final : public Compressor {
 public:
  explicit Cast(DType target) : target_(target) {}
  std::string name() const override { return "cast"; }
  std::string spec() const override {
    return std::string("cast:dtype=") + (target_ == DType::kBFloat16 ? "bf16" : "fp16");
  }
  CompressorId id() const override { return CompressorId::kCast; }
  bool biased() const override { return true; }
  double alpha(int64_t) const override {
    const double u = target_ == DType::kBFloat16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
    return 1.0 - u * u;
  }
  std::optional<double> omega(int64_t) const override { return std::nullopt; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), 1, 2 * static_cast<size_t>(d));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t n = x.numel();
    Message m = Message::build(id(), x.dtype, x.shape, 0, ByteWriter().put<uint8_t>(uint8_t(target_)).bytes(),
                               2 * static_cast<size_t>(n));
    // The payload starts 16-byte aligned (header padding), so it is written as uint16_t: a
    // typed, restrict-qualified store lets the loops vectorize (uint8_t stores may alias
    // anything and would force reloads).
    uint16_t* out = reinterpret_cast<uint16_t*>(m.mutablePayload());
    const bool bf16 = target_ == DType::kBFloat16;
    // One pass converts and checks: a result with an all-ones exponent is a NaN/Inf input or
    // an overflow of the 16-bit range.
    const uint32_t bad = dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      return blockedReduce<uint32_t>(n, [in, out, bf16](int64_t lo, int64_t hi) {
        return bf16 ? convertBlock<T, true>(in + lo, out + lo, hi - lo)
                    : convertBlock<T, false>(in + lo, out + lo, hi - lo);
      });
    });
    if (bad) {
      throwIfNonFinite(x, "cast.compress");
      throw NonFiniteError("cast.compress: " + compress::cast::overflowReason(x.dtype, target_));
    }
    m.finish(2 * static_cast<size_t>(n));
    return m;
  }

 private:
  DType target_;
};

DType targetOf(const Message& m) {
  ByteReader r(m.params(), m.paramsSize(), "cast parameters");
  const uint8_t t = r.get<uint8_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(t == uint8_t(DType::kBFloat16) || t == uint8_t(DType::kFloat16), "cast: bad target dtype ", int(t));
  return static_cast<DType>(t);
}

void validate(const Message& m) {
  targetOf(m);
  EFCOMM_CHECK_MSG(m.payloadSize() == 2 * static_cast<size_t>(m.numel()), "cast: payload of ",
                   m.payloadSize(), " bytes for ", m.numel(), " elements");
}

void decode(const Message& m, const TensorView& out) {
  const DType target = targetOf(m);
  const uint8_t* in = m.payload();
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.data);
    parallelRanges(m.numel(), [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) o[i] = Elem<T>::store(widen(loadAs<uint16_t>(in + 2 * i), target));
    });
  });
}

}  // namespace

std::string compress::cast::overflowReason(DType input, DType target) {
  if (input == DType::kFloat16 && target == DType::kBFloat16)
    return "a float16 input value of magnitude >= 65408 rounds to bfloat16 65536, beyond the float16 range of the "
           "decoded output (it would decode to Inf); scale the input or use cast:dtype=fp16";
  return "a finite input value exceeds the " + dtypeName(target) + " range and would become Inf" +
         (target == DType::kFloat16 ? " (|x| > 65504); use cast:dtype=bf16 or scale the input" : "");
}

Codec castCodec() {
  return {"cast", CompressorId::kCast,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            const DType t = parseDType(p.getString("dtype").value_or("bf16"));
            p.finish("dtype (bf16 or fp16)");
            EFCOMM_CHECK(t == DType::kBFloat16 || t == DType::kFloat16,
                         "cast: dtype must be bf16 or fp16, got ", dtypeName(t));
            return std::make_unique<Cast>(t);
          },
          validate, decode};
}

}  // namespace efcomm
