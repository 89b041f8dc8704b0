#pragma once
// Natural compression's per-element arithmetic (cpp/src/compress/natural.cpp encode/decode),
// EFCOMM_HD so that the host tests check it against the CPU path.
#include <cstdint>
#include <type_traits>

#include "../common/hd.hpp"
#include "common/rng.hpp"
#include "compress/layouts.hpp"

namespace efcomm::cuda {

constexpr int kNaturalWidth = compress::natural::kWidth;
constexpr uint32_t kNaturalMaxCode = compress::natural::kMaxCode;
constexpr uint32_t kNaturalWideTop = 2046;
constexpr uint32_t kNaturalMaxBase = kNaturalWideTop - kNaturalMaxCode;

template <typename T>
struct NaturalLayout {
  static constexpr bool kWide = std::is_same_v<T, double>;
  static constexpr uint32_t kHighest = std::is_same_v<T, F16> ? 127 + 15 : kNaturalMaxCode;
  static constexpr uint32_t kLowest = std::is_same_v<T, F16> ? 127 - 24 : 1;
};

/// The float64 window base for the largest exponent field `top` of the input.
EFCOMM_HD inline uint32_t naturalWindowBase(uint32_t top) {
  const uint32_t highest = top + 1 < kNaturalWideTop ? top + 1 : kNaturalWideTop;
  return highest > kNaturalMaxCode ? highest - kNaturalMaxCode : 0;
}

/// The 9-bit code of element i with value v (natural.cpp encode); ORs 1 into bad for NaN/Inf.
template <typename T>
EFCOMM_HD inline uint32_t naturalCode(T v, uint64_t key, uint64_t i, uint32_t base, uint32_t& bad) {
  if constexpr (NaturalLayout<T>::kWide) {
    const uint64_t b = doubleBits(v);
    const uint32_t e = static_cast<uint32_t>(b >> 52) & 0x7ffu;
    const uint64_t man = b & ((uint64_t{1} << 52) - 1);
    const uint64_t u = (static_cast<uint64_t>(uniformBits(key, 2 * i)) << 32 | uniformBits(key, 2 * i + 1)) >> 12;
    const uint32_t sign = static_cast<uint32_t>(b >> 63);
    bad |= e == 0x7ffu;
    const uint64_t sig = e ? man | (uint64_t{1} << 52) : man;
    const uint32_t shift = base + 1 - (e > 1u ? e : 1u);
    const uint32_t below = (shift < 64 ? sig >> shift : 0) > u;
    uint32_t c;
    if (e > base) {
      const uint32_t up = e - base + static_cast<uint32_t>(man > u);
      c = up < kNaturalMaxCode ? up : kNaturalMaxCode;
    } else {
      c = below;
    }
    return sign << 8 | c;
  } else {
    uint32_t b;
    if constexpr (std::is_same_v<T, BF16>) b = static_cast<uint32_t>(v.bits) << 16;
    else b = floatBits(Elem<T>::load(v));
    const uint32_t e = (b >> 23) & 0xffu;
    const uint32_t man = b & 0x7fffffu;
    const uint32_t u = uniformBits(key, i) >> 9;
    const uint32_t sign = b >> 31;
    bad |= e == 0xffu;
    const uint32_t up = e + static_cast<uint32_t>(man > u);
    const uint32_t c = up < NaturalLayout<T>::kHighest ? up : NaturalLayout<T>::kHighest;
    return sign << 8 | c;
  }
}

/// 1 when a received code is outside the dtype's range (natural.cpp validate).
template <typename T>
EFCOMM_HD inline uint32_t naturalCodeInvalid(uint32_t code) {
  const uint32_t c = code & 0xffu;
  return (c > NaturalLayout<T>::kHighest) | (c != 0 && c < NaturalLayout<T>::kLowest);
}

/// The decoded value of a valid code (natural.cpp decode).
template <typename T>
EFCOMM_HD inline T naturalValue(uint32_t code, uint32_t base) {
  const uint32_t c = code & 0xffu, sign = code >> 8;
  if constexpr (NaturalLayout<T>::kWide) {
    const uint64_t e = c ? c + base : 0;
    return bitsDouble(static_cast<uint64_t>(sign) << 63 | e << 52);
  } else if constexpr (std::is_same_v<T, BF16>) {
    return BF16{static_cast<uint16_t>((sign << 31 | c << 23) >> 16)};
  } else {
    return Elem<T>::store(bitsFloat(sign << 31 | c << 23));
  }
}

}  // namespace efcomm::cuda
