#!/usr/bin/env python3
"""Quality against llama.cpp: the perplexity table of docs/BENCHMARKS.md in one command.

    python tools/bench_quality.py SOURCE.gguf --llama-cpp-build /work/peers/llama.cpp/build \
        [--ctx 512] [--chunks 4] [--rows float,q4-rtn,...] [--peer-types Q4_0,Q3_K_S,Q2_K,TQ2_0]

For one source model (any GGUF the importer reads) it produces:

* llama.cpp rows: the source is dequantised to an F32 GGUF (same metadata, same
  tensor layout, written with the ``gguf`` package's GGUFWriter), quantised by
  ``llama-quantize`` to each peer type, and scored by ``llama-perplexity``;
* edgelut rows: ``edgelut quantize`` (RTN or GPTQ, each bit width, the default
  recipe unless a row says otherwise) and the numpy reference
  (tools/perplexity.py's code path) on the written model file, loaded back as
  dequantised weights; ``--engine`` scores with the C++ engine instead.

Both sides use the same text (the Lee corpus by default), ctx and number of
windows (llama-perplexity's method: disjoint windows, second half scored).
Bits per weight are counted from the files: every tensor's stored bytes over
its element count (K-quants and TQ2_0 fall back to other types on rows whose
width is not a multiple of 256, so a "Q2_K" file is not 2.625 bits).

With ``--calib FILE`` both sides calibrate on the same text: llama.cpp's
peer types are made with an importance matrix from ``llama-imatrix`` on FILE
(``--imatrix-chunks`` windows of ``--ctx`` tokens; IQ2_XS and IQ3_XXS need one)
and every ``edgelut quantize`` gets ``--calib FILE`` (with ``--rtn-imatrix``, RTN rows get
llama-imatrix's file as ``--imatrix`` instead: the same statistic, without edgelut's slow
numpy calibration pass). ``--speed`` then measures
decode and prefill speed of every row in one interleaved pass (``llama-bench``
and ``edgelut bench``, same threads), and ``--plot PNG`` draws the
size/perplexity fronts of both with matplotlib.

Quantised files and results are cached under --work (default
~/.cache/edgelut/bench_quality/<source stem>/); delete a file to redo its row.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

PEER_TYPES = ("Q4_0", "Q3_K_S", "Q2_K", "TQ2_0")
# The llama.cpp points of the low-bit front (issue 15), made with an importance matrix.
FRONT_PEER_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "IQ2_XS", "IQ3_XXS")
# Default edgelut rows. A row name is BITS-METHOD[-gNN][-sym][-VARIANT]: BITS q1..q4 or tq,
# METHOD rtn/gptq/ternary, gNN a group size, VARIANT a key of VARIANTS (extra recipe overrides).
EDGELUT_ROWS = ("q4-rtn", "q4-gptq", "q3-rtn", "q3-gptq", "q2-rtn", "q2-gptq", "tq-ternary", "tq-gptq")
VARIANTS: dict[str, list[str]] = {
    "nodef": ["--no-default-recipe"],  # every tensor at the row's type
    "embd8": ["--recipe", "token_embd=q4:g32"],
    "vd4": ["--recipe", "attn_v=q4,ffn_down=q4"],
    "vd4g32": ["--recipe", "attn_v=q4:g32,ffn_down=q4:g32"],
    "d4": ["--recipe", "ffn_down=q4"],
    "flat": ["--super-block", "0"],  # fp16 scale and min per group (the one-level format)
    "ao": ["--act-order"],
}


def edgelut_args(name: str) -> list[str]:
    """Row name -> `edgelut quantize` arguments (after SRC -o OUT)."""
    parts = name.split("-")
    if len(parts) < 2 or parts[1] not in ("rtn", "gptq", "ternary"):
        raise ValueError(f"bad edgelut row {name!r}: use BITS-METHOD[-gNN][-sym][-VARIANT]")
    bits = "ternary" if parts[0] == "tq" else parts[0].lstrip("q")
    out = ["--bits", bits, "--method", parts[1]]
    for p in parts[2:]:
        if re.fullmatch(r"g\d+", p):
            out += ["--group-size", p[1:]]
        elif p == "sym":
            out += ["--sym"]
        elif p in VARIANTS:
            out += VARIANTS[p]
        else:
            raise ValueError(f"bad edgelut row {name!r}: unknown part {p!r}")
    return out


def is_edgelut_row(name: str) -> bool:
    return bool(re.fullmatch(r"(q[1-4]|tq)-(rtn|gptq|ternary)(-.+)?", name))


_FINAL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


@dataclass
class Row:
    name: str
    ppl: float
    se: float
    bpw: float
    size: int
    seconds: float
    command: str
    note: str = ""
    decode_tps: float = float("nan")
    prefill_tps: float = float("nan")


# -- float GGUF of the source --------------------------------------------------------------------


def write_float_gguf(src: Path, dst: Path) -> Path:
    """The source GGUF with every tensor dequantised to F32 (metadata copied as it is).

    Tensors keep llama.cpp's layout (no Q/K un-permutation): this file is for
    llama-quantize, which must see the same model the importer sees.
    """
    import gguf

    reader = gguf.GGUFReader(str(src), "r")
    arch = str(reader.fields["general.architecture"].contents())
    tmp = dst.with_suffix(".tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    for key, field in reader.fields.items():
        # The writer adds the header fields, the architecture and (below) the file type itself.
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    writer.add_file_type(int(gguf.LlamaFileType.ALL_F32))
    for t in reader.tensors:
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        writer.add_tensor(t.name, np.ascontiguousarray(w))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.rename(dst)
    return dst


def gguf_bpw(path: Path) -> tuple[float, dict[str, int]]:
    """(bits per weight over all tensors, {ggml type: tensor count}) of a llama.cpp file."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r")
    nbytes = sum(int(t.n_bytes) for t in reader.tensors)
    nel = sum(int(t.n_elements) for t in reader.tensors)
    types: dict[str, int] = {}
    for t in reader.tensors:
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
    return 8.0 * nbytes / nel, types


