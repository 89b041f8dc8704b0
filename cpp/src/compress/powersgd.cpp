// PowerSGD (Vogels, Karimireddy, Jaggi 2019, "PowerSGD: Practical Low-Rank Gradient
// Compression for Distributed Optimization", Algorithm 1): the rank-r' approximation P Q^T of
// the input viewed as an m x n matrix M, from one power iteration warm-started with the
// previous call's Q:
//   P = M Q_prev;  P = orthonormalize(P);  Q = M^T P;  send P (m x r') and Q (n x r').
//
// The matrix view ("the docs" of the reshape rule):
//   - 2-d input: M is the input (m = shape[0], n = shape[1]).
//   - N-d input, N > 2: m = shape[0], n = the product of the other dimensions (row-major).
//   - 1-d input of d elements and 0-d input (d = 1): n = ceil(sqrt(d)), m = ceil(d / n); the
//     elements fill M row by row and the last row is zero-padded to m n (fewer than n zeros).
//     Decoding returns the first d elements of P Q^T.
//   - Empty input (d = 0): a 0 x 0 matrix; nothing travels.
//   r' = min(rank, m, n).
//
// Warm start: the Q of the last call is kept for the next call on a matrix of the same (m, n);
// another (m, n) starts again from the initial Q, i.i.d. standard normal (Box-Muller on
// SplitMix64(drawKey(seed, 0)), column by column). Before use, Q's columns are scaled to unit
// norm (this leaves the orthonormalized P unchanged and keeps values from growing), and a
// column that is zero (its P column was degenerate last time) restarts from the initial Q.
// The output is deterministic given the seed and the history of inputs.
//
// alpha = 0: P P^T is an orthogonal projection, so ||M - P Q^T|| = ||M - P P^T M|| <= ||M||,
// but there is no contraction guarantee for a fixed r (the error depends on the spectrum and,
// through the warm start, on the history). Vogels et al. use it with error feedback.
//
// Computation is in double; P and Q travel in the input's compute precision (float64 for
// float64 input, float32 otherwise). Q is computed from the rounded P that travels.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "common/bytes.hpp"
#include "common/rng.hpp"
#include "compress/codec.hpp"
#include "compress/common.hpp"
#include "compress/powersgd.hpp"

