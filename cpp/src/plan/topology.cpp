// Topologies of plan.hpp: leaf-spine (multi-rail, multi-plane) and k-ary fat-tree fabrics built
// from a spec, and any fabric read from JSON.
//
// Constructed fabrics lay their nodes and links out in a fixed order, so every candidate path is
// computed arithmetically from (src, dst, index): no per-pair tables, no allocation, O(1) per path
// without failed links; with them, bitmasks of usable switch links make counting and selecting
// usable candidates a popcount over (planes x spines / 64) words. Fabrics read from JSON whose
// structure is not that of a constructor ("custom") get all shortest paths between the endpoints
// (up to 64), found by one BFS per source endpoint, cached, and enumerated by path counting (no
// path list is ever stored).

#include <algorithm>
#include <atomic>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "common/json.hpp"
#include "efcomm/error.hpp"
#include "efcomm/plan.hpp"

namespace efcomm::plan {

namespace {

// Gbit/s to bytes/s: exact in binary (1.25e8 = 5^9 x 2^6), the same factor everywhere.
constexpr double kBytesPerGbit = 1e9 / 8;
// Candidate paths of a custom fabric per endpoint pair, at most.
constexpr int kMaxCustomPaths = 64;
// Fabrics larger than this (links) are refused: ids are ints and paths are computed in int.
constexpr int64_t kMaxLinks = int64_t{1} << 30;
// The longest candidate path of a constructed fabric (fat-tree: ep-leaf-agg-core-agg-leaf-ep).
constexpr int kMaxFixedPath = 6;

// Set bits of a & b over `words` words.
int andCount(const uint64_t* a, const uint64_t* b, int words) {
  int count = 0;
  for (int i = 0; i < words; ++i) count += __builtin_popcountll(a[i] & b[i]);
  return count;
}

// The position of set bit `index` (from 0, lowest first) of a & b; index < andCount(a, b).
int andSelect(const uint64_t* a, const uint64_t* b, int words, int index) {
  for (int i = 0; i < words; ++i) {
    uint64_t w = a[i] & b[i];
    const int count = __builtin_popcountll(w);
    if (index < count) {
      for (; index > 0; --index) w &= w - 1;
      return i * 64 + __builtin_ctzll(w);
    }
    index -= count;
  }
  return -1;
}

enum class Shape { kLeafSpine, kClos, kCustom };

const char* shapeName(Shape shape) {
  switch (shape) {
    case Shape::kLeafSpine: return "leaf_spine";
    case Shape::kClos: return "clos";
    case Shape::kCustom: return "custom";
  }
  return "custom";
}

}  // namespace

const char* nodeKindName(NodeKind kind) {
  switch (kind) {
    case NodeKind::kEndpoint: return "endpoint";
    case NodeKind::kLeaf: return "leaf";
    case NodeKind::kSpine: return "spine";
    case NodeKind::kAgg: return "agg";
    case NodeKind::kCore: return "core";
  }
  return "endpoint";
}

// Shortest-path counts from one source endpoint of a custom fabric: the BFS distance of every node
// and the number of shortest paths reaching it (saturating at kMaxCustomPaths).
struct SourceDag {
  std::vector<int> dist;
  std::vector<uint8_t> count;
};

// Lazily built SourceDags, one per source endpoint, shared by threads reading one Topology: a slot
// is published once with compare-exchange. A copy starts empty (the copy is about to change).
class DagCache {
 public:
  explicit DagCache(int endpoints = 0)
      : size_(endpoints), slots_(new std::atomic<SourceDag*>[endpoints > 0 ? endpoints : 1]) {
    for (int i = 0; i < size_; ++i) slots_[i].store(nullptr, std::memory_order_relaxed);
  }
  DagCache(const DagCache& other) : DagCache(other.size_) {}
  DagCache& operator=(const DagCache& other) {
    if (this != &other) {
      clear();
      *this = DagCache(other.size_);
    }
    return *this;
  }
  DagCache& operator=(DagCache&& other) noexcept {
    clear();
    size_ = other.size_;
    slots_ = std::move(other.slots_);
    other.size_ = 0;
    return *this;
  }
  ~DagCache() { clear(); }

  void clear() {
    for (int i = 0; i < size_; ++i) delete slots_[i].exchange(nullptr);
  }

  template <typename Build>
  const SourceDag& get(int src, Build build) const {
    SourceDag* dag = slots_[src].load(std::memory_order_acquire);
    if (dag != nullptr) return *dag;
    auto fresh = std::make_unique<SourceDag>(build());
    SourceDag* expected = nullptr;
    if (slots_[src].compare_exchange_strong(expected, fresh.get(), std::memory_order_acq_rel)) return *fresh.release();
    return *expected;
  }

 private:
  int size_;
  std::unique_ptr<std::atomic<SourceDag*>[]> slots_;
};

struct Topology::Impl {
  Shape shape = Shape::kCustom;
  int hosts = 0, nics = 1;
  std::vector<Node> nodes;
  std::vector<Link> links;
  std::vector<int> endpointNode;  // rank -> node id
  std::vector<int> rankOfNode;    // node id -> rank, -1 for switches
  // Out- and in-links of every node (CSR), each sorted by the node at the other end.
  std::vector<int> outStart, outLinks, inStart, inLinks;
  int failedLinks = 0;
  // With failed links, constructed shapes keep bitmasks of their usable switch links, `words`
  // 64-bit words each. Leaf-spine: bit s of upOk[(p, leaf)] = leaf -> spine s usable, of downOk =
  // spine s -> leaf. Clos: bit j of upOk[leaf] / downOk[leaf] for leaf <-> agg j, bit m of
  // coreUpOk[(pod, j)] / coreDownOk[(pod, j)] for agg j <-> core j*h + m. Counting usable
  // candidates is then a popcount of an AND, and selecting one finds the index-th set bit.
  int words = 0;
  std::vector<uint64_t> upOk, downOk, coreUpOk, coreDownOk;

