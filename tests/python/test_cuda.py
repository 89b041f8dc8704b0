"""The GPU path from Python: CUDA arrays (torch CUDA tensors, CuPy, __cuda_array_interface__)
through compressors, decompress and Feedback, and the NCCL communicator.

Without a GPU (CI) the tests check that every entry point reports ef.BackendUnavailable clearly
and that host arrays keep their path; with torch.cuda and a CUDA build of efcomm they check the
GPU results against the CPU's, zero-copy decoding, Feedback on the device and a one-rank NCCL
communicator with the Reducer over it (one GPU: NCCL refuses two ranks on one device).

The GPU tests run in child processes (test_child_gpu_tests, test_child_nccl_one_rank: pytest on
this file with EFCOMM_TEST_CUDA_CHILD=1, faulthandler on), so that a crash in native code fails
one test here, with the child's output, instead of killing the whole run. When the NCCL test
fails, probes in fresh processes (the system's or the wheel's libnccl; with torch, mpi4py or
neither imported first) say where a crash comes from."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import efcomm as ef
from efcomm import _core
from efcomm.comm import _device_index, _nccl_problem, _nccl_wheel_library, _resolve_device
from efcomm.compressors import _is_cuda
import helpers as H

GPU_PATH = _core._cuda_info()["available"]


def _torch_cuda() -> bool:
    if not GPU_PATH or not H.has_module("torch"):
        return False
    import torch
    return torch.cuda.is_available()


TORCH_CUDA = _torch_cuda()
IN_CHILD = os.environ.get("EFCOMM_TEST_CUDA_CHILD") == "1"
_NO_GPU = "needs torch.cuda and a CUDA build of efcomm with a GPU"
# The parent's tests that run the GPU tests in a child process.
needs_gpu = pytest.mark.skipif(not TORCH_CUDA or IN_CHILD, reason=_NO_GPU if not TORCH_CUDA else "the child itself")
# The GPU tests proper: only in the child.
gpu_child = pytest.mark.skipif(not TORCH_CUDA or not IN_CHILD,
                               reason=_NO_GPU if not TORCH_CUDA else "runs in a child process (test_child_*)")
without_gpu = pytest.mark.skipif(GPU_PATH, reason="the GPU path is available here")


class FakeCudaArray:
    """A stand-in CUDA array: only __cuda_array_interface__ (v3), pointing nowhere usable."""

    def __init__(self, shape=(4,), typestr="<f4", readonly=False):
        self.shape = tuple(shape)
        self.__cuda_array_interface__ = {"data": (0xDEAD0000, readonly), "shape": self.shape, "typestr": typestr,
                                         "strides": None, "version": 3}


class FakeDLPackDevice:
    def __init__(self, device_type):
        self._type = device_type

    def __dlpack_device__(self):
        return (self._type, 0)

    def __dlpack__(self, stream=None):
        raise RuntimeError("not a real array")


# ---- everywhere -------------------------------------------------------------------------------


def test_build_info_agrees_with_the_gpu_status():
    info = _core._cuda_info()
    assert set(info) == {"built", "available", "device_count", "reason"}
    assert ef.build_info()["cuda"] == info["built"]
    assert ef.build_info()["nccl"] == _core._nccl_built()
    assert info["available"] == (info["built"] and info["device_count"] > 0)
    assert (info["reason"] == "") == info["available"]


def test_cuda_arrays_are_told_from_host_arrays():
    assert not _is_cuda(np.ones(3, np.float32))
    assert _is_cuda(FakeCudaArray())
    assert _is_cuda(FakeDLPackDevice(2))       # kDLCUDA
    assert _is_cuda(FakeDLPackDevice(13))      # kDLCUDAManaged
    assert not _is_cuda(FakeDLPackDevice(1))   # kDLCPU
    assert not _is_cuda(memoryview(b"abcd"))
    if H.has_module("torch"):
        import torch
        assert not _is_cuda(torch.ones(3))
        assert not _is_cuda(torch.ones(3, requires_grad=True))


def test_host_arrays_keep_their_path():
    c = ef.compressor("topk:k=2")
    x = np.array([1.0, -3.0, 2.0, 0.5], np.float32)
    out = np.zeros(4, np.float32)
    assert c.decompress(c.compress(x), out=out) is out
    np.testing.assert_array_equal(out, [0, -3, 2, 0])
    if H.has_module("torch"):
        import torch
        y = ef.compressors.decompress(c.compress(torch.from_numpy(x)))
        assert isinstance(y, torch.Tensor) and y.device.type == "cpu"
        fb = ef.feedback.make("ef21", "topk:k=2")
        fb.step(torch.from_numpy(x))
        assert not fb.on_device and isinstance(fb.estimate, np.ndarray)


def test_nccl_wheel_library_is_a_file_or_empty():
    path = _nccl_wheel_library()
    assert path == "" or (os.path.isfile(path) and path.endswith("libnccl.so.2"))


def test_nccl_device_argument(monkeypatch):
    assert _device_index(3, 0, 8) == 3
    assert _device_index("cuda:2", 0, 8) == 2
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    if "torch" not in sys.modules or not sys.modules["torch"].cuda.is_initialized():
        assert _device_index(None, 5, 4) == 1  # the local rank modulo the device count
        assert _device_index("cuda", 5, 4) == 1
        monkeypatch.setenv("LOCAL_RANK", "3")
        assert _device_index(None, 5, 4) == 3
    for bad in ("cpu", "cuda:x", 1.5, True):
        with pytest.raises(ef.InvalidArgument, match="device"):
            _device_index(bad, 0, 8)
    if H.has_module("torch"):
        import torch
        assert _device_index(torch.device("cuda", 1), 0, 8) == 1
        with pytest.raises(ef.InvalidArgument, match="CUDA device"):
            _device_index(torch.device("cpu"), 0, 8)
    count = _core._cuda_info()["device_count"]
    with pytest.raises(ef.InvalidArgument, match="does not exist"):
        _resolve_device(count, 0)


def test_nccl_rejects_comm_and_process_group_together():
    with pytest.raises(ef.InvalidArgument, match="not both"):
        ef.Communicator.nccl(comm=object(), process_group=object())


def test_nccl_rejects_a_bad_timeout():
    with pytest.raises(ef.InvalidArgument, match="timeout"):
        ef.Communicator.nccl(timeout=0)


# ---- without the GPU path -------------------------------------------------------------------------


@without_gpu
@pytest.mark.parametrize("spec", H.SPECS)
def test_fake_cuda_array_compress_raises_backend_unavailable(spec):
    c = ef.compressor(spec)
    x = FakeCudaArray((4, 6) if spec.startswith("powersgd") else (4,))
    with pytest.raises(ef.BackendUnavailable, match="CUDA array.*GPU path is unavailable") as info:
        c.compress(x)
    assert _core._cuda_info()["reason"] in str(info.value)
    assert c.state_dict()["meta"]["step"] == "0"  # nothing changed


@without_gpu
def test_fake_cuda_array_native_entry_points_raise_backend_unavailable():
    # The native checks stand on their own (not only the Python wrapper's).
    c = ef.compressor("sign")
    msg = c.compress(np.ones(4, np.float32))
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        c._impl.compress_cuda(FakeCudaArray(), None, 0)
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        c._impl.decompress_into_cuda(msg, FakeCudaArray(), 0)
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        _core.decompress_into_cuda(msg, FakeCudaArray(), 0)
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        _core._DeviceFeedback("ef21", "sign")
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        _core.accumulate_cuda(FakeCudaArray(typestr="|u1"), FakeCudaArray(), 0.5, 0)


@without_gpu
def test_fake_cuda_out_raises_backend_unavailable():
    c = ef.compressor("quant:bits=8,block=256")
    msg = c.compress(np.linspace(-1, 1, 4, dtype=np.float32))
    with pytest.raises(ef.BackendUnavailable, match="decompress"):
        c.decompress(msg, out=FakeCudaArray())
    with pytest.raises(ef.BackendUnavailable, match="decompress"):
        ef.compressors.decompress(msg, out=FakeCudaArray())
    # Even a CUDA out of the wrong shape: the missing backend is the first thing reported.
    with pytest.raises(ef.BackendUnavailable):
        ef.compressors.decompress(msg, out=FakeCudaArray((7,)))
    dlpack_only = FakeDLPackDevice(2)
    with pytest.raises(ef.BackendUnavailable):
        ef.compressors.decompress(msg, out=dlpack_only)


@without_gpu
@pytest.mark.parametrize("fb_spec", ["none", "ef14", "ef21", "ef21sgdm", "econtrol"])
def test_fake_cuda_array_feedback_step_raises_and_keeps_the_state(fb_spec):
    fb = ef.feedback.make(fb_spec, "topk:k=2")
    with pytest.raises(ef.BackendUnavailable, match="GPU path is unavailable"):
        fb.step(FakeCudaArray())
    assert not fb.initialized and not fb.on_device
    # The host path still works afterwards.
    fb.step(np.array([1.0, -2.0, 3.0, 0.0], np.float32))
    assert fb.initialized and not fb.on_device


@without_gpu
def test_nccl_communicator_raises_backend_unavailable():
    with pytest.raises(ef.BackendUnavailable, match="NCCL") as info:
        ef.Communicator.nccl()
    text = str(info.value)
    # Says why and how to fix it.
    assert "nvcc" in text or "CUDA" in text
    assert _nccl_problem("") is not None


@pytest.mark.skipif(not _core._nccl_built(), reason="the NCCL backend is not built")
def test_nccl_library_variable_is_authoritative():
    # A fresh process: the library, once loaded, stays loaded.
    code = ("import efcomm as ef\n"
            "from efcomm import _core\n"
            "try:\n"
            "    _core._nccl_version('')\n"
            "except ef.BackendUnavailable as e:\n"
            "    print('BU', e)\n")
    env = dict(os.environ, EFCOMM_NCCL_LIBRARY="/nonexistent/libnccl.so.2")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "BU" in out.stdout and "EFCOMM_NCCL_LIBRARY" in out.stdout and "nvidia-nccl-cu13" in out.stdout


@pytest.mark.skipif(_core._nccl_built(), reason="the NCCL backend is built")
def test_nccl_entry_points_without_the_backend():
    assert not _core._nccl_built()
    assert _core._nccl_library() == ""
    for f in (lambda: _core._nccl_version(""), lambda: _core._nccl_unique_id(""),
              lambda: _core._NcclCommunicator(0, 1, b"\0" * 128, 0)):
        with pytest.raises(ef.BackendUnavailable, match="without the NCCL backend"):
            f()


# ---- with a GPU -------------------------------------------------------------------------------------


def _input(spec, seed=0):
    import torch
    g = torch.Generator().manual_seed(seed)
    shape = (32, 33) if spec.startswith("powersgd") else (1000 + 7,)
    return torch.randn(shape, generator=g, dtype=torch.float32)


def _close(spec, got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if spec.startswith("powersgd"):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    elif H.is_randomized(spec):
        # The same draw; a stochastic rounding at a boundary may flip where the norm's last bit differs.
        assert np.mean(np.isclose(got, want, rtol=1e-5, atol=1e-6)) > 0.99
    else:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _decoded_close(spec, got, want):
    """One message decoded on the GPU and on the CPU: the same payload, so the same values up to
    PowerSGD's matrix product order."""
    if spec.startswith("powersgd"):
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-4, atol=1e-5)
    else:
        np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-7)


