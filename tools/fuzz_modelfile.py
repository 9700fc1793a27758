"""Structure-aware mutation fuzzing of the model-file reader, with an outcome table.

A valid model file is walked field by field (header counts, key lengths, value
types, array lengths, values, tensor infos, tensor bytes); each mutation
truncates the file at a field, sets one field to an interesting value, changes
a value's type or flips tensor bytes. Every mutated file is then opened by one
or more targets, each case in its own forked child with a timeout:

  load   edgelut.load(path)
  capi   edgelut_model_load through cffi (libedgelut)
  info   `edgelut info FILE` in a subprocess
  run    `edgelut run FILE -p hi -n 1` in a subprocess

Outcomes: ok (loaded), clean (the documented error, one line naming the file),
unnamed (a documented error whose message does not name the file or spans lines),
traceback (any other exception), wrong-status (C ABI: not INVALID_MODEL/IO for
a bad file), crash (killed by a signal), hang (timeout).

    python tools/fuzz_modelfile.py --model M.elut --cases 300 --targets load,capi,info,run [--special]
    python tools/fuzz_modelfile.py ... --python /work/main/.venv/bin/python   # another build ("before")

tests/test_fuzz_modelfile.py uses the walker and mutators from here.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import struct
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCALAR_FMT = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<B",
    10: "<Q",
    11: "<q",
    12: "<d",
}
INTERESTING_U64 = [0, 1, 2, 3, 7, 255, 4096, 1 << 31, 1 << 32, 1 << 61, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]
INTERESTING_U32 = [0, 1, 2, 3, 8, 9, 12, 13, 24, 31, 64, 255, 4096, (1 << 31) - 1, 1 << 31, (1 << 32) - 1]
OUTCOMES = ("ok", "clean", "unnamed", "traceback", "wrong-status", "crash", "hang")


@dataclass(frozen=True)
class Field:
    offset: int
    size: int  # 4 or 8 for integers the mutator rewrites; any size for values and data
    kind: str  # "u32", "u64", "type", "value", "data"
    label: str


def walk(data: bytes) -> list[Field]:
    """Every field of a valid GGUF file (trusted input: made by the tests or the user)."""
    fields: list[Field] = []
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def u(kind: str, label: str) -> int:
        size = 4 if kind in ("u32", "type") else 8
        fields.append(Field(pos, size, kind, label))
        return take("<I" if size == 4 else "<Q")

    def string(label: str) -> str:
        n = u("u64", f"length of {label}")
        nonlocal pos
        s = data[pos : pos + n].decode("utf-8", "replace")
        pos += n
        return s

    def value(t: int, label: str) -> None:
        nonlocal pos
        if t == 8:
            string(label)
        elif t == 9:
            et = u("type", f"element type of {label}")
            n = u("u64", f"array length of {label}")
            for j in range(n):
                value(et, f"{label}[{j}]")
        else:
            size = struct.calcsize(SCALAR_FMT[t])
            fields.append(Field(pos, size, "value", label))
            pos += size

    u("u32", "magic")
    u("u32", "version")
    n_tensors = u("u64", "tensor count")
    n_kv = u("u64", "metadata count")
    alignment = 32  # GGUF's default
    for _ in range(n_kv):
        key = string("a key")
        t = u("type", f"type of {key}")
        if key == "general.alignment" and t == 4:
            (alignment,) = struct.unpack_from("<I", data, pos)
        value(t, f"value of {key}")
    for _ in range(n_tensors):
        name = string("a tensor name")
        n_dims = u("u32", f"rank of {name}")
        for d in range(n_dims):
            u("u64", f"dimension {d} of {name}")
        u("u32", f"ggml type of {name}")
        u("u64", f"offset of {name}")
    data_start = (pos + alignment - 1) // alignment * alignment
    if data_start < len(data):
        fields.append(Field(data_start, len(data) - data_start, "data", "tensor data"))
    return fields


def mutate(data: bytes, fields: list[Field], rng: random.Random) -> tuple[str, bytes]:
    """One mutation: (description, mutated bytes)."""
    choice = rng.random()
    if choice < 0.2:  # truncation, mostly at or inside a field
        f = rng.choice(fields)
        cut = f.offset + rng.randrange(0, max(1, min(f.size, 64)))
        return f"truncate at {cut} (in {f.label})", data[:cut]
    f = rng.choice(fields)
    out = bytearray(data)
    if f.kind == "data":
        at = f.offset + rng.randrange(f.size)
        out[at] ^= 1 << rng.randrange(8)
        return f"flip a bit of tensor data at {at}", bytes(out)
    if f.kind in ("u32", "u64", "type"):
        pool = INTERESTING_U32 if f.size == 4 else INTERESTING_U64
        old = int.from_bytes(data[f.offset : f.offset + f.size], "little")
        if f.kind == "type":
            new = rng.choice([*range(14), 9, 9, 8, 255])
        else:
            new = rng.choice([*pool, old + 1, max(0, old - 1), old * 2, rng.randrange(1 << (8 * f.size))])
        new &= (1 << (8 * f.size)) - 1
        out[f.offset : f.offset + f.size] = new.to_bytes(f.size, "little")
        return f"{f.label} = {new}", bytes(out)
    # A scalar value: interesting bit patterns (zero, all ones, NaN, infinity, huge).
    pats = [b"\x00" * f.size, b"\xff" * f.size, bytes(rng.randrange(256) for _ in range(f.size))]
    if f.size == 4:
        pats += [struct.pack("<f", float("nan")), struct.pack("<f", float("inf")), struct.pack("<f", -1.0)]
    if f.size == 8:
        pats += [struct.pack("<d", float("nan")), struct.pack("<q", -1)]
    new_bytes = rng.choice(pats)
    out[f.offset : f.offset + f.size] = new_bytes
    return f"{f.label} = {new_bytes.hex()}", bytes(out)


def mutations(path: Path, n: int, seed: int) -> list[tuple[str, bytes]]:
    data = path.read_bytes()
    fields = walk(data)
    rng = random.Random(seed)
    return [mutate(data, fields, rng) for _ in range(n)]


# -- running cases ------------------------------------------------------------------------------


def classify_error(kind: str, message: str, path: str) -> str:
    documented = kind in ("ModelFileError", "FileAccessError", "FileNotFoundError", "ValueError", "OSError")
    if not documented:
        return "traceback"
    one_line = "\n" not in message.strip()
    return "clean" if one_line and os.path.basename(path) in message else "unnamed"


def _child_load(path: str) -> tuple[str, str]:
    import edgelut

    try:
        edgelut.load(path, n_ctx=64)
    except Exception as e:  # the point: report whatever escapes
        return classify_error(type(e).__name__, str(e), path), f"{type(e).__name__}: {e}"
    return "ok", ""


def capi_loader() -> Any:
    """edgelut_model_load through cffi (declarations from the installed edgelut.h): path -> (status, message).

    The returned function has the library as ``.lib`` (for the EDGELUT_* constants).
    """
    import cffi

    from edgelut import capi

    text = (capi.include_dir() / "edgelut.h").read_text()
    body = text[text.index("typedef enum edgelut_status") : text.rindex("#ifdef __cplusplus")]
    decls = "\n".join(ln for ln in body.splitlines() if not ln.lstrip().startswith("#"))
    ffi = cffi.FFI()
    ffi.cdef(decls.replace("EDGELUT_API ", ""))
    lib = ffi.dlopen(str(capi.library_path()))

    def load(path: str) -> tuple[int, str]:
        params = ffi.new("edgelut_load_params*")
        lib.edgelut_load_params_init(params)
        params.n_ctx = 64
        no_tok = ffi.new("char[]", b"")  # no tokenizer backend: the file is what is tested
        params.tokenizer_lib = no_tok
        out = ffi.new("edgelut_model**")
        status = lib.edgelut_model_load(path.encode(), params, out)
        if status == lib.EDGELUT_OK:
            lib.edgelut_model_free(out[0])
        return int(status), ffi.string(lib.edgelut_last_error()).decode("utf-8", "replace")

    load.lib = lib  # type: ignore[attr-defined]
    return load


def _child_capi(path: str) -> tuple[str, str]:
    status, msg = capi_loader()(path)
    if status == 0:
        return "ok", ""
    if status not in (2, 3):  # EDGELUT_ERR_IO, EDGELUT_ERR_INVALID_MODEL
        return "wrong-status", f"status {status}: {msg}"
    return classify_error("ValueError", msg, path), f"status {status}: {msg}"


def _run_forked(fn, path: str, timeout: float) -> tuple[str, str]:
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.close(r)
        try:
            result = fn(path)
        except BaseException as e:  # noqa: BLE001 (anything that escapes is the finding)
            result = ("traceback", f"{type(e).__name__}: {e}")
        os.write(w, json.dumps(result).encode())
        os._exit(0)
    os.close(w)
    import select

    ready, _, _ = select.select([r], [], [], timeout)
    if not ready:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(r)
        return "hang", f"no answer in {timeout} s"
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if not chunks:
        return "crash", f"child died (wait status {status})"
    outcome, detail = json.loads(b"".join(chunks))
    return outcome, detail


def run_cli(python: str, args: list[str], path: str, timeout: float) -> tuple[str, str]:
    cmd = [python, "-m", "edgelut.cli", *args]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, errors="replace")
    except subprocess.TimeoutExpired:
        return "hang", f"no exit in {timeout} s"
    if p.returncode < 0:
        return "crash", f"signal {-p.returncode}"
    if p.returncode == 0:
        return "ok", ""
    err = p.stderr.strip()
    if "Traceback" in err:
        return "traceback", err.splitlines()[-1]
    return ("clean" if "\n" not in err and os.path.basename(path) in err else "unnamed"), err


def run_case(target: str, path: str, timeout: float, python: str = sys.executable) -> tuple[str, str]:
    if target == "load":
        return _run_forked(_child_load, path, timeout)
    if target == "capi":
        return _run_forked(_child_capi, path, timeout)
    if target == "info":
        return run_cli(python, ["info", path], path, timeout)
    if target == "run":
        return run_cli(python, ["run", path, "-p", "hi", "-n", "1", "-c", "64"], path, timeout)
    raise ValueError(f"unknown target {target!r}")


def _worker(args: argparse.Namespace) -> None:
    """Runs every case file in args.worker for the targets; prints one JSON line per case."""
    for f in sorted(Path(args.worker).glob("case-*.elut"), key=lambda p: p.name):
        for target in args.targets.split(","):
            outcome, detail = run_case(target, str(f), args.timeout, sys.executable)
            print(json.dumps({"case": f.name, "target": target, "outcome": outcome, "detail": detail[:300]}))
            sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="a valid edgelut model file to mutate")
    ap.add_argument("--cases", type=int, default=200)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--targets", default="load,capi,info,run")
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--python", default=sys.executable, help="interpreter whose edgelut is tested")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--show", type=int, default=5, help="examples printed per bad outcome")
    ap.add_argument("--special", action="store_true", help="add a directory, a FIFO and /dev/null")
    args = ap.parse_args()
    if args.worker:
        _worker(args)
        return
    with tempfile.TemporaryDirectory(prefix="elut-fuzz-") as tmp:
        for i, (_, data) in enumerate(mutations(args.model, args.cases, args.seed)):
            (Path(tmp) / f"case-{i:05d}.elut").write_bytes(data)
        descs = {
            f"case-{i:05d}.elut": d for i, (d, _) in enumerate(mutations(args.model, args.cases, args.seed))
        }
        if args.special:  # a directory, a FIFO and a character device, under model-file names
            (Path(tmp) / "case-dir.elut").mkdir()
            os.mkfifo(Path(tmp) / "case-fifo.elut")
            (Path(tmp) / "case-null.elut").symlink_to("/dev/null")
            descs |= {f"case-{k}.elut": f"special file: {k}" for k in ("dir", "fifo", "null")}
        cmd = [args.python, str(Path(__file__).resolve()), "--worker", tmp, "--targets", args.targets]
        cmd += ["--timeout", str(args.timeout)]
        rows = [
            json.loads(line)
            for line in subprocess.run(cmd, capture_output=True, text=True, cwd=tmp).stdout.splitlines()
        ]
    counts: dict[str, Counter] = {t: Counter() for t in args.targets.split(",")}
    for r in rows:
        counts[r["target"]][r["outcome"]] += 1
    print(f"model {args.model}, {args.cases} mutations, seed {args.seed}, python {args.python}")
    print("| target | cases | " + " | ".join(OUTCOMES) + " |")
    print("| --- | ---: | " + " | ".join("---:" for _ in OUTCOMES) + " |")
    for t, c in counts.items():
        print(f"| {t} | {sum(c.values())} | " + " | ".join(str(c[o]) for o in OUTCOMES) + " |")
    for o in OUTCOMES[2:]:
        bad = [r for r in rows if r["outcome"] == o][: args.show]
        for r in bad:
            print(f"  {o}: {r['target']} {descs[r['case']]}: {r['detail'][:160]}")


if __name__ == "__main__":
    main()