  // Constructed shapes (E endpoints; endpoint r is node r). Leaf-spine (L leaves, S spines per
  // plane): leaf l of plane p is node E + p(L + S) + l, spine s node E + p(L + S) + L + s; host
  // cable (p, r) is links 2(pE + r) (up) and +1 (down), fabric cable (p, l, s) links 2PE +
  // 2((pL + l)S + s) (leaf -> spine) and +1. Clos (h = k/2): leaf i of pod q is node E + qh + i,
  // agg j node E + kh + qh + j, core c node E + 2kh + c; host cable r is links 2r, 2r + 1,
  // leaf-agg cable (leaf qh + i, j) links 2E + 2((qh + i)h + j) and +1, agg-core cable (q, j, m)
  // links 2E + 2khh + 2((qh + j)h + m) and +1 (core jh + m).
  LeafSpineSpec leafSpine;
  ClosSpec clos;  // hostsPerLeaf resolved

  DagCache dags;

  int endpoints() const { return static_cast<int>(endpointNode.size()); }

  // ---- constructed fabrics: the leaf of endpoint r (within a plane / within the fabric) ----
  int lsLeafOf(int r) const {
    const int host = r / nics;
    if (!leafSpine.railOptimized) return host / leafSpine.hostsPerLeaf;
    return (host / leafSpine.hostsPerLeaf) * nics + r % nics;
  }
  int lsHostLinks() const { return 2 * leafSpine.planes * endpoints(); }
  int lsUp(int plane, int r) const { return 2 * (plane * endpoints() + r); }
  int lsFabric(int plane, int leaf, int spine) const {
    return lsHostLinks() + 2 * ((plane * leafSpine.leaves + leaf) * leafSpine.spines + spine);
  }
  int closHalf() const { return clos.k / 2; }
  int closLeafOf(int r) const { return (r / nics) / clos.hostsPerLeaf; }  // global leaf index
  int closLeafAgg(int leaf, int j) const { return 2 * endpoints() + 2 * (leaf * closHalf() + j); }
  int closAggCore(int pod, int j, int m) const {
    const int h = closHalf();
    return 2 * endpoints() + 2 * clos.k * h * h + 2 * ((pod * h + j) * h + m);
  }

  // Candidates of a constructed fabric ignoring failures (src, dst on different hosts).
  int fixedCount(int src, int dst) const {
    if (shape == Shape::kLeafSpine) {
      const int perPlane = lsLeafOf(src) == lsLeafOf(dst) ? 1 : leafSpine.spines;
      return leafSpine.planes * perPlane;
    }
    const int la = closLeafOf(src), lb = closLeafOf(dst), h = closHalf();
    if (la == lb) return 1;
    return la / h == lb / h ? h : h * h;
  }

  // Candidate `index` of a constructed fabric ignoring failures, into out; returns its length.
  int fixedPath(int src, int dst, int index, int* out) const {
    if (shape == Shape::kLeafSpine) {
      const int la = lsLeafOf(src), lb = lsLeafOf(dst);
      if (la == lb) {
        out[0] = lsUp(index, src);
        out[1] = lsUp(index, dst) + 1;
        return 2;
      }
      const int plane = index / leafSpine.spines, spine = index % leafSpine.spines;
      out[0] = lsUp(plane, src);
      out[1] = lsFabric(plane, la, spine);
      out[2] = lsFabric(plane, lb, spine) + 1;
      out[3] = lsUp(plane, dst) + 1;
      return 4;
    }
    const int la = closLeafOf(src), lb = closLeafOf(dst), h = closHalf();
    out[0] = 2 * src;
    if (la == lb) {
      out[1] = 2 * dst + 1;
      return 2;
    }
    const int podA = la / h, podB = lb / h;
    if (podA == podB) {
      out[1] = closLeafAgg(la, index);
      out[2] = closLeafAgg(lb, index) + 1;
      out[3] = 2 * dst + 1;
      return 4;
    }
    const int j = index / h, m = index % h;
    out[1] = closLeafAgg(la, j);
    out[2] = closAggCore(podA, j, m);
    out[3] = closAggCore(podB, j, m) + 1;
    out[4] = closLeafAgg(lb, j) + 1;
    out[5] = 2 * dst + 1;
    return 6;
  }

  // With failures (src, dst on different hosts): index < 0: the number of usable candidates;
  // else the full-enumeration index of usable candidate `index`, -1 when there is none.
  int usableWalk(int src, int dst, int index) const {
    if (shape == Shape::kLeafSpine) {
      const int la = lsLeafOf(src), lb = lsLeafOf(dst), leaves = leafSpine.leaves;
      int seen = 0;
      for (int p = 0; p < leafSpine.planes; ++p) {
        if (links[lsUp(p, src)].failed || links[lsUp(p, dst) + 1].failed) continue;
        if (la == lb) {
          if (seen++ == index) return p;
          continue;
        }
        const uint64_t* a = &upOk[static_cast<size_t>(p * leaves + la) * words];
        const uint64_t* b = &downOk[static_cast<size_t>(p * leaves + lb) * words];
        const int c = andCount(a, b, words);
        if (index >= seen && index < seen + c) return p * leafSpine.spines + andSelect(a, b, words, index - seen);
        seen += c;
      }
      return index < 0 ? seen : -1;
    }
    const int la = closLeafOf(src), lb = closLeafOf(dst), h = closHalf();
    if (links[2 * src].failed || links[2 * dst + 1].failed) return index < 0 ? 0 : -1;
    if (la == lb) return index < 0 ? 1 : (index == 0 ? 0 : -1);
    const uint64_t* a = &upOk[static_cast<size_t>(la) * words];
    const uint64_t* b = &downOk[static_cast<size_t>(lb) * words];
    if (la / h == lb / h) {
      const int c = andCount(a, b, words);
      return index < 0 ? c : (index < c ? andSelect(a, b, words, index) : -1);
    }
    const int podA = la / h, podB = lb / h;
    int seen = 0;
    for (int j = 0; j < h; ++j) {
      if (((a[j / 64] & b[j / 64]) >> (j % 64) & 1) == 0) continue;
      const uint64_t* up = &coreUpOk[static_cast<size_t>(podA * h + j) * words];
      const uint64_t* down = &coreDownOk[static_cast<size_t>(podB * h + j) * words];
      const int c = andCount(up, down, words);
      if (index >= seen && index < seen + c) return j * h + andSelect(up, down, words, index - seen);
      seen += c;
    }
    return index < 0 ? seen : -1;
  }