@gpu_child
@pytest.mark.parametrize("spec", H.SPECS)
def test_gpu_compress_matches_cpu(spec):
    import torch
    x = _input(spec)
    cpu, gpu = ef.compressor(spec), ef.compressor(spec)
    m_cpu = cpu.compress(x, step=5)
    m_gpu = gpu.compress(x.cuda(), step=5)
    assert isinstance(m_gpu, ef.Message)  # a host message
    assert (m_gpu.compressor, m_gpu.dtype, m_gpu.shape) == (m_cpu.compressor, m_cpu.dtype, m_cpu.shape)
    ef.Message.from_bytes(bytes(m_gpu))  # valid wire image
    if spec.startswith(("identity", "cast", "topk")):  # pure selection and rounding: exact
        assert bytes(m_gpu) == bytes(m_cpu)
    # The GPU's message decoded on the CPU, and the CPU's decoded on the GPU.
    d_gpu_on_cpu = ef.compressors.decompress(ef.Message.from_bytes(bytes(m_gpu)))
    d_cpu_on_cpu = ef.compressors.decompress(m_cpu)
    _close(spec, d_gpu_on_cpu, d_cpu_on_cpu)
    out = torch.empty_like(x, device="cuda")
    cpu.decompress(m_cpu, out=out)
    _decoded_close(spec, out.cpu().numpy(), d_cpu_on_cpu)
    # Without out=: a CUDA tensor on the input's device.
    y = gpu.decompress(m_gpu)
    assert isinstance(y, torch.Tensor) and y.is_cuda and y.shape == x.shape
    _decoded_close(spec, y.cpu().numpy(), d_gpu_on_cpu)
    # The step counter advanced as on the CPU.
    assert gpu.state_dict()["meta"]["step"] == cpu.state_dict()["meta"]["step"] == "6"