namespace efcomm {

namespace {

/// Independent partial sums of a dot product: fills vector registers, and fixes the summation
/// order (element j goes to lane j mod kLanes) whatever the tiling or thread count.
constexpr int kLanes = 16;
/// Doubles of Q per column tile of the matrix products (64 KiB: stays in L2 across rows).
constexpr int64_t kTileDoubles = 8192;
/// Most rows per task in P = M Q (fewer when m is small, so that small m still has tasks).
constexpr int64_t kRowGroup = 16;
/// Decoding works in cells of this many rows and columns.
constexpr int64_t kDecodeRows = 64;
constexpr int64_t kDecodeCols = 1024;
/// Q = M^T P sums per-row-block partials of r' n doubles when n r' is below this, otherwise
/// parallelizes over column tiles with no partials.
constexpr int64_t kWideColumns = 32768;
/// At most this many row blocks (bounds the partials' memory at 16 r' n doubles).
constexpr int64_t kMaxRowBlocks = 16;
/// A P column whose norm falls below this fraction of its norm before orthogonalization lies
/// in the span of the previous ones (rank deficiency): it becomes 0.
constexpr double kRankTol = 1e-10;

using View = compress::PowerSgdLayout;

int64_t ceilSqrt(int64_t d) {
  int64_t s = static_cast<int64_t>(std::ceil(std::sqrt(static_cast<double>(d))));
  while (s * s < d) ++s;
  while (s > 0 && (s - 1) * (s - 1) >= d) --s;
  return s;
}

/// Columns per tile so that r' columns of Q fit kTileDoubles; a multiple of kLanes.
int64_t tileWidth(int64_t r) { return std::max<int64_t>(kLanes, kTileDoubles / r / kLanes * kLanes); }

/// Elements of row i actually present (the last row of a reshaped vector is shorter).
int64_t rowLength(const View& v, int64_t d, int64_t i) { return std::min(v.n, d - i * v.n); }

/// Threshold argument of parallelBlocks: threads exactly when m n >= kParallelThreshold.
int64_t threshold(const View& v) {
  return v.m * v.n >= kParallelThreshold ? 0 : std::numeric_limits<int64_t>::max();
}

/// acc[j mod kLanes] += x[j] q[j] for j < len.
template <typename T>
void laneDot(const T* x, const double* q, int64_t len, double* acc) {
  double a[kLanes];
  std::memcpy(a, acc, sizeof(a));
  int64_t j = 0;
  for (; j + kLanes <= len; j += kLanes)
    for (int l = 0; l < kLanes; ++l) a[l] += static_cast<double>(Elem<T>::load(x[j + l])) * q[j + l];
  for (int l = 0; j < len; ++j, ++l) a[l] += static_cast<double>(Elem<T>::load(x[j])) * q[j];
  std::memcpy(acc, a, sizeof(a));
}

double sumLanes(const double* a) {
  double s = 0;
  for (int l = 0; l < kLanes; ++l) s += a[l];
  return s;
}

}  // namespace

namespace compress::powersgd {

/// The matrix view of a tensor (see the file comment).
PowerSgdLayout matrixView(const std::vector<int64_t>& shape, int64_t d, int64_t rank) {
  int64_t m = 0, n = 0;
  if (d > 0 && shape.size() >= 2) {
    m = shape[0];
    n = d / m;
  } else if (d > 0) {
    n = ceilSqrt(d);
    m = (d + n - 1) / n;
  }
  return {m, n, std::min({rank, m, n})};
}

size_t payloadBytes(const PowerSgdLayout& v, DType dt) {
  const size_t computeBytes = dt == DType::kFloat64 ? 8 : 4;
  return static_cast<size_t>(v.r) * static_cast<size_t>(v.m + v.n) * computeBytes;
}

double dot(const double* x, const double* y, int64_t n) {
  double acc[kLanes] = {};
  laneDot(x, y, n, acc);
  return sumLanes(acc);
}

/// The initial Q, column-major (column k at [k n, (k + 1) n)): i.i.d. N(0, 1) by Box-Muller.
std::vector<double> initialQ(uint64_t seed, int64_t n, int64_t r) {
  std::vector<double> q(static_cast<size_t>(n * r));
  SplitMix64 g(drawKey(seed, 0));
  const double twoPi = 6.283185307179586;
  for (size_t i = 0; i < q.size(); i += 2) {
    const double u1 = 1.0 - g.uniform(), u2 = g.uniform();  // u1 in (0, 1]: log(u1) is finite
    const double rad = std::sqrt(-2.0 * std::log(u1));
    q[i] = rad * std::cos(twoPi * u2);
    if (i + 1 < q.size()) q[i + 1] = rad * std::sin(twoPi * u2);
  }
  return q;
}

/// Scales each column of q to unit norm; a zero column restarts from the initial Q.
void prepareQ(std::vector<double>& q, const std::vector<double>& init, int64_t n, int64_t r) {
  for (int64_t k = 0; k < r; ++k) {
    double* col = q.data() + k * n;
    double nrm = std::sqrt(dot(col, col, n));
    if (nrm == 0) {
      std::copy(init.begin() + k * n, init.begin() + (k + 1) * n, col);
      nrm = std::sqrt(dot(col, col, n));
    }
    if (nrm > 0) {
      for (int64_t j = 0; j < n; ++j) col[j] /= nrm;
    }
  }
}

/// Modified Gram-Schmidt with one re-orthogonalization pass ("twice is enough", Giraud et al.
/// 2005) on the columns of p (m x r', column-major). Each column is first scaled by its largest
/// magnitude so norms neither overflow nor underflow; a column that is (numerically) in the
/// span of the previous ones becomes 0 rather than amplified noise or NaN.
void orthonormalize(double* p, int64_t m, int64_t r) {
  for (int64_t k = 0; k < r; ++k) {
    double* col = p + k * m;
    double big = 0;
    for (int64_t i = 0; i < m; ++i) big = std::max(big, std::abs(col[i]));
    if (big > 0) {
      for (int64_t i = 0; i < m; ++i) col[i] /= big;
    }
    const double before = std::sqrt(dot(col, col, m));
    for (int pass = 0; pass < 2; ++pass) {
      for (int64_t l = 0; l < k; ++l) {
        const double* prev = p + l * m;
        const double c = dot(col, prev, m);
        for (int64_t i = 0; i < m; ++i) col[i] -= c * prev[i];
      }
    }
    const double after = std::sqrt(dot(col, col, m));
    const double scale = after > kRankTol * before ? 1.0 / after : 0.0;
    for (int64_t i = 0; i < m; ++i) col[i] *= scale;
  }
}


namespace {

// max_i sum_k |P_ik| * max |Q| <= dtype's largest finite value.
bool decodedRangeFits(const std::vector<double>& p, const std::vector<double>& q, const PowerSgdLayout& v,
                      DType dtype) {
  double rowSum = 0, qMax = 0;
  for (int64_t i = 0; i < v.m; ++i) {
    double sum = 0;
    for (int64_t k = 0; k < v.r; ++k) sum += std::fabs(p[static_cast<size_t>(k * v.m + i)]);
    rowSum = std::max(rowSum, sum);
  }
  for (double e : q) qMax = std::max(qMax, std::fabs(e));
  const double maxFinite = dtype == DType::kFloat16    ? 65504.0
                           : dtype == DType::kBFloat16 ? 3.3895313892515355e38
                           : dtype == DType::kFloat32  ? static_cast<double>(std::numeric_limits<float>::max())
                                                       : std::numeric_limits<double>::max();
  return rowSum * qMax <= maxFinite;
}

template <typename C>
std::vector<double> loadFactors(const uint8_t* p, size_t count) {
  std::vector<double> f(count);
  for (size_t i = 0; i < count; ++i) {
    f[i] = static_cast<double>(loadAs<C>(p + i * sizeof(C)));
    EFCOMM_CHECK_MSG(std::isfinite(f[i]), "powersgd: factor value ", i, " is not finite");
  }
  return f;
}

}  // namespace

void checkDecodedRange(const std::vector<double>& p, const std::vector<double>& q, const PowerSgdLayout& v,
                       DType dtype) {
  if (!decodedRangeFits(p, q, v, dtype))
    throw NonFiniteError("powersgd.compress: decoded values could exceed the " + dtypeName(dtype) +
                         " range; the input's magnitude is too large");
}

void checkFactors(const uint8_t* payload, const PowerSgdLayout& v, DType dtype) {
  const size_t count = static_cast<size_t>(v.r * (v.m + v.n));
  std::vector<double> f = dtype == DType::kFloat64 ? loadFactors<double>(payload, count)
                                                   : loadFactors<float>(payload, count);
  const std::vector<double> q(f.begin() + v.m * v.r, f.end());
  f.resize(static_cast<size_t>(v.m * v.r));
  EFCOMM_CHECK_MSG(decodedRangeFits(f, q, v, dtype), "powersgd: the factors decode beyond the ", dtypeName(dtype),
                   " range");
}

}  // namespace compress::powersgd

namespace {

using compress::powersgd::checkDecodedRange;
using compress::powersgd::dot;
using compress::powersgd::initialQ;
using compress::powersgd::matrixView;
using compress::powersgd::orthonormalize;
using compress::powersgd::payloadBytes;
using compress::powersgd::prepareQ;
using compress::powersgd::roundToWire;

/// P = M Q with Q and P column-major (Q: r' x n stored as n-long columns, P: m-long columns).
/// Rows are processed in groups; for each column tile, the tile of Q stays in cache while the
/// group's row segments stream through.
template <typename T>
void multiplyMQ(const T* in, int64_t d, const View& v, const double* q, double* p) {
  const int64_t r = v.r, w = tileWidth(r);
  parallelBlocks(v.m, std::clamp<int64_t>(v.m / 8, 1, kRowGroup), [&](int64_t, int64_t lo, int64_t hi) {
    std::vector<double> acc(static_cast<size_t>((hi - lo) * r * kLanes), 0.0);
    for (int64_t j0 = 0; j0 < v.n; j0 += w) {
      for (int64_t i = lo; i < hi; ++i) {
        const int64_t len = std::min(w, rowLength(v, d, i) - j0);
        if (len <= 0) continue;
        const T* row = in + i * v.n + j0;
        for (int64_t k = 0; k < r; ++k) laneDot(row, q + k * v.n + j0, len, &acc[((i - lo) * r + k) * kLanes]);
      }
    }
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t k = 0; k < r; ++k) p[k * v.m + i] = sumLanes(&acc[((i - lo) * r + k) * kLanes]);
  }, threshold(v));
}

/// Q = M^T P (column-major, like P). Work is cut into (row block, column tile) cells that do
/// not depend on the thread count; a cell accumulates its rows in order into its row block's
/// partial, and partials are added in row-block order.
template <typename T>
void multiplyMtP(const T* in, int64_t d, const View& v, const double* p, double* q) {
  const int64_t r = v.r, w = tileWidth(r), tiles = (v.n + w - 1) / w;
  const int64_t blocks = v.n * r >= kWideColumns
                             ? 1
                             : std::clamp<int64_t>(v.m * v.n / kParallelThreshold, 1, std::min(kMaxRowBlocks, v.m));
  const int64_t rows = (v.m + blocks - 1) / blocks;
  std::vector<double> partials(blocks > 1 ? static_cast<size_t>(blocks * r * v.n) : 0);
  auto target = [&](int64_t b) { return blocks > 1 ? partials.data() + b * r * v.n : q; };
  parallelBlocks(blocks * tiles, 1, [&](int64_t cell, int64_t, int64_t) {
    const int64_t b = cell / tiles, j0 = (cell % tiles) * w, width = std::min(w, v.n - j0);
    double* out = target(b);
    for (int64_t k = 0; k < r; ++k) std::fill_n(out + k * v.n + j0, width, 0.0);
    const int64_t end = std::min(v.m, (b + 1) * rows);
    int64_t i = b * rows;
    // Four full rows at a time: a quarter of the read-modify-write traffic on the Q tile.
    for (; i + 4 <= end && rowLength(v, d, i + 3) - j0 >= width; i += 4) {
      const T* r0 = in + i * v.n + j0;
      const T *r1 = r0 + v.n, *r2 = r1 + v.n, *r3 = r2 + v.n;
      for (int64_t k = 0; k < r; ++k) {
        const double* pk = p + k * v.m + i;
        double* o = out + k * v.n + j0;
        for (int64_t j = 0; j < width; ++j)
          o[j] += pk[0] * static_cast<double>(Elem<T>::load(r0[j])) + pk[1] * static_cast<double>(Elem<T>::load(r1[j])) +
                  pk[2] * static_cast<double>(Elem<T>::load(r2[j])) + pk[3] * static_cast<double>(Elem<T>::load(r3[j]));
      }
    }
    for (; i < end; ++i) {
      const int64_t len = std::min(width, rowLength(v, d, i) - j0);
      const T* row = in + i * v.n + j0;
      for (int64_t k = 0; k < r; ++k) {
        const double pk = p[k * v.m + i];
        double* o = out + k * v.n + j0;
        for (int64_t j = 0; j < len; ++j) o[j] += pk * static_cast<double>(Elem<T>::load(row[j]));
      }
    }
  }, threshold(v));
  if (blocks > 1) {
    parallelRanges(r * v.n, [&](int64_t lo, int64_t hi) {
      for (int64_t e = lo; e < hi; ++e) {
        double s = partials[e];
        for (int64_t b = 1; b < blocks; ++b) s += partials[b * r * v.n + e];
        q[e] = s;
      }
    });
  }
}

class PowerSGD final : public Compressor {
 public:
  PowerSGD(int64_t rank, uint64_t seed) : rank_(rank), seed_(seed) {}
  std::string name() const override { return "powersgd"; }
  std::string spec() const override {
    return "powersgd:rank=" + std::to_string(rank_) + ",seed=" + std::to_string(seed_);
  }
  CompressorId id() const override { return CompressorId::kPowerSGD; }
  bool biased() const override { return true; }
  double alpha(int64_t) const override { return 0.0; }
  std::optional<double> omega(int64_t) const override { return std::nullopt; }
  size_t wireBytes(const std::vector<int64_t>& shape, DType dt) const override {
    const int64_t d = shapeNumel(shape);
    const View v = matrixView(shape, d, rank_);
    return messageBytes(static_cast<int>(shape.size()), paramBytes(v).size(), payloadBytes(v, dt));
  }