  // Recounts failed links and rebuilds the bitmasks of constructed shapes.
  void refreshFailures() {
    failedLinks = 0;
    for (const Link& l : links) failedLinks += l.failed ? 1 : 0;
    for (auto* v : {&upOk, &downOk, &coreUpOk, &coreDownOk}) v->clear();
    if (failedLinks == 0 || shape == Shape::kCustom) return;
    const auto fill = [&](std::vector<uint64_t>& bits, size_t row, int bit, int link) {
      if (!links[link].failed) bits[row * words + bit / 64] |= uint64_t{1} << (bit % 64);
    };
    if (shape == Shape::kLeafSpine) {
      const int rows = leafSpine.planes * leafSpine.leaves;
      words = (leafSpine.spines + 63) / 64;
      upOk.assign(static_cast<size_t>(rows) * words, 0);
      downOk.assign(upOk.size(), 0);
      for (int p = 0; p < leafSpine.planes; ++p) {
        for (int l = 0; l < leafSpine.leaves; ++l) {
          for (int sp = 0; sp < leafSpine.spines; ++sp) {
            const int id = lsFabric(p, l, sp);
            fill(upOk, p * leafSpine.leaves + l, sp, id);
            fill(downOk, p * leafSpine.leaves + l, sp, id + 1);
          }
        }
      }
      return;
    }
    const int h = closHalf(), rows = clos.k * h;  // leaves, and (pod, agg) pairs
    words = (h + 63) / 64;
    for (auto* v : {&upOk, &downOk, &coreUpOk, &coreDownOk}) v->assign(static_cast<size_t>(rows) * words, 0);
    for (int row = 0; row < rows; ++row) {
      for (int i = 0; i < h; ++i) {
        fill(upOk, row, i, closLeafAgg(row, i));  // row: a leaf, i: an agg
        fill(downOk, row, i, closLeafAgg(row, i) + 1);
        fill(coreUpOk, row, i, closAggCore(row / h, row % h, i));  // row: (pod, agg), i: a core of its group
        fill(coreDownOk, row, i, closAggCore(row / h, row % h, i) + 1);
      }
    }
  }

  // ---- custom fabrics ----
  SourceDag buildDag(int src) const {
    const int n = static_cast<int>(nodes.size());
    const int start = endpointNode[src];
    SourceDag dag;
    dag.dist.assign(n, -1);
    dag.count.assign(n, 0);
    std::vector<int> queue;
    queue.reserve(n);
    dag.dist[start] = 0;
    dag.count[start] = 1;
    queue.push_back(start);
    // Breadth first: every node's predecessors are final before it is expanded. Endpoints other
    // than the source receive paths but never forward them.
    for (size_t head = 0; head < queue.size(); ++head) {
      const int u = queue[head];
      for (int e = outStart[u]; e < outStart[u + 1]; ++e) {
        const Link& l = links[outLinks[e]];
        if (l.failed) continue;
        const int v = l.to;
        if (dag.dist[v] < 0) {
          dag.dist[v] = dag.dist[u] + 1;
          if (rankOfNode[v] < 0) queue.push_back(v);
        }
        if (dag.dist[v] == dag.dist[u] + 1) {
          dag.count[v] = static_cast<uint8_t>(std::min(kMaxCustomPaths, dag.count[v] + dag.count[u]));
        }
      }
    }
    return dag;
  }

  const SourceDag& dagOf(int src) const {
    return dags.get(src, [&] { return buildDag(src); });
  }

  // Whether node u forwarded shortest paths from `start` (the source or a switch).
  bool forwards(int u, int start) const { return u == start || rankOfNode[u] < 0; }

  int customCount(int src, int dst) const { return dagOf(src).count[endpointNode[dst]]; }

  // Path `index` backwards from dst: at each node, predecessors in in-link order, each owning as
  // many consecutive indices as (capped) shortest paths reach it.
  void customPath(int src, int dst, int index, std::vector<int>& out) const {
    const SourceDag& dag = dagOf(src);
    const int start = endpointNode[src];
    int v = endpointNode[dst];
    while (v != start) {
      int chosen = -1;
      for (int e = inStart[v]; e < inStart[v + 1]; ++e) {
        const int id = inLinks[e];
        const Link& l = links[id];
        if (l.failed || dag.dist[l.from] != dag.dist[v] - 1 || !forwards(l.from, start)) continue;
        if (index < dag.count[l.from]) {
          chosen = id;
          break;
        }
        index -= dag.count[l.from];
      }
      EFCOMM_CHECK_T(Error, chosen >= 0, "plan.Topology.path: broken shortest-path counts (internal error)");
      out.push_back(chosen);
      v = links[chosen].from;
    }
    std::reverse(out.begin(), out.end());
  }

  // Fills the adjacency, the rank maps and the failure count from nodes, links, endpointNode.
  void finish() {
    const int n = static_cast<int>(nodes.size());
    rankOfNode.assign(n, -1);
    for (int r = 0; r < endpoints(); ++r) rankOfNode[endpointNode[r]] = r;
    const auto csr = [&](std::vector<int>& start, std::vector<int>& ids, bool out) {
      start.assign(n + 1, 0);
      for (const Link& l : links) ++start[(out ? l.from : l.to) + 1];
      for (int i = 0; i < n; ++i) start[i + 1] += start[i];
      ids.resize(links.size());
      std::vector<int> fill(start.begin(), start.end() - 1);
      for (int id = 0; id < static_cast<int>(links.size()); ++id) {
        ids[fill[out ? links[id].from : links[id].to]++] = id;
      }
      for (int i = 0; i < n; ++i) {
        std::sort(ids.begin() + start[i], ids.begin() + start[i + 1], [&](int a, int b) {
          return out ? links[a].to < links[b].to : links[a].from < links[b].from;
        });
      }
    };
    csr(outStart, outLinks, true);
    csr(inStart, inLinks, false);
    refreshFailures();
    dags = DagCache(shape == Shape::kCustom ? endpoints() : 0);
  }