@gpu_child
def test_gpu_decompress_is_zero_copy():
    import torch
    c = ef.compressor("quant:bits=8,block=256")
    x = torch.randn(4097, device="cuda")
    msg = c.compress(x)
    out = torch.full_like(x, float("nan"))
    ptr = out.data_ptr()
    assert c.decompress(msg, out=out) is out
    assert out.data_ptr() == ptr
    assert torch.isfinite(out).all()
    host = np.empty(4097, np.float32)
    c.decompress(msg, out=host)
    np.testing.assert_allclose(out.cpu().numpy(), host, rtol=1e-6, atol=1e-7)


@gpu_child
def test_gpu_input_is_read_in_place_and_not_modified():
    import torch
    x = torch.randn(1000, device="cuda")
    before = x.clone()
    ef.compressor("topk:ratio=0.1").compress(x)
    assert torch.equal(x, before)


@gpu_child
def test_gpu_non_finite_input_raises():
    import torch
    x = torch.randn(100, device="cuda")
    x[17] = float("nan")
    c = ef.compressor("sign")
    with pytest.raises(ef.NonFiniteError):
        c.compress(x)
    assert c.state_dict()["meta"]["step"] == "0"


@gpu_child
@pytest.mark.parametrize("fb_spec", ["none", "ef14", "ef21", "ef21:init=compressed", "ef21sgdm", "econtrol"])
def test_gpu_feedback_matches_cpu(fb_spec):
    import torch
    comp = "topk:ratio=0.1"
    cpu, gpu = ef.feedback.make(fb_spec, comp), ef.feedback.make(fb_spec, comp)
    for i in range(4):
        v = _input(comp, seed=i)
        m_cpu = cpu.step(v)
        m_gpu = gpu.step(v.cuda())
        assert gpu.on_device
        _close(comp, ef.compressors.decompress(ef.Message.from_bytes(bytes(m_gpu))), ef.compressors.decompress(m_cpu))
    if fb_spec == "none":
        assert gpu.estimate is None
    else:
        e = gpu.estimate
        assert isinstance(e, torch.Tensor) and e.is_cuda
        np.testing.assert_allclose(e.cpu().numpy(), cpu.estimate, rtol=1e-5, atol=1e-6)
    s_gpu, s_cpu = gpu.state_dict(), cpu.state_dict()
    assert s_gpu["spec"] == s_cpu["spec"] and set(s_gpu["meta"]) == set(s_cpu["meta"])
    assert set(s_gpu["tensors"]) == set(s_cpu["tensors"])
    # The GPU state continues on the CPU, and a CPU state on the GPU.
    moved = ef.feedback.make(fb_spec, comp)
    moved.load_state_dict(s_gpu)
    back = ef.feedback.make(fb_spec, comp)
    back.load_state_dict(s_cpu)
    v = _input(comp, seed=99)
    a = ef.compressors.decompress(moved.step(v))
    b = ef.compressors.decompress(ef.Message.from_bytes(bytes(back.step(v.cuda()))))
    _close(comp, b, a)
    with pytest.raises(ef.InvalidArgument, match="GPU"):
        gpu.step(v)  # host input after the state moved to the device


