#pragma once
// The compressor registry: one Codec per compressor kind, keyed by name and by wire id.
// Decoding needs only the message (its header carries the parameters), so validate/decode are
// free functions of the codec, shared by Compressor::decompress and efcomm::decompress.
#include <functional>
#include <memory>
#include <string>

#include "common/spec.hpp"
#include "efcomm/compressor.hpp"

namespace efcomm {

struct Codec {
  std::string name;
  CompressorId id;
  /// Builds the compressor from parsed spec parameters (must call params.finish()).
  std::function<std::unique_ptr<Compressor>(SpecParams&)> make;
  /// Checks parameters and payload of a message whose header is already validated: sizes
  /// that match the parameters, indices in range, ... Throws CorruptMessageError.
  void (*validate)(const Message& msg);
  /// Decodes a validated message into out (dtype and numel already checked).
  void (*decode)(const Message& msg, const TensorView& out);
  /// out += weight * decoded for a validated message and a float32/float64 out of the right
  /// size. nullptr: decode into a temporary, then add (accumulateDecoded).
  void (*accumulate)(const Message& msg, const TensorView& out, double weight) = nullptr;
};

/// Adds a codec; throws InvalidArgument if the name or id is taken.
void registerCodec(Codec codec);
/// Registers the built-in compressors (called once, lazily, by the lookups below).
void registerBuiltins();
const Codec& codecById(CompressorId id);  // throws CorruptMessageError when unknown
const Codec* codecByIdOrNull(uint8_t raw);

/// Each built-in compressor's file defines its codec.
Codec identityCodec();
Codec castCodec();
Codec topkCodec();
Codec randkCodec();
Codec signCodec();
Codec qsgdCodec();
Codec naturalCodec();
Codec blockquantCodec();
Codec powersgdCodec();

}  // namespace efcomm