  int linkBetween(int from, int to) const {
    const auto first = outLinks.begin() + outStart[from], last = outLinks.begin() + outStart[from + 1];
    const auto it = std::lower_bound(first, last, to, [&](int id, int node) { return links[id].to < node; });
    return it != last && links[*it].to == to ? *it : -1;
  }
};

namespace {

void checkRate(double gbps, const char* where, const char* field) {
  EFCOMM_CHECK(std::isfinite(gbps) && gbps > 0 && gbps < 1e12, where, ": ", field, " = ", gbps,
               " Gbit/s: a rate must be a finite number > 0 (and < 1e12)");
}

Node makeNode(NodeKind kind, int plane, int group, std::string name) {
  Node n;
  n.kind = kind;
  n.plane = plane;
  n.group = group;
  n.name = std::move(name);
  return n;
}

std::string endpointName(int host, int nic) { return "h" + std::to_string(host) + ".n" + std::to_string(nic); }

// Appends the cable a <-> b as two links (a -> b first).
void addCable(std::vector<Link>& links, int a, int b, double capacity) {
  Link l;
  l.from = a;
  l.to = b;
  l.capacity = capacity;
  links.push_back(l);
  std::swap(l.from, l.to);
  links.push_back(l);
}

}  // namespace

Topology Topology::leafSpine(const LeafSpineSpec& spec) {
  constexpr const char* kWhere = "plan.Topology.leafSpine";
  EFCOMM_CHECK(spec.leaves >= 1, kWhere, ": leaves = ", spec.leaves, ": need at least 1 leaf per plane");
  EFCOMM_CHECK(spec.spines >= 1 || (spec.spines == 0 && spec.leaves == 1), kWhere, ": spines = ", spec.spines,
               ": need at least 1 spine per plane (0 only with a single leaf)");
  EFCOMM_CHECK(spec.hostsPerLeaf >= 1, kWhere, ": hostsPerLeaf = ", spec.hostsPerLeaf, ": need at least 1");
  EFCOMM_CHECK(spec.nicsPerHost >= 1, kWhere, ": nicsPerHost = ", spec.nicsPerHost, ": need at least 1");
  EFCOMM_CHECK(spec.planes >= 1, kWhere, ": planes = ", spec.planes, ": need at least 1");
  EFCOMM_CHECK(!spec.railOptimized || spec.leaves % spec.nicsPerHost == 0, kWhere, ": railOptimized with ",
               spec.leaves, " leaves and ", spec.nicsPerHost,
               " NICs per host: leaves come in rail groups of nicsPerHost, so leaves must be a multiple of it");
  checkRate(spec.hostGbps, kWhere, "hostGbps");
  checkRate(spec.uplinkGbps, kWhere, "uplinkGbps");
  // Sizes in double first: the products of absurd specs overflow any integer.
  const double groups = spec.railOptimized ? spec.leaves / spec.nicsPerHost : spec.leaves;
  const double endpoints = groups * spec.hostsPerLeaf * spec.nicsPerHost;
  const double links = 2.0 * spec.planes * (endpoints + static_cast<double>(spec.leaves) * spec.spines);
  const double nodes = endpoints + spec.planes * (static_cast<double>(spec.leaves) + spec.spines);
  EFCOMM_CHECK(links < kMaxLinks && nodes < kMaxLinks, kWhere, ": ", endpoints, " endpoints and ", links,
               " links: too large (at most ", kMaxLinks, " links)");
  const int hosts = static_cast<int>(groups) * spec.hostsPerLeaf;

  auto impl = std::make_shared<Impl>();
  impl->shape = Shape::kLeafSpine;
  impl->hosts = hosts;
  impl->nics = spec.nicsPerHost;
  impl->leafSpine = spec;
  const int e = static_cast<int>(endpoints);
  impl->nodes.reserve(e + spec.planes * (spec.leaves + spec.spines));
  impl->endpointNode.resize(e);
  for (int r = 0; r < e; ++r) {
    impl->endpointNode[r] = r;
    const int group = impl->lsLeafOf(r) / (spec.railOptimized ? spec.nicsPerHost : 1);  // its leaf's
    impl->nodes.push_back(
        makeNode(NodeKind::kEndpoint, 0, group, endpointName(r / spec.nicsPerHost, r % spec.nicsPerHost)));
  }
  const auto leafNode = [&](int plane, int leaf) { return e + plane * (spec.leaves + spec.spines) + leaf; };
  for (int p = 0; p < spec.planes; ++p) {
    const std::string prefix = "p" + std::to_string(p) + ".";
    for (int l = 0; l < spec.leaves; ++l) {
      impl->nodes.push_back(makeNode(NodeKind::kLeaf, p, spec.railOptimized ? l / spec.nicsPerHost : l,
                                     prefix + "leaf" + std::to_string(l)));
    }
    for (int s = 0; s < spec.spines; ++s) {
      impl->nodes.push_back(makeNode(NodeKind::kSpine, p, 0, prefix + "spine" + std::to_string(s)));
    }
  }
  impl->links.reserve(static_cast<size_t>(links));
  for (int p = 0; p < spec.planes; ++p) {
    for (int r = 0; r < e; ++r) addCable(impl->links, r, leafNode(p, impl->lsLeafOf(r)), spec.hostGbps * kBytesPerGbit);
  }
  for (int p = 0; p < spec.planes; ++p) {
    for (int l = 0; l < spec.leaves; ++l) {
      for (int s = 0; s < spec.spines; ++s) {
        addCable(impl->links, leafNode(p, l), leafNode(p, spec.leaves + s), spec.uplinkGbps * kBytesPerGbit);
      }
    }
  }
  impl->finish();
  Topology t;
  t.impl_ = std::move(impl);
  return t;
}

Topology Topology::clos(const ClosSpec& spec) {
  constexpr const char* kWhere = "plan.Topology.clos";
  EFCOMM_CHECK(spec.k >= 2 && spec.k % 2 == 0, kWhere, ": k = ", spec.k, ": a k-ary fat-tree needs an even k >= 2");
  EFCOMM_CHECK(spec.hostsPerLeaf >= 0, kWhere, ": hostsPerLeaf = ", spec.hostsPerLeaf, ": need >= 0 (0: k/2)");
  EFCOMM_CHECK(spec.nicsPerHost >= 1, kWhere, ": nicsPerHost = ", spec.nicsPerHost, ": need at least 1");
  checkRate(spec.hostGbps, kWhere, "hostGbps");
  checkRate(spec.fabricGbps, kWhere, "fabricGbps");
  EFCOMM_CHECK(spec.k <= 4096, kWhere, ": k = ", spec.k, ": too large (at most 4096)");
  const int h = spec.k / 2;
  const int hostsPerLeaf = spec.hostsPerLeaf == 0 ? h : spec.hostsPerLeaf;
  const double endpoints = static_cast<double>(spec.k) * h * hostsPerLeaf * spec.nicsPerHost;  // double: no overflow
  const double links = 2 * (endpoints + 2.0 * spec.k * h * h);
  EFCOMM_CHECK(links < kMaxLinks, kWhere, ": ", endpoints, " endpoints and ", links, " links: too large (at most ",
               kMaxLinks, " links)");
  const int hosts = spec.k * h * hostsPerLeaf;

  auto impl = std::make_shared<Impl>();
  impl->shape = Shape::kClos;
  impl->hosts = hosts;
  impl->nics = spec.nicsPerHost;
  impl->clos = spec;
  impl->clos.hostsPerLeaf = hostsPerLeaf;
  const int e = static_cast<int>(endpoints), k = spec.k, half = h;
  impl->nodes.reserve(e + k * k + half * half);
  impl->endpointNode.resize(e);
  for (int r = 0; r < e; ++r) {
    impl->endpointNode[r] = r;
    impl->nodes.push_back(makeNode(NodeKind::kEndpoint, 0, impl->closLeafOf(r) / half,
                                   endpointName(r / spec.nicsPerHost, r % spec.nicsPerHost)));
  }
  const int leafBase = e, aggBase = e + k * half, coreBase = e + 2 * k * half;
  for (int pod = 0; pod < k; ++pod) {
    for (int i = 0; i < half; ++i) {
      impl->nodes.push_back(
          makeNode(NodeKind::kLeaf, 0, pod, "pod" + std::to_string(pod) + ".leaf" + std::to_string(i)));
    }
  }
  for (int pod = 0; pod < k; ++pod) {
    for (int j = 0; j < half; ++j) {
      impl->nodes.push_back(makeNode(NodeKind::kAgg, 0, pod, "pod" + std::to_string(pod) + ".agg" + std::to_string(j)));
    }
  }
  for (int c = 0; c < half * half; ++c) {
    impl->nodes.push_back(makeNode(NodeKind::kCore, 0, 0, "core" + std::to_string(c)));
  }

  impl->links.reserve(static_cast<size_t>(links));
  const double hostCap = spec.hostGbps * kBytesPerGbit, fabricCap = spec.fabricGbps * kBytesPerGbit;
  for (int r = 0; r < e; ++r) addCable(impl->links, r, leafBase + impl->closLeafOf(r), hostCap);
  for (int leaf = 0; leaf < k * half; ++leaf) {
    for (int j = 0; j < half; ++j) {
      addCable(impl->links, leafBase + leaf, aggBase + (leaf / half) * half + j, fabricCap);
    }
  }
  for (int pod = 0; pod < k; ++pod) {
    for (int j = 0; j < half; ++j) {
      for (int m = 0; m < half; ++m) {
        addCable(impl->links, aggBase + pod * half + j, coreBase + j * half + m, fabricCap);
      }
    }
  }
  impl->finish();
  Topology t;
  t.impl_ = std::move(impl);
  return t;
}

int Topology::hosts() const { return impl_ ? impl_->hosts : 0; }
int Topology::nicsPerHost() const { return impl_ ? impl_->nics : 1; }
int Topology::endpoints() const { return impl_ ? impl_->endpoints() : 0; }

int Topology::endpointNode(int rank) const {
  EFCOMM_CHECK(rank >= 0 && rank < endpoints(), "plan.Topology.endpointNode: rank ", rank, " out of range [0, ",
               endpoints(), ")");
  return impl_->endpointNode[rank];
}

const std::vector<Node>& Topology::nodes() const {
  static const std::vector<Node> kNone;
  return impl_ ? impl_->nodes : kNone;
}

const std::vector<Link>& Topology::links() const {
  static const std::vector<Link> kNone;
  return impl_ ? impl_->links : kNone;
}

int Topology::linkBetween(int from, int to) const {
  const int n = static_cast<int>(nodes().size());
  if (from < 0 || from >= n || to < 0 || to >= n) return -1;
  return impl_->linkBetween(from, to);
}

void Topology::failLink(int link) {
  EFCOMM_CHECK(link >= 0 && link < static_cast<int>(links().size()), "plan.Topology.failLink: link ", link,
               " out of range [0, ", links().size(), ")");
  if (impl_.use_count() > 1) impl_ = std::make_shared<Impl>(*impl_);  // copy on write: plans keep theirs
  Impl& impl = const_cast<Impl&>(*impl_);  // sole owner of an object created non-const
  const int reverse = impl.linkBetween(impl.links[link].to, impl.links[link].from);
  for (const int id : {link, reverse}) {
    if (id >= 0) impl.links[id].failed = true;
  }
  impl.refreshFailures();
  impl.dags.clear();
}

void Topology::degradeLink(int link, double factor) {
  EFCOMM_CHECK(link >= 0 && link < static_cast<int>(links().size()), "plan.Topology.degradeLink: link ", link,
               " out of range [0, ", links().size(), ")");
  EFCOMM_CHECK(std::isfinite(factor) && factor > 0 && factor <= 1, "plan.Topology.degradeLink: factor = ", factor,
               ": need 0 < factor <= 1 (use failLink for a dead link)");
  if (impl_.use_count() > 1) impl_ = std::make_shared<Impl>(*impl_);
  Impl& impl = const_cast<Impl&>(*impl_);
  const int reverse = impl.linkBetween(impl.links[link].to, impl.links[link].from);
  impl.links[link].capacity *= factor;
  if (reverse >= 0) impl.links[reverse].capacity *= factor;
}

namespace {

void checkPair(const Topology& topo, int src, int dst, const char* where) {
  EFCOMM_CHECK(src >= 0 && src < topo.endpoints() && dst >= 0 && dst < topo.endpoints(), where, ": endpoints (", src,
               ", ", dst, ") out of range [0, ", topo.endpoints(), ")");
}

}  // namespace

int Topology::pathCount(int src, int dst) const {
  checkPair(*this, src, dst, "plan.Topology.pathCount");
  const Impl& impl = *impl_;
  if (src / impl.nics == dst / impl.nics) return 1;
  if (impl.shape == Shape::kCustom) return impl.customCount(src, dst);
  return impl.failedLinks == 0 ? impl.fixedCount(src, dst) : impl.usableWalk(src, dst, -1);
}

void Topology::path(int src, int dst, int index, std::vector<int>& links) const {
  checkPair(*this, src, dst, "plan.Topology.path");
  links.clear();
  const Impl& impl = *impl_;
  const auto outOfRange = [&] {
    return detail::concat("plan.Topology.path: index ", index, " out of range for ", src, " -> ", dst, " (",
                          pathCount(src, dst), " candidate paths)");
  };
  if (src / impl.nics == dst / impl.nics) {
    EFCOMM_CHECK(index == 0, outOfRange());
    return;
  }
  EFCOMM_CHECK(index >= 0, outOfRange());
  if (impl.shape == Shape::kCustom) {
    EFCOMM_CHECK(index < impl.customCount(src, dst), outOfRange());
    impl.customPath(src, dst, index, links);
    return;
  }
  const int full = impl.failedLinks == 0 ? (index < impl.fixedCount(src, dst) ? index : -1)
                                         : impl.usableWalk(src, dst, index);
  EFCOMM_CHECK(full >= 0, outOfRange());
  int path[kMaxFixedPath];
  links.assign(path, path + impl.fixedPath(src, dst, full, path));
}

namespace {

// ---- exact Gbit/s <-> bytes/s in JSON ----
// capacity = gbps x 1e9 / 8 computed in doubles does not always round-trip. Instead the decimal
// digits are shifted: the text of gbps is that of capacity x 8 (exact in binary, shortest
// round-trip form) with its decimal exponent lowered by 9, and reading raises it by 9 again, so
// the parse of the shifted text gives capacity x 8 exactly, and / 8 gives the capacity back.

struct Decimal {
  std::string digits;  // no leading zeros ("0" for zero)
  long exponent = 0;   // value = digits x 10^exponent
};

// The digits and exponent of a JSON number's text (a non-negative one: callers check the sign).
Decimal decimalOf(std::string_view text) {
  Decimal d;
  size_t i = text.size() > 0 && text[0] == '-' ? 1 : 0;
  const auto digit = [&] { return i < text.size() && text[i] >= '0' && text[i] <= '9'; };
  for (; digit(); ++i) d.digits += text[i];
  if (i < text.size() && text[i] == '.') {
    for (++i; digit(); ++i, --d.exponent) d.digits += text[i];
  }
  if (i < text.size() && (text[i] == 'e' || text[i] == 'E')) {
    ++i;
    const bool negative = i < text.size() && text[i] == '-';
    if (i < text.size() && (text[i] == '-' || text[i] == '+')) ++i;
    long e = 0;
    for (; digit(); ++i) e = std::min(e * 10 + (text[i] - '0'), 100000000L);  // saturates: out of range anyway
    d.exponent += negative ? -e : e;
  }
  const size_t first = d.digits.find_first_not_of('0');
  d.digits = first == std::string::npos ? "0" : d.digits.substr(first);
  return d;
}

std::string gbpsText(double capacity) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof buf, capacity * 8);
  Decimal d = decimalOf(std::string_view(buf, r.ptr - buf));
  while (d.digits.size() > 1 && d.digits.back() == '0') {
    d.digits.pop_back();
    ++d.exponent;
  }
  const long e = d.exponent - 9, n = static_cast<long>(d.digits.size()), point = n + e;
  const auto scientific = [&] {
    std::string out = d.digits.substr(0, 1);
    if (n > 1) out += "." + d.digits.substr(1);
    return out + "e" + std::to_string(point - 1);
  };
  if (e >= 0) return point <= 21 ? d.digits + std::string(e, '0') : scientific();
  if (point > 0) return d.digits.substr(0, point) + "." + d.digits.substr(point);
  if (point > -6) return "0." + std::string(-point, '0') + d.digits;
  return scientific();
}

