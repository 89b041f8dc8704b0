// Error feedback: accumulate, the update rules against a direct reference, the exact
// reductions, state dicts and errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <memory>

#include "test_util.hpp"

namespace efcomm {
namespace {

using test::mutableView;
using test::randomVector;
using test::view;

std::vector<double> randomDoubles(size_t n, uint64_t seed) {
  const auto f = randomVector(n, seed);
  return std::vector<double>(f.begin(), f.end());
}

std::shared_ptr<Compressor> comp(const std::string& spec) { return std::shared_ptr<Compressor>(makeCompressor(spec)); }

std::vector<double> copyOf(const ConstTensorView& v) {
  std::vector<double> out(static_cast<size_t>(v.numel()));
  std::memcpy(out.data(), v.data, v.nbytes());
  return out;
}

TEST(Accumulate, EqualsDecodeThenAdd) {
  for (const char* spec : {"identity", "topk:ratio=0.1", "topk:ratio=0.6", "randk:ratio=0.2,seed=3",
                           "randk:k=7,seed=1,scaled=false", "quant:bits=4,block=16", "sign"}) {
    for (double w : {1.0, -1.0, 0.25}) {
      const size_t d = w == 0.25 ? 200000 : 3000;  // the large size takes the parallel paths
      const auto x = randomDoubles(d, 1);
      auto c = makeCompressor(spec);
      const Message m = c->compress(view(x), 5);
      auto base = randomDoubles(d, 2);
      std::vector<double> dec(x.size()), want = base;
      decompress(m, mutableView(dec));
      for (size_t i = 0; i < x.size(); ++i) want[i] += w * dec[i];
      accumulate(m, mutableView(base), w);
      EXPECT_EQ(base, want) << spec << " w=" << w;
    }
  }
  std::vector<float> f(10);
  const auto x = randomDoubles(10, 3);
  const Message m = makeCompressor("topk:k=2")->compress(view(x));
  EXPECT_THROW(accumulate(m, mutableView(f), 1.0), InvalidArgument);
}

TEST(Feedback, AnOverflowOfInputAndStateIsNamedSo) {
  // The input is finite, v - g is not: the error says the combination overflowed, not that the
  // caller's input holds Inf (the compressor's own message named its input, the formed vector).
  auto fb = makeFeedback("ef21", makeCompressor("topk:k=1"));
  std::vector<float> first(4, -3e38f), second(4, 3e38f);
  fb->step(view(first));
  try {
    fb->step(view(second));
    ADD_FAILURE() << "the overflow was not reported";
  } catch (const NonFiniteError& e) {
    EXPECT_NE(std::string(e.what()).find("combined with the state overflowed"), std::string::npos) << e.what();
  }
}

TEST(Feedback, EF21MatchesReference) {
  auto fb = makeFeedback("ef21:init=compressed", comp("topk:ratio=0.1"));
  auto ref = makeCompressor("topk:ratio=0.1");
  std::vector<double> g(500, 0.0);
  for (int t = 0; t < 5; ++t) {
    const auto v = randomDoubles(500, 10 + t);
    const Message m = fb->step(view(v));
    std::vector<double> r(500), d(500);
    for (size_t i = 0; i < r.size(); ++i) r[i] = v[i] - g[i];
    decompress(ref->compress(view(r)), mutableView(d));
    for (size_t i = 0; i < g.size(); ++i) g[i] += d[i];
    EXPECT_EQ(copyOf(fb->estimate()), g);
  }
}

TEST(Feedback, EF14MatchesReference) {
  auto fb = makeFeedback("ef14", comp("sign"));
  auto ref = makeCompressor("sign");
  std::vector<double> e(300, 0.0);
  for (int t = 0; t < 5; ++t) {
    const auto v = randomDoubles(300, 20 + t);
    fb->step(view(v));
    std::vector<double> p(300), d(300);
    for (size_t i = 0; i < p.size(); ++i) p[i] = v[i] + e[i];
    decompress(ref->compress(view(p)), mutableView(d));
    for (size_t i = 0; i < e.size(); ++i) e[i] = p[i] - d[i];
    EXPECT_EQ(copyOf(fb->estimate()), e);
  }
}

void expectSameRun(Feedback& a, Feedback& b, int steps, uint64_t seed) {
  for (int t = 0; t < steps; ++t) {
    const auto v = randomDoubles(400, seed + t);
    const Message ma = a.step(view(v)), mb = b.step(view(v));
    ASSERT_EQ(ma.size(), mb.size());
    EXPECT_EQ(std::memcmp(ma.data(), mb.data(), ma.size()), 0);
    EXPECT_EQ(copyOf(a.estimate()), copyOf(b.estimate()));
  }
}

TEST(Feedback, ExactReductions) {
  for (const char* c : {"topk:ratio=0.05", "randk:ratio=0.1,seed=2"}) {
    auto econtrol = makeFeedback("econtrol:eta=0,init=compressed", comp(c));
    auto ef21 = makeFeedback("ef21:init=compressed", comp(c));
    expectSameRun(*econtrol, *ef21, 8, 100);
    auto sgdm = makeFeedback("ef21sgdm:momentum=1", comp(c));
    auto ef21full = makeFeedback("ef21", comp(c));
    expectSameRun(*sgdm, *ef21full, 8, 200);
  }
}

TEST(Feedback, StateDictContinuesBitIdentically) {
  for (const char* c : {"powersgd:rank=2,seed=1", "randk:ratio=0.2,seed=4", "topk:ratio=0.1"}) {
    for (const char* spec : {"ef14", "ef21", "ef21sgdm:momentum=0.2", "econtrol:eta=0.1"}) {
      auto a = makeFeedback(spec, comp(c));
      for (int t = 0; t < 3; ++t) a->step(view(randomDoubles(400, 300 + t)));
      auto b = makeFeedback(spec, comp(c));
      b->loadStateDict(a->stateDict());
      expectSameRun(*a, *b, 4, 400);
    }
  }
}

TEST(Feedback, NonFiniteLeavesStateUnchanged) {
  // RandK reads only the coordinates it sends: the Inf is put where its first three draws send
  // nothing, and the feedback step must still refuse it (every coordinate enters the state).
  const std::string randk = "randk:k=2,seed=5";
  std::vector<float> sent(100, 0.0f);
  for (uint64_t step = 0; step < 3; ++step) {
    const std::vector<float> y = test::roundTrip(*comp(randk), std::vector<float>(100, 1.0f), step);
    for (size_t i = 0; i < y.size(); ++i) sent[i] += y[i];
  }
  const size_t unsent = static_cast<size_t>(std::find(sent.begin(), sent.end(), 0.0f) - sent.begin());
  ASSERT_LT(unsent, sent.size());
  for (const std::string& compressor : {std::string("topk:ratio=0.1"), randk}) {
    for (const char* spec : {"ef14", "ef21", "ef21sgdm:momentum=0.3", "econtrol:eta=0.2", "ef21w:weight=0.5,n=4"}) {
      auto fb = makeFeedback(spec, comp(compressor));
      fb->step(view(randomDoubles(100, 1)));
      fb->step(view(randomDoubles(100, 2)));
      const StateDict before = fb->stateDict();
      auto bad = randomDoubles(100, 3);
      bad[compressor == randk ? unsent : 17] = std::numeric_limits<double>::infinity();
      EXPECT_THROW(fb->step(view(bad)), NonFiniteError) << spec << " " << compressor;
      const StateDict after = fb->stateDict();
      EXPECT_EQ(after.meta, before.meta) << spec;
      for (const auto& kv : before.tensors) EXPECT_EQ(after.tensors.at(kv.first).bytes, kv.second.bytes) << spec;
    }
  }
}

TEST(Feedback, Errors) {
  auto fb = makeFeedback("ef21", comp("topk:k=1"));
  fb->step(view(randomDoubles(6, 1)));
  const auto f = randomVector(6, 1);
  EXPECT_THROW(fb->step(view(f)), InvalidArgument);
  const auto longer = randomDoubles(7, 1);
  EXPECT_THROW(fb->step(view(longer)), InvalidArgument);
  EXPECT_THROW(makeFeedback("ef99", comp("topk:k=1")), InvalidArgument);
  EXPECT_THROW(makeFeedback("ef21w:n=2", comp("topk:k=1")), InvalidArgument);
  EXPECT_THROW(makeFeedback("ef21", nullptr), InvalidArgument);
  auto other = makeFeedback("ef21:init=compressed", comp("topk:k=1"));
  EXPECT_THROW(other->loadStateDict(fb->stateDict()), MismatchError);
  // loadStateDict ignores entries it does not read; loadStateDictStrict refuses them, unchanged.
  StateDict extra = fb->stateDict();
  extra.meta["compressor.stepp"] = "3";
  extra.tensors["gg"] = extra.tensors.at("g");
  const StateDict kept = fb->stateDict();
  try {
    loadStateDictStrict(*fb, extra);
    ADD_FAILURE() << "no error";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("does not keep: 'compressor.stepp', tensor 'gg'"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(fb->stateDict().meta, kept.meta);
  EXPECT_EQ(fb->stateDict().tensors.at("g").bytes, kept.tensors.at("g").bytes);
  loadStateDictStrict(*fb, kept);
  EXPECT_EQ(makeFeedback(fb->spec(), comp("topk:k=1"))->spec(), fb->spec());
  // EF21-W's receiver needs the workers' weights (1/n would not undo their 1 / (n w_i)).
  EXPECT_THROW(Aggregate("ef21w", 2, {}, {4}, DType::kFloat32), InvalidArgument);
  EXPECT_THROW(Aggregate("ef21w:weight=0.5,n=3", 2, {0.5, 0.5}, {4}, DType::kFloat32), InvalidArgument);
  EXPECT_EQ(Aggregate("ef21w", 2, {0.25, 0.75}, {4}, DType::kFloat32).spec(), "ef21w:init=full");
}

TEST(Aggregate, MirrorsEF21AndBroadcast) {
  const int n = 3;
  std::vector<std::unique_ptr<Feedback>> workers;
  for (int i = 0; i < n; ++i) workers.push_back(makeFeedback("ef21", comp("topk:ratio=0.2")));
  Aggregate agg("ef21", n, {}, {50}, DType::kFloat64, comp("topk:ratio=0.3"));
  Aggregate mirror("ef21", 1, {1.0}, {50}, DType::kFloat64);
  for (int t = 0; t < 6; ++t) {
    std::vector<Message> msgs;
    for (int i = 0; i < n; ++i) msgs.push_back(workers[i]->step(view(randomDoubles(50, 10 * t + i))));
    std::vector<const Message*> ptrs = {&msgs[0], t % 2 ? nullptr : &msgs[1], &msgs[2]};
    const auto b = copyOf(agg.update(ptrs));
    const Message& bm = agg.lastBroadcast();
    EXPECT_EQ(copyOf(mirror.update({&bm})), b);
  }
  EXPECT_THROW(agg.update({nullptr}), InvalidArgument);
}

}  // namespace
}  // namespace efcomm
