"""Test helpers for the model file and quantiser tests: tiny random models and the real SmolLM2.

``load_smollm2`` reads the SmolLM2 GGUF with gguf.GGUFReader directly (so these tests
do not depend on the importers): Q/K stay in llama.cpp's permuted order, so the
config says rope_style="adjacent", which is the equivalent rotation.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import real_model

from edgelut.models.config import ImportedModel, ModelConfig, TokenizerData

SMOLLM2_GGUF = real_model.smollm2_gguf()
SMOLLM2_WHEEL = real_model.smollm2_wheel()

WORDS = ["the", "a", "of", "and", "to", "in", "is", "it", "that", "was", "for", "on", "with", "as", "by"]


def word_tokenizer_json(vocab_size: int) -> str:
    """A tiny Hugging Face WordLevel tokenizer document (enough to round-trip through the file)."""
    vocab = {"<unk>": 0}
    for i, w in enumerate(WORDS[: vocab_size - 1]):
        vocab[w] = i + 1
    return json.dumps(
        {
            "version": "1.0",
            "truncation": None,
            "padding": None,
            "added_tokens": [],
            "normalizer": None,
            "pre_tokenizer": {"type": "Whitespace"},
            "post_processor": None,
            "decoder": None,
            "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"},
        }
    )


def tiny_model(
    *,
    arch: str = "llama",
    hidden: int = 128,
    inter: int = 192,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    vocab: int = 96,
    tie: bool = False,
    seed: int = 0,
) -> ImportedModel:
    """A small random llama/qwen2 model with every tensor its config implies."""
    rng = np.random.default_rng(seed)
    head_dim = hidden // heads
    cfg = ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=inter,
        n_layers=layers,
        n_heads=heads,
        n_kv_heads=kv_heads,
        head_dim=head_dim,
        tie_embeddings=tie,
        attn_bias=arch == "qwen2",
        bos_token_id=1,
        eos_token_ids=(2, 3),
        name="tiny",
        rope_scaling={"type": "linear", "factor": 2.0} if arch == "qwen2" else None,
    )
    from edgelut.models.modelfile import expected_tensors

    tensors = {}
    for name, shape in expected_tensors(cfg).items():
        if len(shape) == 1:
            base = 1.0 if "norm" in name else 0.0
            tensors[name] = (base + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            tensors[name] = (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)
    tok = TokenizerData(
        word_tokenizer_json(vocab), chat_template="{{ messages }}", bos_token="<s>", eos_token="</s>"
    )
    return ImportedModel(cfg, tensors, tok, source="tiny")


def _q4_1_codes(raw: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Q4_1 blocks (d fp16, m fp16, 16 nibble bytes: low = element j, high = element j+16)."""
    blocks = raw.reshape(n, k // 32, 20)
    d = blocks[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32)
    qs = blocks[..., 4:]
    codes = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).reshape(n, k).astype(np.int8)
    return codes, d, m


@functools.lru_cache(maxsize=2)
def load_smollm2(layers: int | None = None) -> ImportedModel:
    """The real SmolLM2-135M-Instruct as float weights (+ the Q4_1 source codes).

    ``layers`` keeps only the first few blocks (a smaller, faster, still real model).
    """
    import gguf
    from gguf.quants import dequantize

    r = gguf.GGUFReader(SMOLLM2_GGUF)

    def get(key: str):
        return r.fields[key].contents()

    cfg = ModelConfig(
        architecture="llama",
        vocab_size=int(get("llama.vocab_size")),
        hidden_size=int(get("llama.embedding_length")),
        intermediate_size=int(get("llama.feed_forward_length")),
        n_layers=int(get("llama.block_count")) if layers is None else layers,
        n_heads=int(get("llama.attention.head_count")),
        n_kv_heads=int(get("llama.attention.head_count_kv")),
        head_dim=int(get("llama.embedding_length")) // int(get("llama.attention.head_count")),
        rms_norm_eps=float(get("llama.attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("llama.rope.freq_base")),
        rope_style="adjacent",
        context_length=int(get("llama.context_length")),
        tie_embeddings=True,
        bos_token_id=int(get("tokenizer.ggml.bos_token_id")),
        eos_token_ids=(int(get("tokenizer.ggml.eos_token_id")),),
        name="SmolLM2-135M-Instruct",
    )
    tensors: dict[str, np.ndarray] = {}
    source_codes = {}
    for t in r.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= cfg.n_layers:
            continue
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        w = dequantize(t.data, t.tensor_type).reshape(shape)
        tensors[t.name] = np.ascontiguousarray(w, dtype=np.float32)
        if t.tensor_type == gguf.GGMLQuantizationType.Q4_1:
            source_codes[t.name] = _q4_1_codes(np.asarray(t.data), *shape)
    tokens = get("tokenizer.ggml.tokens")
    tok = TokenizerData(json.dumps({"tokens": tokens[:10]}), chat_template=get("tokenizer.chat_template"))
    model = ImportedModel(cfg, tensors, tok, source=str(SMOLLM2_GGUF), source_codes=source_codes)
    model.vocab = tokens  # type: ignore[attr-defined]  # for word_ids below
    return model


CALIB_TEXT = (
    "The history of the city begins with a small village on the bank of the river. Over the "
    "centuries, traders and farmers settled there, and the village grew into a market town. "
    "In the morning the market was full of people selling bread, fish and vegetables, and "
    "children ran between the stalls. Today the old bridge still stands, and visitors come from "
    "all over the world to see the cathedral, the museum and the gardens near the water. "
    "Scientists study how plants grow in different kinds of soil and how animals find food in "
    "winter. A good teacher explains a difficult idea with a simple example, and then asks the "
    "students to try it themselves."
)


def word_ids(model: ImportedModel, text: str = CALIB_TEXT, repeat: int = 2) -> np.ndarray:
    """Crude tokenisation by whole words in the GPT-2 style vocabulary (real-ish token ids)."""
    index = {t: i for i, t in enumerate(model.vocab)}  # type: ignore[attr-defined]
    ids = []
    for word in text.split() * repeat:
        for cand in ("\u0120" + word, word, "\u0120" + word.strip(".,"), word.strip(".,")):
            if cand in index:
                ids.append(index[cand])
                break
    return np.asarray(ids, dtype=np.int64)