def elut_bpw(path: Path) -> float:
    from edgelut.models.modelfile import read_model_file

    f = read_model_file(path, verify_crc=False)
    entries = list(f.entries.values())
    return 8.0 * sum(e.nbytes for e in entries) / sum(e.n_weights for e in entries)


# -- runners --------------------------------------------------------------------------------------


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> str:
    """Runs cmd, appending its output to log; returns the output (raises on failure)."""
    print("$ " + " ".join(cmd), file=sys.stderr, flush=True)
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(cmd) + "\n")
        fh.flush()
        res = subprocess.run(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, **(env or {})},
        )
        fh.write(res.stdout)
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({res.returncode}); see {log}")
    return res.stdout


def llama_row(name: str, gguf_path: Path, args: argparse.Namespace, log: Path) -> Row:
    cmd = [
        str(args.llama_cpp_build / "bin" / "llama-perplexity"),
        "-m",
        str(gguf_path),
        "-f",
        str(args.text),
        "-c",
        str(args.ctx),
        "--chunks",
        str(args.chunks),
        "-t",
        str(args.threads),
    ]
    start = time.perf_counter()
    out = _run(cmd, log)
    m = _FINAL.search(out)
    if m is None:
        raise RuntimeError(f"llama-perplexity printed no final estimate; see {log}")
    bpw, types = gguf_bpw(gguf_path)
    note = ", ".join(f"{k} x{v}" for k, v in sorted(types.items(), key=lambda kv: -kv[1]))
    return Row(
        name,
        float(m.group(1)),
        float(m.group(2)),
        bpw,
        gguf_path.stat().st_size,
        time.perf_counter() - start,
        " ".join(cmd),
        note,
    )


def reference_perplexity(model_path: Path, args: argparse.Namespace) -> tuple[float, float]:
    """The numpy reference (tools/perplexity.py's code path) on any importable model."""
    from edgelut.models.importers import load_model
    from edgelut.models.reference import perplexity
    from edgelut.tokenizer import Tokenizer

    model = load_model(model_path)
    tok = Tokenizer(model.tokenizer)
    ids = tok.encode(
        args.text.read_text(encoding="utf-8", errors="replace"), add_special=True, parse_special=False
    )
    bos = tok.bos_id if model.tokenizer.add_bos else None
    res = perplexity(model, ids, ctx=args.ctx, n_chunks=args.chunks, bos_id=bos)
    se = float(np.std(res.nll) / math.sqrt(res.nll.size)) * res.perplexity
    return float(res.perplexity), se


