"""End-to-end speed of edgelut against llama.cpp's llama-bench, measured in one run.

For each pair (an edgelut model file and a llama.cpp GGUF of the same model)
and each thread count, every round runs, one after the other:

- llama-bench  -p 128,512 -n N -t T -r 1 -o json   (one process)
- edgelut bench -p 128 -n 1, -p 512 -n 1 and -p 1 -n N  (three processes)

Rounds repeat -r times, so edgelut and llama.cpp alternate and a busy period of
the shared machine hits both; the table shows medians and edgelut/llama.cpp
ratios. Decode is measured from an (almost) empty context on both sides
(llama-bench's tg starts at position 0; edgelut's after one prompt token).

Peak RSS is the maximum resident set of each child process (os.wait4), so
edgelut is measured like llama-bench: a separate process, here a Python
interpreter with numpy and the tokenizer loaded. Bits per weight: llama-bench's
model_size * 8 / model_n_params, and `edgelut info`'s "all tensors" figure.
With --ppl-chunks, perplexity on a text file (ctx 512) from llama-perplexity and
`edgelut perplexity` is put beside each.

Example (from the repository root, edgelut installed):

    python tools/bench_engine.py --llama-cpp-build /work/peers/llama.cpp/build \\
        --pair q4=smol-q4.elut:smol-Q4_0.gguf --pair q2=smol-q2.elut:smol-Q2_K.gguf \\
        --threads 1 2 -r 3 --ppl-file ~/.cache/edgelut/lee_background.cor --ppl-chunks 4
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Sample:
    """Per-round values of each metric ("pp128", "pp512", "tg", "rss_mib")."""

    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, v: float) -> None:
        self.values.setdefault(key, []).append(v)

    def get(self, key: str) -> list[float]:
        return self.values.get(key, [])


def run_child(cmd: list[str]) -> tuple[str, float]:
    """stdout and peak RSS (MiB) of one child process; raises on failure.

    The child is reaped with os.wait4 (not Popen.wait) to keep its rusage;
    output goes to temporary files so no pipe can fill up meanwhile.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text, errs = out.read(), err.read()
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}):\n{errs[-2000:]}")
    return text, usage.ru_maxrss / 1024.0  # KiB on Linux


def llama_bench(
    build: Path, gguf: str, threads: int, prompts: list[int], n_gen: int, extra: list[str]
) -> tuple[dict[str, float], float, float]:
    cmd = [str(build / "bin" / "llama-bench"), "-m", gguf, "-p", ",".join(map(str, prompts or [0]))]
    cmd += ["-n", str(n_gen)]
    cmd += ["-t", str(threads), "-r", "1", "-o", "json", *extra]
    out, rss = run_child(cmd)
    rows = json.loads(out)
    res: dict[str, float] = {}
    bpw = 0.0
    for r in rows:
        if not r["n_prompt"] and not r["n_gen"]:
            continue
        key = f"pp{r['n_prompt']}" if r["n_prompt"] else "tg"
        res[key] = float(r["avg_ts"])
        bpw = 8.0 * r["model_size"] / r["model_n_params"]
    return res, rss, bpw


def edgelut_bench(model: str, threads: int, p: int, n: int, extra: list[str]) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "edgelut.cli", "bench", model, "-p", str(p), "-n", str(n), "-r", "1"]
    cmd += ["-t", str(threads), "--ctx", str(max(p + n, 64)), "--json", *extra]
    out, rss = run_child(cmd)
    return json.loads(out.strip().splitlines()[-1]), rss


def edgelut_bpw(model: str) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "info", model], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"bits/weight:\s+([0-9.]+)", out)
    return float(m.group(1)) if m else float("nan")


