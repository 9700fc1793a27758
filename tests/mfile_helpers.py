"""Test helpers for the model file and quantiser tests: tiny random models and the real SmolLM2.

``load_smollm2`` is the GGUF importer (models/importers/gguf.py) on the real file,
optionally cut to its first few layers.
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


@functools.lru_cache(maxsize=2)
def load_smollm2(layers: int | None = None) -> ImportedModel:
    """The real SmolLM2-135M-Instruct as float weights (+ the Q4_1 source codes), via the importer.

    ``layers`` keeps only the first few blocks (a smaller, faster, still real model).
    """
    from edgelut.models.importers.gguf import load_gguf

    return load_gguf(SMOLLM2_GGUF, layers=layers)


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
    """Real token ids of ``text`` (repeated) with the model's own tokenizer."""
    from edgelut.tokenizer import Tokenizer

    ids = Tokenizer(model.tokenizer).encode(" ".join([text] * repeat), add_special=False)
    return np.asarray(ids, dtype=np.int64)
