#include "efcomm/compressor.hpp"

#include "efcomm/error.hpp"

namespace efcomm {

Message Compressor::compress(const ConstTensorView& x, std::optional<uint64_t> step) {
  const int64_t n = x.numel();  // validates the shape
  EFCOMM_CHECK(x.data != nullptr || n == 0, name(), ".compress: input data is null");
  EFCOMM_CHECK(static_cast<int>(x.shape.size()) <= kMaxDims, name(), ".compress: ", x.shape.size(),
               "-d input; at most ", kMaxDims, " dimensions are supported");
  itemSize(x.dtype);  // validates the dtype
  const uint64_t s = step ? *step : nextStep_;
  nextStep_ = s + 1;
  return doCompress(x, s);
}

void Compressor::decompress(const Message& msg, const TensorView& out) const {
  EFCOMM_CHECK(msg.empty() || msg.compressorId() == id(), name(), ".decompress: message was made by '",
               compressorName(msg.compressorId()), "'");
  efcomm::decompress(msg, out);
}

}  // namespace efcomm
