// PLACEHOLDER: replaced by the real PowerSGD implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec powersgdCodec() {
  return {"powersgd", CompressorId::kPowerSGD,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("powersgd: not built yet"); },
          [](const Message&) { throw CorruptMessageError("powersgd: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("powersgd: not built yet"); }};
}
}  // namespace efcomm
