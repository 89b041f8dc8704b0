#pragma once
// The control plane's wire format (control.cpp): small binary frames over TCP,
//   u32 magic | u16 type | u32 payload length | payload,
// integers little-endian, doubles as their IEEE-754 bits, strings as a length and the bytes.
// Every frame from the network is validated (magic, type, length, field sizes and ranges, no bytes
// left over); a bad one throws ProtocolError, which the receiver treats as a lost connection.

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace efcomm::health::wire {

constexpr uint32_t kMagic = 0x4d484645;  // "EFHM" in the bytes of the stream
constexpr size_t kHeaderBytes = 10;
constexpr uint32_t kMaxPayload = 1u << 20;
constexpr size_t kMaxOpName = 64;
constexpr size_t kMaxKind = 64;

enum class Type : uint16_t {
  kHello = 1,      // agent -> coordinator: token, rank, size, pid
  kReady = 2,      // coordinator -> agent: every rank has connected
  kHeartbeat = 3,  // both ways; from the coordinator before READY: the ranks still missing
  kArrive = 4,     // agent -> coordinator
  kComplete = 5,   // agent -> coordinator
  kBye = 6,        // both ways: leaving on purpose; the coordinator's says how far rank 0 got
  kFinding = 7,    // coordinator -> agent
};

class ProtocolError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct Hello {
  uint64_t token = 0;
  uint32_t rank = 0, size = 0;
  uint64_t pid = 0;
};
struct Arrive {
  uint64_t seq = 0;
  std::string op;
  uint64_t bytes = 0;
  double gap = -1;
};
struct Complete {
  uint64_t seq = 0;
  bool ok = true;
  double seconds = 0, readySeconds = -1;
  std::vector<double> peerSeconds;  // empty or one per rank
};
struct Finding {
  bool fatal = false;
  uint64_t seq = 0;
  double time = 0;  // epoch seconds
  std::string kind;
  std::vector<int> ranks;
  std::string detail;
};

/// Appends fields to a payload.
class Writer {
 public:
  Writer& u8(uint8_t v) {
    s_.push_back(static_cast<char>(v));
    return *this;
  }
  Writer& u16(uint16_t v) { return le(v, 2); }
  Writer& u32(uint32_t v) { return le(v, 4); }
  Writer& u64(uint64_t v) { return le(v, 8); }
  Writer& f64(double v) {
    uint64_t bits;
    std::memcpy(&bits, &v, 8);
    return le(bits, 8);
  }
  Writer& str(const std::string& v) {
    u32(static_cast<uint32_t>(v.size()));
    s_ += v;
    return *this;
  }
  const std::string& bytes() const { return s_; }

 private:
  Writer& le(uint64_t v, int n) {
    for (int i = 0; i < n; ++i) s_.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
    return *this;
  }
  std::string s_;
};

/// Reads fields of a payload; throws ProtocolError when one runs past the end.
class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  uint8_t u8() { return static_cast<uint8_t>(le(1)); }
  uint16_t u16() { return static_cast<uint16_t>(le(2)); }
  uint32_t u32() { return static_cast<uint32_t>(le(4)); }
  uint64_t u64() { return le(8); }
  double f64() {
    const uint64_t bits = le(8);
    double v;
    std::memcpy(&v, &bits, 8);
    return v;
  }
  std::string str(size_t maxBytes) {
    const uint32_t n = u32();
    if (n > maxBytes || n > s_.size() - pos_) throw ProtocolError("string field too long");
    std::string v = s_.substr(pos_, n);
    pos_ += n;
    return v;
  }
  /// The count of a following array of `itemBytes`-byte items, checked against the bytes left.
  uint32_t count(size_t itemBytes, size_t maxItems) {
    const uint32_t n = u32();
    if (n > maxItems || static_cast<uint64_t>(n) * itemBytes > s_.size() - pos_)
      throw ProtocolError("array field too long");
    return n;
  }
  /// Rejects bytes left over.
  void end() const {
    if (pos_ != s_.size()) throw ProtocolError("bytes left over in a frame");
  }

 private:
  uint64_t le(int n) {
    if (s_.size() - pos_ < static_cast<size_t>(n)) throw ProtocolError("frame too short");
    uint64_t v = 0;
    for (int i = 0; i < n; ++i)
      v |= static_cast<uint64_t>(static_cast<uint8_t>(s_[pos_ + static_cast<size_t>(i)])) << (8 * i);
    pos_ += static_cast<size_t>(n);
    return v;
  }
  const std::string& s_;
  size_t pos_ = 0;
};

/// A whole frame: header and payload.
inline std::string frame(Type type, const std::string& payload = {}) {
  Writer w;
  w.u32(kMagic).u16(static_cast<uint16_t>(type)).u32(static_cast<uint32_t>(payload.size()));
  return w.bytes() + payload;
}

/// Takes the first whole frame off the front of `buf` (from offset `pos`, advanced past it): true
/// when there was one. Throws ProtocolError on a bad header (wrong magic, unknown type, length
/// over kMaxPayload).
inline bool nextFrame(const std::string& buf, size_t& pos, Type& type, std::string& payload) {
  if (buf.size() - pos < kHeaderBytes) return false;
  const std::string header = buf.substr(pos, kHeaderBytes);
  Reader r(header);
  if (r.u32() != kMagic) throw ProtocolError("bad magic");
  const uint16_t t = r.u16();
  if (t < static_cast<uint16_t>(Type::kHello) || t > static_cast<uint16_t>(Type::kFinding))
    throw ProtocolError("unknown frame type " + std::to_string(t));
  const uint32_t n = r.u32();
  if (n > kMaxPayload) throw ProtocolError("frame too long");
  if (buf.size() - pos - kHeaderBytes < n) return false;
  type = static_cast<Type>(t);
  payload = buf.substr(pos + kHeaderBytes, n);
  pos += kHeaderBytes + n;
  return true;
}

