// BlockQuant: min-max (asymmetric, affine: x = S (q - Z), Jacob et al. 2018 Eq. 1) uniform
// quantization to b in {2, 4, 8} bits, applied per block of `block` consecutive elements (the
// bucketing of QSGD, Alistarh et al. 2017) with deterministic rounding. Blocks are multiples of
// 8 elements so that every block's packed codes start on a byte boundary.
//
// For a block with minimum lo and maximum hi and L = 2^b - 1 levels:
//   q_i = round((x_i - lo) * L / (hi - lo))   (round half to even),  decode lo + q_i (hi - lo)/L.
// A constant block (hi == lo) decodes exactly. Decoded values are clamped to [lo, hi].
//
// alpha(d): rounding to the nearest level errs by at most half a step, (hi - lo)/(2L), and
// hi - lo <= 2 max|x_block|, so each element errs by at most max|x_block|/L and a block of B
// elements by B max|x_block|^2 / L^2 <= (B/L^2) ||x_block||^2 (since max|x_block|^2 is one
// term of ||x_block||^2). Summing over blocks, ||C(x) - x||^2 <= (min(d, block)/L^2) ||x||^2,
// so alpha = max(0, 1 - min(d, block)/L^2). The worst case is about half that (x = (M, -M, 0,
// ..., 0) with 0 on a midpoint gives (B - 2)/(2 L^2)), which leaves room for float rounding.
// alpha > 0 needs min(d, block) < L^2: blocks up to 65024 at 8 bits, 224 at 4 bits, 8 at 2.
//
// Scales travel in the compute precision: float64 for float64 input, float32 otherwise.
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/bitpack.hpp"
#include "common/bytes.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"
#include "compress/layouts.hpp"