  void setRounds(compress::PowerSgdRounds rounds) { rounds_ = std::move(rounds); }

  void setWarmStart(int64_t m, int64_t n, const std::vector<double>& q) {
    const int64_t r = std::min({rank_, m, n});
    EFCOMM_CHECK(static_cast<int64_t>(q.size()) == n * r, "powersgd warm start: ", q.size(), " values for ", n,
                 " x ", r);
    if (m != m_ || n != n_) init_ = initialQ(seed_, n, r);
    q_ = q;
    m_ = m;
    n_ = n;
  }

 protected:
  Message doCompress(const ConstTensorView& x, uint64_t) override {
    const int64_t d = x.numel();
    const View v = matrixView(x.shape, d, rank_);
    const size_t bytes = payloadBytes(v, x.dtype);
    Message msg = Message::build(id(), x.dtype, x.shape, 0, paramBytes(v), bytes);
    if (v.r == 0) {
      msg.finish(0);
      return msg;
    }
    const bool warm = v.m == m_ && v.n == n_;
    std::vector<double> fresh = warm ? std::vector<double>() : initialQ(seed_, v.n, v.r);
    const std::vector<double>& init = warm ? init_ : fresh;
    std::vector<double> q = warm ? q_ : init;
    prepareQ(q, init, v.n, v.r);
    std::vector<double> p(static_cast<size_t>(v.m * v.r));
    uint8_t* out = msg.mutablePayload();
    dispatchDType(x.dtype, [&](auto tag) {
      using T = typename decltype(tag)::type;
      using C = typename Elem<T>::Compute;
      const T* in = static_cast<const T*>(x.data);
      multiplyMQ(in, d, v, q.data(), p.data());
      // The fused check: Inf * q is +-Inf or NaN for every finite q, so a non-finite element
      // leaves its row's entries of P non-finite. Nothing below touches the warm-start state.
      const bool finite = std::all_of(p.begin(), p.end(), [](double e) { return std::isfinite(e); });
      if (rounds_.sumP) rounds_.sumP(p, finite);  // throws on every worker unless all are finite
      if (!finite) {
        throwIfNonFinite(x, "powersgd.compress");
        throw NonFiniteError("powersgd.compress: M Q overflows; the input's magnitude is too large");
      }
      orthonormalize(p.data(), v.m, v.r);
      roundToWire<C>(p);  // finite: the entries of an orthonormal P lie in [-1, 1]
      if (rounds_.sharedP) rounds_.sharedP(p);
      multiplyMtP(in, d, v, p.data(), q.data());
      if (!roundToWire<C>(q))
        throw NonFiniteError("powersgd.compress: Q = M^T P overflows the factors' precision; the input's magnitude is too large");
      checkDecodedRange(p, q, v, x.dtype);
      for (size_t i = 0; i < p.size(); ++i) storeAs<C>(out + i * sizeof(C), static_cast<C>(p[i]));
      uint8_t* qOut = out + p.size() * sizeof(C);
      for (size_t i = 0; i < q.size(); ++i) storeAs<C>(qOut + i * sizeof(C), static_cast<C>(q[i]));
    });
    q_ = std::move(q);
    if (!warm) init_ = std::move(fresh);
    m_ = v.m;
    n_ = v.n;
    msg.finish(bytes);
    return msg;
  }

