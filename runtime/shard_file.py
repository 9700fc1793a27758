"""Per-device shard files: writing them (``edgelut shard``) and opening one (a worker, the coordinator).

A shard file is an ordinary edgelut model file (docs/FORMAT.md) holding the
whole model's config and only one device's slice of every layer: its q heads
and the kv heads they read (rows of attn_q/k/v, columns of attn_output) and its
FFN columns (rows of ffn_gate/up, columns of ffn_down). The packed weights are
cut from the quantised model, not re-quantised, so N shards compute exactly
what the whole file does. Every shard keeps the norms and a range of the
token embeddings' columns (each device embeds its part of the token, one
all-reduce joins the row, so only token ids travel); only the coordinator's
shard (rank 0) keeps the lm_head (for tied embeddings: the whole table) and
the tokenizer.
``edgelut.shard.*`` keys record rank, world size, the ranges, whether the
lm_head is held and the sha256 of the whole model file, which the transport
compares at its handshake. A directory of shards has a manifest.json.

A layer split (``--split layers``) instead gives each device whole layers of
one range (``edgelut.shard.layers``); only the coordinator's file holds the
embeddings, final norm, lm_head and tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelut import _core
from edgelut.kernels import PackedMatrix, pack
from edgelut.model import shard_slices
from edgelut.models.config import ModelConfig, TokenizerData
from edgelut.models.gguf_file import ModelFileError
from edgelut.models.modelfile import ModelFile, ShardSpec, read_model_file, write_model_file
from edgelut.sharding import SPLITS, ShardPlan, plan_layers, plan_shards

__all__ = [
    "MANIFEST",
    "ShardInfo",
    "model_hash",
    "open_shard",
    "read_manifest",
    "shard_paths",
    "slice_packed",
    "write_shards",
]

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "edgelut-shards"
MANIFEST_VERSION = 1


def model_hash(path: str | os.PathLike[str]) -> str:
    """sha256 of a model file, read in 8 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
    return h.hexdigest()


