"""Both ends of a group: the coordinator's engine (rank 0, listening) and a
worker's engine (rank k, dialling out). Over one whole model file each device
holds its even slice of the layers (csrc/engine/shard_slice.h); over shard
files (`edgelut shard`, each device its own file) the split is the files'."""

from __future__ import annotations

import sys
import threading
from typing import Any

from edgelut import _core
from edgelut.distributed.keys import KeyPair, read_allowed_keys, read_keypair, read_public_key
from edgelut.distributed.libzmq import libzmq_path
from edgelut.distributed.options import DistributedOptions

# What every worker must agree on with the coordinator (csrc/net/handshake.h).
MATCHED = ("model", "layers", "format", "prefill_chunk", "n_ctx")


def _keys(opts: DistributedOptions) -> KeyPair:
    return KeyPair("", "") if opts.insecure else read_keypair(opts.key)


def _engine_config(path: str) -> _core.Config:
    from edgelut.model import engine_config
    from edgelut.models.modelfile import read_model_file

    with read_model_file(path, verify_crc=False) as mf:
        return engine_config(mf.config)


def _shard_files(path: str, ranks: int, rank: int) -> list[str] | None:
    """The group's shard files when ``path`` is one (`edgelut shard`; rank ``rank`` of
    ``ranks``), read from its directory's manifest; None for a whole model file."""
    from pathlib import Path

    from edgelut.models.modelfile import read_model_file
    from edgelut.shard_file import read_manifest

    with read_model_file(path, verify_crc=False) as mf:
        world, got = mf.shard.world_size, mf.shard.rank
    if world <= 1:
        return None
    if world != ranks or got != rank:
        raise ValueError(f"{path} is shard {got + 1} of {world}; this device is {rank + 1} of {ranks}")
    _, shards = read_manifest(Path(path).parent)
    return [str(s.path) for s in shards]


def open_coordinator(path: str, opts: DistributedOptions, engine_kw: dict[str, Any]) -> tuple[Any, Any]:
    """The coordinator's engine and its link, once every worker joined (or PeerError)."""
    opts.check()
    n_ctx, chunk = int(engine_kw.get("n_ctx", 2048)), int(engine_kw.get("prefill_chunk", 64))
    cfg = _engine_config(path)
    files = _shard_files(path, opts.shards, 0)
    # Shard files describe themselves; a whole file is split evenly.
    specs = [
        _core.describe_shard(files[r] if files else path, r, opts.shards, None, n_ctx, chunk)
        for r in range(opts.shards)
    ]
    pair = _keys(opts)
    coord = _core.Coordinator(
        libzmq=opts.libzmq or libzmq_path(),
        listen=opts.listen,
        ranks=opts.shards,
        insecure=opts.insecure,
        public_key=pair.public,
        secret_key=pair.secret,
        allowed_keys=set() if opts.insecure else read_allowed_keys(opts.allowed_keys),
        timeout=opts.timeout,
        sync=opts.sync,
        expect={k: specs[0][k] for k in MATCHED},
        rank_specs=[s["spec"] for s in specs],
        max_values=int(specs[0]["max_values"]),
        max_tokens=n_ctx,
    )
    mode = "plain text (--insecure)" if opts.insecure else f"CURVE, key {pair.public}"
    print(
        f"edgelut: coordinator listening on {coord.endpoint} ({mode}); "
        f"waiting for {opts.shards - 1} worker(s)",
        file=sys.stderr,
    )
    shard = None if files else _core.even_shard(cfg, 0, opts.shards)
    engine = _core.Engine.from_file(path, **engine_kw, shard=shard, communicator=coord)
    coord.wait_for_workers(opts.wait)
    return engine, coord


def run_worker(path: str, opts: DistributedOptions, engine_kw: dict[str, Any]) -> str:
    """Serves shard ``opts.rank`` until the coordinator closes the group (returns its
    reason); raises PeerError when it refuses, vanishes or goes silent."""
    opts.check()
    n_ctx, chunk = int(engine_kw.get("n_ctx", 2048)), int(engine_kw.get("prefill_chunk", 64))
    cfg = _engine_config(path)
    files = _shard_files(path, opts.shards, opts.rank)
    pair = _keys(opts)
    link = _core.WorkerLink(
        libzmq=opts.libzmq or libzmq_path(),
        connect=opts.connect,
        insecure=opts.insecure,
        public_key=pair.public,
        secret_key=pair.secret,
        server_key="" if opts.insecure else read_public_key(opts.server_key),
        timeout=opts.timeout,
        join_timeout=opts.wait,
        hello=_core.describe_shard(path, opts.rank, opts.shards, None, n_ctx, chunk),
    )
    shard = None if files else _core.even_shard(cfg, opts.rank, opts.shards)
    engine = _core.Engine.from_file(path, **engine_kw, shard=shard, communicator=link)
    outcome: dict[str, Any] = {}

    def serve() -> None:
        try:
            outcome["reason"] = link.serve(engine)
        except BaseException as e:  # handed to the main thread
            outcome["error"] = e

    # serve() runs in C++ without the GIL; the main thread waits so Ctrl-C still works.
    t = threading.Thread(target=serve, name="edgelut-worker", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        link.stop()
        t.join(5)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return str(outcome.get("reason", ""))