  // The warm start: without it a restored run would restart the power iteration.
  void saveExtra(StateDict& d) const override {
    d.meta["warm"] = m_ >= 0 ? "1" : "0";
    if (m_ < 0) return;
    d.meta["m"] = std::to_string(m_);
    d.meta["n"] = std::to_string(n_);
    d.tensors["q"] = StateTensor::fromDoubles(q_);
    d.tensors["init"] = StateTensor::fromDoubles(init_);
  }

  void loadExtra(const StateDict& d) override {
    const uint64_t warm = d.integer("warm");
    EFCOMM_CHECK(warm <= 1, "powersgd state: 'warm' must be 0 or 1, got ", warm);
    if (warm == 0) {
      q_.clear();
      init_.clear();
      m_ = n_ = -1;
      return;
    }
    const uint64_t m = d.integer("m"), n = d.integer("n");
    EFCOMM_CHECK(m >= 1 && n >= 1 && m <= (uint64_t{1} << 40) && n <= (uint64_t{1} << 40),
                 "powersgd state: bad matrix shape ", m, " x ", n);
    const int64_t r = std::min<int64_t>(rank_, static_cast<int64_t>(std::min(m, n)));
    const StateTensor& q = d.tensor("q", DType::kFloat64, static_cast<int64_t>(n) * r);
    const StateTensor& init = d.tensor("init", DType::kFloat64, static_cast<int64_t>(n) * r);
    const auto doubles = [](const StateTensor& t) {
      std::vector<double> v(static_cast<size_t>(t.numel()));
      if (!v.empty()) std::memcpy(v.data(), t.bytes.data(), t.bytes.size());
      return v;
    };
    q_ = doubles(q);
    init_ = doubles(init);
    m_ = static_cast<int64_t>(m);
    n_ = static_cast<int64_t>(n);
  }

