#pragma once
// Host glue shared by helper A's device codecs (identity, cast, sign, qsgd, natural, randk,
// blockquant): spec parsing, the message frame, launch dispatch on alignment.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>
#include <string>
#include <vector>

#include "common/hd_pack.hpp"
#include "common/kernels.cuh"
#include "common/runtime.hpp"
#include "common/spec.hpp"
#include "common/wire.hpp"
#include "compress/device_codec.hpp"

namespace efcomm::cuda {

/// The compressor's parameters, from its canonical spec string.
inline SpecParams specOf(const Compressor& c) { return SpecParams::parse(c.spec()); }

/// A message under construction in a DeviceBuffer.
struct Frame {
  DeviceMessageLayout layout;
  uint8_t* payload = nullptr;
};
inline Frame beginFrame(DeviceBuffer& out, const Compressor& c, const ConstTensorView& x,
                        const std::vector<uint8_t>& params, size_t payloadBytes, cudaStream_t stream,
                        uint16_t flags = 0) {
  Frame f;
  f.layout = beginMessage(out, c.id(), x.dtype, x.shape, flags, params, payloadBytes, stream);
  f.payload = static_cast<uint8_t*>(out.data()) + f.layout.headerBytes;
  return f;
}

/// Seals the frame's message (header, checksum, trailer: one kernel), synchronizes `stream`
/// once and returns the message size; `flags` (if not null) receives the first `count` mailbox
/// flag words the codec's kernels set (clearMailboxFlags before them).
inline size_t sealAndWait(DeviceBuffer& out, const Frame& f, size_t payloadBytes, cudaStream_t stream,
                          uint32_t* flags = nullptr, int count = 0) {
  const size_t size = sealMessage(out, f.layout, payloadBytes, stream);
  EFCOMM_CUDA_CHECK(cudaStreamSynchronize(stream));
  if (flags) {
    const volatile uint32_t* m = mailbox().host->flags;
    for (int i = 0; i < count; ++i) flags[i] = m[i];
  }
  return size;
}

/// The payload of a device message whose header was read by readMessage (msg 16-byte aligned).
inline const uint8_t* payloadOf(const DeviceMessageHeader& h, const void* msg) {
  return static_cast<const uint8_t*>(msg) + h.headerBytes;
}

/// Grid for n work items, 1 block when n == 0 (kernels then do nothing).
inline int blocksFor(int64_t n, int threads = kThreads) { return gridFor(n < 1 ? 1 : n, threads); }

/// Calls fn(std::integral_constant<bool, aligned>) with aligned = every pointer is 16-byte
/// aligned, so that kernels instantiate a vector path and a scalar one.
template <typename Fn>
void withAlignment(std::initializer_list<const void*> ptrs, Fn&& fn) {
  bool aligned = true;
  for (const void* p : ptrs) aligned = aligned && isAligned(p, 16);
  if (aligned) fn(std::true_type{});
  else fn(std::false_type{});
}

/// Stores the first `nbytes` bytes of a packed group at dst (byte stores: any alignment).
__device__ __forceinline__ void storeGroup(uint8_t* dst, const PackedGroup& g, int nbytes) {
  for (int b = 0; b < nbytes; ++b) dst[b] = g.byte(b);
}
/// Loads a packed group of `nbytes` bytes (the rest zero).
__device__ __forceinline__ PackedGroup loadGroup(const uint8_t* src, int nbytes) {
  PackedGroup g;
  for (int b = 0; b < nbytes; ++b) g.setByte(b, src[b]);
  return g;
}

/// Reads a little-endian T from host bytes.
template <typename T>
T hostLoad(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

}  // namespace efcomm::cuda