// ---- messages ------------------------------------------------------------------------------------

inline std::string encode(const Hello& m) {
  return frame(Type::kHello, Writer().u64(m.token).u32(m.rank).u32(m.size).u64(m.pid).bytes());
}
inline Hello decodeHello(const std::string& payload) {
  Reader r(payload);
  Hello m;
  m.token = r.u64();
  m.rank = r.u32();
  m.size = r.u32();
  m.pid = r.u64();
  r.end();
  return m;
}

inline std::string encode(const Arrive& m) {
  return frame(Type::kArrive, Writer().u64(m.seq).str(m.op).u64(m.bytes).f64(m.gap).bytes());
}
inline Arrive decodeArrive(const std::string& payload) {
  Reader r(payload);
  Arrive m;
  m.seq = r.u64();
  m.op = r.str(kMaxOpName);
  m.bytes = r.u64();
  m.gap = r.f64();
  r.end();
  if (!std::isfinite(m.gap)) m.gap = -1;
  return m;
}

inline std::string encode(const Complete& m) {
  Writer w;
  w.u64(m.seq).u8(m.ok ? 1 : 0).f64(m.seconds).f64(m.readySeconds).u32(static_cast<uint32_t>(m.peerSeconds.size()));
  for (const double v : m.peerSeconds) w.f64(v);
  return frame(Type::kComplete, w.bytes());
}
/// `size`: ranks of the job; peerSeconds must be empty or have one entry per rank.
inline Complete decodeComplete(const std::string& payload, int size) {
  Reader r(payload);
  Complete m;
  m.seq = r.u64();
  const uint8_t ok = r.u8();
  if (ok > 1) throw ProtocolError("bad ok flag");
  m.ok = ok == 1;
  m.seconds = r.f64();
  m.readySeconds = r.f64();
  const uint32_t n = r.count(8, static_cast<size_t>(size));
  if (n != 0 && n != static_cast<uint32_t>(size)) throw ProtocolError("peer times for a different group size");
  m.peerSeconds.resize(n);
  for (double& v : m.peerSeconds) {
    v = r.f64();
    if (!std::isfinite(v)) v = -1;
  }
  r.end();
  return m;
}

inline std::string encode(const Finding& m) {
  Writer w;
  w.u8(m.fatal ? 1 : 0).u64(m.seq).f64(m.time).str(m.kind).u32(static_cast<uint32_t>(m.ranks.size()));
  for (const int r : m.ranks) w.u32(static_cast<uint32_t>(r));
  w.str(m.detail);
  return frame(Type::kFinding, w.bytes());
}
/// Ranks must lie in [0, size).
inline Finding decodeFinding(const std::string& payload, int size) {
  Reader r(payload);
  Finding m;
  const uint8_t fatal = r.u8();
  if (fatal > 1) throw ProtocolError("bad fatal flag");
  m.fatal = fatal == 1;
  m.seq = r.u64();
  m.time = r.f64();
  m.kind = r.str(kMaxKind);
  const uint32_t n = r.count(4, static_cast<size_t>(size));
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t rank = r.u32();
    if (rank >= static_cast<uint32_t>(size)) throw ProtocolError("rank out of range");
    m.ranks.push_back(static_cast<int>(rank));
  }
  m.detail = r.str(kMaxPayload);
  r.end();
  return m;
}

/// The coordinator's heartbeat: before READY, the ranks not connected yet (empty afterwards).
inline std::string encodeHeartbeat(const std::vector<int>& missing) {
  Writer w;
  w.u32(static_cast<uint32_t>(missing.size()));
  for (const int r : missing) w.u32(static_cast<uint32_t>(r));
  return frame(Type::kHeartbeat, w.bytes());
}
inline std::vector<int> decodeHeartbeat(const std::string& payload, int size) {
  if (payload.empty()) return {};  // an agent's heartbeat
  Reader r(payload);
  const uint32_t n = r.count(4, static_cast<size_t>(size));
  std::vector<int> missing;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t rank = r.u32();
    if (rank >= static_cast<uint32_t>(size)) throw ProtocolError("rank out of range");
    missing.push_back(static_cast<int>(rank));
  }
  r.end();
  return missing;
}

/// The coordinator's BYE: the collectives rank 0 arrived at before it closed its monitor (its last
/// sequence number + 1; 0: none). Agents fail a later collective at once: rank 0 will not come.
inline std::string encodeCoordinatorBye(uint64_t rank0Reached) {
  return frame(Type::kBye, Writer().u64(rank0Reached).bytes());
}
/// -1 for an empty BYE (a coordinator that does not know), else rank0Reached.
inline int64_t decodeCoordinatorBye(const std::string& payload) {
  if (payload.empty()) return -1;
  Reader r(payload);
  const uint64_t reached = r.u64();
  r.end();
  if (reached > static_cast<uint64_t>(INT64_MAX)) throw ProtocolError("collective count out of range");
  return static_cast<int64_t>(reached);
}

/// A frame without payload (READY, an agent's BYE and HEARTBEAT) must have none.
inline void decodeEmpty(const std::string& payload) {
  if (!payload.empty()) throw ProtocolError("unexpected payload");
}

}  // namespace efcomm::health::wire
