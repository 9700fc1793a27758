"""Benchmark of the sliding-window weight pager: latency, I/O overlap and peak RSS per window W.

Synthetic mode (no model needed): a file of --layers random layers of about
--layer-mb MiB each; the "compute" of one layer reads every byte of its slot
(as a GEMV reads its weights) and then sleeps --compute-ms, which stands in
for the arithmetic without competing with the loader for a core. Each window
runs in its own process so that its peak RSS (VmHWM) is its own. The page
cache is dropped for each range after it is read (drop_cache), so reads come
from the disk.

    python tools/bench_paging.py --layers 24 --layer-mb 8 --compute-ms 4 --tokens 6

Model mode (--model FILE.elut): the real engine decodes greedily with its
layers paged through W slots (Engine.from_file(window=W, drop_cache=True)),
after an 8-token prompt and one warm-up token; W = "mmap" is the unpaged
engine reading its layers through the file mapping (page cache warm).

    python tools/bench_paging.py --model smollm2.elut --tokens 16 --windows mmap,1,2,4,8,0

Columns: token latency (ms), I/O time per token (the loader's pread time),
compute per token (latency minus time blocked in acquire), the overlap
efficiency max(io, compute) / latency (1.0 = I/O fully hidden, or compute
fully hidden behind I/O), and the peak RSS of the process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

MIB = 1 << 20


def write_file(path: Path, n_layers: int, layer_mb: float, seed: int = 0) -> list[tuple[int, int]]:
    """Random layers of layer_mb MiB +-10 %, each starting on a 4096-byte boundary (as in a model file)."""
    rng = np.random.default_rng(seed)
    ranges = []
    with path.open("wb") as f:
        for _ in range(n_layers):
            size = int(layer_mb * MIB * rng.uniform(0.9, 1.1))
            pad = -f.tell() % 4096
            f.write(b"\0" * pad)
            ranges.append((f.tell(), size))
            f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    return ranges


def peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def summary(window: int | str, s: dict | None, per_token: float, tokens: int) -> dict:
    """One table row: latency, I/O, compute and their overlap per token."""
    s = s or {"read_ns": 0, "wait_ns": 0, "bytes_read": 0, "slot_bytes": 0}
    io = s["read_ns"] / 1e9 / tokens
    compute = per_token - s["wait_ns"] / 1e9 / tokens
    return {
        "window": window,
        "token_ms": per_token * 1e3,
        "tok_s": 1 / per_token,
        "io_ms": io * 1e3,
        "compute_ms": compute * 1e3,
        "wait_ms": s["wait_ns"] / 1e6 / tokens,
        "overlap": max(io, compute) / per_token,
        "read_mb_s": s["bytes_read"] / MIB / (s["read_ns"] / 1e9) if s["read_ns"] else 0.0,
        "read_mib_tok": s["bytes_read"] / MIB / tokens,
        "peak_rss_mb": peak_rss_bytes() / MIB,
        "slot_mb": s["slot_bytes"] / MIB,
    }


def model_worker(args: argparse.Namespace) -> None:
    """Decodes with the real engine over a model file at one window; prints one JSON line."""
    from edgelut._core import Engine

    paged = args.window != "mmap"
    engine = Engine.from_file(
        args.model,
        n_ctx=256,
        n_threads=args.threads,
        window=int(args.window) if paged else 0,
        drop_cache=paged,
        direct_io=args.direct_io,
        verify_crc=False,  # the bench measures decoding, not the CRC pass at open
        **({"page_output": True} if paged and args.page_output else {}),
    )
    prompt = np.arange(1, 9, dtype=np.int32)
    tok = int(np.argmax(engine.eval(prompt, 0)))
    pos = len(prompt)
    tok = int(np.argmax(engine.eval(np.asarray([tok], dtype=np.int32), pos)))  # warm-up
    pos += 1
    engine.reset_pager_stats()
    t0 = time.perf_counter()
    for _ in range(args.tokens):
        tok = int(np.argmax(engine.eval(np.asarray([tok], dtype=np.int32), pos)))
        pos += 1
    per_token = (time.perf_counter() - t0) / args.tokens
    label = engine.window if paged else "mmap"
    print(json.dumps(summary(label, engine.pager_stats(), per_token, args.tokens)))


def worker(args: argparse.Namespace) -> None:
    """Runs one window in this process and prints one JSON line."""
    from edgelut._core import Pager

    ranges = [tuple(r) for r in json.loads(Path(args.ranges).read_text())]
    n = len(ranges)
    window = n if int(args.window) == 0 else int(args.window)
    pager = Pager(args.file, ranges, window, drop_cache=True, direct_io=args.direct_io)

    def token() -> None:
        for layer in range(n):
            view = pager.acquire(layer)
            # Reading every byte is what a GEMV does with its weights.
            np.bitwise_xor.reduce(view[: view.size // 8 * 8].view(np.uint64))
            pager.release(layer)
            if args.compute_ms > 0:
                time.sleep(args.compute_ms / 1000)

    token()  # warm-up: the first token also fills the window
    pager.reset_stats()
    t0 = time.perf_counter()
    for _ in range(args.tokens):
        token()
    elapsed = time.perf_counter() - t0
    r = summary(window, pager.stats(), elapsed / args.tokens, args.tokens)
    print(json.dumps(r))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--layer-mb", type=float, default=8.0)
    ap.add_argument("--compute-ms", type=float, default=4.0, help="simulated compute per layer")
    ap.add_argument("--tokens", type=int, default=6)
    ap.add_argument(
        "--windows", default="1,2,4,0", help="comma-separated; 0 = all layers (resident); model: also mmap"
    )
    ap.add_argument("--direct-io", action="store_true")
    ap.add_argument(
        "--page-output", action="store_true", help="model mode: page the embeddings and lm_head too"
    )
    ap.add_argument("--dir", default="/var/tmp", help="where the test file goes (not a tmpfs)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--ranges", help=argparse.SUPPRESS)
    ap.add_argument("--window", help=argparse.SUPPRESS)
    ap.add_argument("--model", help="a model file (.elut): bench the real engine instead of synthetic layers")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (model mode; 0 = all cores)")
    ap.add_argument("--limit-mb", type=int, default=0, help="model mode: run every row in a memory cgroup")
    ap.add_argument(
        "--peer", action="append", help="model mode: a GGUF for llama-bench (mmap and no-mmap rows)"
    )
    ap.add_argument("--llama-bin", default="/work/peers/llama.cpp/build/bin", help="llama.cpp binaries")
    args = ap.parse_args()
    if args.worker and args.model:
        model_worker(args)
    elif args.worker:
        worker(args)
    elif args.model:
        bench_model(args)
    else:
        bench_synthetic(args)


HEADER = (
    "| W | token ms | tok/s | I/O ms | compute ms | wait ms | overlap | MiB/s | MiB read/token | slots MiB "
    "| peak RSS MiB |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|"
)


class MemoryLimit:
    """A child memory cgroup limited to `mib` MiB (cgroup v2 memory.max or v1
    memory.limit_in_bytes); run() starts a process inside it. Page cache is
    charged to the cgroup too, so a mapped model larger than the limit must
    be re-read from disk as it is evicted."""

    def __init__(self, mib: int) -> None:
        self.mib = mib
        self.path: Path | None = None
        if mib <= 0:
            return
        # v2: one hierarchy with cgroup.controllers at the root; v1: a memory hierarchy.
        for root, marker, knob in (
            ("/sys/fs/cgroup", "cgroup.controllers", "memory.max"),
            ("/sys/fs/cgroup/memory", "memory.limit_in_bytes", "memory.limit_in_bytes"),
        ):
            if Path(root, marker).exists():
                d = Path(root, f"edgelut-bench-paging-{os.getpid()}")
                try:
                    d.mkdir(exist_ok=True)
                    (d / knob).write_text(str(mib * MIB))
                except OSError as e:
                    sys.exit(f"bench_paging: cannot set up a memory cgroup under {root}: {e}")
                self.path = d
                return
        sys.exit("bench_paging: no writable memory cgroup (v1 or v2) for --limit-mb")

    def run(self, cmd: list[str]) -> subprocess.CompletedProcess:
        procs = str(self.path / "cgroup.procs") if self.path else None

        def enter() -> None:  # in the child, before exec
            if procs:
                Path(procs).write_text(str(os.getpid()))

        return subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), preexec_fn=enter)

    def close(self) -> None:
        if self.path:
            self.path.rmdir()


def drop_file_cache(*paths: str) -> None:
    """Evicts the files' clean pages so every run starts from the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_worker(
    extra: list[str], args: argparse.Namespace, window: str, limit: MemoryLimit | None = None
) -> None:
    cmd = [sys.executable, __file__, "--worker", "--window", window, "--tokens", str(args.tokens), *extra]
    if args.direct_io:
        cmd.append("--direct-io")
    if args.page_output:
        cmd.append("--page-output")
    if args.model:
        drop_file_cache(args.model)
    proc = (limit or MemoryLimit(0)).run(cmd)
    if proc.returncode != 0:
        if limit and limit.path and proc.returncode < 0:
            print(f"| {window} | killed by signal {-proc.returncode} under the {limit.mib} MiB limit |")
            return
        sys.exit(f"bench_paging: window {window} failed:\n{proc.stderr}")
    r = json.loads(proc.stdout)
    cells = [str(r["window"]), f"{r['token_ms']:.1f}", f"{r['tok_s']:.1f}", f"{r['io_ms']:.1f}"]
    cells += [f"{r['compute_ms']:.1f}", f"{r['wait_ms']:.1f}", f"{r['overlap']:.2f}"]
    cells += [
        f"{r['read_mb_s']:.0f}",
        f"{r['read_mib_tok']:.1f}",
        f"{r['slot_mb']:.0f}",
        f"{r['peak_rss_mb']:.0f}",
    ]
    print("| " + " | ".join(cells) + " |", flush=True)


