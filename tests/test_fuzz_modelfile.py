"""Every way a model file is opened (edgelut.load, the C ABI, `edgelut info`, `edgelut run`)
ends a damaged file in the documented error naming the file, or loads it correctly:
structure-aware mutations (tools/fuzz_modelfile.py), hand-made corruptions with the
exact message, special files, and the real SmolLM2 file."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import random
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st
from mfile_helpers import tiny_model

import edgelut
from edgelut import _core
from edgelut.kernels import pack
from edgelut.models.modelfile import read_model_file, write_model_file
from edgelut.quantize.rtn import quantize_rtn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fuzz_modelfile as fz  # noqa: E402

CASE_TIMEOUT = 30  # seconds; a hang kills the run with every thread's stack


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = tiny_model(hidden=64, inter=96, layers=2, heads=4, kv_heads=2, vocab=96)
    tensors: dict[str, Any] = {}
    for name, a in model.tensors.items():
        if a.ndim == 2:
            c, s, m = quantize_rtn(a, "q4", 32, asym=True)
            tensors[name] = pack(c, s, m, "q4", 32)
        else:
            tensors[name] = a
    path = tmp_path_factory.mktemp("fuzz") / "tiny.elut"
    write_model_file(path, model.config, model.tokenizer, tensors, recipe={"method": "rtn"})
    return path


@pytest.fixture(scope="module")
def tiny_fields(tiny_file: Path) -> list[fz.Field]:
    return fz.walk(tiny_file.read_bytes())


@pytest.fixture(scope="module")
def capi_load() -> Any:
    """edgelut_model_load through cffi: path -> (status, message)."""
    return fz.capi_loader()


@pytest.fixture
def watchdog() -> Iterator[None]:
    """A reader that loops or waits forever fails the run loudly instead of hanging it."""
    faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


def _set(data: bytes, fields: list[fz.Field], label: str, value: bytes) -> bytes:
    f = next(f for f in fields if f.label == label)
    out = bytearray(data)
    out[f.offset : f.offset + len(value)] = value
    return bytes(out)


PYTHON_ONLY_FIELDS = ("'edgelut.recipe'", "'edgelut.rope_scaling'", "'edgelut.tokenizer.json'")


def _check_python(path: Path, with_message: bool = False) -> Any:
    """edgelut.load: 'ok', or the documented error as one line naming the file."""
    outcome, msg = "ok", ""
    try:
        edgelut.load(str(path), n_ctx=64)
    except (edgelut.ModelFileError, edgelut.FileAccessError, FileNotFoundError) as e:
        msg = str(e)
        assert "\n" not in msg and path.name in msg, msg
        outcome = "clean"
    return (outcome, msg) if with_message else outcome


def _check_capi(capi_load: Any, path: Path) -> str:
    status, msg = capi_load(str(path))
    if status == 0:
        return "ok"
    lib = capi_load.lib
    assert status in (lib.EDGELUT_ERR_INVALID_MODEL, lib.EDGELUT_ERR_IO), (status, msg)
    assert "\n" not in msg and path.name in msg, msg
    return "clean"


def _check_cli(args: list[str], path: Path) -> str:
    cmd = [sys.executable, "-m", "edgelut.cli", *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT, errors="replace")
    assert "Traceback" not in p.stderr, p.stderr
    if p.returncode == 0:
        return "ok"
    err = p.stderr.strip()
    assert p.returncode == 2 and "\n" not in err and path.name in err, (p.returncode, err)
    return "clean"


# -- structure-aware mutations ------------------------------------------------------------------


def _fuzz_one(tiny_file: Path, capi_load: Any, tmp: Path, r: random.Random) -> None:
    # Re-armed per example: the fixture's timer would span every example of the test.
    faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
    data = tiny_file.read_bytes()
    desc, data = fz.mutate(data, fz.walk(data), r)
    path = tmp / "case.elut"
    path.write_bytes(data)
    py, message = _check_python(path, with_message=True)
    c = _check_capi(capi_load, path)
    # One reader: the Python and C entry points agree on whether the file is good, except
    # for the JSON documents only Python parses (the C ABI's tokenizer backend reads its own).
    if py != c:
        assert c == "ok" and any(k in message for k in PYTHON_ONLY_FIELDS), (desc, py, c, message)


@seed(12)
@settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=st.integers(0, 2**32 - 1))
def test_mutations_load_and_capi(tiny_file, capi_load, tmp_path, watchdog, case):
    _fuzz_one(tiny_file, capi_load, tmp_path, random.Random(case))


@pytest.mark.slow
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=st.integers(0, 2**32 - 1))
def test_mutations_load_and_capi_long(tiny_file, capi_load, tmp_path, watchdog, case):
    _fuzz_one(tiny_file, capi_load, tmp_path, random.Random(case))


def _cli_mutations(tiny_file: Path, tmp: Path, n: int, seed_: int) -> None:
    for i, (desc, data) in enumerate(fz.mutations(tiny_file, n, seed_)):
        path = tmp / f"cli-{i}.elut"
        path.write_bytes(data)
        for args in (["info", str(path)], ["run", str(path), "-p", "hi", "-n", "1", "-c", "64"]):
            assert _check_cli(args, path) in ("ok", "clean"), desc


def test_mutations_cli(tiny_file, tmp_path):
    _cli_mutations(tiny_file, tmp_path, 4, 7)


@pytest.mark.slow
def test_mutations_cli_long(tiny_file, tmp_path):
    _cli_mutations(tiny_file, tmp_path, 80, 8)


# -- the bugs of issue 12, each with its message ------------------------------------------------


def _edited(tiny_file: Path, fields: list[fz.Field], tmp: Path, label: str, value: bytes) -> Path:
    p = tmp / "bad.elut"
    p.write_bytes(_set(tiny_file.read_bytes(), fields, label, value))
    return p


U32, U64, F32 = (
    (lambda v: struct.pack("<I", v)),
    (lambda v: struct.pack("<Q", v)),
    (lambda v: struct.pack("<f", v)),
)
CORRUPTIONS = [
    # An array length of 2^61 hung gguf.GGUFReader with memory growing.
    ("array length of value of edgelut.layer.offsets", U64(1 << 61), r"array length 2305843009213693952"),
    # A value's type changed to array: IndexError/KeyError in the gguf reader.
    ("type of general.name", U32(9), r"truncated or corrupt|unknown metadata value type"),
    ("type of llama.block_count", U32(6), r"field 'llama.block_count' is a f32, expected an integer"),
    ("value of llama.block_count", U32(0), r"field 'llama.block_count' has impossible value 0"),
    ("value of llama.attention.head_count_kv", U32(3), r"is not a multiple of"),
    (
        "value of llama.attention.layer_norm_rms_epsilon",
        F32(float("nan")),
        r"epsilon' has impossible value nan",
    ),
    ("value of llama.rope.freq_base", F32(0.0), r"freq_base' has impossible value 0"),
    ("value of llama.vocab_size", U32(0), r"vocab_size' has impossible value 0"),
    ("length of a key", U64(1 << 40), r"truncated at byte \d+ while reading the key of metadata entry 0"),
    ("tensor count", U64(1 << 60), r"tensor count \d+ does not fit"),
    ("ggml type of token_embd.weight", U32(99), r"tensor 'token_embd.weight' has unknown ggml type 99"),
    ("offset of token_embd.weight", U64(4095), r"not a multiple of the alignment"),
    ("dimension 0 of token_embd.weight", U64(0), r"impossible dimension 0"),
]


@pytest.mark.parametrize(("label", "value", "match"), CORRUPTIONS)
def test_corruptions_give_one_sentence(
    tiny_file, tiny_fields, capi_load, tmp_path, watchdog, label, value, match
):
    p = _edited(tiny_file, tiny_fields, tmp_path, label, value)
    with pytest.raises(edgelut.ModelFileError, match=match) as e:
        edgelut.load(str(p))
    assert str(e.value).startswith(str(p)) and "\n" not in str(e.value)
    with pytest.raises(edgelut.ModelFileError, match=match):
        read_model_file(p)
    status, msg = capi_load(str(p))
    assert status == capi_load.lib.EDGELUT_ERR_INVALID_MODEL and msg.startswith(str(p)), (status, msg)


def _gguf_with(tmp: Path, kv: list[tuple[str, int, bytes]], tensors: list[tuple[str, int]] = ()) -> Path:
    """A minimal GGUF v3: (key, type, encoded value) entries and 1-D F32 tensors (name, length)."""
    out = bytearray(b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)))
    for key, t, val in kv:
        out += struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", t) + val
    offset = 0
    for name, n in tensors:
        out += struct.pack("<Q", len(name)) + name.encode() + struct.pack("<IQIQ", 1, n, 0, offset)
        offset += (4 * n + 31) // 32 * 32
    out += bytes(-len(out) % 32) + bytes(offset)
    p = tmp / "made.gguf"
    p.write_bytes(bytes(out))
    return p


def _s(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def test_duplicates_and_bad_strings_are_refused(tmp_path):
    arch = ("general.architecture", 8, _s("llama"))
    cases = [
        ([arch, arch], [], "duplicate metadata key 'general.architecture'"),
        ([arch], [("w", 8), ("w", 8)], "duplicate tensor name 'w'"),
        ([("general.name", 8, struct.pack("<Q", 2) + b"\xff\xfe")], [], "not valid UTF-8"),
        ([("general.alignment", 4, struct.pack("<I", 3))], [], "'general.alignment' has impossible value 3"),
        ([("x", 7, b"\x05")], [], "a bool of value 5"),
    ]
    for kv, tensors, match in cases:
        p = _gguf_with(tmp_path, kv, tensors)
        with pytest.raises(edgelut.ModelFileError, match=match):
            _core.read_gguf(str(p))


def test_every_value_type_reads_back(tmp_path):
    nested = (
        struct.pack("<IQ", 9, 2)
        + struct.pack("<IQ", 4, 1)
        + struct.pack("<I", 7)
        + struct.pack("<IQ", 8, 1)
        + _s("a")
    )
    kv = [
        ("u8", 0, b"\xff"),
        ("i8", 1, b"\xff"),
        ("u16", 2, struct.pack("<H", 65535)),
        ("i16", 3, struct.pack("<h", -2)),
        ("i32", 5, struct.pack("<i", -3)),
        ("f64", 12, struct.pack("<d", 0.25)),
        ("b", 7, b"\x01"),
        ("u64", 10, struct.pack("<Q", (1 << 64) - 1)),
        ("i64", 11, struct.pack("<q", -(1 << 62))),
        ("strs", 9, struct.pack("<IQ", 8, 2) + _s("x") + _s("é")),
        ("nested", 9, nested),
    ]
    g = _core.read_gguf(str(_gguf_with(tmp_path, kv, [("w", 8)])))
    m = g["metadata"]
    assert m == {
        "u8": 255, "i8": -1, "u16": 65535, "i16": -2, "i32": -3, "f64": 0.25, "b": True,
        "u64": (1 << 64) - 1, "i64": -(1 << 62), "strs": ["x", "é"], "nested": [[7], ["a"]],
    }  # fmt: skip
    assert g["types"]["nested"] == "array[array]" and g["types"]["u64"] == "u64"
    assert g["data_offset"] % 32 == 0 and g["file_size"] == g["data_offset"] + 32
    want = {
        "name": "w",
        "shape": (8,),
        "type": 0,
        "type_name": "F32",
        "offset": g["data_offset"],
        "nbytes": 32,
    }
    assert g["tensors"] == [want]


def test_ggml_type_table_matches_the_gguf_package():
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    ours = _core.ggml_types()
    for t, (block, size) in GGML_QUANT_SIZES.items():
        if t == GGMLQuantizationType.Q8_1:
            assert int(t) not in ours  # activation-only in ggml; the two tables disagree on its size
            continue
        assert ours[int(t)][1:] == (block, size), t.name


# -- special files ------------------------------------------------------------------------------


@pytest.fixture
def special_files(tmp_path: Path) -> dict[str, Path]:
    fifo = tmp_path / "pipe.elut"
    os.mkfifo(fifo)
    d = tmp_path / "dir.elut"
    d.mkdir()
    return {"FIFO": fifo, "directory": d, "character device": Path("/dev/null")}


def test_special_files_are_refused_without_opening(special_files, capi_load, watchdog):
    for kind, p in special_files.items():
        with pytest.raises(edgelut.FileAccessError, match=f"{p} is a {kind}"):
            read_model_file(p)
        with pytest.raises(edgelut.FileAccessError, match=f"{p} is a {kind}"):
            _core.read_gguf(str(p))
        status, msg = capi_load(str(p))
        assert status == capi_load.lib.EDGELUT_ERR_IO and msg == f"{p} is a {kind}, not a model file"
    with pytest.raises(edgelut.FileAccessError, match="is a FIFO"):
        edgelut.load(str(special_files["FIFO"]))


def test_cli_info_and_run_on_special_files(special_files):
    for p in special_files.values():
        for args in (["info", str(p)], ["run", str(p), "-p", "hi", "-n", "1"]):
            cmd = [sys.executable, "-m", "edgelut.cli", *args]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            assert r.stderr.count("\n") == 1 and str(p) in r.stderr


def _without_file_override() -> None:
    """preexec_fn: drop CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the bounding set,
    so that the exec'd child, even as root, is held to the file's permission bits."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_unreadable_file_is_one_line_naming_it(tiny_file, tmp_path):
    """A model file without read permission: the CLI and the Python API say so in one line.

    Root reads any file, so the children run without the two capabilities
    that let it (a plain user is refused by the mode alone).
    """
    p = tmp_path / "locked.elut"
    shutil.copyfile(tiny_file, p)
    p.chmod(0o000)
    kw: dict[str, Any] = {"preexec_fn": _without_file_override} if os.geteuid() == 0 else {}
    kw.update(capture_output=True, text=True, timeout=CASE_TIMEOUT)
    for args in (["info", str(p)], ["run", str(p), "-p", "hi", "-n", "1"]):
        r = subprocess.run([sys.executable, "-m", "edgelut.cli", *args], **kw)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert r.stderr.count("\n") == 1 and f"{p}: cannot open: Permission denied" in r.stderr, r.stderr
    code = "\n".join(
        [
            "import sys, edgelut",
            "try:",
            "    edgelut.load(sys.argv[1])",
            "except edgelut.FileAccessError as e:",
            "    print(e)",
        ]
    )
    r = subprocess.run([sys.executable, "-c", code, str(p)], **kw)
    assert r.stdout.strip() == f"{p}: cannot open: Permission denied", r.stdout + r.stderr