def engine_perplexity(model_path: Path, args: argparse.Namespace, log: Path) -> tuple[float, float]:
    cmd = [
        sys.executable,
        "-m",
        "edgelut.cli",
        "perplexity",
        str(model_path),
        str(args.text),
        "-c",
        str(args.ctx),
        "--chunks",
        str(args.chunks),
    ]
    out = _run(cmd, log)
    m = re.search(r"perplexity: ([0-9.]+)", out)
    if m is None:
        raise RuntimeError(f"edgelut perplexity printed no result; see {log}")
    return float(m.group(1)), float("nan")


def make_imatrix(f32: Path, args: argparse.Namespace, work: Path, log: Path) -> Path:
    """llama.cpp's importance matrix from the calibration text (computed once per work dir)."""
    out = work / "imatrix.dat"
    if not out.exists():
        cmd = [
            str(args.llama_cpp_build / "bin" / "llama-imatrix"),
            "-m",
            str(f32),
            "-f",
            str(args.calib),
            "-o",
            str(out),
            "-c",
            str(args.ctx),
            "--chunks",
            str(args.imatrix_chunks),
            "-t",
            str(args.threads),
        ]
        _run(cmd, log)
        if not out.exists():
            raise RuntimeError(f"llama-imatrix wrote no {out}; see {log}")
    return out


def llama_speed(path: Path, args: argparse.Namespace, log: Path) -> tuple[float, float]:
    """(decode, prefill) tokens/s from llama-bench."""
    exe = args.llama_cpp_build / "bin" / "llama-bench"
    out = _run(
        [
            str(exe),
            "-m",
            str(path),
            "-p",
            str(args.speed_prompt),
            "-n",
            str(args.speed_gen),
            "-t",
            str(args.threads),
        ]
        + ["-r", str(args.speed_repeats), "-o", "json"],
        log,
    )
    rows = json.loads(out[out.index("[") :])
    tg = [r["avg_ts"] for r in rows if r.get("n_gen", 0) > 0]
    pp = [r["avg_ts"] for r in rows if r.get("n_prompt", 0) > 0 and r.get("n_gen", 0) == 0]
    if not tg or not pp:
        raise RuntimeError(f"llama-bench reported no prefill/decode rows; see {log}")
    return float(tg[0]), float(pp[0])


def edgelut_speed(path: Path, args: argparse.Namespace, log: Path) -> tuple[float, float]:
    """(decode, prefill) tokens/s from `edgelut bench`."""
    cmd = [sys.executable, "-m", "edgelut.cli", "bench", str(path), "-p", str(args.speed_prompt)]
    cmd += ["-n", str(args.speed_gen), "-r", str(args.speed_repeats), "-t", str(args.threads), "--json"]
    res = json.loads(_run(cmd, log).strip().splitlines()[-1])
    return float(res["decode_tokens_per_s"]), float(res["prefill_tokens_per_s"])


def row_file(name: str, work: Path, args: argparse.Namespace) -> Path:
    """The model file a row scores (llama-F32 is the float GGUF)."""
    if name.startswith("llama-"):
        qtype = name[len("llama-") :]
        if qtype.upper() == "F32":
            return work / "f32.gguf"
        return work / f"{qtype}{'-imatrix' if args.calib else ''}.gguf"
    return work / f"{name}.elut"


def plot_front(results: dict[str, Any], png: Path, title: str) -> None:
    """Size/perplexity fronts of llama.cpp and edgelut rows as a PNG (matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError("--plot needs matplotlib (pip install matplotlib)") from e
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, pick, marker in (("llama.cpp (imatrix)", "llama-", "s"), ("edgelut", "", "o")):
        pts = sorted(
            (r["size"] / 2**20, r["ppl"], r["name"])
            for r in results.values()
            if (r["name"].startswith("llama-") if pick else is_edgelut_row(r["name"]))
            and r["name"] != "llama-f32"
        )
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker, linestyle="none", label=label)
        for x, y, n in pts:
            ax.annotate(
                n.replace("llama-", ""), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
            )
    ax.set_xlabel("file size (MiB)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def edgelut_calibration(name: str, args: argparse.Namespace, work: Path, log: Path) -> list[str]:
    """The calibration arguments of an edgelut row: ``--calib FILE``, or with ``--rtn-imatrix``
    (RTN rows) llama-imatrix's file of the same text, so both sides weight by one importance matrix
    and RTN skips edgelut's numpy calibration pass (GPTQ needs that pass for its Hessians)."""
    if not args.calib:
        return []
    if args.rtn_imatrix and "-gptq" not in name:
        f32 = work / "f32.gguf"
        if not f32.exists():
            write_float_gguf(args.source, f32)
        return ["--imatrix", str(make_imatrix(f32, args, work, log))]
    return ["--calib", str(args.calib)]