def slice_packed(pm: PackedMatrix, rows: slice | None = None, cols: slice | None = None) -> PackedMatrix:
    """Rows and/or whole-group columns of a packed matrix, with the same codes, scales and mins."""
    codes, scales, mins = pm.unpack()
    g = pm.group_size
    if cols is not None:
        if cols.start % g or (cols.stop % g and cols.stop != pm.k):
            raise ValueError(f"columns [{cols.start}, {cols.stop}) do not split on groups of {g}")
        codes = codes[:, cols]
        gcols = slice(cols.start // g, -(-cols.stop // g))
        scales = scales[:, gcols]
        mins = None if mins is None else mins[:, gcols]
    if rows is not None:
        codes, scales = codes[rows], scales[rows]
        mins = None if mins is None else mins[rows]
    return pack(np.ascontiguousarray(codes), scales, None if mins is None else mins, pm.qtype, g)


def _layer_tensors(mf: ModelFile, plan: ShardPlan) -> dict[str, Any]:
    """A layer split's tensors: whole layers of its range; the coordinator also the
    embeddings, the final norm and the lm_head (nothing is sliced)."""
    assert plan.layers is not None
    first, end = plan.layers
    out: dict[str, Any] = {}
    for name in mf.names():
        if name.startswith("blk."):
            if first <= int(name.split(".")[1]) < end:
                out[name] = mf.tensor(name)
        elif plan.lm_head:
            out[name] = mf.tensor(name)
    return out


def _shard_tensors(mf: ModelFile, plan: ShardPlan) -> dict[str, Any]:
    if plan.layers is not None:
        return _layer_tensors(mf, plan)
    rows, cols = shard_slices(mf.config.head_dim, plan.q_heads, plan.kv_heads, plan.ffn)
    out: dict[str, Any] = {}
    for name in mf.names():
        if name == "output.weight" and not plan.lm_head:
            continue
        t = mf.tensor(name)
        if name == "token_embd.weight" and not (plan.lm_head and "output.weight" not in mf.entries):
            # Its embedding columns only; the coordinator of a tied model keeps the table as its lm_head.
            part = slice(*plan.embd)
            t = (
                slice_packed(t, cols=part)
                if isinstance(t, PackedMatrix)
                else np.ascontiguousarray(t[:, part])
            )
        suffix = name.split(".", 2)[2] if name.startswith("blk.") else ""
        if isinstance(t, PackedMatrix):
            if suffix in rows:
                t = slice_packed(t, rows=rows[suffix])
            elif suffix in cols:
                t = slice_packed(t, cols=cols[suffix])
        elif suffix in rows:
            t = np.ascontiguousarray(t[rows[suffix]])
        out[name] = t
    return out


def _group_size(mf: ModelFile) -> int:
    """The largest quantisation group of the linear layers (splits must respect every one)."""
    return max(
        (e.group_size for e in mf.entries.values() if e.packed and e.name.startswith("blk.")), default=32
    )


def shard_paths(directory: str | os.PathLike[str], n: int) -> list[Path]:
    return [Path(directory) / f"shard-{r}-of-{n}.elut" for r in range(n)]


def write_shards(
    model_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    n_devices: int,
    weights: list[float] | None = None,
    split: str = "heads",
) -> dict[str, Any]:
    """Cuts a model file into n_devices shard files in out_dir plus its manifest; returns the manifest.

    ``split`` "heads": every device a slice of every layer (tensor parallel);
    "layers": every device a contiguous range of whole layers (a pipeline)."""
    if split not in SPLITS:
        raise ValueError(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    out = Path(out_dir)
    with read_model_file(model_path) as mf:
        if mf.shard.world_size > 1:
            raise ModelFileError(
                f"{model_path}: is already shard {mf.shard.rank + 1} of {mf.shard.world_size}"
            )
        if split == "layers":
            in_layers = sum(e.nbytes for e in mf.entries.values() if e.name.startswith("blk."))
            outside = sum(e.nbytes for e in mf.entries.values() if not e.name.startswith("blk."))
            plans = plan_layers(
                mf.config, n_devices, weights, sizes=(in_layers / mf.config.n_layers, outside)
            )
        else:
            plans = plan_shards(mf.config, n_devices, weights, group_size=_group_size(mf))
        digest = model_hash(model_path)
        out.mkdir(parents=True, exist_ok=True)
        float_type = "f16" if any(e.qtype == "f16" for e in mf.entries.values()) else "f32"
        entries = []
        for plan, path in zip(plans, shard_paths(out, n_devices), strict=True):
            spec = ShardSpec(
                plan.rank,
                n_devices,
                list(range(*plan.q_heads)),
                list(range(*plan.kv_heads)),
                [plan.ffn],
                plan.lm_head,
                digest,
                None if plan.layers is not None else plan.embd,
                plan.layers,
            )
            tok = mf.tokenizer if plan.lm_head else TokenizerData(tokenizer_json="")
            recipe = dict(mf.recipe, shard_of=Path(model_path).name)
            tmp = path.with_name(path.name + ".part")
            write_model_file(
                tmp,
                mf.config,
                tok,
                _shard_tensors(mf, plan),
                recipe=recipe,
                shard=spec,
                float_type=float_type,
            )
            tmp.replace(path)
            entries.append(
                {
                    "file": path.name,
                    "rank": plan.rank,
                    "q_heads": list(plan.q_heads),
                    "kv_heads": list(plan.kv_heads),
                    "ffn_columns": list(plan.ffn),
                    "lm_head": plan.lm_head,
                    "embd_columns": list(plan.embd),
                    "layers": list(plan.layers or (0, mf.config.n_layers)),
                    "bytes": path.stat().st_size,
                }
            )
        manifest = {
            "format": MANIFEST_FORMAT,
            "version": MANIFEST_VERSION,
            "model": mf.config.name or Path(model_path).stem,
            "source": Path(model_path).name,
            "source_bytes": Path(model_path).stat().st_size,
            "model_hash": digest,
            "n_layers": mf.config.n_layers,
            "world_size": n_devices,
            "split": split,
            "weights": list(weights) if weights else [1.0] * n_devices,
            "shards": entries,
        }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


@dataclass
class ShardInfo:
    """What a loader needs to know about one shard file before building its engine."""

    path: Path
    config: ModelConfig
    spec: _core.ShardSpec  # resolved: q and kv head ranges, FFN columns, lm_head
    rank: int
    world_size: int
    model_hash: str
    n_layers: int
    format_version: int
    tokenizer: TokenizerData

    def engine(self, communicator: _core.Communicator, **engine_kw: Any) -> _core.Engine:
        """The engine of this shard; ``engine_kw`` as ``_core.Engine.from_file`` (n_ctx, window, ...)."""
        return _core.Engine.from_file(str(self.path), communicator=communicator, **engine_kw)


def open_shard(
    path: str | os.PathLike[str], *, expect_hash: str | None = None, expect_rank: int | None = None
) -> ShardInfo:
    """Reads and checks a shard file's header (CRCs are checked when its engine opens it).

    Raises ModelFileError (one line, naming the file) for a corrupt file, a
    whole model or a shard of another model / at another rank than expected.
    """
    from edgelut.model import engine_config

    with read_model_file(path, verify_crc=False) as mf:
        s = mf.shard
        if s.world_size <= 1:
            raise ModelFileError(f"{path}: is a whole model, not a shard (cut one with `edgelut shard`)")
        if not s.model_hash:
            raise ModelFileError(f"{path}: shard without 'edgelut.shard.model_hash'")
        if expect_hash is not None and s.model_hash != expect_hash:
            raise ModelFileError(
                f"{path}: is a shard of model {s.model_hash[:12]}, "
                f"expected {expect_hash[:12]} (a different model)"
            )
        if expect_rank is not None and s.rank != expect_rank:
            raise ModelFileError(
                f"{path}: is shard {s.rank + 1} of {s.world_size}, expected {expect_rank + 1}"
            )
        if not s.heads or len(s.ffn_columns) != 1:
            raise ModelFileError(f"{path}: shard keys do not give one q-head range and one FFN range")
        embd = s.embd_columns or (0, -1)
        span = s.layers or (0, -1)
        spec = _core.ShardSpec(
            s.heads[0],
            s.heads[-1] + 1,
            s.ffn_columns[0][0],
            s.ffn_columns[0][1],
            s.lm_head,
            embd[0],
            embd[1],
            span[0],
            span[1],
        )
        try:
            spec = spec.resolved(engine_config(mf.config))
        except ValueError as e:
            raise ModelFileError(f"{path}: {e}") from None
        if s.heads != list(range(spec.q_head_begin, spec.q_head_end)) or s.kv_heads != list(
            range(spec.kv_head_begin, spec.kv_head_end)
        ):
            raise ModelFileError(f"{path}: shard heads are not one contiguous q-head range with its kv heads")
        return ShardInfo(
            Path(path),
            mf.config,
            spec,
            s.rank,
            s.world_size,
            s.model_hash,
            mf.config.n_layers,
            mf.format_version,
            mf.tokenizer,
        )


def read_manifest(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], list[ShardInfo]]:
    """The manifest of a shard directory and every shard, checked to be one whole model between them."""
    d = Path(directory)
    try:
        manifest = json.loads((d / MANIFEST).read_text())
    except FileNotFoundError:
        raise ModelFileError(f"{d}: no {MANIFEST} (not a directory written by `edgelut shard`)") from None
    except ValueError as e:
        raise ModelFileError(f"{d / MANIFEST}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise ModelFileError(f"{d / MANIFEST}: not an edgelut shard manifest")
    if manifest.get("version") != MANIFEST_VERSION:
        raise ModelFileError(f"{d / MANIFEST}: manifest version {manifest.get('version')} is not supported")
    try:
        world, digest = int(manifest["world_size"]), str(manifest["model_hash"])
        files = [str(e["file"]) for e in manifest["shards"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ModelFileError(f"{d / MANIFEST}: malformed manifest ({e})") from None
    if len(files) != world:
        raise ModelFileError(f"{d / MANIFEST}: lists {len(files)} shards for a world size of {world}")
    shards = [open_shard(d / f, expect_hash=digest, expect_rank=r) for r, f in enumerate(files)]
    if any(s.spec.layer_begin != 0 or s.spec.layer_end != s.n_layers for s in shards):
        _check_layer_cover(d, shards)
        return manifest, shards
    covered_heads = [s.spec.q_head_begin for s in shards] + [shards[-1].spec.q_head_end]
    covered_ffn = [s.spec.ffn_begin for s in shards] + [shards[-1].spec.ffn_end]
    ok_embd = all(a.spec.embd_end == b.spec.embd_begin for a, b in zip(shards, shards[1:], strict=False))
    ok_embd = (
        ok_embd
        and shards[0].spec.embd_begin == 0
        and shards[-1].spec.embd_end == shards[0].config.hidden_size
    )
    ok = all(s.world_size == world for s in shards)
    ok = ok and all(
        a.spec.q_head_end == b.spec.q_head_begin for a, b in zip(shards, shards[1:], strict=False)
    )
    ok = ok and all(a.spec.ffn_end == b.spec.ffn_begin for a, b in zip(shards, shards[1:], strict=False))
    cfg = shards[0].config
    ok = ok and covered_heads[0] == 0 and covered_heads[-1] == cfg.n_heads
    ok = ok and covered_ffn[0] == 0 and covered_ffn[-1] == cfg.intermediate_size
    if not ok or not ok_embd:
        raise ModelFileError(
            f"{d}: the shards do not split every q head, FFN and embedding column exactly once"
        )
    if not shards[0].spec.lm_head:
        raise ModelFileError(f"{d}: shard 1 (the coordinator's) has no lm_head")
    return manifest, shards


def _check_layer_cover(d: Path, shards: list[ShardInfo]) -> None:
    """A layer split's shards hold every layer exactly once, in rank order, the lm_head on rank 0."""
    spans = [(s.spec.layer_begin, s.spec.layer_end) for s in shards]
    ok = spans[0][0] == 0 and spans[-1][1] == shards[0].n_layers
    ok = ok and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    if not ok:
        raise ModelFileError(
            f"{d}: the shards' layer ranges {spans} do not cover every layer exactly once, in order"
        )
    if not shards[0].spec.lm_head:
        raise ModelFileError(f"{d}: shard 1 (the coordinator's) has no lm_head")
