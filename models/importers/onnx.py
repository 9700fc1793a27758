"""ONNX importer for decoders exported in optimum's layout.

optimum (torch.onnx underneath) writes ``model.onnx`` next to config.json and
the tokenizer files. Weights are initializers: most keep their HF names
(``model.layers.0.input_layernorm.weight``), but linear weights often become
anonymous ``onnx::MatMul_123`` tensors holding W^T. Those are recovered from the
graph: the MatMul node that reads them is named after the module
(``/model/layers.0/self_attn/q_proj/MatMul``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgelut.models.config import ARCHITECTURES, ImportedModel
from edgelut.models.importers import Importer, register_importer
from edgelut.models.importers.huggingface import (
    arch_of,
    check_tensors,
    config_from_hf,
    expected_shapes,
    hf_to_gguf_name,
    read_json,
    tokenizer_from_dir,
)

# Graph ops that mean the weights are already quantised by ONNX tooling.
_QUANTISED_OPS = {"MatMulNBits", "MatMulInteger", "DequantizeLinear", "QLinearMatMul", "GatherBlockQuantized"}


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError as e:
        raise RuntimeError("importing ONNX models needs the `onnx` package; pip install edgelut[onnx]") from e
    return onnx


def module_param_from_node(node_name: str) -> str | None:
    """'/model/layers.0/self_attn/q_proj/MatMul' -> 'model.layers.0.self_attn.q_proj.weight'."""
    parts = [p for p in node_name.split("/") if p]
    if len(parts) < 2:
        return None
    return ".".join(parts[:-1]) + ".weight"


def find_onnx_file(path: Path) -> Path:
    if path.is_file():
        return path
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx"):
        if (path / name).is_file():
            return path / name
    found = sorted(path.glob("*.onnx"))
    if len(found) != 1:
        raise ValueError(f"{path}: expected one .onnx file (or model.onnx), found {len(found)}")
    return found[0]


def weights_from_graph(graph: Any, onnx_path: Path, arch: str = "llama") -> dict[str, np.ndarray]:
    """GGUF-named float32 arrays from a graph's initializers (orientation not yet checked).

    Gemma's ``(1 + w)`` norms are folded as the HF importer does.
    """
    from onnx import numpy_helper

    inits = {t.name: t for t in graph.initializer}
    out: dict[str, np.ndarray] = {}
    for name, t in inits.items():
        gg = hf_to_gguf_name(name, arch)
        if gg is not None:
            out[gg] = numpy_helper.to_array(t).astype(np.float32)
    # Anonymous linear weights: name them after the MatMul/Gemm node that reads them.
    for node in graph.node:
        if node.op_type in _QUANTISED_OPS:
            raise ValueError(
                f"{onnx_path}: the graph is already quantised ({node.op_type}); export a float model"
            )
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        if hf_to_gguf_name(node.input[1], arch) is not None:
            continue  # named; taken above
        param = module_param_from_node(node.name)
        gg = hf_to_gguf_name(param, arch) if param else None
        if gg is None or gg in out:
            continue
        w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
        trans_b = any(a.name == "transB" and a.i for a in node.attribute)
        # MatMul computes x @ B, so B is W^T (K, N); Gemm with transB=1 stores W (N, K).
        out[gg] = w if trans_b else w.T
    if ARCHITECTURES[arch].norm_plus_one:
        out = {k: v + np.float32(1.0) if k.endswith("norm.weight") else v for k, v in out.items()}
    return out


def orient(tensors: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]]) -> None:
    """Transpose named 2-D weights that were stored as W^T (square ones are trusted as named)."""
    for name, arr in tensors.items():
        want = shapes.get(name)
        if want and arr.ndim == 2 and tuple(arr.shape) != want and tuple(arr.shape[::-1]) == want:
            tensors[name] = arr.T
    for name in tensors:
        tensors[name] = np.ascontiguousarray(tensors[name], dtype=np.float32)


@register_importer("onnx")
class ONNXImporter(Importer):
    @classmethod
    def can_load(cls, path: Path) -> bool:
        if path.is_file():
            return path.suffix.lower() == ".onnx"
        return path.is_dir() and any(path.glob("*.onnx")) and (path / "config.json").is_file()

    def load(self, path: Path) -> ImportedModel:
        onnx = _require_onnx()
        onnx_path = find_onnx_file(path)
        directory = onnx_path.parent
        cfg_path = directory / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{onnx_path}: no config.json beside it (optimum exports write one)")
        try:
            proto = onnx.load(str(onnx_path), load_external_data=True)
        except Exception as e:  # protobuf and onnx raise assorted types on bad bytes
            raise ValueError(f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
        cfg_json = read_json(cfg_path)
        tensors = weights_from_graph(proto.graph, onnx_path, arch_of(cfg_json, onnx_path))
        if "token_embd.weight" not in tensors:
            raise ValueError(
                f"{onnx_path}: no model.embed_tokens.weight initializer; export with parameter names"
            )
        # A tied lm_head is often exported as its own (transposed) copy of the embedding.
        head, emb = tensors.get("output.weight"), tensors["token_embd.weight"]
        if head is not None and (np.array_equal(head, emb) or np.array_equal(head.T, emb)):
            del tensors["output.weight"]
        config = config_from_hf(
            cfg_json,
            onnx_path,
            tied="output.weight" not in tensors,
            bias="blk.0.attn_q.bias" in tensors,
        )
        orient(tensors, expected_shapes(config))
        missing = [n for n in expected_shapes(config) if n not in tensors]
        if missing:
            raise ValueError(
                f"{onnx_path}: cannot locate weight {missing[0]} (and {len(missing) - 1} more); the export "
                f"must keep parameter names or module-named MatMul nodes (as optimum's export does)"
            )
        check_tensors(tensors, config, onnx_path)
        return ImportedModel(
            config=config, tensors=tensors, tokenizer=tokenizer_from_dir(directory), source=str(onnx_path)
        )