// Bytes per second from the text of a JSON number of Gbit/s (validated as finite and > 0).
double capacityOfGbpsText(std::string_view text) {
  const Decimal d = decimalOf(text);
  const std::string shifted = d.digits + "e" + std::to_string(d.exponent + 9);
  double x8 = 0;
  const auto r = std::from_chars(shifted.data(), shifted.data() + shifted.size(), x8);
  return r.ec == std::errc() ? x8 / 8 : 0;
}

// ---- reading ----

constexpr const char* kFromJson = "plan.Topology.fromJson";

// Throws unless object `v` (at `where`) has only members named in `allowed`.
void checkMembers(const json::Value& v, const std::string& where, std::initializer_list<const char*> allowed) {
  EFCOMM_CHECK(v.isObject(), kFromJson, ": ", where, ": expected an object, got ", json::Value::typeName(v.type()));
  for (const auto& member : v.object()) {
    bool known = false;
    for (const char* a : allowed) known = known || member.first == a;
    if (known) continue;
    std::string names;
    for (const char* a : allowed) names += std::string(names.empty() ? "" : ", ") + a;
    throw InvalidArgument(
        detail::concat(kFromJson, ": ", where, ": unknown field ", json::quote(member.first), " (known: ", names, ")"));
  }
}

const json::Value* member(const json::Value& v, const std::string& where, const char* key, bool required) {
  const json::Value* m = v.find(key);
  EFCOMM_CHECK(m != nullptr || !required, kFromJson, ": ", where, ": missing field \"", key, "\"");
  return m;
}