def edgelut_row(name: str, args: argparse.Namespace, work: Path, log: Path) -> Row:
    out = work / f"{name}.elut"
    calib = edgelut_calibration(name, args, work, log)
    qargs = [str(args.source), "-o", str(out), *edgelut_args(name), *calib, *args.quantize_args]
    if not out.exists():
        # One BLAS thread: GPTQ's factorisations are small, and threads fight on a shared machine.
        start = time.perf_counter()
        _run([sys.executable, "-m", "edgelut.cli", "quantize", *qargs], log, {"OPENBLAS_NUM_THREADS": "1"})
        print(f"{name}: quantised in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    start = time.perf_counter()
    if args.engine:
        ppl, se = engine_perplexity(out, args, log)
        how = "edgelut perplexity OUT (C++ engine)"
    else:
        ppl, se = reference_perplexity(out, args)
        how = "tools/perplexity.py OUT (numpy reference)"
    cmd = "edgelut quantize " + " ".join(qargs) + f"; {how} --ctx {args.ctx} --chunks {args.chunks}"
    return Row(name, ppl, se, elut_bpw(out), out.stat().st_size, time.perf_counter() - start, cmd)


def float_row(args: argparse.Namespace) -> Row:
    start = time.perf_counter()
    ppl, se = reference_perplexity(args.source, args)
    bpw = 32.0
    cmd = f"tools/perplexity.py {args.source} --ctx {args.ctx} --chunks {args.chunks}"
    return Row("float", ppl, se, bpw, args.source.stat().st_size, time.perf_counter() - start, cmd, "numpy")


# -- main -----------------------------------------------------------------------------------------


def table(rows: list[dict[str, Any]]) -> str:
    speed = any(not math.isnan(r.get("decode_tps", float("nan"))) for r in rows)
    head = "| row | ppl | +/- | bits/weight | file MiB |" + (
        " decode tok/s | prefill tok/s |" if speed else ""
    )
    lines = [head, "|" + " --- |" * (7 if speed else 5)]
    for r in rows:
        line = f"| {r['name']} | {r['ppl']:,.2f} | {r['se']:.2f} | {r['bpw']:.3f} | {r['size'] / 2**20:.1f} |"
        if speed:
            line += f" {r.get('decode_tps', float('nan')):.1f} | {r.get('prefill_tps', float('nan')):.1f} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="source model (a GGUF file)")
    ap.add_argument("--llama-cpp-build", type=Path, required=True, help="llama.cpp build dir (has bin/)")
    ap.add_argument("--text", type=Path, default=None, help="text file (default: the Lee corpus)")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--chunks", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--rows",
        default="float,llama-f32,"
        + ",".join(f"llama-{t}" for t in PEER_TYPES)
        + ","
        + ",".join(EDGELUT_ROWS),
        help="comma-separated rows: float, llama-f32, llama-TYPE, " + ", ".join(EDGELUT_ROWS),
    )
    ap.add_argument("--engine", action="store_true", help="score edgelut files with the C++ engine")
    ap.add_argument("--work", type=Path, default=None, help="cache dir for quantised files and results")
    ap.add_argument(
        "--quantize-args", default="-q", help="extra arguments for every `edgelut quantize` (default -q)"
    )
    ap.add_argument("--calib", type=Path, default=None, help="calibration text for llama-imatrix and edgelut")
    ap.add_argument("--imatrix-chunks", type=int, default=8, help="llama-imatrix windows of --ctx tokens")
    ap.add_argument(
        "--rtn-imatrix",
        action="store_true",
        help="with --calib: RTN rows use llama-imatrix's file of the calibration text (`edgelut quantize "
        "--imatrix`) instead of edgelut's own calibration pass",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help='an extra row variant: NAME="--recipe attn_v=q3" (edgelut quantize arguments)',
    )
    ap.add_argument("--speed", action="store_true", help="measure decode/prefill speed of every row")
    ap.add_argument("--speed-prompt", type=int, default=128)
    ap.add_argument("--speed-gen", type=int, default=32)
    ap.add_argument("--speed-repeats", type=int, default=2)
    ap.add_argument("--plot", type=Path, default=None, help="write the size/perplexity front as this PNG")
    args = ap.parse_args(argv)
    for item in args.variant:
        vname, sep, vargs = item.partition("=")
        if not sep or not re.fullmatch(r"[a-z][a-z0-9]*", vname):
            ap.error(f"--variant: {item!r} is not NAME=ARGS with a lower-case alphanumeric NAME")
        VARIANTS[vname] = vargs.split()
    if args.calib is not None and not args.calib.is_file():
        ap.error(f"--calib: {args.calib} is not a file")
    if args.rtn_imatrix and args.calib is None:
        ap.error("--rtn-imatrix: needs --calib (the text llama-imatrix reads)")
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # progress in nohup logs
    args.quantize_args = args.quantize_args.split()
    if args.text is None:
        from edgelut.models.datasets import lee_corpus

        args.text = Path(lee_corpus())
    args.source = args.source.expanduser().resolve()
    work = args.work or Path.home() / ".cache" / "edgelut" / "bench_quality" / args.source.stem
    work.mkdir(parents=True, exist_ok=True)
    log = work / "log.txt"
    results_path = work / f"results-ctx{args.ctx}-chunks{args.chunks}{'-engine' if args.engine else ''}.json"
    results: dict[str, Any] = json.loads(results_path.read_text()) if results_path.exists() else {}

    f32 = work / "f32.gguf"
    for name in [r.strip() for r in args.rows.split(",") if r.strip()]:
        if name in results:
            continue
        try:
            if name == "float":
                row = float_row(args)
            elif name.startswith("llama-"):
                if not f32.exists():
                    write_float_gguf(args.source, f32)
                qtype = name[len("llama-") :]
                path = f32
                if qtype.upper() != "F32":
                    path = work / f"{qtype}{'-imatrix' if args.calib else ''}.gguf"
                    if not path.exists():
                        quant = args.llama_cpp_build / "bin" / "llama-quantize"
                        imat = ["--imatrix", str(make_imatrix(f32, args, work, log))] if args.calib else []
                        _run([str(quant), *imat, str(f32), str(path), qtype, str(args.threads)], log)
                row = llama_row(name, path, args, log)
            elif is_edgelut_row(name):
                row = edgelut_row(name, args, work, log)
            else:
                raise ValueError(f"unknown row {name!r}")
        except (RuntimeError, ValueError, FileNotFoundError) as e:
            print(f"bench_quality: {name}: {e}", file=sys.stderr)
            continue
        # Re-read before writing: several runs (e.g. RTN and GPTQ rows) may share one results file.
        results = json.loads(results_path.read_text()) if results_path.exists() else {}
        results[name] = asdict(row)
        results_path.write_text(json.dumps(results, indent=1))
        print(
            f"{name}: ppl {row.ppl:.4f} +/- {row.se:.4f}, {row.bpw:.3f} bpw ({row.seconds:.0f} s)", flush=True
        )
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    if args.speed:
        # One interleaved pass over the rows in the order given, so each pair sees the same load.
        for name in names:
            path = row_file(name, work, args)
            if name not in results or name == "float" or not path.exists():
                continue
            try:
                speed = (
                    llama_speed(path, args, log)
                    if name.startswith("llama-")
                    else edgelut_speed(path, args, log)
                )
            except (RuntimeError, ValueError) as e:
                print(f"bench_quality: {name}: speed: {e}", file=sys.stderr)
                continue
            results = json.loads(results_path.read_text())
            results[name]["decode_tps"], results[name]["prefill_tps"] = speed
            results_path.write_text(json.dumps(results, indent=1))
            print(f"{name}: decode {speed[0]:.1f} tok/s, prefill {speed[1]:.1f} tok/s", flush=True)
    if args.plot:
        plot_front(results, args.plot, f"{args.source.stem}: perplexity (ctx {args.ctx}) vs size")
    print(table(list(results.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