def run_peer(args: argparse.Namespace, gguf: str, mmap: bool, limit: MemoryLimit) -> None:
    """llama-bench decode (-p 0 -n tokens) on `gguf` in the same memory limit; peak RSS from GNU time."""
    bench = str(Path(args.llama_bin) / "llama-bench")
    cmd = ["/usr/bin/time", "-f", "EDGELUT_PEAK_KB %M", bench, "-m", gguf, "-p", "0", "-n", str(args.tokens)]
    cmd += [
        "-r",
        "1",
        "-t",
        str(args.threads or os.cpu_count()),
        "-lm",
        "mmap" if mmap else "none",
        "-o",
        "json",
    ]
    drop_file_cache(gguf)
    proc = limit.run(cmd)
    peak = [ln.split()[1] for ln in proc.stderr.splitlines() if ln.startswith("EDGELUT_PEAK_KB")]
    peak_mib = f"{int(peak[0]) / 1024:.0f}" if peak else "?"
    label = f"llama.cpp {'mmap' if mmap else 'no-mmap'} {Path(gguf).name}"
    try:
        row = json.loads(proc.stdout)[0]
    except (ValueError, IndexError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-2]
        print(
            f"| {label} | failed (exit {proc.returncode}): {tail[:100]} | peak RSS {peak_mib} MiB |",
            flush=True,
        )
        return
    tok_s = row["avg_ts"]
    print(f"| {label} | {1e3 / tok_s:.1f} | {tok_s:.1f} | | | | | | | | {peak_mib} |", flush=True)


