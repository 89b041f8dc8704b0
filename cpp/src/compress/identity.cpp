// Identity: the uncompressed baseline. The payload is the raw little-endian elements.
#include <cstring>
#include <type_traits>

#include "common/bytes.hpp"

#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {

namespace {

class Identity final : public Compressor {
 public:
  std::string name() const override { return "identity"; }
  std::string spec() const override { return "identity"; }
  CompressorId id() const override { return CompressorId::kIdentity; }
  bool biased() const override { return false; }
  double alpha(int64_t) const override { return 1.0; }
  std::optional<double> omega(int64_t) const override { return 0.0; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    return messageBytes(static_cast<int>(shape.size()), 0, static_cast<size_t>(d) * itemSize(dt));
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t n = x.numel();
    Message m = Message::build(id(), x.dtype, x.shape, 0, {}, x.nbytes());
    uint8_t* out = m.mutablePayload();
    const bool finite = dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      const T* in = static_cast<const T*>(x.data);
      // Copy and check per cache-resident block: the check re-reads the block from L2, not
      // from memory, so it costs no extra pass over memory.
      return blockedReduce<uint32_t>(n, [&](int64_t lo, int64_t hi) {
        std::memcpy(out + lo * sizeof(T), in + lo, static_cast<size_t>(hi - lo) * sizeof(T));
        uint32_t bad = 0;
        for (int64_t i = lo; i < hi; ++i) bad |= nonFiniteBit(in[i]);
        return bad;
      }) == 0;
    });
    if (!finite) throwIfNonFinite(x, "identity.compress");
    m.finish(x.nbytes());
    return m;
  }
};

void validate(const Message& m) {
  EFCOMM_CHECK_MSG(m.paramsSize() == 0, "identity: unexpected parameters");
  EFCOMM_CHECK_MSG(m.payloadSize() == static_cast<size_t>(m.numel()) * itemSize(m.dtype()),
                   "identity: payload of ", m.payloadSize(), " bytes for ", m.numel(), " elements");
}

void decode(const Message& m, const TensorView& out) {
  const size_t bytes = m.payloadSize();
  parallelBlocks(static_cast<int64_t>(bytes), 1 << 20, [&](int64_t, int64_t lo, int64_t hi) {
    std::memcpy(static_cast<uint8_t*>(out.data) + lo, m.payload() + lo, static_cast<size_t>(hi - lo));
  }, 1 << 21);
}

void accumulateInto(const Message& m, const TensorView& out, double weight) {
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_floating_point_v<T>) {
      T* o = static_cast<T*>(out.data);
      const T w = static_cast<T>(weight);
      const uint8_t* in = m.payload();
      parallelRanges(m.numel(), [&](int64_t lo, int64_t hi) {
        for (int64_t i = lo; i < hi; ++i) o[i] += w * loadAs<T>(in + i * sizeof(T));
      });
    }
  });
}

}  // namespace

Codec identityCodec() {
  return {"identity", CompressorId::kIdentity,
          [](SpecParams& p) -> std::unique_ptr<Compressor> {
            p.finish("");
            return std::make_unique<Identity>();
          },
          validate, decode, accumulateInto};
}

}  // namespace efcomm
