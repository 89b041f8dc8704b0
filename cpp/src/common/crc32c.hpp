#pragma once
#include <cstddef>
#include <cstdint>

namespace efcomm {
/// CRC32C (Castagnoli), the iSCSI/ext4 checksum; hardware instruction when available.
uint32_t crc32c(uint32_t crc, const void* data, size_t size);
}  // namespace efcomm