def bench_model(args: argparse.Namespace) -> None:
    from edgelut._core import ModelFileReader

    layers = ModelFileReader(args.model, verify_crc=False).layers()
    total = sum(s for _, s in layers) / MIB
    size = os.path.getsize(args.model) / MIB
    print(
        f"model: {args.model} ({size:.0f} MiB, {len(layers)} layers, {total:.0f} MiB of layers); "
        f"{args.tokens} decode tokens after an 8-token prompt and one warm-up token; "
        f"{args.threads or 'all'} threads; drop_cache on when paged"
        + ("; embeddings and lm_head paged" if args.page_output else "")
        + ("; O_DIRECT" if args.direct_io else "")
    )
    limit = MemoryLimit(args.limit_mb)
    where = f"in a memory cgroup of {args.limit_mb} MiB ({limit.path})" if limit.path else "no memory limit"
    print(f"{where}; file cache dropped before each row")
    print(HEADER)
    try:
        for w in args.windows.split(","):
            window = w if w == "mmap" else str(len(layers) if int(w) == 0 else int(w))
            run_worker(["--model", args.model, "--threads", str(args.threads)], args, window, limit)
        for gguf in args.peer or []:
            for mmap in (True, False):
                run_peer(args, gguf, mmap, limit)
    finally:
        limit.close()


def bench_synthetic(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        path = Path(d) / "layers.bin"
        ranges = write_file(path, args.layers, args.layer_mb)
        ranges_path = Path(d) / "ranges.json"
        ranges_path.write_text(json.dumps(ranges))
        total = sum(s for _, s in ranges) / MIB
        print(
            f"file: {args.layers} layers, {total:.0f} MiB; compute {args.compute_ms} ms/layer "
            f"+ a read of every byte; {args.tokens} tokens after one warm-up; drop_cache on"
        )
        print(HEADER)
        for w in args.windows.split(","):
            extra = ["--file", str(path), "--ranges", str(ranges_path), "--compute-ms", str(args.compute_ms)]
            run_worker(extra, args, w)


if __name__ == "__main__":
    main()
