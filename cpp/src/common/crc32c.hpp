#pragma once
#include <cstddef>
#include <cstdint>

namespace efcomm {
/// CRC32C (Castagnoli), the iSCSI/ext4 checksum; hardware instruction when available.
uint32_t crc32c(uint32_t crc, const void* data, size_t size);
/// CRC32C (initial value 0) of three buffers of `size` bytes each, computed interleaved.
void crc32c3(const uint8_t* const data[3], size_t size, uint32_t out[3]);
}  // namespace efcomm
