// PLACEHOLDER: replaced by the real ScaledSign implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec signCodec() {
  return {"sign", CompressorId::kSign,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("sign: not built yet"); },
          [](const Message&) { throw CorruptMessageError("sign: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("sign: not built yet"); }};
}
}  // namespace efcomm