def perplexity_llama(build: Path, gguf: str, text: str, chunks: int) -> float:
    cmd = [str(build / "bin" / "llama-perplexity"), "-m", gguf, "-f", text, "-c", "512", "-t", "2"]
    cmd += ["--chunks", str(chunks)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    return float(m.group(1)) if m else float("nan")


def perplexity_edgelut(model: str, text: str, chunks: int) -> float:
    cmd = [sys.executable, "-m", "edgelut.cli", "perplexity", model, text, "-c", "512"]
    cmd += ["--chunks", str(chunks), "-t", "2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    m = re.findall(r"(?:perplexity|PPL)[^0-9]*([0-9]+\.[0-9]+)", proc.stdout + proc.stderr, re.IGNORECASE)
    return float(m[-1]) if m else float("nan")


def med(v: list[float]) -> float:
    return statistics.median(v) if v else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-cpp-build", type=Path, required=True, help="llama.cpp build (bin/llama-bench)")
    ap.add_argument(
        "--pair",
        action="append",
        required=True,
        metavar="LABEL=ELUT:GGUF",
        help="an edgelut model file and the llama.cpp GGUF to compare it with",
    )
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("-n", "--gen-tokens", type=int, default=32)
    ap.add_argument("-r", "--rounds", type=int, default=3)
    ap.add_argument("--tests", nargs="+", choices=("pp128", "pp512", "tg"), default=["pp128", "pp512", "tg"])
    ap.add_argument(
        "--matmul-path",
        nargs="+",
        choices=("auto", "lut", "int8"),
        default=["auto"],
        help="edgelut's prefill kernels; with several, each pair runs once per path (label PAIR/PATH)",
    )
    ap.add_argument("--ppl-file", default=None, help="text for perplexity (ctx 512)")
    ap.add_argument("--ppl-chunks", type=int, default=0, help="windows of 512 tokens (0 = no perplexity)")
    ap.add_argument("--json-out", default=None, help="also write all samples here")
    ap.add_argument("--edgelut-args", default="", help="more arguments for `edgelut bench` (e.g. --mmap)")
    ap.add_argument("--llama-args", default="", help="more arguments for llama-bench (e.g. '-mmp 0')")
    args = ap.parse_args(argv)
    ours_extra, peer_extra = shlex.split(args.edgelut_args), shlex.split(args.llama_args)

    pairs = []
    for spec in args.pair:
        label, _, files = spec.partition("=")
        elut, _, gguf = files.partition(":")
        if not (label and elut and gguf):
            ap.error(f"--pair must look like LABEL=ELUT:GGUF, got {spec!r}")
        for path in args.matmul_path:
            name = label if len(args.matmul_path) == 1 else f"{label}/{path}"
            pairs.append((name, os.path.expanduser(elut), os.path.expanduser(gguf), path))
    ours: dict[tuple[str, int], Sample] = {}
    peer: dict[tuple[str, int], Sample] = {}
    bpw: dict[str, tuple[float, float]] = {}
    for r in range(args.rounds):
        for label, elut, gguf, path in pairs:
            for t in args.threads:
                key = (label, t)
                ps, po = peer.setdefault(key, Sample()), ours.setdefault(key, Sample())
                prompts = [int(x[2:]) for x in args.tests if x.startswith("pp")]
                n_gen = args.gen_tokens if "tg" in args.tests else 0
                res, rss, lbpw = llama_bench(args.llama_cpp_build, gguf, t, prompts, n_gen, peer_extra)
                for name, v in res.items():
                    ps.add(name, v)
                ps.add("rss_mib", rss)
                rss_max = 0.0
                for name in args.tests:
                    p, n = (1, args.gen_tokens) if name == "tg" else (int(name[2:]), 1)
                    js, rss = edgelut_bench(elut, t, p, n, ["--matmul-path", path, *ours_extra])
                    po.add(name, js["decode_tokens_per_s"] if name == "tg" else js["prefill_tokens_per_s"])
                    rss_max = max(rss_max, rss)
                po.add("rss_mib", rss_max)
                if label not in bpw:
                    bpw[label] = (edgelut_bpw(elut), lbpw)
                cells = " ".join(
                    f"{k} {po.get(k)[-1]:.1f}/{ps.get(k)[-1]:.1f}" for k in (*args.tests, "rss_mib")
                )
                print(
                    f"round {r + 1} {label} t{t} (edgelut/llama.cpp): {cells} ({time.strftime('%H:%M:%S')})",
                    file=sys.stderr,
                    flush=True,
                )

    ppl: dict[str, tuple[float, float]] = {}
    if args.ppl_chunks and args.ppl_file:
        for label, elut, gguf, _ in pairs:
            ppl[label] = (
                perplexity_edgelut(elut, args.ppl_file, args.ppl_chunks),
                perplexity_llama(args.llama_cpp_build, gguf, args.ppl_file, args.ppl_chunks),
            )

    # ratio: of the medians; paired: median over rounds of the per-round ratio
    # (both sides of a round ran within a minute of each other).
    print("| pair | threads | metric | edgelut | llama.cpp | ratio | paired ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, _, _, _ in pairs:
        eb, lb = bpw[label]
        for t in args.threads:
            o, p = ours[(label, t)], peer[(label, t)]
            for name in (*args.tests, "rss_mib"):
                unit = "MiB" if name == "rss_mib" else "tok/s"
                a, b = med(o.get(name)), med(p.get(name))
                paired = med([x / y for x, y in zip(o.get(name), p.get(name), strict=True)])
                metric = {"tg": f"decode {args.gen_tokens}", "rss_mib": "peak RSS"}.get(name, name)
                cols = f"{a:.1f} | {b:.1f} | {a / b:.2f}x | {paired:.2f}x"
                print(f"| {label} | {t} | {metric} ({unit}) | {cols} |")
        line = f"| {label} | | bits/weight | {eb:.3f} | {lb:.3f} | | |"
        print(line)
        if label in ppl:
            a, b = ppl[label]
            print(f"| {label} | | perplexity ({args.ppl_chunks} x 512) | {a:.2f} | {b:.2f} | | |")
    if args.json_out:
        dump = {f"{k[0]}/t{k[1]}": {"edgelut": ours[k].values, "llama.cpp": peer[k].values} for k in ours} | {
            "bpw": bpw,
            "ppl": ppl,
        }
        Path(args.json_out).write_text(json.dumps(dump, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
