"""Architecture hyper-parameters and the in-memory form every importer returns.

Tensor names follow GGUF's llama naming (``token_embd.weight``,
``blk.{i}.attn_q.weight``, ...) in every importer's output, so the quantizer,
the model file and the engine share one vocabulary. Weights are float32
(N = output rows, K = input features), in Hugging Face orientation: the Q and
K projections are *not* permuted for adjacent-pair RoPE; the engine applies
RoPE in the NeoX (rotate-half) layout unless ``rope_style`` says otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SUPPORTED_ARCHITECTURES = ("llama", "qwen2")

# Per-layer tensors, in the order the model file stores them.
LAYER_TENSORS = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_q.bias",
    "attn_k.weight",
    "attn_k.bias",
    "attn_v.weight",
    "attn_v.bias",
    "attn_output.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)
# The linear layers (quantised); the rest stay float.
LINEAR_TENSORS = (
    "attn_q.weight",
    "attn_k.weight",
    "attn_v.weight",
    "attn_output.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_down.weight",
)


@dataclass
class ModelConfig:
    """Hyper-parameters of a llama-family decoder (Llama, SmolLM2, Mistral, Qwen2)."""

    architecture: str  # "llama" or "qwen2"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_style: str = "neox"  # "neox" (rotate half) or "adjacent" (interleaved pairs)
    rope_scaling: dict | None = None  # e.g. {"type": "linear", "factor": 2.0}
    context_length: int = 2048
    tie_embeddings: bool = False
    attn_bias: bool = False  # Qwen2 has q/k/v biases
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise ValueError(
                f"unsupported architecture {self.architecture!r}; edgelut supports "
                f"{', '.join(SUPPORTED_ARCHITECTURES)}"
            )
        if self.rope_style not in ("neox", "adjacent"):
            raise ValueError(f"rope_style must be 'neox' or 'adjacent', got {self.rope_style!r}")
        # The same checks the C++ reader makes on a model file (csrc/io/model_file.cc),
        # for configs that come from an importer.
        for name in ("vocab_size", "hidden_size", "intermediate_size", "n_layers", "n_heads", "n_kv_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} has impossible value {getattr(self, name)} (must be positive)")
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"head_dim has impossible value {self.head_dim} (RoPE needs an even head size)")
        if self.context_length < 1:
            raise ValueError(f"context_length has impossible value {self.context_length}")
        if not (math.isfinite(self.rms_norm_eps) and 0 < self.rms_norm_eps < 1):
            raise ValueError(
                f"rms_norm_eps has impossible value {self.rms_norm_eps} (a finite number in (0, 1))"
            )
        if not (math.isfinite(self.rope_theta) and self.rope_theta > 0):
            raise ValueError(f"rope_theta has impossible value {self.rope_theta} (a finite positive number)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads ({self.n_heads}) is not a multiple of n_kv_heads ({self.n_kv_heads})")


@dataclass
class TokenizerData:
    """What is needed to rebuild the tokenizer anywhere.

    ``tokenizer_json`` is a Hugging Face tokenizers JSON document (built from
    GGUF metadata or read from tokenizer.json); ``chat_template`` is Jinja2.
    """

    tokenizer_json: str
    chat_template: str | None = None
    bos_token: str | None = None
    eos_token: str | None = None
    add_bos: bool = False


@dataclass
class ImportedModel:
    """An importer's output: float weights plus config plus tokenizer."""

    config: ModelConfig
    tensors: dict[str, np.ndarray]  # GGUF-style names -> float32 arrays
    tokenizer: TokenizerData
    source: str = ""
    # Source quantisation, when a GGUF tensor was Q4_0/Q4_1: name -> (codes, scales, mins)
    # in edgelut's q4 asymmetric form, so conversion can be lossless.
    source_codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)

    def layer_tensor(self, layer: int, name: str) -> np.ndarray | None:
        return self.tensors.get(f"blk.{layer}.{name}")