# -- `edgelut info` -----------------------------------------------------------------------------


def _with_recipe(tiny_file: Path, tmp: Path, recipe: str) -> Path:
    """The tiny file with its recipe string replaced (the header grows into the padding)."""
    data = tiny_file.read_bytes()
    fields = fz.walk(data)
    fl = next(x for x in fields if x.label == "length of value of edgelut.recipe")
    n = int.from_bytes(data[fl.offset : fl.offset + 8], "little")
    text = recipe.encode()
    data = data[: fl.offset] + struct.pack("<Q", len(text)) + text + data[fl.offset + 8 + n :]
    start = fields[-1].offset + len(text) - n  # the tensor data, moved by the edit
    data = data[: fields[-1].offset] + data[start:]  # trim as much padding: the data stays aligned
    p = tmp / "recipe.elut"
    p.write_bytes(data)
    return p


def _info(path: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgelut.cli", "info", str(path)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT)


def test_info_refuses_a_recipe_that_is_not_an_object(tiny_file, tmp_path):
    p = _with_recipe(tiny_file, tmp_path, "[1]")
    r = _info(p)
    assert r.returncode == 2 and "field 'edgelut.recipe' is JSON but not an object" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_info_on_a_file_without_tensors(tiny_file, tiny_fields, tmp_path):
    # ZeroDivisionError before: the tensor count set to 0 leaves a valid header and no tensors.
    p = _edited(tiny_file, tiny_fields, tmp_path, "tensor count", U64(0))
    r = _info(p)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert f"{p}: model is missing tensor(s) token_embd.weight" in r.stderr


# -- the real SmolLM2 files ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol_elut() -> Path:
    from edgelut import cache

    return cache.default_model_file()


def test_real_model_mutations(smol_elut, capi_load, tmp_path, watchdog):
    data = smol_elut.read_bytes()
    fields = fz.walk(data)
    cases = [
        ("truncated in the metadata", None),
        ("type of edgelut.tokenizer.json", struct.pack("<I", 9)),
        ("value of llama.attention.head_count", struct.pack("<I", 7)),
    ]
    for label, value in cases:
        p = tmp_path / "smol.elut"
        if value is None:  # truncated inside the metadata
            p.write_bytes(data[: fields[len(fields) // 2].offset + 3])
        else:
            p.write_bytes(_set(data, fields, label, value))
        assert _check_python(p) == "clean"
        assert _check_capi(capi_load, p) == "clean"
    assert _check_cli(["info", str(p)], p) == "clean"


def test_real_source_gguf_reads_as_the_gguf_package_does():
    import gguf

    from edgelut import cache
    from edgelut.models.gguf_file import GGUFFile
    from edgelut.models.importers.gguf import tokenizer_from_metadata
    from edgelut.tokenizer import Tokenizer

    path = cache.pull()
    ours = GGUFFile(path)
    theirs = gguf.GGUFReader(path)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        assert (
            ours.meta.values[key] == pytest.approx(field.contents())
            if isinstance(field.contents(), float)
            else ours.meta.values[key] == field.contents()
        ), key
    assert [(t.name, t.offset, t.nbytes) for t in ours.tensors] == [
        (t.name, int(t.data_offset), int(t.n_bytes)) for t in theirs.tensors
    ]
    t = ours.tensor("blk.0.ffn_down.weight")
    ref = next(x for x in theirs.tensors if x.name == t.name)
    assert (ours.data(t) == ref.data).all()
    tok = Tokenizer(tokenizer_from_metadata(ours))
    assert tok.decode(tok.encode("The capital of France is Paris.")) == "The capital of France is Paris."
    assert Tokenizer.from_source(path).encode("hello") == tok.encode("hello")


def test_real_model_loads_through_every_entry_point(smol_elut, capi_load):
    m = edgelut.load(str(smol_elut))
    assert m.config.n_layers == 30
    assert _check_capi(capi_load, smol_elut) == "ok"
    r = _info(smol_elut)
    assert r.returncode == 0 and "30 layers" in r.stdout
    shutil.disk_usage(smol_elut.parent)  # the file is left as it was


# -- source GGUFs (llama.cpp's format) through the same reader ---------------------------------


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from model_fixtures import tiny_config, tiny_weights, write_gguf

    cfg = tiny_config("llama")
    return write_gguf(tmp_path_factory.mktemp("src") / "tiny.gguf", cfg, tiny_weights(cfg), quant="Q4_0")


@seed(5)
@settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(case=st.integers(0, 2**32 - 1))
def test_mutated_source_gguf_imports_or_fails_cleanly(tiny_source, tmp_path, watchdog, case):
    from edgelut.models.importers import load_model

    faulthandler.dump_traceback_later(CASE_TIMEOUT, exit=True)
    data = tiny_source.read_bytes()
    desc, data = fz.mutate(data, fz.walk(data), random.Random(case))
    path = tmp_path / "case.gguf"
    path.write_bytes(data)
    try:
        load_model(path)
    except (ValueError, OSError) as e:  # ModelFileError is a ValueError, FileAccessError an OSError
        assert "\n" not in str(e) and path.name in str(e), (desc, str(e))
