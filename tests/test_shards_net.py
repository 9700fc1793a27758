"""Shard files (`edgelut shard`) over the ZeroMQ transport between network namespaces.

The coordinator and each worker run in their own namespace of a NetLab
(tools/netlab.py: veth bridge, and a user-space relay for link delay, since
this kernel has no sch_netem for `tc netem`); each device opens only its own
shard file. Needs root (ip netns); skipped without it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import real_model

import edgelut
from edgelut.shard_file import write_shards

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import netlab  # noqa: E402

pytestmark = pytest.mark.skipif(netlab.available() is not None, reason=str(netlab.available()))

IDS = [1, 9690, 42, 253, 3458, 282, 4649, 314, 30, 2]
STEPS = 8
PORT = 5555

# The coordinator: its shard file, workers dial in; prints the greedy tokens.
COORDINATOR = r"""
import json, sys, numpy as np, edgelut
from edgelut.distributed import DistributedOptions
path, listen, n, steps = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
ids = json.loads(sys.argv[5])
opts = DistributedOptions(listen=listen, shards=n, insecure=True, timeout=10.0, wait=60.0)
m = edgelut.load(path, n_threads=1, distributed=opts)
e = m.engine
logits, toks = e.eval(np.asarray(ids, np.int32), 0), []
for i in range(steps):
    toks.append(int(np.argmax(logits)))
    logits = e.eval(np.asarray(toks[-1:], np.int32), len(ids) + i)
stats = m.group.stats()
print(json.dumps({"tokens": toks, "stats": {k: stats[k] for k in ("all_reduces", "hidden_passes")}}))
m.group.close()
"""


@pytest.fixture(scope="module")
def smol():
    path = real_model.q4_file("smollm2-135m-instruct", real_model.smollm2_gguf())
    e = edgelut.load(str(path), n_threads=1).engine
    logits, toks = e.eval(np.asarray(IDS, np.int32), 0), []
    for i in range(STEPS):
        toks.append(int(np.argmax(logits)))
        logits = e.eval(np.asarray(toks[-1:], np.int32), len(IDS) + i)
    return path, toks


def run_group(lab: netlab.NetLab, shard_dir: Path, n: int, delay_ms: float, worker_extra=()) -> dict:
    files = sorted(shard_dir.glob("shard-*.elut"))
    listen = f"tcp://{lab.addr(0)}:{PORT}"
    argv = [sys.executable, "-c", COORDINATOR, str(files[0]), listen, str(n), str(STEPS), json.dumps(IDS)]
    coord = lab.popen(0, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab.wait_port(1, (lab.addr(0), PORT))
    workers = []
    for r in range(1, n):
        relay = lab.relay(r, (lab.addr(0), PORT), delay_ms)
        cmd = [
            sys.executable,
            "-m",
            "edgelut.cli",
            "worker",
            str(files[r]),
            "--connect",
            f"tcp://127.0.0.1:{relay}",
        ]
        cmd += ["--rank", str(r), "--shards", str(n), "-t", "1", "--insecure", *worker_extra]
        workers.append(lab.popen(r, cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    out, err = coord.communicate(timeout=240)
    assert coord.returncode == 0, err[-2000:]
    for w in workers:
        _, werr = w.communicate(timeout=30)
        assert w.returncode == 0, werr[-2000:]
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize(("n", "weights"), [(2, [1, 2]), (3, [2, 1, 1])])
def test_uneven_shard_files_across_namespaces_equal_one_device(smol, tmp_path, n, weights):
    path, want = smol
    write_shards(path, tmp_path / "s", n, weights)
    with netlab.NetLab(n) as lab:
        got = run_group(lab, tmp_path / "s", n, delay_ms=0.5)
    assert got["tokens"] == want
    # Two all-reduces per layer and one for the split embeddings, per forward pass.
    assert got["stats"] == {"all_reduces": (2 * 30 + 1) * (STEPS + 1), "hidden_passes": 0}


def test_paged_worker_below_half_the_model(smol, tmp_path):
    path, want = smol
    write_shards(path, tmp_path / "s", 2)
    budget = int(0.45 * path.stat().st_size)
    with netlab.NetLab(2, rate_mbit=100) as lab:
        got = run_group(lab, tmp_path / "s", 2, delay_ms=0.0, worker_extra=["--memory-budget", str(budget)])
    assert got["tokens"] == want


def test_paged_layer_split_across_namespaces_at_2ms(smol, tmp_path):
    """A layer split (`--split layers`) over a 2 ms link: the worker pages its layer range
    (25 of 30 layers, 53 MB) under a budget below its file's size, and the tokens are the
    one device's. (Its 25 layers' KV cache at n_ctx 2048 is 39 MB of the budget.)"""
    path, want = smol
    write_shards(path, tmp_path / "s", 2, [1, 2], split="layers")
    worker_file = tmp_path / "s" / "shard-1-of-2.elut"
    budget = int(0.6 * path.stat().st_size)
    assert budget < worker_file.stat().st_size
    with netlab.NetLab(2) as lab:
        got = run_group(lab, tmp_path / "s", 2, delay_ms=2.0, worker_extra=["--memory-budget", str(budget)])
    assert got["tokens"] == want
    # No all-reduce: one pass of the hidden state through the worker per forward pass.
    assert got["stats"] == {"all_reduces": 0, "hidden_passes": STEPS + 1}
