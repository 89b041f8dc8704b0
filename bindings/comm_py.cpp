// Collectives: the in-process group, backends and the Reducer. Every call that may block on other
// ranks releases the GIL, since the ranks of `ef.testing.run_ranks` are Python threads.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <mutex>

#include "comm/reducer_algorithms.hpp"
#include "efcomm/comm.hpp"
#include "efcomm/nccl.hpp"
#include "efcomm/reducer.hpp"
#include "state_arg.hpp"
#include "tensor_arg.hpp"

namespace py = pybind11;

namespace efcomm::py_bind {

namespace {

ReducerOptions reducerOptions(std::string algorithm, std::vector<double> weights, size_t bucketBytes) {
  ReducerOptions o;
  o.algorithm = std::move(algorithm);
  o.weights = std::move(weights);
  o.bucketBytes = bucketBytes;
  return o;
}

py::dict statsToPython(const ReducerStats& s) {
  py::dict d;
  d["algorithm"] = s.algorithm;
  d["bytes_sent"] = s.bytesSent;
  d["bytes_received"] = s.bytesReceived;
  d["control_bytes"] = s.controlBytes;
  d["compress_seconds"] = s.compressSeconds;
  d["comm_seconds"] = s.commSeconds;
  d["aggregate_seconds"] = s.aggregateSeconds;
  d["calls"] = s.calls;
  return d;
}

// A Reducer call's argument conversion. A failure still takes part in the call (Reducer::reject:
// the other ranks raise MismatchError naming this rank instead of waiting for it), then raises.
template <typename F>
auto convertedOrReject(Reducer& r, const std::string& key, F&& convert) -> decltype(convert()) {
  try {
    return convert();
  } catch (const InvalidArgument& e) {
    const std::string error = e.what();
    py::gil_scoped_release nogil;
    r.reject(key, error);
  }
}

// Output storage for x: numpy of the same dtype for float32/float64; raw 16-bit storage otherwise,
// so a dtype the reducer rejects still reaches it (and the other ranks learn of it, not hang).
py::array outputLike(const TensorArg& t) {
  std::vector<py::ssize_t> shape(t.shape.begin(), t.shape.end());
  switch (t.dtype) {
    case DType::kFloat64: return py::array(py::dtype::of<double>(), shape);
    case DType::kFloat32: return py::array(py::dtype::of<float>(), shape);
    default: return py::array(py::dtype::of<uint16_t>(), shape);
  }
}

// A Backend whose collectives are methods of a Python object (efcomm.comm._TorchBackend: the
// byte collectives over a torch.distributed process group). The native caller (a Reducer, on the
// caller's thread or its async worker) holds no GIL; each call takes it for the Python method.
// The methods block until the collective is done, so the Work is complete when returned; an
// exception is kept in it and thrown by wait(), as an asynchronous backend's would be.
class PyBackend final : public Backend {
 public:
  explicit PyBackend(py::object impl)
      : impl_(std::move(impl)), rank_(impl_.attr("rank").cast<int>()), size_(impl_.attr("size").cast<int>()) {}