@gpu_child
@pytest.mark.parametrize("fb_spec", ["ef21", "ef14"])
def test_gpu_ddp_hook_round_on_the_device(fb_spec):
    """The DDP hook's compressed round on CUDA gradients over a one-rank NCCL group: workers step
    in device memory, the mirror adds the messages from the gathered device buffer; the same
    results as the hook on host tensors (gloo), and the GPU run's checkpoint continues on CPUs."""
    import tempfile

    import torch
    import torch.distributed as dist
    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False)
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    nccl = dist.new_group(backend="nccl")

    def hook(group):
        return ef.torch.DDPHookState("topk:ratio=0.1", fb_spec, process_group=group, start_iter=0,
                                     min_compress_numel=0)

    gpu, cpu = hook(nccl), hook(dist.group.WORLD)
    gen = torch.Generator().manual_seed(0)

    def round_(state, grads, small, device):
        grads, small = [g.to(device) for g in grads], [x.to(device) for x in small]
        state._compressed_mean([(f"p{i}:{g.numel()}", g) for i, g in enumerate(grads)], small)
        return [g.cpu() for g in grads + small]

    for _ in range(4):
        grads = [torch.randn(64, 33, generator=gen), torch.randn(500, 4, generator=gen)]
        small = [torch.randn(17, generator=gen)]
        for a, b in zip(round_(gpu, grads, small, "cuda"), round_(cpu, grads, small, "cpu")):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    assert all(s.worker.on_device and s.device_g is not None and s.device_g.is_cuda for s in gpu._slots.values())
    # The GPU checkpoint, loaded by a hook on host tensors, goes on as the host hook does.
    resumed = hook(dist.group.WORLD)
    resumed.load_state_dict(gpu.state_dict())
    grads = [torch.randn(64, 33, generator=gen), torch.randn(500, 4, generator=gen)]
    for a, b in zip(round_(resumed, grads, [], "cpu"), round_(cpu, grads, [], "cpu")):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
    # A damaged message in the gathered buffer: CorruptMessageError, the mirror unchanged.
    slot = next(iter(gpu._slots.values()))
    wire = bytearray(bytes(ef.compressor("topk:ratio=0.1").compress(torch.randn(*slot.shape, generator=gen))))
    wire[len(wire) // 2] ^= 0x10
    before = slot.device_g.clone()
    with pytest.raises(ef.CorruptMessageError, match="checksum"):
        slot.update([torch.frombuffer(wire, dtype=torch.uint8).cuda()])
    assert torch.equal(slot.device_g, before)
    dist.destroy_process_group(nccl)


def _nccl_comm():
    if _nccl_problem(_nccl_wheel_library()) is not None:
        pytest.skip(f"NCCL unavailable: {_nccl_problem(_nccl_wheel_library())}")
    if H.has_module("mpi4py"):
        from mpi4py import MPI
        return ef.Communicator.nccl(MPI.COMM_SELF, device=0, timeout=60)
    import tempfile

    import torch.distributed as dist
    if not dist.is_initialized():
        store = tempfile.NamedTemporaryFile(delete=False)
        dist.init_process_group("gloo", init_method=f"file://{store.name}", rank=0, world_size=1)
    return ef.Communicator.nccl(process_group=dist.group.WORLD, device=0, timeout=60)


@gpu_child
def test_nccl_one_rank_collectives():
    import torch
    comm = _nccl_comm()
    assert isinstance(comm, ef.comm.NcclCommunicator) and isinstance(comm, ef.Communicator)
    assert (comm.rank, comm.size, comm.device) == (0, 1, 0)
    comm.barrier()
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16):
        x = torch.arange(1000, device="cuda").to(dtype)
        want = x.clone()
        ptr = x.data_ptr()
        assert comm.allreduce(x) is x
        assert x.data_ptr() == ptr and torch.equal(x, want)
    x = torch.randn(333, device="cuda")
    want = x.clone()
    assert comm.broadcast(x, root=0) is x and torch.equal(x, want)
    work = comm.allreduce(x, async_op=True)
    assert work.wait() is x and work.is_completed()
    parts = comm.allgatherv(x)
    assert len(parts) == 1 and parts[0].dtype == x.dtype and torch.equal(parts[0], want)
    raw = torch.arange(7, dtype=torch.uint8, device="cuda")
    assert torch.equal(comm.allgatherv(raw)[0], raw)
    empty = comm.allgatherv(torch.empty(0, device="cuda"))
    assert len(empty) == 1 and empty[0].numel() == 0
    with pytest.raises(ef.InvalidArgument, match="CUDA array"):
        comm.allreduce(torch.ones(3))
    with pytest.raises(ef.BackendUnavailable, match="Monitor"):
        ef.health.Monitor(comm)
    comm.abort("test abort")
    with pytest.raises(ef.CollectiveTimeout):
        comm.allreduce(torch.ones(3, device="cuda"))


