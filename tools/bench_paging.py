"""Benchmark of the sliding-window weight pager: latency, I/O overlap and peak RSS per window W.

Synthetic mode (no model needed): a file of --layers random layers of about
--layer-mb MiB each; the "compute" of one layer reads every byte of its slot
(as a GEMV reads its weights) and then sleeps --compute-ms, which stands in
for the arithmetic without competing with the loader for a core. Each window
runs in its own process so that its peak RSS (VmHWM) is its own. The page
cache is dropped for each range after it is read (drop_cache), so reads come
from the disk.

    python tools/bench_paging.py --layers 24 --layer-mb 8 --compute-ms 4 --tokens 6

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


def worker(args: argparse.Namespace) -> None:
    """Runs one window in this process and prints one JSON line."""
    from edgelut._core import Pager

    ranges = [tuple(r) for r in json.loads(Path(args.ranges).read_text())]
    n = len(ranges)
    window = n if args.window == 0 else args.window
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
    s = pager.stats()
    per_token = elapsed / args.tokens
    io = s["read_ns"] / 1e9 / args.tokens
    compute = per_token - s["wait_ns"] / 1e9 / args.tokens
    out = {
        "window": window,
        "direct_io": pager.direct_io,
        "token_ms": per_token * 1e3,
        "io_ms": io * 1e3,
        "compute_ms": compute * 1e3,
        "wait_ms": s["wait_ns"] / 1e6 / args.tokens,
        "overlap": max(io, compute) / per_token,
        "read_mb_per_token": s["bytes_read"] / MIB / args.tokens,
        "read_mb_s": s["bytes_read"] / MIB / (s["read_ns"] / 1e9) if s["read_ns"] else 0.0,
        "peak_rss_mb": peak_rss_bytes() / MIB,
        "slot_mb": s["slot_bytes"] / MIB,
    }
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--layer-mb", type=float, default=8.0)
    ap.add_argument("--compute-ms", type=float, default=4.0, help="simulated compute per layer")
    ap.add_argument("--tokens", type=int, default=6)
    ap.add_argument("--windows", default="1,2,4,0", help="comma-separated; 0 = all layers (resident)")
    ap.add_argument("--direct-io", action="store_true")
    ap.add_argument("--dir", default="/var/tmp", help="where the test file goes (not a tmpfs)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--file", help=argparse.SUPPRESS)
    ap.add_argument("--ranges", help=argparse.SUPPRESS)
    ap.add_argument("--window", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

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
        print("| W | token ms | I/O ms | compute ms | wait ms | overlap | MiB/s | slots MiB | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for w in (int(x) for x in args.windows.split(",")):
            cmd = [sys.executable, __file__, "--worker", "--file", str(path), "--ranges", str(ranges_path)]
            cmd += ["--window", str(w), "--tokens", str(args.tokens), "--compute-ms", str(args.compute_ms)]
            if args.direct_io:
                cmd.append("--direct-io")
            proc = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy())
            if proc.returncode != 0:
                sys.exit(f"bench_paging: window {w} failed:\n{proc.stderr}")
            r = json.loads(proc.stdout)
            print(
                f"| {r['window']} | {r['token_ms']:.1f} | {r['io_ms']:.1f} | {r['compute_ms']:.1f} | "
                f"{r['wait_ms']:.1f} | {r['overlap']:.2f} | {r['read_mb_s']:.0f} | {r['slot_mb']:.0f} | "
                f"{r['peak_rss_mb']:.0f} |"
            )


if __name__ == "__main__":
    main()