  ~PyBackend() override {
    if (!Py_IsInitialized()) {  // at interpreter exit: nothing left to release
      impl_.release();
      return;
    }
    py::gil_scoped_acquire gil;
    impl_ = py::object();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  std::shared_ptr<Work> allgatherv(const void* send, size_t bytes, ByteBlocks& recv,
                                   std::optional<double> timeout) override {
    return call([&] {
      py::list blocks = impl_.attr("allgatherv")(view(send, bytes), timeout);
      EFCOMM_CHECK(static_cast<int>(blocks.size()) == size_, "allgatherv returned ", blocks.size(), " blocks");
      fill(recv, blocks);
    });
  }

  std::shared_ptr<Work> alltoallv(const void* send, const std::vector<size_t>& sendCounts, ByteBlocks& recv,
                                  std::optional<double> timeout) override {
    EFCOMM_CHECK(static_cast<int>(sendCounts.size()) == size_, "alltoallv: ", sendCounts.size(),
                 " send counts for ", size_, " ranks");
    size_t total = 0;
    for (size_t c : sendCounts) total += c;
    return call([&] {
      py::list blocks = impl_.attr("alltoallv")(view(send, total), sendCounts, timeout);
      EFCOMM_CHECK(static_cast<int>(blocks.size()) == size_, "alltoallv returned ", blocks.size(), " blocks");
      fill(recv, blocks);
    });
  }

  std::shared_ptr<Work> broadcast(void* buf, size_t bytes, int root, std::optional<double> timeout) override {
    EFCOMM_CHECK(root >= 0 && root < size_, "broadcast: root ", root, " is not a rank of ", size_);
    return call([&] { impl_.attr("broadcast")(view(buf, bytes), root, timeout); });
  }

  std::shared_ptr<Work> allreduceSum(void* buf, size_t count, DType dtype, std::optional<double> timeout) override {
    return call([&] {
      impl_.attr("allreduce_sum")(view(buf, count * itemSize(dtype)), dtypeName(dtype), timeout);
    });
  }

  std::shared_ptr<Work> barrier(std::optional<double> timeout) override {
    return call([&] { impl_.attr("barrier")(timeout); });
  }

  // The torch backend sizes its blocks by the label (a Reducer call's collectives). Called from
  // destructors too, so it does not throw: a failure fails this rank's later collectives instead
  // (the ranks' block sizes may differ from here on).
  void label(const std::string& key, const std::string& algorithm) noexcept override {
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      impl_.attr("label")(key, algorithm);
    } catch (py::error_already_set& e) {
      std::lock_guard<std::mutex> lock(mu_);
      if (!aborted_) aborted_ = std::make_exception_ptr(Error("torch backend: label failed: " + std::string(e.what())));
    }
  }

  // Later calls fail at once; a call waiting in Python ends at its next poll (the GIL is taken
  // between its sleeps).
  void abort(const CollectiveTimeout& error) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (aborted_) return;
      aborted_ = std::make_exception_ptr(error);
    }
    if (!Py_IsInitialized()) return;
    py::gil_scoped_acquire gil;
    try {
      impl_.attr("abort")(error.what(), error.culprits());
    } catch (py::error_already_set&) {  // the abort is recorded here either way
    }
  }

 private:
  class DoneWork final : public Work {
   public:
    explicit DoneWork(std::exception_ptr error) : error_(std::move(error)) {}
    void wait(std::optional<double>) override {
      if (error_) std::rethrow_exception(error_);
    }
    bool completed() const override { return true; }

   private:
    std::exception_ptr error_;
  };

  // A read-only (P const) or writable view of a buffer. Empty buffers may come as nullptr, which
  // a memoryview does not take.
  template <typename P>
  static py::memoryview view(P* p, size_t bytes) {
    static uint8_t empty = 0;
    return py::memoryview::from_memory(p ? p : static_cast<P*>(&empty), static_cast<py::ssize_t>(bytes));
  }

  static void fill(ByteBlocks& recv, const py::list& blocks) {
    recv.data.clear();
    recv.offsets.assign(1, 0);
    for (py::handle b : blocks) {
      const py::buffer_info info = py::reinterpret_borrow<py::buffer>(b).request();
      const auto* p = static_cast<const uint8_t*>(info.ptr);
      recv.data.insert(recv.data.end(), p, p + info.size * info.itemsize);
      recv.offsets.push_back(recv.data.size());
    }
  }

  // Runs one collective with the GIL held; its error (a Python exception becomes the efcomm
  // error it is, or an Error naming the collective) goes into the returned Work.
  template <typename F>
  std::shared_ptr<Work> call(F&& collective) {
    std::exception_ptr error;
    {
      std::lock_guard<std::mutex> lock(mu_);
      error = aborted_;
    }
    if (!error) {
      py::gil_scoped_acquire gil;
      try {
        collective();
      } catch (py::error_already_set& e) {
        std::lock_guard<std::mutex> lock(mu_);
        error = aborted_ ? aborted_ : translate(e);  // a Monitor's verdict names the culprits
      } catch (...) {
        error = std::current_exception();
      }
    }
    return std::make_shared<DoneWork>(std::move(error));
  }