namespace efcomm {

namespace {

/// Elements staged per inner step: the codes of one chunk sit in an L1 buffer before packing.
constexpr int64_t kChunk = 256;
/// Independent min/max/finiteness accumulators: enough to fill a vector register.
constexpr int kLanes = 16;
using compress::blockquant::kMaxBlock;
using compress::blockquant::numBlocks;
using compress::blockquant::payloadBytes;
using compress::blockquant::scaleBytes;
using compress::blockquant::validBits;
using compress::blockquant::validBlock;
using Params = compress::blockquant::Layout;

/// The affine map of one block, arranged so that no intermediate overflows or divides by zero:
/// values are scaled by s = 2^k first (s = 1 except when hi - lo overflows or L/(hi - lo) would),
/// which is exact, so encode (x s - a) inv and decode (a + q step) / s equal the formulas above.
template <typename C>
struct Affine {
  C lo, hi, s, a, inv, step, unscale;
};

template <typename C>
Affine<C> affine(C lo, C hi, int levels) {
  const C range = hi - lo;
  C s = 1;
  // |x| <= 2^54 (hi - lo) when hi > lo, so scaling tiny ranges up by 2^64 cannot overflow.
  if (!(range <= std::numeric_limits<C>::max())) {
    s = C(0.25);
  } else if (range > 0 && range < C(0x1p-100)) {
    s = C(0x1p64);
  }
  const C a = lo * s, rs = hi * s - a;
  const C L = static_cast<C>(levels);
  return {lo, hi, s, a, rs > 0 ? L / rs : C(0), rs / L, C(1) / s};
}

/// Quantizes one block; returns false (writing nothing) if it holds NaN or Inf.
template <typename T>
bool encodeBlock(const T* in, int64_t len, int bits, uint8_t* scales, uint8_t* codes) {
  using C = typename Elem<T>::Compute;
  C mn[kLanes], mx[kLanes], z[kLanes];
  const C first = Elem<T>::load(in[0]);
  for (int l = 0; l < kLanes; ++l) mn[l] = mx[l] = first, z[l] = 0;
  int64_t i = 0;
  for (; i + kLanes <= len; i += kLanes) {
    // Kept rolled so gcc vectorizes it as one lane-wise min/max/add (unrolled, it does not).
#pragma GCC unroll 1
    for (int l = 0; l < kLanes; ++l) {
      const C v = Elem<T>::load(in[i + l]);
      mn[l] = v < mn[l] ? v : mn[l];
      mx[l] = v > mx[l] ? v : mx[l];
      z[l] += v * C(0);  // NaN exactly when v is NaN or Inf (min/max would hide a NaN)
    }
  }
  for (int l = 0; i < len; ++i, ++l) {
    const C v = Elem<T>::load(in[i]);
    mn[l] = v < mn[l] ? v : mn[l];
    mx[l] = v > mx[l] ? v : mx[l];
    z[l] += v * C(0);
  }
  C lo = mn[0], hi = mx[0], nonFinite = z[0];
  for (int l = 1; l < kLanes; ++l) {
    lo = mn[l] < lo ? mn[l] : lo;
    hi = mx[l] > hi ? mx[l] : hi;
    nonFinite += z[l];
  }
  if (nonFinite != C(0)) return false;
  storeAs<C>(scales, lo);
  storeAs<C>(scales + sizeof(C), hi);
  const Affine<C> f = affine(lo, hi, (1 << bits) - 1);

  uint8_t q[kChunk];
  for (int64_t c = 0; c < len; c += kChunk) {
    const int64_t n = std::min(kChunk, len - c);
    uint8_t* o = codes + c * bits / 8;
    uint8_t* dst = bits == 8 ? o : q;
    for (int64_t k = 0; k < n; ++k) {
      const C t = (Elem<T>::load(in[c + k]) * f.s - f.a) * f.inv;
      dst[k] = static_cast<uint8_t>(static_cast<int32_t>(std::nearbyint(t)));
    }
    if (bits == 8) continue;
    // Pack LSB-first (the layout of common/bitpack.hpp): code j in bits [j b, (j + 1) b).
    const int64_t padded = (n + 3) / 4 * 4;
    for (int64_t k = n; k < padded; ++k) q[k] = 0;
    if (bits == 4) {
      for (int64_t j = 0; j < (n + 1) / 2; ++j) o[j] = static_cast<uint8_t>(q[2 * j] | q[2 * j + 1] << 4);
    } else {
      for (int64_t j = 0; j < (n + 3) / 4; ++j)
        o[j] = static_cast<uint8_t>(q[4 * j] | q[4 * j + 1] << 2 | q[4 * j + 2] << 4 | q[4 * j + 3] << 6);
    }
  }
  return true;
}

template <typename T>
void decodeBlock(const uint8_t* scales, const uint8_t* codes, int64_t len, int bits, T* out) {
  using C = typename Elem<T>::Compute;
  const Affine<C> f = affine(loadAs<C>(scales), loadAs<C>(scales + sizeof(C)), (1 << bits) - 1);
  uint8_t q[kChunk];
  for (int64_t c = 0; c < len; c += kChunk) {
    const int64_t n = std::min(kChunk, len - c);
    const uint8_t* in = codes + c * bits / 8;
    const uint8_t* src = bits == 8 ? in : q;
    if (bits == 4) {
      for (int64_t j = 0; j < n / 2; ++j) {
        q[2 * j] = in[j] & 15;
        q[2 * j + 1] = in[j] >> 4;
      }
      if (n % 2) q[n - 1] = in[n / 2] & 15;
    } else if (bits == 2) {
      for (int64_t j = 0; j < n / 4; ++j) {
        q[4 * j] = in[j] & 3;
        q[4 * j + 1] = in[j] >> 2 & 3;
        q[4 * j + 2] = in[j] >> 4 & 3;
        q[4 * j + 3] = in[j] >> 6;
      }
      for (int64_t k = n / 4 * 4; k < n; ++k) q[k] = in[k / 4] >> (2 * (k % 4)) & 3;
    }
    for (int64_t k = 0; k < n; ++k) {
      C y = (f.a + static_cast<C>(src[k]) * f.step) * f.unscale;
      y = y < f.lo ? f.lo : y;
      y = y > f.hi ? f.hi : y;
      out[c + k] = Elem<T>::store(y);
    }
  }
}

/// Blocks below this count stay on one thread (kParallelThreshold elements).
int64_t blockThreshold(int64_t block) { return std::max<int64_t>(1, kParallelThreshold / block); }

class BlockQuant final : public Compressor {
 public:
  explicit BlockQuant(Params p) : p_(p) {}
  std::string name() const override { return "quant"; }
  std::string spec() const override {
    return "quant:bits=" + std::to_string(p_.bits) + ",block=" + std::to_string(p_.block);
  }
  CompressorId id() const override { return CompressorId::kBlockQuant; }
  bool biased() const override { return true; }
  double alpha(int64_t d) const override {
    const double L = static_cast<double>((1 << p_.bits) - 1);
    return std::max(0.0, 1.0 - static_cast<double>(std::min(d, p_.block)) / (L * L));
  }
  std::optional<double> omega(int64_t) const override { return std::nullopt; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), paramBytes().size(), payloadBytes(d, p_, dt));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t d = x.numel();
    const size_t bytes = payloadBytes(d, p_, x.dtype);
    Message m = Message::build(id(), x.dtype, x.shape, 0, paramBytes(), bytes);
    uint8_t* scales = m.mutablePayload();
    const size_t sb = 2 * scaleBytes(x.dtype);
    uint8_t* codes = scales + static_cast<size_t>(numBlocks(d, p_.block)) * sb;
    const Params p = p_;
    std::atomic<bool> bad{false};
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      // One pass over memory: each block is read once for min/max and again from L1 to quantize.
      parallelRanges(numBlocks(d, p.block), [&](int64_t lo, int64_t hi) {
        bool ok = true;
        for (int64_t b = lo; b < hi; ++b) {
          const int64_t start = b * p.block;
          ok &= encodeBlock(in + start, std::min(p.block, d - start), p.bits, scales + b * sb,
                            codes + start * p.bits / 8);
        }
        if (!ok) bad.store(true, std::memory_order_relaxed);
      }, blockThreshold(p.block));
    });
    if (bad.load()) throwIfNonFinite(x, "quant.compress");
    m.finish(bytes);
    return m;
  }

 private:
  std::vector<uint8_t> paramBytes() const { return compress::blockquant::paramBytes(p_); }

  Params p_;
};

