"""The C ABI's worker entry point (edgelut_worker_run): a C program serves as a
device of a group a Python coordinator leads, on the real SmolLM2."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from tp_helpers import finish, free_port

import edgelut
from edgelut import capi, store
from edgelut.distributed import DistributedOptions
from edgelut.distributed.keys import generate_keypair
from edgelut.distributed.libzmq import libzmq_path
from edgelut.registry import DEFAULT_MODEL
from edgelut.shard_file import write_shards

SOURCE = Path(__file__).parent / "cpp" / "capi_worker.c"
IDS = [1, 9690, 42, 253, 3458, 282, 4649, 314, 30, 2]


@pytest.fixture(scope="module")
def worker_exe(tmp_path_factory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (cc) to build the C ABI worker test program")
    lib = capi.library_path()
    out = tmp_path_factory.mktemp("capi") / "capi_worker"
    cmd = [cc, "-std=c99", "-Wall", "-Werror", f"-I{capi.include_dir()}", str(SOURCE), str(lib)]
    subprocess.run([*cmd, f"-Wl,-rpath,{lib.parent}", "-o", str(out)], check=True)
    return out


@pytest.fixture(scope="module")
def model_path() -> str:
    return str(store.resolve(DEFAULT_MODEL))


def greedy(engine, steps: int = 6) -> list[int]:
    engine.reset()
    logits = engine.eval(np.asarray(IDS, np.int32), 0)
    tokens: list[int] = []
    for i in range(steps):
        tokens.append(int(np.argmax(logits)))
        logits = engine.eval(np.asarray(tokens[-1:], np.int32), len(IDS) + i)
    return tokens


@pytest.mark.parametrize("split", ["whole", "layers"])
def test_c_worker_serves_a_python_coordinator(worker_exe, model_path, tmp_path, split):
    """The whole file sliced at load, or a layer split's shard files (CURVE both)."""
    coord_file = worker_file = model_path
    if split == "layers":
        write_shards(model_path, tmp_path / "s", 2, split="layers")
        coord_file, worker_file = (str(tmp_path / "s" / f"shard-{r}-of-2.elut") for r in (0, 1))
    where = f"tcp://127.0.0.1:{free_port()}"
    coord, worker = generate_keypair(), generate_keypair()
    (tmp_path / "coord.key").write_text(f"public-key = {coord.public}\nsecret-key = {coord.secret}\n")
    (tmp_path / "allowed").write_text(worker.public + "\n")
    args = [worker_file, where, "1", "2", libzmq_path(), worker.public, worker.secret, coord.public]
    p = subprocess.Popen([str(worker_exe), *args], stderr=subprocess.PIPE, text=True)
    try:
        opts = DistributedOptions(
            listen=where,
            shards=2,
            key=str(tmp_path / "coord.key"),
            allowed_keys=str(tmp_path / "allowed"),
            wait=20,
        )
        model = edgelut.load(coord_file, n_threads=1, distributed=opts)
        assert greedy(model.engine) == greedy(edgelut.load(model_path, n_threads=1).engine)
        model.group.close()
        code, err = finish(p, 10)
        assert code == 0 and "EDGELUT_OK" in err
    finally:
        p.kill()
        p.communicate()


def test_c_worker_reports_refusal_and_bad_arguments(worker_exe, model_path, tmp_path):
    where = f"tcp://127.0.0.1:{free_port()}"
    p = subprocess.Popen(
        [str(worker_exe), model_path, where, "2", "2", libzmq_path()], stderr=subprocess.PIPE, text=True
    )
    code, err = finish(p, 10)
    assert code == 1 and "EDGELUT_ERR_INVALID_ARGUMENT: rank 2 must be 1..1 of 2 devices" in err
    p = subprocess.Popen(
        [str(worker_exe), model_path, where, "1", "2", "/nonexistent/libzmq.so"],
        stderr=subprocess.PIPE,
        text=True,
    )
    code, err = finish(p, 10)
    assert code == 10 and "cannot load libzmq '/nonexistent/libzmq.so'" in err
    # A coordinator of two devices refuses a worker that thinks the group has three.
    p = subprocess.Popen(
        [str(worker_exe), model_path, where, "1", "3", libzmq_path()], stderr=subprocess.PIPE, text=True
    )
    opts = DistributedOptions(listen=where, shards=2, insecure=True, wait=4)
    with pytest.raises(ConnectionError, match="did not join"):
        edgelut.load(model_path, n_threads=1, distributed=opts)
    code, err = finish(p, 15)
    assert code == 10 and "refused by the coordinator: it is one of 3 shards, this group has 2 devices" in err