  static std::exception_ptr translate(py::error_already_set& e) {
    const std::string what = py::str(e.value());
    py::module_ errors = py::module_::import("efcomm.errors");
    if (e.matches(errors.attr("CollectiveTimeout"))) {
      return std::make_exception_ptr(
          CollectiveTimeout(what, e.value().attr("culprits").cast<std::vector<int>>()));
    }
    if (e.matches(errors.attr("Error"))) {
      switch (static_cast<ErrorCode>(e.value().attr("code").cast<int>())) {
        case ErrorCode::kInvalidArgument: return std::make_exception_ptr(InvalidArgument(what));
        case ErrorCode::kNonFinite: return std::make_exception_ptr(NonFiniteError(what));
        case ErrorCode::kCorruptMessage: return std::make_exception_ptr(CorruptMessageError(what));
        case ErrorCode::kMismatch:
          return std::make_exception_ptr(MismatchError(what, e.value().attr("ranks").cast<std::vector<int>>()));
        case ErrorCode::kBackendUnavailable: return std::make_exception_ptr(BackendUnavailable(what));
        default: return std::make_exception_ptr(Error(what));
      }
    }
    return std::make_exception_ptr(Error(std::string(py::str(e.type().attr("__name__"))) + ": " + what));
  }

  py::object impl_;
  const int rank_, size_;
  std::mutex mu_;
  std::exception_ptr aborted_;
};

}  // namespace