 private:
  std::vector<uint8_t> paramBytes(const View& v) const {
    return ByteWriter()
        .put<uint32_t>(static_cast<uint32_t>(rank_))
        .put<uint64_t>(static_cast<uint64_t>(v.m))
        .put<uint64_t>(static_cast<uint64_t>(v.n))
        .bytes();
  }

  int64_t rank_;
  uint64_t seed_;
  // Warm start: Q of the last call (column-major, values as sent) for an m_ x n_ matrix, and
  // the initial Q of that shape (restarts zero columns).
  std::vector<double> q_, init_;
  int64_t m_ = -1, n_ = -1;
  compress::PowerSgdRounds rounds_;  // distributed PowerSGD's collective steps, if installed
};

PowerSGD& asPowerSgd(Compressor& c) {
  auto* p = dynamic_cast<PowerSGD*>(&c);
  EFCOMM_CHECK(p != nullptr, "expected a powersgd compressor, got ", c.spec());
  return *p;
}

/// Parameters and payload size: the checks decode relies on to stay in bounds.
View parseLayout(const Message& msg) {
  ByteReader rd(msg.params(), msg.paramsSize(), "powersgd parameters");
  const int64_t rank = rd.get<uint32_t>();
  const uint64_t m = rd.get<uint64_t>(), n = rd.get<uint64_t>();
  rd.expectEnd();
  EFCOMM_CHECK_MSG(rank >= 1, "powersgd: rank must be at least 1");
  const View v = matrixView(msg.shape(), msg.numel(), rank);
  EFCOMM_CHECK_MSG(m == static_cast<uint64_t>(v.m) && n == static_cast<uint64_t>(v.n), "powersgd: a ", m, " x ",
                   n, " matrix does not match shape ", shapeString(msg.shape()), " (expected ", v.m, " x ", v.n, ")");
  const size_t want = payloadBytes(v, msg.dtype());
  EFCOMM_CHECK_MSG(msg.payloadSize() == want, "powersgd: payload of ", msg.payloadSize(), " bytes; rank ", v.r,
                   " factors of a ", v.m, " x ", v.n, " matrix need ", want);
  return v;
}

void validate(const Message& msg) { compress::powersgd::checkFactors(msg.payload(), parseLayout(msg), msg.dtype()); }

void decode(const Message& msg, const TensorView& out) {
  const View v = parseLayout(msg);
  const int64_t d = msg.numel();
  if (v.r == 0) return;
  dispatchDType(out.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    using C = typename Elem<T>::Compute;
    std::vector<C> f(static_cast<size_t>(v.r * (v.m + v.n)));
    std::memcpy(f.data(), msg.payload(), f.size() * sizeof(C));
    const C* p = f.data();
    const C* q = p + v.m * v.r;
    T* o = static_cast<T*>(out.data);
    // Row i of P Q^T = sum_k P[i, k] Q[:, k], in cells of kDecodeRows rows by kDecodeCols
    // columns: the cell's slice of Q stays in cache across its rows.
    const int64_t tiles = (v.n + kDecodeCols - 1) / kDecodeCols;
    const int64_t groups = (v.m + kDecodeRows - 1) / kDecodeRows;
    parallelBlocks(groups * tiles, 1, [&](int64_t cell, int64_t, int64_t) {
      C buf[kDecodeCols];
      const int64_t j0 = (cell % tiles) * kDecodeCols, i0 = (cell / tiles) * kDecodeRows;
      for (int64_t i = i0; i < std::min(v.m, i0 + kDecodeRows); ++i) {
        const int64_t w = std::min(kDecodeCols, rowLength(v, d, i) - j0);
        if (w <= 0) continue;
        const C p0 = p[i];
        for (int64_t j = 0; j < w; ++j) buf[j] = p0 * q[j0 + j];
        for (int64_t k = 1; k < v.r; ++k) {
          const C pk = p[k * v.m + i];
          const C* qk = q + k * v.n + j0;
          for (int64_t j = 0; j < w; ++j) buf[j] += pk * qk[j];
        }
        for (int64_t j = 0; j < w; ++j) o[i * v.n + j0 + j] = Elem<T>::store(buf[j]);
      }
    }, threshold(v));
  });
}

}  // namespace

