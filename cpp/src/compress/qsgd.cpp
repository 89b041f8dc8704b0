// PLACEHOLDER: replaced by the real QSGD implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec qsgdCodec() {
  return {"qsgd", CompressorId::kQSGD,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("qsgd: not built yet"); },
          [](const Message&) { throw CorruptMessageError("qsgd: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("qsgd: not built yet"); }};
}
}  // namespace efcomm
