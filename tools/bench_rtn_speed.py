#!/usr/bin/env python3
"""Time main's numpy RTN clip search against the numba kernel on one GGUF tensor, interleaved.

    git show main:quantize/rtn.py > /tmp/rtn_old.py
    python tools/bench_rtn_speed.py MODEL.gguf TENSOR QTYPE GROUP {sym,asym} /tmp/rtn_old.py

Prints both times (best of ``--repeat``), weights per second, the ratio, and
whether the two gave identical codes and scales (refine=0: the same search).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

from edgelut.quantize.rtn import quantize_rtn


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("tensor")
    ap.add_argument("qtype")
    ap.add_argument("group", type=int)
    ap.add_argument("mode", choices=("sym", "asym"))
    ap.add_argument("old_rtn", help="path of the old quantize/rtn.py (the peer)")
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args(argv)
    spec = importlib.util.spec_from_file_location("rtn_old", args.old_rtn)
    old = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(old)  # type: ignore[union-attr]
    t = next(t for t in GGUFReader(args.model).tensors if t.name == args.tensor)
    w = dequantize(t.data, t.tensor_type).reshape(-1, int(t.shape[0])).astype(np.float32)
    asym = args.mode == "asym"
    quantize_rtn(w[:64], args.qtype, args.group, asym=asym, refine=0)  # JIT / cache load, untimed
    times: dict[str, list[float]] = {"old": [], "new": []}
    same = True
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        a = old.quantize_rtn(w, args.qtype, args.group, asym=asym)
        times["old"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        b = quantize_rtn(w, args.qtype, args.group, asym=asym, refine=0)
        times["new"].append(time.perf_counter() - t0)
        same = same and np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    o, n = min(times["old"]), min(times["new"])
    print(
        f"{args.tensor} {w.shape} {args.qtype} g{args.group} {args.mode}: "
        f"numpy {o:.2f} s ({w.size / o / 1e6:.1f} Mw/s), numba {n:.3f} s ({w.size / n / 1e6:.1f} Mw/s), "
        f"ratio {o / n:.1f}x, same codes+scales: {same}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
