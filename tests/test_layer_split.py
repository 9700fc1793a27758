"""Layer split (a pipeline, `edgelut shard --split layers`): each device runs a contiguous
range of whole layers and the residual stream goes from device to device, so a decode
token crosses each link once instead of 2 x n_layers all-reduces.

The split runs the same kernels in the same order on the same fp32 stream as one
device, so its logits are bit-identical to the single device's (not merely close, as
the head split's are). Real SmolLM2, real worker processes on loopback; the planner,
the CLI and the errors without a network."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from tp_helpers import Workers, finish, free_port, greedy_steps

import edgelut
from edgelut import _core, store
from edgelut.cli import main as cli_main
from edgelut.distributed import DistributedOptions
from edgelut.local_shards import LocalShardGroup
from edgelut.model import engine_config
from edgelut.models.gguf_file import ModelFileError
from edgelut.models.modelfile import read_model_file
from edgelut.registry import DEFAULT_MODEL
from edgelut.shard_file import read_manifest, write_shards
from edgelut.sharding import choose_split, plan_layers, predict_token_s

IDS = [1, 9690, 42, 253, 3458, 282, 4649, 314, 30, 2]  # a short prompt of SmolLM2 ids
STEPS = 8


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(store.resolve(DEFAULT_MODEL))


@pytest.fixture(scope="module")
def config(model_path):
    with read_model_file(model_path, verify_crc=False) as mf:
        return mf.config


@pytest.fixture(scope="module")
def single(model_path) -> tuple[list[int], np.ndarray]:
    return greedy(edgelut.load(model_path, n_threads=1).engine)


@pytest.fixture(scope="module")
def split_dirs(model_path, tmp_path_factory) -> dict[str, Path]:
    """Layer splits of SmolLM2: 2 devices even, 3 devices uneven (1,2,1)."""
    root = tmp_path_factory.mktemp("layers")
    out = {"2": root / "two", "3": root / "three"}
    write_shards(model_path, out["2"], 2, split="layers")
    write_shards(model_path, out["3"], 3, [1.0, 2.0, 1.0], split="layers")
    return out


@pytest.fixture
def workers():
    w = Workers()
    yield w
    w.stop()


def greedy(engine, steps: int = STEPS) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and the logits of every step (prefill, then one token at a time)."""
    return greedy_steps(engine, IDS, steps)


def shard_files(d: Path) -> list[str]:
    return [str(d / s["file"]) for s in json.loads((d / "manifest.json").read_text())["shards"]]


def coordinator(path: str, where: str, shards: int, **kw) -> edgelut.Model:
    opts = {"insecure": True, "timeout": 3.0, "wait": 30.0, **kw}
    return edgelut.load(
        path, n_threads=1, distributed=DistributedOptions(listen=where, shards=shards, **opts)
    )


# --- planner and files -------------------------------------------------------------------


def test_plan_layers_covers_every_layer_once_by_weight(config):
    for n in range(2, 9):
        plans = plan_layers(config, n)
        spans = [p.layers for p in plans]
        assert spans[0][0] == 0 and spans[-1][1] == config.n_layers
        assert all(a[1] == b[0] and a[0] < a[1] for a, b in zip(spans, spans[1:], strict=False))
        assert [p.lm_head for p in plans] == [True] + [False] * (n - 1)
    # The coordinator's lm_head (a fifth of SmolLM2) counts against its share.
    even = [p.layers[1] - p.layers[0] for p in plan_layers(config, 2)]
    assert even[0] < even[1]
    heavy = [p.layers[1] - p.layers[0] for p in plan_layers(config, 2, [1.0, 3.0])]
    assert heavy[1] > even[1]
    with pytest.raises(ValueError, match="--devices must be in 2..8"):
        plan_layers(config, 9)
    with pytest.raises(ValueError, match="positive weights"):
        plan_layers(config, 2, [1.0, 0.0])


def test_layer_shards_hold_only_their_layers(split_dirs, config):
    manifest, shards = read_manifest(split_dirs["3"])
    assert manifest["split"] == "layers"
    spans = [(s.spec.layer_begin, s.spec.layer_end) for s in shards]
    assert spans[0][0] == 0 and spans[-1][1] == config.n_layers
    for s in shards:
        with read_model_file(s.path, verify_crc=False) as mf:
            layers = {int(n.split(".")[1]) for n in mf.names() if n.startswith("blk.")}
            assert layers == set(range(s.spec.layer_begin, s.spec.layer_end))
            assert ("token_embd.weight" in mf.names()) == (s.rank == 0)
            assert len(mf.layer_ranges) == s.spec.layer_end - s.spec.layer_begin
    # Uneven weights 1,2,1: the middle device holds the most layers.
    sizes = [b - a for a, b in spans]
    assert sizes[1] == max(sizes)


def test_in_process_layer_split_is_bit_identical_to_one_device(split_dirs, single):
    for n in ("2", "3"):
        group = LocalShardGroup(split_dirs[n], n_threads=1)
        logits = [group.eval(IDS, 0)]
        tokens: list[int] = []
        for i in range(STEPS):
            tokens.append(int(np.argmax(logits[-1])))
            logits.append(group.eval(tokens[-1:], len(IDS) + i))
        assert tokens == single[0]
        np.testing.assert_array_equal(np.array(logits), single[1])