namespace compress {

void setPowerSgdRounds(Compressor& c, PowerSgdRounds rounds) { asPowerSgd(c).setRounds(std::move(rounds)); }

void setPowerSgdWarmStart(Compressor& c, int64_t m, int64_t n, const std::vector<double>& q) {
  asPowerSgd(c).setWarmStart(m, n, q);
}

PowerSgdLayout powerSgdLayout(const uint8_t* params, size_t size) {
  ByteReader rd(params, size, "powersgd parameters");
  const int64_t rank = rd.get<uint32_t>();
  const auto m = static_cast<int64_t>(rd.get<uint64_t>()), n = static_cast<int64_t>(rd.get<uint64_t>());
  return {m, n, std::min({rank, m, n})};
}

}  // namespace compress

Codec powersgdCodec() {
  return {"powersgd", CompressorId::kPowerSGD,
          [](SpecParams& sp) -> std::unique_ptr<Compressor> {
            const int64_t rank = sp.getInt("rank").value_or(4);
            const int64_t seed = sp.getInt("seed").value_or(0);
            sp.finish("rank (>= 1), seed (>= 0)");
            EFCOMM_CHECK(rank >= 1 && rank <= 0xffffffff, "powersgd: rank must be between 1 and 2^32 - 1, got ", rank);
            EFCOMM_CHECK(seed >= 0, "powersgd: seed must be >= 0, got ", seed);
            return std::make_unique<PowerSGD>(rank, static_cast<uint64_t>(seed));
          },
          validate, decode};
}

}  // namespace efcomm
