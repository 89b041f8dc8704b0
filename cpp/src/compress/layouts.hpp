#pragma once
// Payload layouts of the bit-packing codecs, shared by the CPU codecs (cpp/src/compress) and the
// CUDA kernels (cuda/compress): one definition of each size and bound that a decoder's bounds
// checks rely on, so that the two paths cannot disagree on the wire.
#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <vector>

#include "common/bitpack.hpp"
#include "common/half.hpp"
#include "common/host_device.hpp"
#include "efcomm/tensor.hpp"

namespace efcomm::compress {

/// BlockQuant (blockquant.cpp): per block of `block` elements a (lo, hi) pair of scales in the
/// compute precision (float64 for float64 input, float32 otherwise), then the packed b-bit codes
/// of all elements.
namespace blockquant {

/// The largest block: a multiple of 8 that the 32-bit parameter holds.
constexpr int64_t kMaxBlock = 0xfffffff8;

struct Layout {
  int bits;
  int64_t block;
};

EFCOMM_HD inline size_t scaleBytes(DType dt) { return dt == DType::kFloat64 ? 8 : 4; }
EFCOMM_HD inline int64_t numBlocks(int64_t d, int64_t block) { return (d + block - 1) / block; }
EFCOMM_HD inline size_t payloadBytes(int64_t d, const Layout& p, DType dt) {
  return static_cast<size_t>(numBlocks(d, p.block)) * 2 * scaleBytes(dt) + packedBytes(d, p.bits);
}
inline bool validBits(int64_t b) { return b == 2 || b == 4 || b == 8; }
/// Blocks are multiples of 8 elements so that every block's packed codes start on a byte.
inline bool validBlock(int64_t b) { return b >= 8 && b % 8 == 0 && b <= kMaxBlock; }

/// The parameter bytes: bits (uint8), block (uint32).
std::vector<uint8_t> paramBytes(const Layout& p);
/// The layout of a message's parameters, checked with its payload size against `numel` elements
/// of `dtype`: the checks a decoder relies on to stay in bounds (CorruptMessageError).
Layout parseLayout(const uint8_t* params, size_t paramsSize, int64_t numel, DType dtype, size_t payloadSize);

}  // namespace blockquant

/// QSGD (qsgd.cpp): the 8-byte norm in float64, then a signed level code per element.
namespace qsgd {

constexpr int64_t kMaxLevels = 32767;  // 2s fits the 16-bit codes of bitpack.hpp
constexpr size_t kNormBytes = 8;

/// Bit width of the codes for s levels: the width of 2s (a code is level + s, level in [-s, s]).
EFCOMM_HD inline int codeWidth(int64_t s) {
  int w = 0;
  while ((int64_t{1} << w) <= 2 * s) ++w;
  return w;
}
EFCOMM_HD inline size_t payloadBytes(int64_t n, int64_t s) { return kNormBytes + packedBytes(n, codeWidth(s)); }

}  // namespace qsgd

/// Cast (cast.cpp): 2 bytes per element.
namespace cast {

/// 1 when the 16-bit result b of a T input would decode to NaN/Inf: an all-ones exponent (a
/// NaN/Inf input, or an overflow of the 16-bit range), or for float16 input to bfloat16 a value
/// beyond float16's range (|x| >= 65408 rounds to bfloat16 65536). The CPU and the kernels flag
/// alike.
template <typename T, bool kBf16>
EFCOMM_HD inline uint32_t decodesNonFinite(uint16_t b) {
  constexpr uint16_t kMask = kBf16 ? 0x7f80 : 0x7c00;
  uint32_t bad = (b & kMask) == kMask;
  if constexpr (kBf16 && std::is_same_v<T, F16>) bad |= nonFiniteBit(Elem<F16>::store(bf16ToFloat(b)));
  return bad;
}

/// Why cast refuses a finite input of dtype `input` for `target` (it would decode to Inf): for
/// NonFiniteError's message after "cast.compress: ".
std::string overflowReason(DType input, DType target);

}  // namespace cast

/// Natural compression (natural.cpp): a 9-bit code per element, sign bit and 8-bit exponent code.
namespace natural {

constexpr int kWidth = 9;
constexpr uint32_t kMaxCode = 254;  // 255 never travels
EFCOMM_HD inline size_t payloadBytes(int64_t n) { return packedBytes(n, kWidth); }

}  // namespace natural

}  // namespace efcomm::compress