void initComm(py::module_& m) {
  py::class_<Backend, std::shared_ptr<Backend>>(m, "_Backend")
      .def_property_readonly("rank", &Backend::rank)
      .def_property_readonly("size", &Backend::size)
      .def("barrier", [](Backend& b, std::optional<double> timeout) {
        py::gil_scoped_release nogil;
        b.barrier(timeout)->wait();
      }, py::arg("timeout") = py::none())
      // Backend::abort, for tests: fails this rank's pending and later collectives.
      .def("abort", [](Backend& b, std::vector<int> culprits, const std::string& message) {
        const CollectiveTimeout error(message, std::move(culprits));
        py::gil_scoped_release nogil;
        b.abort(error);
      }, py::arg("culprits"), py::arg("message"));
  m.def("_allreduce_unsupported", &comm::allreduceUnsupported, py::arg("compressor"), py::arg("device") = false,
        "Why the Reducer's allreduce algorithm cannot take this compressor ('' when it can).");
  m.def("_py_backend", [](py::object impl) -> std::shared_ptr<Backend> { return std::make_shared<PyBackend>(impl); },
        py::arg("impl"), "A backend whose byte collectives are the methods of impl (efcomm.comm._TorchBackend).");

  py::class_<InProcessGroup, std::shared_ptr<InProcessGroup>>(m, "_InProcessGroup")
      .def(py::init<int, double>(), py::arg("size"), py::arg("timeout") = kDefaultCollectiveTimeout)
      .def_property_readonly("size", &InProcessGroup::size)
      .def("backend", &InProcessGroup::backend, py::arg("rank"))
      .def("abort", [](InProcessGroup& g, int culprit, const std::string& reason) {
        py::gil_scoped_release nogil;
        g.abort(culprit, reason);
      }, py::arg("culprit"), py::arg("reason"))
      .def("leave", [](InProcessGroup& g, int rank) {
        py::gil_scoped_release nogil;
        g.leave(rank);
      }, py::arg("rank"));

  // The Work of an async call keeps its input and output arrays alive until it is waited on.
  struct PyWork {
    std::shared_ptr<Work> work;
    py::object inputs, out;  // (x, its buffer) and the output array
  };
  py::class_<PyWork>(m, "_Work")
      .def("wait", [](PyWork& w, std::optional<double> timeout) {
        {
          py::gil_scoped_release nogil;
          w.work->wait(timeout);
        }
        return w.out;
      }, py::arg("timeout") = py::none())
      .def("completed", [](const PyWork& w) { return w.work->completed(); });

  py::class_<Reducer, std::shared_ptr<Reducer>>(m, "_Reducer")
      .def(py::init([](std::shared_ptr<Backend> backend, std::string compressor, std::string feedback,
                       std::string algorithm, std::vector<double> weights, size_t bucketBytes) {
             return std::make_shared<Reducer>(std::move(backend), std::move(compressor), std::move(feedback),
                                              reducerOptions(std::move(algorithm), std::move(weights), bucketBytes));
           }),
           py::arg("backend"), py::arg("compressor"), py::arg("feedback"), py::arg("algorithm"), py::arg("weights"),
           py::arg("bucket_bytes"))
      // The reducer of device arrays over NCCL.
      .def(py::init([](std::shared_ptr<NcclCommunicator> comm, std::string compressor, std::string feedback,
                       std::string algorithm, std::vector<double> weights, size_t bucketBytes) {
             return std::make_shared<Reducer>(std::shared_ptr<DeviceBackend>(std::move(comm)), std::move(compressor),
                                              std::move(feedback),
                                              reducerOptions(std::move(algorithm), std::move(weights), bucketBytes));
           }),
           py::arg("backend"), py::arg("compressor"), py::arg("feedback"), py::arg("algorithm"), py::arg("weights"),
           py::arg("bucket_bytes"))
      .def("rebind", &Reducer::rebind, py::arg("backend"), py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("on_device", &Reducer::onDevice)
      .def_property_readonly("rank", &Reducer::rank)
      .def_property_readonly("size", &Reducer::size)
      .def_property_readonly("compressor", &Reducer::compressorSpec)
      .def_property_readonly("feedback", &Reducer::feedbackSpec)
      .def_property_readonly("algorithm", &Reducer::algorithm)
      .def_property_readonly("link", [](const Reducer& r) -> py::object {
        py::gil_scoped_release nogil;
        const std::optional<LinkModel> l = r.link();
        py::gil_scoped_acquire gil;
        if (!l) return py::none();
        py::dict d;
        d["alpha_seconds"] = l->alphaSeconds;
        d["beta_seconds_per_byte"] = l->betaSecondsPerByte;
        return d;
      })
      .def("reject", [](Reducer& r, const std::string& key, const std::string& error) {
        py::gil_scoped_release nogil;
        r.reject(key, error);
      }, py::arg("key"), py::arg("error"))
      .def("allreduce", [](Reducer& r, py::handle x, const std::string& key) {
        TensorArg t = convertedOrReject(r, key, [&] { return tensorArg(x, false, "Reducer.allreduce"); });
        py::array out = outputLike(t);
        TensorView ov{out.mutable_data(), t.dtype, t.shape};
        {
          py::gil_scoped_release nogil;
          r.allreduce(t.view(), ov, key);
        }
        return out;
      }, py::arg("x"), py::arg("key"))
      .def("allreduce_async", [](Reducer& r, py::handle x, const std::string& key) {
        TensorArg t = convertedOrReject(r, key, [&] { return tensorArg(x, false, "Reducer.allreduce_async"); });
        py::array out = outputLike(t);
        TensorView ov{out.mutable_data(), t.dtype, t.shape};
        std::shared_ptr<Work> w;
        {
          py::gil_scoped_release nogil;
          w = r.allreduceAsync(t.view(), ov, key);
        }
        return PyWork{std::move(w), py::make_tuple(x, t.owner), out};
      }, py::arg("x"), py::arg("key"))
      // Device reducer: x and out are CUDA arrays (out allocated by the caller's array library),
      // used on `stream`.
      .def("allreduce_device", [](Reducer& r, py::handle x, py::handle out, const std::string& key,
                                  intptr_t stream) {
        auto [t, o] = convertedOrReject(r, key, [&] {
          return std::make_pair(cudaTensorArg(x, false, "Reducer.allreduce", stream),
                                cudaTensorArg(out, true, "Reducer.allreduce (out)", stream));
        });
        py::gil_scoped_release nogil;
        r.allreduce(t.view(), o.mutableView(), key, reinterpret_cast<cuda::Stream>(stream));
      }, py::arg("x"), py::arg("out"), py::arg("key"), py::arg("stream"))
      .def("allreduce_async_device", [](Reducer& r, py::handle x, py::handle out, const std::string& key,
                                        intptr_t stream) {
        auto [t, o] = convertedOrReject(r, key, [&] {
          return std::make_pair(cudaTensorArg(x, false, "Reducer.allreduce_async", stream),
                                cudaTensorArg(out, true, "Reducer.allreduce_async (out)", stream));
        });
        std::shared_ptr<Work> w;
        {
          py::gil_scoped_release nogil;
          w = r.allreduceAsync(t.view(), o.mutableView(), key, reinterpret_cast<cuda::Stream>(stream));
        }
        return PyWork{std::move(w), py::make_tuple(x, t.owner, o.owner), py::reinterpret_borrow<py::object>(out)};
      }, py::arg("x"), py::arg("out"), py::arg("key"), py::arg("stream"))
      .def("allreduce_coalesced_device", [](Reducer& r, const py::list& xs, const py::list& outs,
                                            const std::string& key, intptr_t stream) {
        EFCOMM_CHECK(xs.size() == outs.size(), "Reducer.allreduce_coalesced: ", xs.size(), " inputs but ", outs.size(),
                     " outputs");
        std::vector<TensorArg> args, outArgs;
        std::vector<ConstTensorView> views;
        std::vector<TensorView> outViews;
        convertedOrReject(r, key + "#0", [&] {  // as allreduce_coalesced below
          for (size_t i = 0; i < xs.size(); ++i) {
            args.push_back(cudaTensorArg(xs[i], false, "Reducer.allreduce_coalesced", stream));
            outArgs.push_back(cudaTensorArg(outs[i], true, "Reducer.allreduce_coalesced (out)", stream));
            views.push_back(args.back().view());
            outViews.push_back(outArgs.back().mutableView());
          }
          return 0;
        });
        py::gil_scoped_release nogil;
        r.allreduceCoalesced(views, outViews, key, reinterpret_cast<cuda::Stream>(stream));
      }, py::arg("xs"), py::arg("outs"), py::arg("key"), py::arg("stream"))
      .def("allreduce_coalesced", [](Reducer& r, const py::list& xs, const std::string& key) {
        std::vector<TensorArg> args;
        std::vector<ConstTensorView> views;
        std::vector<TensorView> outViews;
        py::list outs;
        // A bad tensor fails the first bucket's call (the one every rank makes first).
        convertedOrReject(r, key + "#0", [&] {
          for (py::handle x : xs) args.push_back(tensorArg(x, false, "Reducer.allreduce_coalesced"));
          return 0;
        });
        for (const TensorArg& t : args) {
          py::array out = outputLike(t);
          outViews.push_back(TensorView{out.mutable_data(), t.dtype, t.shape});
          views.push_back(t.view());
          outs.append(out);
        }
        {
          py::gil_scoped_release nogil;
          r.allreduceCoalesced(views, outViews, key);
        }
        return outs;
      }, py::arg("xs"), py::arg("key"))
      .def("stats", [](const Reducer& r) {
        py::dict d;
        for (const auto& kv : r.stats()) d[py::str(kv.first)] = statsToPython(kv.second);
        return d;
      })
      // The reducer's state has no "spec" of its own; tag it so it has the common dict layout.
      .def("state_dict", [](const Reducer& r) {
        py::dict d = stateToPython(r.stateDict());
        if (!d.contains("spec")) d["spec"] = "reducer";
        return d;
      })
      .def("load_state_dict", [](Reducer& r, py::handle d) {
        StateDict s = stateFromPython(d);
        py::gil_scoped_release nogil;
        loadStateDictStrict(r, s);
      }, py::arg("state"));
}

}  // namespace efcomm::py_bind
