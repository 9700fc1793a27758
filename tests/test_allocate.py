"""`quantize --target-size / --target-bpw`: per-tensor widths from measured sensitivity."""

from __future__ import annotations

import numpy as np
import pytest
from mfile_helpers import tiny_model

from edgelut.cli import main
from edgelut.models.modelfile import read_model_file
from edgelut.quantize.allocate import _hull, allocate, choose_widths, measure_model
from edgelut.quantize.imatrix import ImportanceMatrix
from edgelut.quantize.recipe import Recipe, TensorSpec


@pytest.fixture(scope="module")
def model():
    return tiny_model(hidden=256, inter=512, layers=2, vocab=256)


@pytest.fixture
def tiny_source(monkeypatch, model):
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    return model


@pytest.fixture
def small_source(monkeypatch):
    """A smaller model where the file's 4 KiB alignment does not matter (bits per weight)."""
    model = tiny_model(hidden=128, inter=256, layers=2, vocab=128)
    monkeypatch.setattr("edgelut.quantize.convert.load_source", lambda src: model)
    return model


def _bits(spec: TensorSpec) -> int:
    return int(spec.qtype[1:])


def test_hull_keeps_the_lower_convex_frontier():
    s = [TensorSpec(f"q{i}") for i in range(1, 5)]
    opts = [(s[0], 10, 1.0), (s[1], 20, 0.5), (s[2], 30, 0.45), (s[3], 40, 0.1)]
    assert [o[1] for o in _hull(opts)] == [10, 20, 40]  # 30 lies above the chord from 20 to 40
    assert [o[1] for o in _hull([*opts, (s[3], 50, 0.6)])] == [10, 20, 40]  # dominated


def test_chooser_meets_the_budget_and_prefers_sensitive_tensors():
    # One tensor reads a few channels with large activations (the imatrix says so) through small
    # weights: group scales are set by the other columns, so low widths cost its output the most.
    m = tiny_model(hidden=256, inter=512, layers=2, vocab=256)
    sensitive = "blk.1.attn_output.weight"
    w = m.tensors[sensitive].copy()
    w[:, ::8] *= 0.1
    m.tensors[sensitive] = w
    imp = np.ones(w.shape[1], np.float32)
    imp[::8] = 100.0
    im = ImportanceMatrix(sums={sensitive: imp}, counts={sensitive: 1.0})
    n = sum(t.size for t in m.tensors.values())
    budget = int(2.6 * n / 8)
    alloc = choose_widths(m, budget, imatrix=im)
    assert alloc.tensor_bytes <= budget
    assert abs(alloc.bpw - 2.6) / 2.6 < 0.02
    others = [_bits(s) for n, s in alloc.specs.items() if n.endswith("attn_output.weight") and n != sensitive]
    assert _bits(alloc.specs[sensitive]) > max(others), alloc.specs
    plain = measure_model(m)  # without the imatrix the same tensor looks ordinary
    assert _bits(allocate(plain, budget).specs[sensitive]) <= _bits(alloc.specs[sensitive])
    # A larger budget never gives a worse total error.
    assert allocate(plain, int(3.2 * n / 8)).error < allocate(plain, budget).error
    with pytest.raises(ValueError, match="below the smallest"):
        allocate(plain, n // 16)


def test_cli_target_bpw_lands_within_2_percent(tmp_path, small_source, capsys):
    out = tmp_path / "t.elut"
    args = ["quantize", "tiny", "-o", str(out), "--target-bpw", "2.8", "--recipe", "output=q4:g32", "-q"]
    assert main(args) == 0
    f = read_model_file(out)
    entries = list(f.entries.values())
    bpw = 8 * sum(e.nbytes for e in entries) / sum(e.n_weights for e in entries)
    assert bpw <= 2.8 and abs(bpw - 2.8) / 2.8 < 0.02, bpw
    assert f.entries["output.weight"].qtype == "q4" and f.entries["output.weight"].group_size == 32  # pinned
    assert len({(e.qtype, e.group_size) for e in entries if e.packed}) > 1  # a real mix
    assert f.recipe["target"]["target_bpw"] == 2.8
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "widths chosen for a 2.8 bits/weight" in text
    mix = f.recipe["target"]["specs"]
    assert sum(mix.values()) == sum(e.packed for e in entries)
    assert all(f"{k} x{v}" in text for k, v in mix.items())
    assert main(["info", str(out), "--tensors"]) == 0
    listing = capsys.readouterr().out
    for e in entries:
        if e.packed:
            assert f"{e.name} " in listing and f"{e.qtype} g{e.group_size}" in listing


def test_cli_target_size_lands_within_2_percent(tmp_path, tiny_source, capsys):
    out = tmp_path / "s.elut"
    target = 600_000
    assert main(["quantize", "tiny", "-o", str(out), "--target-size", str(target), "-q"]) == 0
    size = out.stat().st_size
    assert size <= target and size >= 0.98 * target, size


def test_cli_target_bad_values(tmp_path, small_source, capsys):
    out = str(tmp_path / "x.elut")
    assert main(["quantize", "tiny", "-o", out, "--target-size", "lots", "-q"]) == 2
    assert "--target-size" in capsys.readouterr().err
    assert main(["quantize", "tiny", "-o", out, "--target-bpw", "0.5", "-q"]) == 2
    assert "--target-bpw" in capsys.readouterr().err
    assert main(["quantize", "tiny", "-o", out, "--target-size", "0", "-q"]) == 2
    assert "--target-size" in capsys.readouterr().err
    assert main(["quantize", "tiny", "-o", out, "--target-size", "10k", "-q"]) == 2
    assert "below the smallest" in capsys.readouterr().err


def test_recipe_writes_the_measured_specs_and_two_level_candidates_are_chosen():
    # A q1..q3 recipe is two-level by default; the chosen fp16-per-group specs must stay one-level
    # in the file (their bytes and errors are what was measured), and the two-level candidates
    # must stay two-level.
    m = tiny_model(hidden=256, inter=512, layers=2, vocab=256)
    n = sum(t.size for t in m.tensors.values())
    measured = measure_model(m)
    for bpw in (2.4, 2.6, 3.4):
        alloc = allocate(measured, int(bpw * n / 8))
        for q in ("q2", "q3"):
            recipe = alloc.recipe(Recipe(qtype=q))
            assert {k: recipe.spec_for(k) for k in alloc.specs} == alloc.specs
    # At 2.4 bits two-level q2 (2.375) beats every one-level form that fits (q2 g128: 2.25 bits,
    # half the scales per weight).
    specs = allocate(measured, int(2.4 * n / 8)).specs.values()
    assert any(s.two_level for s in specs) and any(not s.two_level for s in specs), specs
