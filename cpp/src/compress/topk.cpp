// PLACEHOLDER: replaced by the real TopK implementation.
#include "compress/codec.hpp"
#include "compress/common.hpp"

namespace efcomm {
Codec topkCodec() {
  return {"topk", CompressorId::kTopK,
          [](SpecParams&) -> std::unique_ptr<Compressor> { throw InvalidArgument("topk: not built yet"); },
          [](const Message&) { throw CorruptMessageError("topk: not built yet"); },
          [](const Message&, const TensorView&) { throw CorruptMessageError("topk: not built yet"); }};
}
}  // namespace efcomm
