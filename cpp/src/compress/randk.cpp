// PLACEHOLDER: replaced by the real RandK implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec randkCodec() {
  return {"randk", CompressorId::kRandK,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("randk: not built yet"); },
          [](const Message&) { throw CorruptMessageError("randk: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("randk: not built yet"); }};
}
}  // namespace efcomm