/// Parameters and payload size: the checks decode relies on to stay in bounds.
Params parseLayout(const Message& m) {
  return compress::blockquant::parseLayout(m.params(), m.paramsSize(), m.numel(), m.dtype(), m.payloadSize());
}

// Decoded values lie in [lo, hi] (quantValue clamps), so finite bounds that fit the output
// dtype (float16 and bfloat16 blocks carry float32 bounds) keep every decoded value finite.
template <typename C>
void checkScales(const uint8_t* s, int64_t nb, DType dt) {
  for (int64_t b = 0; b < nb; ++b) {
    const C lo = loadAs<C>(s + 2 * b * sizeof(C)), hi = loadAs<C>(s + (2 * b + 1) * sizeof(C));
    EFCOMM_CHECK_MSG(std::isfinite(lo) && std::isfinite(hi) && lo <= hi, "quant: block ", b,
                     " has invalid scales [", lo, ", ", hi, "]");
    EFCOMM_CHECK_MSG(fits(dt, lo) && fits(dt, hi), "quant: block ", b, " has scales [", lo, ", ", hi,
                     "] beyond the ", dtypeName(dt), " range");
  }
}

void validate(const Message& m) {
  const Params p = parseLayout(m);
  const int64_t nb = numBlocks(m.numel(), p.block);
  if (m.dtype() == DType::kFloat64) {
    checkScales<double>(m.payload(), nb, m.dtype());
  } else {
    checkScales<float>(m.payload(), nb, m.dtype());
  }
}

void decode(const Message& m, const TensorView& out) {
  const Params p = parseLayout(m);
  const int64_t d = m.numel();
  const size_t sb = 2 * scaleBytes(m.dtype());
  const uint8_t* scales = m.payload();
  const uint8_t* codes = scales + static_cast<size_t>(numBlocks(d, p.block)) * sb;
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    T* o = static_cast<T*>(out.data);
    parallelRanges(numBlocks(d, p.block), [&](int64_t lo, int64_t hi) {
      for (int64_t b = lo; b < hi; ++b) {
        const int64_t start = b * p.block;
        decodeBlock(scales + b * sb, codes + start * p.bits / 8, std::min(p.block, d - start), p.bits,
                    o + start);
      }
    }, blockThreshold(p.block));
  });
}

}  // namespace

namespace compress::blockquant {

std::vector<uint8_t> paramBytes(const Layout& p) {
  return ByteWriter().put<uint8_t>(static_cast<uint8_t>(p.bits)).put<uint32_t>(static_cast<uint32_t>(p.block)).bytes();
}

Layout parseLayout(const uint8_t* params, size_t paramsSize, int64_t numel, DType dtype, size_t payloadSize) {
  ByteReader r(params, paramsSize, "quant parameters");
  const int bits = r.get<uint8_t>();
  const int64_t block = r.get<uint32_t>();
  r.expectEnd();
  EFCOMM_CHECK_MSG(validBits(bits), "quant: bits must be 2, 4 or 8, got ", bits);
  EFCOMM_CHECK_MSG(validBlock(block), "quant: block must be a multiple of 8 and >= 8, got ", block);
  const Layout p{bits, block};
  const size_t want = payloadBytes(numel, p, dtype);
  EFCOMM_CHECK_MSG(payloadSize == want, "quant: payload of ", payloadSize, " bytes; ", numel, " elements in blocks of ",
                   block, " at ", bits, " bits need ", want);
  return p;
}

}  // namespace compress::blockquant

Codec blockquantCodec() {
  return {"quant", CompressorId::kBlockQuant,
          [](SpecParams& sp) -> std::unique_ptr<Compressor> {
            const int64_t bits = sp.getInt("bits").value_or(8);
            const int64_t block = sp.getInt("block").value_or(256);
            sp.finish("bits (2, 4 or 8), block (a multiple of 8, at least 8)");
            EFCOMM_CHECK(validBits(bits), "quant: bits must be 2, 4 or 8, got ", bits);
            EFCOMM_CHECK(validBlock(block), "quant: block must be a multiple of 8 between 8 and ",
                         kMaxBlock, " (packed codes of a block then start on a byte), got ", block);
            return std::make_unique<BlockQuant>(Params{static_cast<int>(bits), block});
          },
          validate, decode};
}

}  // namespace efcomm