std::string field(const std::string& where, const char* key) { return where.empty() ? key : where + "." + key; }

int intMember(const json::Value& v, const std::string& where, const char* key, int lo, int hi, int fallback,
              bool required) {
  const json::Value* m = member(v, where, key, required);
  if (m == nullptr) return fallback;
  const std::string name = field(where, key);
  EFCOMM_CHECK(m->isNumber(), kFromJson, ": ", name, ": expected an integer, got ", json::Value::typeName(m->type()));
  const double x = m->number();
  EFCOMM_CHECK(x == std::floor(x) && x >= lo && x <= hi, kFromJson, ": ", name, " = ", m->numberText(),
               ": expected an integer in [", lo, ", ", hi, "]");
  return static_cast<int>(x);
}

const std::string& stringMember(const json::Value& v, const std::string& where, const char* key) {
  const json::Value* m = member(v, where, key, true);
  EFCOMM_CHECK(m->isString(), kFromJson, ": ", field(where, key), ": expected a string, got ",
               json::Value::typeName(m->type()));
  return m->string();
}

const json::Value::Array& arrayMember(const json::Value& v, const char* key) {
  const json::Value* m = member(v, "", key, true);
  EFCOMM_CHECK(m->isArray(), kFromJson, ": ", key, ": expected an array, got ", json::Value::typeName(m->type()));
  return m->array();
}

