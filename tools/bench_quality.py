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
# Default edgelut rows. A row name is BITS-METHOD[-gNN][-sym][-VARIANT]: BITS q1..q4 or tq,
# METHOD rtn/gptq/ternary, gNN a group size, VARIANT a key of VARIANTS (extra recipe overrides).
EDGELUT_ROWS = ("q4-rtn", "q4-gptq", "q3-rtn", "q3-gptq", "q2-rtn", "q2-gptq", "tq-ternary", "tq-gptq")
VARIANTS: dict[str, list[str]] = {
    "nodef": ["--no-default-recipe"],  # every tensor at the row's type
    "embd8": ["--recipe", "token_embd=q4:g32"],
    "vd4": ["--recipe", "attn_v=q4,ffn_down=q4"],
    "vd4g32": ["--recipe", "attn_v=q4:g32,ffn_down=q4:g32"],
    "d4": ["--recipe", "ffn_down=q4"],
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


def edgelut_row(name: str, args: argparse.Namespace, work: Path, log: Path) -> Row:
    out = work / f"{name}.elut"
    qargs = [str(args.source), "-o", str(out), *edgelut_args(name), *args.quantize_args]
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
    lines = ["| row | ppl | +/- | bits/weight | file MiB |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['ppl']:,.2f} | {r['se']:.2f} | {r['bpw']:.3f} | {r['size'] / 2**20:.1f} |"
        )
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
    args = ap.parse_args(argv)
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
                    path = work / f"{qtype}.gguf"
                    if not path.exists():
                        quant = args.llama_cpp_build / "bin" / "llama-quantize"
                        _run([str(quant), str(f32), str(path), qtype, str(args.threads)], log)
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
    print(table(list(results.values())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
