// PLACEHOLDER: replaced by the real BlockQuant implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec blockquantCodec() {
  return {"quant", CompressorId::kBlockQuant,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("quant: not built yet"); },
          [](const Message&) { throw CorruptMessageError("quant: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("quant: not built yet"); }};
}
}  // namespace efcomm