NodeKind nodeKindOf(const std::string& name, const std::string& where) {
  for (const NodeKind k : {NodeKind::kEndpoint, NodeKind::kLeaf, NodeKind::kSpine, NodeKind::kAgg, NodeKind::kCore}) {
    if (name == nodeKindName(k)) return k;
  }
  throw InvalidArgument(detail::concat(kFromJson, ": ", where, ".kind = \"", name,
                                       "\": expected endpoint, leaf, spine, agg or core"));
}

// Where a read fabric first differs from a constructed one ("" when the structure is the same;
// capacities and failures may differ).
std::string firstDifference(const std::vector<Node>& nodes, const std::vector<Link>& links, const Topology& built) {
  if (nodes.size() != built.nodes().size()) return "its node count";
  if (links.size() != built.links().size()) return "its link count";
  for (size_t i = 0; i < nodes.size(); ++i) {
    const Node &a = nodes[i], &b = built.nodes()[i];
    if (a.kind != b.kind || a.plane != b.plane || a.group != b.group || a.name != b.name) {
      return "nodes[" + std::to_string(i) + "] (expected " + nodeKindName(b.kind) + " \"" + b.name + "\", plane " +
             std::to_string(b.plane) + ", group " + std::to_string(b.group) + ")";
    }
  }
  for (size_t i = 0; i < links.size(); ++i) {
    const Link &a = links[i], &b = built.links()[i];
    if (a.from != b.from || a.to != b.to) {
      return "links[" + std::to_string(i) + "] (expected " + std::to_string(b.from) + " -> " +
             std::to_string(b.to) + ")";
    }
  }
  return "";
}

// The specs whose fabric the read one may be (the hosts and NICs it declares, switch counts).
std::vector<Topology> constructions(Shape shape, const std::vector<Node>& nodes, int hosts, int nics) {
  int leaves = 0, spines = 0, planes = 1;
  for (const Node& n : nodes) {
    leaves += n.kind == NodeKind::kLeaf ? 1 : 0;
    spines += n.kind == NodeKind::kSpine ? 1 : 0;
    if (n.kind != NodeKind::kEndpoint) planes = std::max(planes, n.plane + 1);
  }
  std::vector<Topology> out;
  const auto attempt = [&](auto build) {
    try {
      out.push_back(build());
    } catch (const InvalidArgument&) {
      // not a valid spec: not a candidate
    }
  };
  if (shape == Shape::kLeafSpine) {
    if (leaves % planes != 0 || spines % planes != 0 || leaves == 0) return out;
    LeafSpineSpec spec;
    spec.leaves = leaves / planes;
    spec.spines = spines / planes;
    spec.nicsPerHost = nics;
    spec.planes = planes;
    for (const bool rail : {false, true}) {
      const int groups = rail ? spec.leaves / nics : spec.leaves;
      if ((rail && (nics == 1 || spec.leaves % nics != 0)) || groups == 0 || hosts % groups != 0) continue;
      spec.railOptimized = rail;
      spec.hostsPerLeaf = hosts / groups;
      attempt([&] { return Topology::leafSpine(spec); });
    }
  } else {
    const int k = static_cast<int>(std::lround(std::sqrt(2.0 * leaves)));
    if (k < 2 || k * k / 2 != leaves || hosts % leaves != 0) return out;
    ClosSpec spec;
    spec.k = k;
    spec.hostsPerLeaf = hosts / leaves;
    spec.nicsPerHost = nics;
    attempt([&] { return Topology::clos(spec); });
  }
  return out;
}

}  // namespace

std::string Topology::toJson() const {
  const Impl* impl = impl_.get();
  std::string out;
  out.reserve(256 + nodes().size() * 64 + links().size() * 56);
  out += "{\"kind\": \"";
  out += shapeName(impl ? impl->shape : Shape::kCustom);
  out += "\", \"hosts\": " + std::to_string(hosts()) + ", \"nics_per_host\": " + std::to_string(nicsPerHost());
  out += ",\n \"nodes\": [";
  const char* sep = "\n  ";
  for (const Node& n : nodes()) {
    out += sep;
    out += "{\"kind\": \"";
    out += nodeKindName(n.kind);
    out += "\", \"plane\": " + std::to_string(n.plane) + ", \"group\": " + std::to_string(n.group) +
           ", \"name\": " + json::quote(n.name) + "}";
    sep = ",\n  ";
  }
  out += "],\n \"links\": [";
  sep = "\n  ";
  for (const Link& l : links()) {
    out += sep;
    out += "{\"from\": " + std::to_string(l.from) + ", \"to\": " + std::to_string(l.to) + ", \"gbps\": " +
           gbpsText(l.capacity) + ", \"failed\": " + (l.failed ? "true" : "false") + "}";
    sep = ",\n  ";
  }
  out += "]}\n";
  return out;
}

