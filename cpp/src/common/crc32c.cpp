#include "common/crc32c.hpp"

#include <array>
#include <cstring>

#if defined(__SSE4_2__)
#include <nmmintrin.h>
#endif

namespace efcomm {
namespace {

constexpr uint32_t kPoly = 0x82f63b78u;  // reflected Castagnoli polynomial

std::array<uint32_t, 256> makeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[i] = c;
  }
  return t;
}

}  // namespace

uint32_t crc32c(uint32_t crc, const void* data, size_t size) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
#if defined(__SSE4_2__)
  uint64_t c = crc;
  while (size >= 8) {
    uint64_t v;
    std::memcpy(&v, p, 8);
    c = _mm_crc32_u64(c, v);
    p += 8;
    size -= 8;
  }
  crc = static_cast<uint32_t>(c);
  while (size--) crc = _mm_crc32_u8(crc, *p++);
#else
  static const std::array<uint32_t, 256> table = makeTable();
  while (size--) crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
#endif
  (void)makeTable;
  return ~crc;
}

void crc32c3(const uint8_t* const data[3], size_t size, uint32_t out[3]) {
#if defined(__SSE4_2__)
  uint64_t c0 = 0xffffffffu, c1 = 0xffffffffu, c2 = 0xffffffffu;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t v0, v1, v2;
    std::memcpy(&v0, data[0] + i, 8);
    std::memcpy(&v1, data[1] + i, 8);
    std::memcpy(&v2, data[2] + i, 8);
    c0 = _mm_crc32_u64(c0, v0);
    c1 = _mm_crc32_u64(c1, v1);
    c2 = _mm_crc32_u64(c2, v2);
  }
  out[0] = crc32c(~static_cast<uint32_t>(c0), data[0] + i, size - i);
  out[1] = crc32c(~static_cast<uint32_t>(c1), data[1] + i, size - i);
  out[2] = crc32c(~static_cast<uint32_t>(c2), data[2] + i, size - i);
#else
  for (int k = 0; k < 3; ++k) out[k] = crc32c(0, data[k], size);
#endif
}

}  // namespace efcomm
