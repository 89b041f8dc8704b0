// PLACEHOLDER: replaced by the real Natural implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec naturalCodec() {
  return {"natural", CompressorId::kNatural,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("natural: not built yet"); },
          [](const Message&) { throw CorruptMessageError("natural: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("natural: not built yet"); }};
}
}  // namespace efcomm