@gpu_child
@pytest.mark.parametrize("algorithm,compressor", [("allgather", "topk:ratio=0.1"),
                                                  ("reduce_scatter", "topk:ratio=0.1"),
                                                  ("allreduce", "randk:ratio=0.1")])
def test_nccl_one_rank_reducer(algorithm, compressor):
    """The Reducer over NCCL on device arrays: the host reducer's results, on the device, resumable."""
    import torch
    comm = _nccl_comm()
    red = ef.Reducer(comm, compressor, "ef21", algorithm=algorithm)
    xs = [torch.randn(2, 500, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    got = [red.allreduce(x.cuda(), key="w") for x in xs]
    assert all(g.is_cuda and g.shape == (2, 500) and g.dtype == torch.float32 for g in got)

    def on_host(c):
        r = ef.Reducer(c, compressor, "ef21", algorithm=algorithm)
        return [r.allreduce(x.numpy(), key="w") for x in xs]

    for g, w in zip(got, ef.testing.run_ranks(1, on_host)[0]):
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=1e-5, atol=1e-6)
    assert red.stats["w"]["algorithm"] == algorithm and red.stats["w"]["calls"] == 3
    state = red.state_dict()
    a = red.allreduce_async(xs[0].cuda(), key="w").wait()
    again = ef.Reducer(comm, compressor, "ef21", algorithm=algorithm)
    again.load_state_dict(state)
    assert torch.equal(again.allreduce(xs[0].cuda(), key="w"), a)
    with pytest.raises(ef.InvalidArgument, match="CUDA"):
        red.allreduce(xs[0], key="w")
    outs = red.allreduce_coalesced([x.cuda() for x in xs], key="c")
    assert [o.shape for o in outs] == [x.shape for x in xs] and all(o.is_cuda for o in outs)

    def coalesced_on_host(c):
        return ef.Reducer(c, compressor, "ef21", algorithm=algorithm).allreduce_coalesced(
            [x.numpy() for x in xs], key="c")

    for g, w in zip(outs, ef.testing.run_ranks(1, coalesced_on_host)[0]):
        np.testing.assert_allclose(g.cpu().numpy(), w, rtol=1e-5, atol=1e-6)


# ---- the child processes -------------------------------------------------------------------------

_TAIL = 6000  # characters of a child's output quoted in a failure


def _text(data) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _child_env(**extra) -> dict:
    env = dict(os.environ, EFCOMM_TEST_CUDA_CHILD="1", PYTHONFAULTHANDLER="1")
    env.setdefault("NCCL_DEBUG", "WARN")
    env.update(extra)
    return env


def _run(cmd, timeout, env):
    """(returncode or None on timeout, stdout, stderr) of a child process."""
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        return out.returncode, out.stdout, out.stderr
    except subprocess.TimeoutExpired as e:
        return None, _text(e.stdout), _text(e.stderr)


def _verdict(rc) -> str:
    if rc is None:
        return "timed out"
    if rc < 0:
        import signal
        try:
            return f"killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


def _pytest_child(selection: str, timeout: float):
    """Runs this file's tests matching `selection` (-k) in a child pytest; fails with its output."""
    cmd = [sys.executable, "-X", "faulthandler", "-m", "pytest", os.path.abspath(__file__), "-q", "-rfEs",
           "--tb=short", "-p", "no:cacheprovider", "-k", selection]
    rc, out, err = _run(cmd, timeout, _child_env())
    text = (out + ("\n---- stderr ----\n" + err if err.strip() else ""))
    return rc, text


@needs_gpu
def test_child_gpu_tests():
    """The GPU compressor, decompress and Feedback tests, in a child process."""
    rc, text = _pytest_child("test_gpu_", timeout=300)
    assert rc == 0, f"the GPU tests' child process failed ({_verdict(rc)}):\n{text[-_TAIL:]}"
    summary = [ln for ln in text.splitlines() if " passed" in ln or " skipped" in ln][-1:]
    assert summary and "skipped" not in summary[0], f"the child skipped GPU tests:\n{text[-_TAIL:]}"


# A one-rank communicator made by hand in a fresh process, after importing what `stage` names:
# where a crash comes from (the library, torch's CUDA state, MPI). Prints each step it passed.
_NCCL_PROBE = r"""
import os, sys
stage = sys.argv[1]
if "torch" in stage:
    import torch
    torch.zeros(1, device="cuda")
    print("torch CUDA ok", torch.__version__, flush=True)
if "mpi" in stage:
    from mpi4py import MPI
    print("MPI ok", MPI.Get_library_version().splitlines()[0], flush=True)
from efcomm import _core
from efcomm.comm import _nccl_wheel_library
lib = _nccl_wheel_library() if "wheel" in stage else ""
print("loading", repr(lib) if lib else "libnccl.so.2 (search path)" + (": no nvidia-nccl-cu13 wheel" if "wheel" in stage
      else ""), flush=True)
version = _core._nccl_version(lib)
print("NCCL", version, "from", _core._nccl_library(), flush=True)
uid = _core._nccl_unique_id(lib)
print("unique id ok", flush=True)
comm = _core._NcclCommunicator(0, 1, uid, 0, 60.0, lib)
print("communicator ok", flush=True)
comm.barrier(0, 60.0).wait(60.0)
print("barrier ok", flush=True)
del comm
print("closed ok", flush=True)
"""


def _nccl_probes() -> str:
    stages = ["system", "wheel"]
    if H.has_module("torch"):
        stages.append("torch+wheel")
    if H.has_module("mpi4py"):
        stages.append("mpi+wheel")
        if H.has_module("torch"):
            stages.append("torch+mpi+wheel")
    lines = []
    for stage in stages:
        env = _child_env(NCCL_DEBUG=os.environ.get("NCCL_DEBUG", "INFO"))
        env.pop("EFCOMM_NCCL_LIBRARY", None)
        rc, out, err = _run([sys.executable, "-X", "faulthandler", "-c", _NCCL_PROBE, stage], 90, env)
        steps = [ln for ln in out.splitlines() if " NCCL " not in ln]  # the steps, not NCCL_DEBUG's lines
        if rc == 0:
            lines.append(f"  {stage}: ok ({'; '.join(steps)})")
            continue
        lines.append(f"  {stage}: {_verdict(rc)}; steps passed: {'; '.join(steps) or 'none'}\n"
                     f"    stdout tail: {out[-1500:]!r}\n    stderr tail: {err[-2500:]!r}")
    return "\n".join(lines)


@needs_gpu
def test_child_nccl_one_rank():
    """The one-rank NCCL tests (collectives, the Reducer) in a child process; on failure, probes
    say where it broke."""
    rc, text = _pytest_child("test_nccl_one_rank_", timeout=180)
    if rc == 0:
        return
    pytest.fail(f"the NCCL test's child process failed ({_verdict(rc)}):\n{text[-_TAIL:]}\n"
                f"---- one-rank probes in fresh processes ----\n{_nccl_probes()}", pytrace=False)
