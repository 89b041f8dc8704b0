#pragma once
// Little-endian byte writer/reader for headers and parameters. The reader bounds-checks every
// access and throws CorruptMessageError, so decoders can never read outside a buffer.
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "efcomm/error.hpp"

namespace efcomm {

class ByteWriter {
 public:
  template <typename T>
  ByteWriter& put(T v) {
    static_assert(std::is_trivially_copyable_v<T>);
    size_t at = bytes_.size();
    bytes_.resize(at + sizeof(T));
    std::memcpy(bytes_.data() + at, &v, sizeof(T));
    return *this;
  }
  const std::vector<uint8_t>& bytes() const { return bytes_; }

 private:
  std::vector<uint8_t> bytes_;
};

class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size, const char* what) : p_(data), n_(size), what_(what) {}
  template <typename T>
  T get() {
    EFCOMM_CHECK_MSG(n_ - off_ >= sizeof(T) && off_ <= n_, what_, ": truncated (needs ", sizeof(T),
                     " more bytes at offset ", off_, " of ", n_, ")");
    T v;
    std::memcpy(&v, p_ + off_, sizeof(T));
    off_ += sizeof(T);
    return v;
  }
  size_t offset() const { return off_; }
  size_t remaining() const { return n_ - off_; }
  void expectEnd() const {
    EFCOMM_CHECK_MSG(off_ == n_, what_, ": ", n_ - off_, " unexpected trailing bytes");
  }

 private:
  const uint8_t* p_;
  size_t n_;
  size_t off_ = 0;
  const char* what_;
};

/// Unaligned little-endian load/store (x86 and ARM are little-endian; memcpy is one move).
template <typename T>
inline T loadAs(const void* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T>
inline void storeAs(void* p, T v) {
  std::memcpy(p, &v, sizeof(T));
}

}  // namespace efcomm