Topology Topology::fromJson(const std::string& text) {
  json::Value root;
  try {
    root = json::parse(text);
  } catch (const InvalidArgument& e) {
    throw InvalidArgument(std::string(kFromJson) + ": " + e.what());
  }
  checkMembers(root, "the document", {"kind", "hosts", "nics_per_host", "nodes", "links"});
  const std::string& kindName = stringMember(root, "", "kind");
  Shape shape = Shape::kCustom;
  for (const Shape s : {Shape::kLeafSpine, Shape::kClos, Shape::kCustom}) {
    if (kindName == shapeName(s)) shape = s;
  }
  EFCOMM_CHECK(kindName == shapeName(shape), kFromJson, ": kind = \"", kindName,
               "\": expected leaf_spine, clos or custom");
  const int hosts = intMember(root, "", "hosts", 1, INT_MAX, 0, true);
  const int nics = intMember(root, "", "nics_per_host", 1, INT_MAX, 0, true);
  const json::Value::Array& nodeValues = arrayMember(root, "nodes");
  const json::Value::Array& linkValues = arrayMember(root, "links");
  EFCOMM_CHECK(static_cast<int64_t>(linkValues.size()) < kMaxLinks &&
                   static_cast<int64_t>(nodeValues.size()) < kMaxLinks,
               kFromJson, ": too many nodes or links (at most ", kMaxLinks, ")");
  const int nodeCount = static_cast<int>(nodeValues.size());

  auto impl = std::make_shared<Impl>();  // read as custom; a constructed shape replaces it below
  impl->hosts = hosts;
  impl->nics = nics;
  impl->nodes.reserve(nodeValues.size());
  for (int i = 0; i < nodeCount; ++i) {
    const std::string where = "nodes[" + std::to_string(i) + "]";
    const json::Value& v = nodeValues[i];
    checkMembers(v, where, {"kind", "plane", "group", "name"});
    Node n;
    n.kind = nodeKindOf(stringMember(v, where, "kind"), where);
    n.plane = intMember(v, where, "plane", 0, nodeCount - 1, 0, false);
    n.group = intMember(v, where, "group", 0, nodeCount - 1, 0, false);
    n.name = stringMember(v, where, "name");
    if (n.kind == NodeKind::kEndpoint) impl->endpointNode.push_back(i);
    impl->nodes.push_back(std::move(n));
  }
  EFCOMM_CHECK(int64_t{hosts} * nics == impl->endpoints(), kFromJson, ": hosts x nics_per_host = ", hosts, " x ", nics,
               " endpoints, but ", impl->endpoints(), " nodes are of kind endpoint");

  impl->links.reserve(linkValues.size());
  for (size_t i = 0; i < linkValues.size(); ++i) {
    const std::string where = "links[" + std::to_string(i) + "]";
    const json::Value& v = linkValues[i];
    checkMembers(v, where, {"from", "to", "gbps", "failed"});
    Link l;
    l.from = intMember(v, where, "from", 0, nodeCount - 1, 0, true);
    l.to = intMember(v, where, "to", 0, nodeCount - 1, 0, true);
    EFCOMM_CHECK(l.from != l.to, kFromJson, ": ", where, ": from = to = ", l.from, ": a link joins two nodes");
    const json::Value* gbps = member(v, where, "gbps", true);
    EFCOMM_CHECK(gbps->isNumber(), kFromJson, ": ", where, ".gbps: expected a number, got ",
                 json::Value::typeName(gbps->type()));
    EFCOMM_CHECK(gbps->number() > 0 && gbps->number() < 1e12, kFromJson, ": ", where, ".gbps = ", gbps->numberText(),
                 ": a rate must be > 0 (and < 1e12) Gbit/s");
    l.capacity = capacityOfGbpsText(gbps->numberText());
    EFCOMM_CHECK(l.capacity > 0, kFromJson, ": ", where, ".gbps = ", gbps->numberText(), ": too small a rate");
    if (const json::Value* failed = member(v, where, "failed", false)) {
      EFCOMM_CHECK(failed->isBool(), kFromJson, ": ", where, ".failed: expected true or false, got ",
                   json::Value::typeName(failed->type()));
      l.failed = failed->boolean();
    }
    impl->links.push_back(l);
  }
  impl->finish();
  // Parallel links would make linkBetween ambiguous: one link per direction between two nodes.
  for (int u = 0; u < nodeCount; ++u) {
    for (int e = impl->outStart[u] + 1; e < impl->outStart[u + 1]; ++e) {
      const int a = impl->outLinks[e - 1], b = impl->outLinks[e];
      EFCOMM_CHECK(impl->links[a].to != impl->links[b].to, kFromJson, ": links[", std::min(a, b), "] and links[",
                   std::max(a, b), "] both go from node ", u, " to node ", impl->links[a].to,
                   ": one link per direction (merge parallel cables into one of their total gbps)");
    }
  }
  for (int r = 0; r < impl->endpoints(); ++r) {
    const int node = impl->endpointNode[r];
    const bool attached =
        impl->outStart[node + 1] > impl->outStart[node] && impl->inStart[node + 1] > impl->inStart[node];
    EFCOMM_CHECK(attached, kFromJson, ": nodes[", node, "] (endpoint \"", impl->nodes[node].name,
                 "\") is not attached: an endpoint needs a link to the fabric and one back");
  }
  if (shape == Shape::kCustom) {
    Topology t;
    t.impl_ = std::move(impl);
    return t;
  }

  // A constructed shape: the structure must be the one its constructor builds (so that paths are
  // computed arithmetically); capacities and failures are the file's.
  std::string difference = "its switch counts";
  for (Topology& built : constructions(shape, impl->nodes, hosts, nics)) {
    difference = firstDifference(impl->nodes, impl->links, built);
    if (!difference.empty()) continue;
    Impl& mine = const_cast<Impl&>(*built.impl_);  // sole owner
    mine.links = std::move(impl->links);
    mine.refreshFailures();
    return std::move(built);
  }
  throw InvalidArgument(detail::concat(kFromJson, ": kind = \"", kindName, "\", but ", difference,
                                       " differs from every ", kindName,
                                       " fabric of this size; describe other fabrics with \"kind\": \"custom\""));
}

}  // namespace efcomm::plan