def test_layer_shard_alone_or_without_a_group_is_refused(split_dirs, model_path, config):
    worker = shard_files(split_dirs["2"])[1]
    with pytest.raises(ModelFileError, match="shard 2 of 2"):
        _core.Engine.from_file(worker, n_threads=1)
    with pytest.raises(ValueError, match="runs only with a communicator"):
        _core.Engine.from_file(model_path, n_threads=1, shard=_core.ShardSpec(lm_head=False, layer_begin=3))
    cfg = engine_config(config)
    with pytest.raises(ValueError, match="every head, FFN and embedding column"):
        _core.ShardSpec(q_head_end=4, lm_head=False, layer_begin=3).resolved(cfg)
    with pytest.raises(ValueError, match="holds the lm_head, and only it"):
        _core.ShardSpec(layer_begin=3).resolved(cfg)
    with pytest.raises(ValueError, match=r"layers \[3, 99\) must be a non-empty range"):
        _core.ShardSpec(lm_head=False, layer_begin=3, layer_end=99).resolved(cfg)


def test_manifest_with_a_gap_in_the_layers_is_refused(split_dirs, tmp_path):
    import shutil

    d = tmp_path / "mixed"
    shutil.copytree(split_dirs["3"], d)
    m = json.loads((d / "manifest.json").read_text())
    # Rank 2's file of another split (1,1,1) leaves a gap or an overlap.
    write_shards(str(store.resolve(DEFAULT_MODEL)), tmp_path / "even3", 3, split="layers")
    shutil.copy(tmp_path / "even3" / m["shards"][2]["file"], d / m["shards"][2]["file"])
    with pytest.raises(ModelFileError, match="do not cover every layer exactly once"):
        read_manifest(d)


# --- choosing a split ------------------------------------------------------------------


def test_choose_split_by_the_latency_model(config):
    # A slow model on a fast link: heads halve the compute; on a 4 ms link the 61 round trips lose.
    assert choose_split(config, 2, token_s=0.5, rtt_s=0.0002)[0] == "heads"
    split, pred = choose_split(config, 2, token_s=0.05, rtt_s=0.004)
    assert split == "layers"
    assert pred["layers"] == pytest.approx(0.05 + 0.004)
    assert pred["heads"] == pytest.approx(0.025 + 61 * 0.004)
    # Bandwidth: a partial sum crosses the coordinator's link twice per worker per all-reduce.
    slow = predict_token_s(config, "heads", 2, 0.05, 0.0, link_bytes_per_s=12.5e6)
    assert slow == pytest.approx(0.025 + 61 * 2 * 576 * 4 / 12.5e6)


def test_cli_shard_split_layers_and_auto(model_path, tmp_path, capsys):
    assert (
        cli_main(["shard", model_path, "-o", str(tmp_path / "a"), "--devices", "2", "--split", "layers"]) == 0
    )
    out = capsys.readouterr().out
    assert "coordinator layers [0, " in out and "worker      layers [" in out
    argv = ["shard", model_path, "-o", str(tmp_path / "b"), "--devices", "2", "--split", "auto"]
    assert cli_main([*argv, "--rtt-ms", "4", "--token-ms", "50"]) == 0
    assert "by layers: layers" in capsys.readouterr().out
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["split"] == "layers"
    assert cli_main(argv) == 2
    assert "--split auto needs --rtt-ms" in capsys.readouterr().err


# --- over the transport (real processes on loopback) -----------------------------------------


@pytest.mark.parametrize("n", ["2", "3"])
def test_layer_split_over_loopback_equals_one_device(split_dirs, single, workers, n):
    files = shard_files(split_dirs[n])
    where = f"tcp://127.0.0.1:{free_port()}"
    for r in range(1, len(files)):
        workers.start(files[r], where, r, len(files), "--insecure")
    model = coordinator(files[0], where, len(files))
    model.group.reset_stats()
    tokens, logits = greedy(model.engine)
    assert tokens == single[0]
    np.testing.assert_array_equal(logits, single[1])
    stats = model.group.stats()
    # One pass through every worker per forward pass, no all-reduce.
    assert stats["all_reduces"] == 0
    assert stats["hidden_passes"] == (len(files) - 1) * (STEPS + 1)
    model.group.close()


def test_killed_worker_is_named_within_the_timeout(split_dirs, workers):
    files = shard_files(split_dirs["2"])
    where = f"tcp://127.0.0.1:{free_port()}"
    w = workers.start(files[1], where, 1, 2, "--insecure")
    model = coordinator(files[0], where, 2, timeout=2.0)
    greedy(model.engine, 2)
    w.send_signal(signal.SIGKILL)
    w.wait(10)
    t0 = time.monotonic()
    with pytest.raises(ConnectionError, match=r"worker 1 .*(sent no hidden state|unreachable|gone)"):
        model.engine.eval(np.asarray([42], np.int32), len(IDS) + 2)
    assert time.monotonic() - t0 < 2.0 + 3.0
    model.group.close()


def test_worker_with_another_layer_range_is_refused(model_path, split_dirs, tmp_path, workers):
    other = tmp_path / "other"
    write_shards(model_path, other, 2, [1.0, 3.0], split="layers")
    files, wrong = shard_files(split_dirs["2"]), shard_files(other)
    where = f"tcp://127.0.0.1:{free_port()}"
    w = workers.start(wrong[1], where, 1, 2, "--insecure")
    with pytest.raises(ConnectionError, match="did not join"):
        coordinator(files[0], where, 2, wait=6.0)
    code, err = finish(w, 20)
    assert code != 0
    assert "refused by the coordinator" in err and "layers=" in err and "rank 1 must hold" in err
