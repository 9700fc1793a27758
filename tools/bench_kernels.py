#!/usr/bin/env python3
"""Benchmark edgelut's LUT GEMV/GEMM kernels against peers measured in the same run.

For every (shape N x K, tokens m, threads) it times edgelut.kernels.gemv/gemm for
each weight type and, beside it:

- numpy: the dequantised float32 matrix cached, just the matmul (``np f32``);
  and dequantise + matmul per call (``np deq+mm``).
- onnxruntime com.microsoft MatMulNBits (4-bit, accuracy_level=4), built
  in memory with the onnx helper API (skipped with a note when not installed).
- llama.cpp (``--llama-cpp-build PATH``): its CPU backend's MUL_MAT, driven
  through the shared libraries with ctypes so that the thread count, shapes and
  timing loop match ours. ``--backend-ops`` also runs the stock
  ``test-backend-ops perf`` on the same shapes as a cross-check (that tool
  always uses hardware_concurrency/2 threads; we report what it used).

``--dram MB`` gives every implementation enough copies of its weights to
fill MB and rotates through them call by call, so with MB well above the last
level cache each call streams its weights from DRAM as decode does in a whole
model (the default reuses one copy, which stays in cache for the shapes here).

Times are medians of repeated calls after a warm-up; the number of repeats is
adaptive (about ``--target`` seconds per measurement) unless ``--repeats`` is
given. Weight GB/s = packed weight bytes / time. The machine this was written
for is shared, so compare the ratios (same run) rather than absolute times.

Example::

    python tools/bench_kernels.py --quick
    python tools/bench_kernels.py --llama-cpp-build /work/peers/llama.cpp/build --markdown
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import datetime
import functools
import glob
import itertools
import mmap
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelut import kernels

# (N, K) = (output rows, input columns) of the weight matrix.
SHAPES: dict[str, tuple[int, int]] = {
    "4096x4096": (4096, 4096),  # Llama-7B attention
    "11008x4096": (11008, 4096),  # Llama-7B FFN up/gate
    "4096x11008": (4096, 11008),  # Llama-7B FFN down
    "576x576": (576, 576),  # SmolLM2-135M attention
    "1536x576": (1536, 576),  # SmolLM2-135M FFN up/gate
    "576x1536": (576, 1536),  # SmolLM2-135M FFN down
    "896x896": (896, 896),  # Qwen2.5-0.5B attention
    "4864x896": (4864, 896),  # Qwen2.5-0.5B FFN up/gate
}
QUICK_SHAPES = ("4096x4096", "576x1536")
ROUNDS = 5  # round-robin rounds per measurement (see time_calls)
EDGELUT_TYPES = ("q1", "q2", "q3", "q4", "tq")
# llama.cpp types compared by default; the first of each bit width is the target peer.
LLAMA_TYPES = ("q1_0", "tq1_0", "tq2_0", "q2_K", "q3_K", "q4_0", "q4_K")
# Bit width class of each llama.cpp type, to pair it with an edgelut type.
LLAMA_CLASS = {
    "q1_0": "q1",
    "iq1_s": "q1",
    "iq1_m": "q1",
    "tq1_0": "tq",
    "tq2_0": "tq",
    "q2_0": "q2",
    "q2_K": "q2",
    "iq2_xxs": "q2",
    "q3_K": "q3",
    "q4_0": "q4",
    "q4_1": "q4",
    "q4_K": "q4",
}


@dataclass
class Result:
    shape: str
    m: int
    threads: int
    impl: str  # column label, e.g. "edgelut q2", "llama q2_K", "np f32"
    seconds: float  # median per call
    weight_bytes: int  # bytes of weights read per call (0 = not meaningful)
    note: str = ""
    best: float = float("nan")  # fastest sample: what the kernel does when the machine is quiet

    @property
    def gbps(self) -> float:
        return self.weight_bytes / self.seconds / 1e9 if self.weight_bytes and self.seconds > 0 else 0.0


# --------------------------------------------------------------------------- timing


def time_calls(
    fns: dict[str, Callable[[], object]], target: float, repeats: int | None, settle: float = 0.0
) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per call of each fn, measured interleaved.

    The machine is shared, so its speed drifts: every implementation gets a
    slice of samples in each of ``ROUNDS`` round-robin rounds, so a slow period
    hits all of them alike and the ratios stay fair. Small calls are batched so
    one timed sample lasts >= ~2 ms (timer and scheduler noise); the sample
    count adapts to about ``target`` seconds per implementation. ``settle``
    seconds of sleep after each slice let the previous implementation's
    spinning worker threads park, so they do not steal the other core.
    """
    inner, per = {}, {}
    for name, fn in fns.items():
        fn()  # warm-up: first-touch pages, thread pool start, caches
        t0 = time.perf_counter()
        fn()
        one = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, int(0.002 / one))
        per[name] = one * inner[name]
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(ROUNDS):
        for name, fn in fns.items():
            count = -(-repeats // ROUNDS) if repeats else int(min(max(target / ROUNDS / per[name], 1), 20))
            for _ in range(count):
                t0 = time.perf_counter()
                for _ in range(inner[name]):
                    fn()
                samples[name].append((time.perf_counter() - t0) / inner[name])
            time.sleep(settle)
    return {name: (statistics.median(v), min(v)) for name, v in samples.items()}


_BLAS_SET: list[Callable[[int], object]] = []


def set_blas_threads(n: int) -> str:
    """Set the thread count of the OpenBLAS numpy loaded (no threadpoolctl needed)."""
    if _BLAS_SET:
        _BLAS_SET[0](ctypes.c_int(n))
        return "cached"
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    libs = {line.split()[-1] for line in maps.splitlines() if "blas" in line.lower() and ".so" in line}
    for path in sorted(libs):
        lib = ctypes.CDLL(path)
        syms = (
            "scipy_openblas_set_num_threads64_",
            "openblas_set_num_threads64_",
            "openblas_set_num_threads",
        )
        for sym in syms:
            f = getattr(lib, sym, None)
            if f is not None:
                f(ctypes.c_int(n))
                _BLAS_SET.append(f)
                return os.path.basename(path)
    return "unknown"


# --------------------------------------------------------------------------- edgelut


def random_packed(
    n: int, k: int, qtype: str, group: int, rng: np.random.Generator, form: str = ""
) -> kernels.PackedMatrix:
    """Random codes and scales: kernel speed does not depend on the values.

    form "" = symmetric fp16 scales, "a" = asymmetric fp16 scale and min per
    group, "k" = two-level scales (super-blocks of 256 weights)."""
    lo, hi = kernels.CODE_RANGE[qtype]
    codes = rng.integers(lo, hi + 1, size=(n, k), dtype=np.int8)
    ng = -(-k // group)
    scales = rng.uniform(0.01, 0.02, size=(n, ng)).astype(np.float32)
    if form == "k":
        nsb = -(-k // 256)
        sub = rng.integers(0, 16, size=(n, ng), dtype=np.uint8)
        d = rng.uniform(0.001, 0.002, size=(n, nsb)).astype(np.float32)
        return kernels.pack_two_level(codes, sub, sub[:, ::-1].copy(), d, -d, qtype, group, 256)
    return kernels.pack(codes, scales, -scales if form == "a" else None, qtype, group)


def packed_copies(pm: kernels.PackedMatrix, count: int, pages: str = "huge") -> list[kernels.PackedMatrix]:
    """count byte copies of pm at other addresses (for --dram), in one anonymous mapping
    advised for ``pages``: "huge" (2 MiB, as the engine holds a resident model,
    csrc/io/huge_memory.h) or "small" (4 KiB, as a file mapping gets)."""
    stride = -(-pm.nbytes // 64) * 64  # from_buffer wants the packed sections 64-byte aligned
    arena = mmap.mmap(-1, stride * count + (2 << 20))
    arena.madvise(mmap.MADV_HUGEPAGE if pages == "huge" else mmap.MADV_NOHUGEPAGE)
    raw = np.frombuffer(arena, np.uint8)
    base = -raw.ctypes.data % (2 << 20)
    out = []
    for i in range(count):
        buf = raw[base + i * stride : base + i * stride + pm.nbytes]
        buf[:] = pm.data
        out.append(kernels.from_buffer(buf, pm.n, pm.k, pm.qtype, pm.group_size, pm.asym, pm.super_block))
    return out


def advise_pages(addr: int, size: int, pages: str) -> None:
    """madvise the whole 2 MiB pages of [addr, addr + size) for huge or small pages, before
    anything touches them (ggml's weight buffers: llama.cpp advises none itself, so a fresh
    buffer gets whatever the system default is; numpy advises its own large arrays huge)."""
    lo, hi = -(-addr // (2 << 20)) * (2 << 20), (addr + size) // (2 << 20) * (2 << 20)
    if hi > lo:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        libc.madvise(lo, hi - lo, mmap.MADV_HUGEPAGE if pages == "huge" else mmap.MADV_NOHUGEPAGE)


def rotating(fns: list[Callable[[], object]]) -> Callable[[], object]:
    """One callable running fns in turn, a call each."""
    it = itertools.cycle(fns)
    return lambda: next(it)()


def copies_for(nbytes: int, dram_mb: float) -> int:
    """Copies of nbytes of weights that fill dram_mb (1 when dram_mb is 0: no rotation)."""
    return max(1, -(-int(dram_mb * 1e6) // max(nbytes, 1))) if dram_mb else 1


# --------------------------------------------------------------------------- onnxruntime


def ort_matmulnbits(n: int, k: int, m: int, threads: int, block: int, rng: np.random.Generator):
    """A callable running MatMulNBits (4-bit) on x (m, k), or a note why not."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None, "onnxruntime/onnx not installed"
    nb = k // block
    b = rng.integers(0, 256, size=(n, nb, block // 2), dtype=np.uint8)
    sc = rng.uniform(0.01, 0.02, size=(n * nb,)).astype(np.float32)
    node = helper.make_node(
        "MatMulNBits",
        ["A", "B", "scales"],
        ["Y"],
        domain="com.microsoft",
        K=k,
        N=n,
        bits=4,
        block_size=block,
        accuracy_level=4,
    )
    graph = helper.make_graph(
        [node],
        "mmnb",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [m, n])],
        initializer=[
            helper.make_tensor("B", TensorProto.UINT8, b.shape, b.tobytes(), raw=True),
            helper.make_tensor("scales", TensorProto.FLOAT, sc.shape, sc.tobytes(), raw=True),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    )
    model.ir_version = 10  # onnx may write an IR version newer than onnxruntime reads
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = rng.standard_normal((m, k), dtype=np.float32)
    nbytes = b.nbytes + sc.nbytes
    return (lambda: sess.run(None, {"A": x}), nbytes), f"onnxruntime {ort.__version__}"


# --------------------------------------------------------------------------- llama.cpp (ggml)


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _find_ggml_header(build: Path) -> Path:
    cache = build / "CMakeCache.txt"
    roots = [build.parent]
    if cache.exists():
        m = re.search(r"^CMAKE_HOME_DIRECTORY:INTERNAL=(.*)$", cache.read_text(), re.M)
        if m:
            roots.insert(0, Path(m.group(1)))
    for root in roots:
        h = root / "ggml" / "include" / "ggml.h"
        if h.exists():
            return h
    raise FileNotFoundError(f"--llama-cpp-build {build}: cannot find ggml/include/ggml.h beside the build")


def _parse_enum(text: str, enum: str) -> dict[str, int]:
    """Values of a C enum in ggml.h (explicit '= N' or sequential)."""
    body = re.search(r"enum\s+" + enum + r"\s*\{(.*?)\};", text, re.S).group(1)
    body = re.sub(r"//[^\n]*", "", body)
    out, v = {}, -1
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        if "=" in item:
            name, val = (s.strip() for s in item.split("="))
            v = int(val, 0)
        else:
            name, v = item, v + 1
        out[name] = v
    return out


class Ggml:
    """llama.cpp's CPU MUL_MAT through its shared libraries (a build with BUILD_SHARED_LIBS=ON)."""

    def __init__(self, build: Path, pages: str = "huge") -> None:
        self.pages = pages  # as packed_copies: the weight buffers get the same pages as edgelut's
        libs = {}
        for name in ("ggml-base", "ggml-cpu"):
            found = sorted(glob.glob(str(build / "**" / f"lib{name}.so"), recursive=True))
            if not found:
                raise FileNotFoundError(
                    f"--llama-cpp-build {build}: lib{name}.so not found "
                    "(configure llama.cpp with -DBUILD_SHARED_LIBS=ON)"
                )
            libs[name] = ctypes.CDLL(found[0], mode=ctypes.RTLD_GLOBAL)
        self.base, self.cpu = libs["ggml-base"], libs["ggml-cpu"]
        header = _find_ggml_header(build).read_text()
        self.types = {k[len("GGML_TYPE_") :].lower(): v for k, v in _parse_enum(header, "ggml_type").items()}
        self.ops = _parse_enum(header, "ggml_op")
        P, S, I64 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64
        sig = {
            (self.base, "ggml_init"): (P, [_InitParams]),
            (self.base, "ggml_free"): (None, [P]),
            (self.base, "ggml_new_tensor_2d"): (P, [P, ctypes.c_int, I64, I64]),
            (self.base, "ggml_mul_mat"): (P, [P, P, P]),
            (self.base, "ggml_new_graph"): (P, [P]),
            (self.base, "ggml_build_forward_expand"): (None, [P, P]),
            (self.base, "ggml_tensor_overhead"): (S, []),
            (self.base, "ggml_graph_overhead"): (S, []),
            (self.base, "ggml_row_size"): (S, [ctypes.c_int, I64]),
            (self.base, "ggml_type_size"): (S, [ctypes.c_int]),
            (self.base, "ggml_blck_size"): (I64, [ctypes.c_int]),
            (self.base, "ggml_quantize_init"): (None, [ctypes.c_int]),
            (self.base, "ggml_quantize_requires_imatrix"): (ctypes.c_bool, [ctypes.c_int]),
            (self.base, "ggml_quantize_chunk"): (S, [ctypes.c_int, P, P, I64, I64, I64, P]),
            (self.base, "ggml_backend_alloc_ctx_tensors"): (P, [P, P]),
            (self.base, "ggml_backend_tensor_set"): (None, [P, P, S, S]),
            (self.base, "ggml_backend_tensor_get"): (None, [P, P, S, S]),
            (self.base, "ggml_backend_graph_compute"): (ctypes.c_int, [P, P]),
            (self.base, "ggml_backend_buffer_free"): (None, [P]),
            (self.base, "ggml_backend_buffer_get_base"): (P, [P]),
            (self.base, "ggml_backend_buffer_get_size"): (S, [P]),
            (self.cpu, "ggml_backend_cpu_init"): (P, []),
            (self.cpu, "ggml_backend_cpu_set_n_threads"): (None, [P, ctypes.c_int]),
            (self.cpu, "ggml_cpu_has_amx_int8"): (ctypes.c_int, []),
        }
        for (lib, name), (res, args) in sig.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
            setattr(self, name, f)
        self.backend = self.ggml_backend_cpu_init()
        self._quantized: dict[tuple[int, int, int, int], np.ndarray] = {}

    def matmul(self, tname: str, w: np.ndarray, m: int, threads: int, rng: np.random.Generator):
        """A callable computing w (N, K, quantised to tname) times x (K, m); its weight bytes."""
        t = self.types[tname.lower()]
        n, k = w.shape
        if k % self.ggml_blck_size(t):
            return None, f"K={k} not a multiple of the {tname} block {self.ggml_blck_size(t)}"
        wf = np.ascontiguousarray(w, dtype=np.float32)
        key = (t, id(w), n, k)
        if key not in self._quantized:  # quantising is slow; reuse across m and threads
            if len(self._quantized) > 16:
                self._quantized.clear()
            q = np.empty(self.ggml_row_size(t, k) * n, dtype=np.uint8)
            imat = np.ones(k, dtype=np.float32) if self.ggml_quantize_requires_imatrix(t) else None
            self.ggml_quantize_init(t)
            imat_p = None if imat is None else imat.ctypes.data
            self.ggml_quantize_chunk(t, wf.ctypes.data, q.ctypes.data, 0, n, k, imat_p)
            self._quantized[key] = q
        q = self._quantized[key]
        params = _InitParams(8 * self.ggml_tensor_overhead() + self.ggml_graph_overhead() + 4096, None, True)
        ctx = self.ggml_init(params)
        a = self.ggml_new_tensor_2d(ctx, t, k, n)
        b = self.ggml_new_tensor_2d(ctx, self.types["f32"], k, m)
        c = self.ggml_mul_mat(ctx, a, b)
        gf = self.ggml_new_graph(ctx)
        self.ggml_build_forward_expand(gf, c)
        buf = self.ggml_backend_alloc_ctx_tensors(ctx, self.backend)
        base, size = self.ggml_backend_buffer_get_base(buf), self.ggml_backend_buffer_get_size(buf)
        advise_pages(base, size, self.pages)
        x = rng.standard_normal((m, k), dtype=np.float32)
        self.ggml_backend_tensor_set(a, q.ctypes.data, 0, q.nbytes)
        self.ggml_backend_tensor_set(b, x.ctypes.data, 0, x.nbytes)
        backend = self.backend

        def run() -> None:
            self.ggml_backend_cpu_set_n_threads(backend, threads)
            self.ggml_backend_graph_compute(backend, gf)

        # Sanity: the product must match float math on the float weights.
        run()
        y = np.empty((m, n), dtype=np.float32)
        self.ggml_backend_tensor_get(c, y.ctypes.data, 0, y.nbytes)
        ref = x[:1] @ wf.T
        # Random Gaussian weights at 1-2 bits lose much, but a wiring error gives ~0.
        cos = float(np.dot(y[0], ref[0]) / (np.linalg.norm(y[0]) * np.linalg.norm(ref[0]) + 1e-30))
        note = f"WARNING: cosine to float result {cos:.2f}" if cos < 0.5 else ""
        keep = (ctx, buf, q, x)  # keep alive while run() is in use

        def close() -> None:
            self.ggml_backend_buffer_free(keep[1])
            self.ggml_free(keep[0])

        return (run, q.nbytes, close), note

    # test-backend-ops cross-check ------------------------------------------------
    def backend_ops_file(self, cases: list[tuple[str, int, int, int]]) -> str:
        """Lines in test-backend-ops' --test-file format for MUL_MAT (type, n, k, m)."""
        f32 = self.types["f32"]
        lines = []
        for tname, n, k, m in cases:
            t = self.types[tname.lower()]
            row = self.ggml_row_size(t, k)
            src0 = f"{t} {k} {n} 1 1 {self.ggml_type_size(t)} {row} {row * n} {row * n}"
            src1 = f"{f32} {k} {m} 1 1 4 {4 * k} {4 * k * m} {4 * k * m}"
            lines.append(f"{self.ops['GGML_OP_MUL_MAT']} {f32} {n} {m} 1 1 0 2 {src0} {src1} -")
        return "\n".join(lines) + "\n"


def run_backend_ops(build: Path, ggml: Ggml, cases: list[tuple[str, int, int, int]]) -> dict:
    """us/run per (type, n, k, m) from `test-backend-ops perf` on the CPU backend."""
    exe = sorted(glob.glob(str(build / "**" / "test-backend-ops"), recursive=True))
    if not exe:
        print(f"note: test-backend-ops not found under {build}", file=sys.stderr)
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
        f.write(ggml.backend_ops_file(cases))
    try:
        out = subprocess.run(
            [exe[0], "perf", "-b", "CPU", "--test-file", f.name], capture_output=True, text=True, timeout=1800
        ).stdout
    finally:
        os.unlink(f.name)
    times = [float(t) for t in re.findall(r"runs -\s+([0-9.]+) us/run", out)]
    if len(times) != len(cases):
        print(f"note: test-backend-ops gave {len(times)} results for {len(cases)} cases", file=sys.stderr)
        return {}
    return dict(zip(cases, times, strict=True))


# --------------------------------------------------------------------------- roofline


def stream_bandwidth(mb: int = 512) -> tuple[float, float]:
    """(copy GB/s counting read+write, read GB/s) with numpy on one thread."""
    a = np.ones(mb * 2**20 // 4, dtype=np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    t_copy = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    t_read = min(_timed(lambda: a.sum()) for _ in range(5))
    return 2 * a.nbytes / t_copy / 1e9, a.nbytes / t_read / 1e9


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


# --------------------------------------------------------------------------- driver


def machine_summary() -> str:
    model, flags = platform.processor(), ""
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = re.search(r"model name\s*:\s*(.*)", info).group(1)
        fl = set(re.search(r"flags\s*:\s*(.*)", info).group(1).split())
        want = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512vbmi", "avx512_vnni")
        want += ("amx_tile", "amx_int8")
        flags = " ".join(f for f in want if f in fl)
    except (OSError, AttributeError):
        pass
    return f"{model}; {os.cpu_count()} logical CPUs; {flags}"


def run(args: argparse.Namespace) -> list[Result]:
    rng = np.random.default_rng(0)
    blas = set_blas_threads(1)
    ggml = None
    if args.llama_cpp_build:
        ggml = Ggml(Path(args.llama_cpp_build), args.pages)
        amx = bool(ggml.ggml_cpu_has_amx_int8())
        print(f"# llama.cpp: {args.llama_cpp_build} (AMX int8 in build: {amx})")
    isa = args.isa or kernels.cpu_isa()
    print(f"# machine: {machine_summary()}")
    print(f"# edgelut isa={isa} group={args.group}; numpy BLAS={blas}")
    if args.dram:
        print(f"# edgelut and llama.cpp weights rotated over copies filling {args.dram:g} MB (from DRAM)")
    print(f"# edgelut's and llama.cpp's weights advised for {args.pages} pages")
    results: list[Result] = []
    bo_cases: list[tuple[str, int, int, int]] = []

    def add(r: Result) -> None:
        results.append(r)
        us = r.seconds * 1e6
        gb = f"{r.gbps:7.1f} GB/s" if r.weight_bytes else " " * 12
        best = f"(min {r.best * 1e6:.1f} us)" if r.best == r.best else ""
        print(
            f"{r.shape:>11} m={r.m:<4} t={r.threads} {r.impl:<16} {us:11.1f} us {gb} {best} {r.note}",
            flush=True,
        )

    for sname in args.shapes:
        n, k = SHAPES[sname]
        if args.two_level:
            # One-level asymmetric against two-level at equal code bits: the epilogue's cost.
            packed = {
                f"{q}{form}": random_packed(n, k, q, args.group, rng, form)
                for q in args.types
                if q != "tq"
                for form in ("a", "k")
            }
        else:
            packed = {q: random_packed(n, k, q, args.group, rng) for q in args.types}
        wf = rng.standard_normal((n, k), dtype=np.float32) * 0.02
        copies: dict[str, list[kernels.PackedMatrix]] = {}
        dq_type = "q4" if "q4" in packed else next(iter(packed))
        deq = packed[dq_type].dequantize() if "np" in args.peers else None
        for m in args.m:
            x = rng.standard_normal((m, k), dtype=np.float32)
            xt = x[0] if m == 1 else x.T.copy()  # W @ x, or W @ X.T as BLAS likes it
            for thr in args.threads:
                # label -> (callable, weight bytes, note). edgelut and llama.cpp are timed
                # interleaved; numpy (OpenBLAS workers spin ~0.1 s after a call) and
                # onnxruntime (spinning pool) each alone, after a pause.
                cands: dict[str, tuple[Callable[[], object], int, str]] = {}
                solo: dict[str, tuple[Callable[[], object], int, str]] = {}
                closers: list[Callable[[], None]] = []
                for q, pm in packed.items():
                    if q not in copies:  # made once per shape, reused across m and threads
                        copies[q] = packed_copies(pm, copies_for(pm.nbytes, args.dram), args.pages)
                    pms = copies[q]
                    # Decode is always the LUT GEMV; prefill takes each requested path.
                    for path in args.paths if m > 1 else ["lut"]:

                        def fn(pm=pm, x=x, thr=thr, m=m, int8=path == "int8") -> np.ndarray:
                            if m == 1:
                                return kernels.gemv(pm, x[0], isa=args.isa, n_threads=thr)
                            return kernels.gemm(pm, x, isa=args.isa, n_threads=thr, int8=int8)

                        label = f"edgelut {q}" if path == "lut" else f"edgelut {q}:int8"
                        run_fn = rotating([functools.partial(fn, pm=c) for c in pms])
                        cands[label] = (run_fn, pm.nbytes, f"{pm.bits_per_weight:.2f} bpw")
                if "np" in args.peers:

                    def np_mm(deq=deq, xt=xt, thr=thr) -> np.ndarray:
                        set_blas_threads(thr)
                        return deq @ xt

                    solo["np f32"] = (np_mm, deq.nbytes, "")
                if "ort" in args.peers:
                    got, note = ort_matmulnbits(n, k, m, thr, args.ort_block, rng)
                    if got is None:
                        add(Result(sname, m, thr, "ort q4", float("nan"), 0, note))
                    else:
                        solo["ort q4"] = (got[0], got[1], f"block {args.ort_block}")
                if ggml is not None:
                    for tname in args.llama_types:
                        got, note = ggml.matmul(tname, wf, m, thr, rng)
                        if got is None:
                            add(Result(sname, m, thr, f"llama {tname}", float("nan"), 0, note))
                            continue
                        runs = [got[0]]
                        closers.append(got[2])
                        for _ in range(copies_for(got[1], args.dram) - 1):
                            more, _ = ggml.matmul(tname, wf, m, thr, rng)  # its own weight buffer
                            runs.append(more[0])
                            closers.append(more[2])
                        cands[f"llama {tname}"] = (rotating(runs), got[1], note)
                        if thr == 1:
                            bo_cases.append((tname, n, k, m))
                settle = 0.01 if thr > 1 else 0.0
                times = time_calls(
                    {name: c[0] for name, c in cands.items()}, args.target, args.repeats, settle
                )
                for name, (fn, _, _) in solo.items():
                    time.sleep(0.2 if thr > 1 else 0.0)
                    times[name] = time_calls({name: fn}, args.target, args.repeats)[name]
                cands.update(solo)
                for name, (_, nbytes, note) in cands.items():
                    add(Result(sname, m, thr, name, times[name][0], nbytes, note, times[name][1]))
                for close in closers:
                    close()
                if "np" in args.peers and not args.no_deq:
                    # Dequantise + matmul per call is slow (numpy), so it gets only a few samples.
                    codes, scales, mins = packed[dq_type].unpack()

                    def deq_mm(c=codes, s=scales, mn=mins, q=dq_type[:2], xt=xt, thr=thr) -> np.ndarray:
                        set_blas_threads(thr)
                        return kernels.dequantize_reference(c, s, mn, q, args.group) @ xt

                    time.sleep(0.2 if thr > 1 else 0.0)
                    t, tmin = time_calls({"d": deq_mm}, args.target, args.repeats or ROUNDS)["d"]
                    nb = packed[dq_type].nbytes
                    add(Result(sname, m, thr, "np deq+mm", t, nb, f"dequantise {dq_type} per call", tmin))
                set_blas_threads(1)
    if ggml is not None and args.backend_ops and bo_cases:
        got = run_backend_ops(Path(args.llama_cpp_build), ggml, bo_cases)
        for (tname, n, k, m), us in got.items():
            sname = next(s for s, nk in SHAPES.items() if nk == (n, k))
            nbytes = ggml.ggml_row_size(ggml.types[tname.lower()], k) * n
            add(Result(sname, m, 1, f"tbo {tname}", us * 1e-6, nbytes, "test-backend-ops", us * 1e-6))
    return results


# --------------------------------------------------------------------------- report


def _cell(r: Result | None, gbps: bool = True) -> str:
    if r is None or r.seconds != r.seconds:  # missing or NaN
        return "-"
    s = f"{r.seconds * 1e6:.0f}" if r.seconds >= 1e-4 else f"{r.seconds * 1e6:.1f}"
    return f"{s} ({r.gbps:.0f})" if gbps and r.weight_bytes else s


def _impl_order(impl: str) -> tuple[int, str]:
    """Columns: edgelut types, numpy, onnxruntime, llama.cpp, test-backend-ops."""
    kind, _, name = impl.partition(" ")
    rank = {"edgelut": 0, "np": 1, "ort": 2, "llama": 3, "tbo": 4}.get(kind, 5)
    forms = [f"{q}{f}" for q in EDGELUT_TYPES for f in ("", "a", "k")]
    order = forms + ["f32", "deq+mm"] + list(LLAMA_CLASS)
    return rank, f"{order.index(name):03d}" if name in order else name


def markdown(results: list[Result], args: argparse.Namespace) -> str:
    if args.stat == "min":
        results = [dataclasses.replace(r, seconds=r.best) for r in results]
    by = {(r.shape, r.m, r.threads, r.impl): r for r in results}
    impls = sorted(dict.fromkeys(r.impl for r in results), key=_impl_order)
    keys = list(dict.fromkeys((r.shape, r.m, r.threads) for r in results))
    what = "median" if args.stat == "median" else "fastest sample"
    out = [f"Times ({what}) in microseconds per call (weight GB/s in brackets); lower is better.", ""]
    out.append("| shape NxK | m | thr | " + " | ".join(impls) + " |")
    out.append("|---|---|---|" + "---|" * len(impls))
    for s, m, t in keys:
        out.append(f"| {s} | {m} | {t} | " + " | ".join(_cell(by.get((s, m, t, i))) for i in impls) + " |")

    # Ratios: peer time / edgelut time (> 1 = edgelut faster).
    pairs = [
        ("q1", "llama q1_0"),
        ("q1", "llama tq1_0"),
        ("q2", "llama q2_K"),
        ("q3", "llama q3_K"),
        ("q4", "llama q4_0"),
        ("q4", "llama q4_K"),
        ("q4", "ort q4"),
        ("tq", "llama tq2_0"),
        ("tq", "llama tq1_0"),
        ("q4", "np f32"),
        # --two-level: the two-level epilogue against one-level asymmetric, and against K-quants.
        ("q1k", "edgelut q1a"),
        ("q2k", "edgelut q2a"),
        ("q3k", "edgelut q3a"),
        ("q4k", "edgelut q4a"),
        ("q2k", "llama q2_K"),
        ("q3k", "llama q3_K"),
        ("q4k", "llama q4_K"),
        # --paths int8: the int8 prefill kernel against the K-quants and against edgelut's own LUT GEMM.
        ("q2:int8", "llama q2_K"),
        ("q3:int8", "llama q3_K"),
        ("q4:int8", "llama q4_0"),
        ("q4:int8", "llama q4_K"),
        ("q1:int8", "edgelut q1"),
        ("q2:int8", "edgelut q2"),
        ("q3:int8", "edgelut q3"),
        ("q4:int8", "edgelut q4"),
    ]
    pairs = [(e, p) for e, p in pairs if f"edgelut {e}" in impls and p in impls]
    if pairs:
        head = (
            "Speed-up of edgelut over each peer (peer time / edgelut time, same run; > 1 = edgelut faster)."
        )
        out += ["", head, ""]
        out.append("| shape NxK | m | thr | " + " | ".join(f"{e} vs {p}" for e, p in pairs) + " |")
        out.append("|---|---|---|" + "---|" * len(pairs))
        for s, m, t in keys:
            cells = []
            for e, p in pairs:
                a, b = by.get((s, m, t, f"edgelut {e}")), by.get((s, m, t, p))
                ok = a and b and a.seconds > 0 and b.seconds == b.seconds
                cells.append(f"{b.seconds / a.seconds:.2f}" if ok else "-")
            out.append(f"| {s} | {m} | {t} | " + " | ".join(cells) + " |")
    if len(args.threads) > 1:
        t1, t2 = args.threads[0], args.threads[-1]
        scal = [i for i in impls if i.startswith(("edgelut", "llama"))]
        out += ["", f"Thread scaling: time at {t1} thread(s) / time at {t2} threads.", ""]
        out.append("| shape NxK | m | " + " | ".join(scal) + " |")
        out.append("|---|---|" + "---|" * len(scal))
        for s, m in dict.fromkeys((s, m) for s, m, _ in keys):
            cells = []
            for i in scal:
                a, b = by.get((s, m, t1, i)), by.get((s, m, t2, i))
                ok = a and b and b.seconds > 0 and a.seconds == a.seconds
                cells.append(f"{a.seconds / b.seconds:.2f}" if ok else "-")
            out.append(f"| {s} | {m} | " + " | ".join(cells) + " |")
    notes = sorted({f"{r.impl}: {r.note}" for r in results if r.note and not r.impl.startswith("edgelut")})
    bpw = sorted({f"{r.impl}: {r.note}" for r in results if r.impl.startswith("edgelut")})
    out += ["", "Notes: " + "; ".join(bpw + notes) + "."]
    return "\n".join(out)


_LINE = re.compile(
    r"^\s*(?P<shape>\d+x\d+) m=(?P<m>\d+)\s+t=(?P<t>\d+) (?P<impl>\S+ \S+)\s+(?P<us>[\d.]+|nan) us"
    r"(?:\s+(?P<gb>[\d.]+) GB/s)?\s*(?:\(min (?P<min>[\d.]+|nan) us\))?\s*(?P<note>.*)$"
)


def results_from_log(text: str, ggml: Ggml | None) -> list[Result]:
    """Results parsed back from this tool's printed lines (to re-render tables, e.g. --stat min)."""
    out = []
    for line in text.splitlines():
        g = _LINE.match(line)
        if not g:
            continue
        n, k = SHAPES[g["shape"]]
        kind, _, name = g["impl"].partition(" ")
        sec = float(g["us"]) * 1e-6
        nbytes = int(float(g["gb"] or 0) * 1e9 * sec) if sec == sec else 0
        if kind == "edgelut":  # exact sizes where the log's rounded GB/s would lose them
            nbytes = int(n * k * float(g["note"].split()[0]) / 8)
        elif kind == "np" and name == "f32":
            nbytes = 4 * n * k
        elif kind == "llama" and ggml is not None:
            nbytes = ggml.ggml_row_size(ggml.types[name.lower()], k) * n
        best = float(g["min"]) * 1e-6 if g["min"] else float("nan")
        out.append(
            Result(g["shape"], int(g["m"]), int(g["t"]), g["impl"], sec, nbytes, g["note"].strip(), best)
        )
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    ap.add_argument("--types", nargs="+", choices=EDGELUT_TYPES, default=list(EDGELUT_TYPES))
    ap.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--m", nargs="+", type=int, default=[1, 128], help="tokens: 1 = GEMV, >1 = GEMM")
    ap.add_argument("--group", type=int, default=64, choices=kernels.GROUP_SIZES, help="edgelut group size")
    ap.add_argument(
        "--two-level",
        action="store_true",
        help="time each type with asymmetric fp16 group scales (qNa) and with two-level scales (qNk)",
    )
    ap.add_argument("--isa", default="", help="edgelut kernel ISA (scalar, avx2, avx512, ...); default: best")
    ap.add_argument(
        "--paths",
        nargs="+",
        choices=["lut", "int8"],
        default=["lut"],
        help="prefill (m > 1) kernels to time: the LUT GEMM and/or the int8 kernel (edgelut qN:int8)",
    )
    ap.add_argument("--peers", nargs="*", default=["np", "ort"], choices=["np", "ort"])
    ap.add_argument("--ort-block", type=int, default=32, choices=[16, 32, 64, 128])
    ap.add_argument("--llama-cpp-build", default="", help="llama.cpp CMake build dir (BUILD_SHARED_LIBS=ON)")
    ap.add_argument("--llama-types", nargs="+", default=list(LLAMA_TYPES))
    ap.add_argument("--backend-ops", action="store_true", help="also run test-backend-ops perf (cross-check)")
    ap.add_argument("--quick", action="store_true", help=f"smoke run: shapes {', '.join(QUICK_SHAPES)}")
    ap.add_argument("--repeats", type=int, default=0, help="fixed sample count (default: adaptive)")
    ap.add_argument("--target", type=float, default=0.2, help="seconds per measurement when adaptive")
    ap.add_argument("--markdown", action="store_true", help="print a markdown table for docs/BENCHMARKS.md")
    ap.add_argument("--stat", choices=["median", "min"], default="median", help="statistic the tables show")
    ap.add_argument(
        "--dram",
        type=float,
        default=0.0,
        metavar="MB",
        help="rotate each implementation through copies of its weights filling MB (above the last level "
        "cache: every call streams from DRAM, as decode does); default: one copy",
    )
    ap.add_argument(
        "--pages",
        choices=("huge", "small"),
        default="huge",
        help="pages of edgelut's and llama.cpp's weights: huge (2 MiB, as the engine reads a resident "
        "model) or small (4 KiB, as a file mapping gets); llama.cpp advises none itself",
    )
    ap.add_argument("--no-stream", action="store_true", help="skip the memory bandwidth reference")
    ap.add_argument("--no-deq", action="store_true", help="skip numpy dequantise+matmul (slow)")
    ap.add_argument("--from-log", default="", help="re-render the tables of a saved run's output; no timing")
    args = ap.parse_args(argv)
    if args.quick and args.shapes == list(SHAPES):
        args.shapes = list(QUICK_SHAPES)
    if args.llama_cpp_build and not Path(args.llama_cpp_build).is_dir():
        ap.error(f"--llama-cpp-build {args.llama_cpp_build} is not a directory")
    args.repeats = args.repeats or None
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.from_log:
        ggml = Ggml(Path(args.llama_cpp_build)) if args.llama_cpp_build else None
        results = results_from_log(Path(args.from_log).read_text(), ggml)
        args.threads = sorted({r.threads for r in results})
        print(markdown(results, args))
        return 0
    now = datetime.datetime.now(datetime.timezone.utc)
    print(f"# {now:%Y-%m-%d %H:%M} UTC; command: {' '.join(sys.argv)}")
    if not args.no_stream:
        copy, read = stream_bandwidth()
        print(f"# numpy 1-thread memory bandwidth: copy {copy:.1f} GB/s (read+write), read {read:.1f} GB/s")
    results = run(args)
    if args.markdown:
        print()
        print(markdown(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
