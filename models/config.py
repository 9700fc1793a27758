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
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ArchTraits:
    """What sets one family apart from the llama decoder: one row per architecture.

    The engine runs one forward pass; these become switches in ModelConfig
    (and in the model file), never a second copy of the pass.
    """

    hf_model_types: tuple[str, ...]  # config.json model_type values that map here
    attn_bias: bool = False  # q/k/v biases (Qwen2)
    qk_norm: bool = False  # RMSNorm over each q and k head before RoPE (Qwen3, Gemma 3)
    post_norms: bool = False  # RMSNorm of the attention and FFN outputs before each residual (Gemma 3)
    ffn_act: str = "silu"  # gate activation: "silu" (SwiGLU) or "gelu_tanh" (GeGLU)
    embed_scale_sqrt: bool = False  # token embeddings times sqrt(hidden) (Gemma)
    norm_plus_one: bool = False  # HF stores w of x * (1 + w); importers fold the 1 in (Gemma)
    gguf_permuted_qk: bool = False  # llama.cpp permuted q/k rows for adjacent-pair RoPE
    fused_qkv: bool = False  # q/k/v (and gate/up) come as one tensor each; importers split them (Phi-3)
    sub_norms: bool = False  # RMSNorm of the attention output before o_proj, of gate*up before down (BitNet)
    act_int8: bool = False  # linear inputs rounded to int8 per token, absmax scale (BitNet b1.58)


ARCHITECTURES: dict[str, ArchTraits] = {
    "llama": ArchTraits(("llama", "mistral"), gguf_permuted_qk=True),
    "qwen2": ArchTraits(("qwen2",), attn_bias=True),
    "qwen3": ArchTraits(("qwen3",), qk_norm=True),
    "phi3": ArchTraits(("phi3",), fused_qkv=True),
    "gemma3": ArchTraits(
        ("gemma3_text", "gemma3"),
        qk_norm=True,
        post_norms=True,
        ffn_act="gelu_tanh",
        embed_scale_sqrt=True,
        norm_plus_one=True,
    ),
    # BitNet b1.58: ternary weights with absmean scales, int8 activations, sub-norms; the
    # 2B-4T release gates with ReLU^2 (hidden_act "relu2"), the 1bitLLM ones with SiLU.
    "bitnet": ArchTraits(("bitnet",), ffn_act="relu2", sub_norms=True, act_int8=True),
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES)
FFN_ACTIVATIONS = ("silu", "gelu_tanh", "relu2")

# Per-layer tensors, in the order the model file stores them.
LAYER_TENSORS = (
    "attn_norm.weight",
    "attn_q.weight",
    "attn_q.bias",
    "attn_k.weight",
    "attn_k.bias",
    "attn_v.weight",
    "attn_v.bias",
    "attn_q_norm.weight",
    "attn_k_norm.weight",
    "attn_sub_norm.weight",
    "attn_output.weight",
    "post_attention_norm.weight",
    "ffn_norm.weight",
    "ffn_gate.weight",
    "ffn_up.weight",
    "ffn_sub_norm.weight",
    "ffn_down.weight",
    "post_ffw_norm.weight",
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
    """Hyper-parameters of a llama-family decoder (Llama, SmolLM2, Mistral, Qwen2/3, Gemma 3).

    The per-family switches (``qk_norm`` ... ``ffn_act``) default to the
    architecture's row in ARCHITECTURES; an importer may override them.
    """

    architecture: str  # a key of ARCHITECTURES
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
    rope_dim: int = 0  # leading dims of each head that RoPE rotates; 0: head_dim (partial: Phi-4-mini)
    rope_mscale: float = 1.0  # cos/sin times this (LongRoPE's attention factor)
    # e.g. {"type": "linear", "factor": 2.0}; {"type": "freq_factors", "factors": [...]} (one divisor
    # per frequency); {"type": "longrope", "factors": short, "long_factors": long,
    # "original_context": n} (Phi-3: the long factors for a sequence longer than n)
    rope_scaling: dict | None = None
    context_length: int = 2048
    tie_embeddings: bool = False
    attn_bias: bool = False  # Qwen2 has q/k/v biases
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    name: str = ""
    qk_norm: bool | None = None  # None: the architecture's default (ArchTraits)
    post_norms: bool | None = None
    ffn_act: str | None = None
    embed_scale: float | None = None  # None: sqrt(hidden) for Gemma, else 1
    attn_scale: float = 0.0  # softmax scale of q.k; 0 means 1/sqrt(head_dim)
    sliding_window: int = 0  # positions a sliding-window layer sees (itself included); 0: none
    # With a window, layer l is global (full attention) iff (l + 1) % pattern == 0;
    # pattern 0 makes every layer a sliding-window one.
    sliding_window_pattern: int = 0
    rope_local_theta: float = 0.0  # RoPE base of sliding-window layers (0: rope_theta)
    # Block size of the Hadamard transform applied to the FFN activation before ffn_down (0: none);
    # set by the incoherence rotation (quantize/rotate.py), a power of two dividing intermediate_size.
    ffn_hadamard: int = 0
    sub_norms: bool | None = None  # None: the architecture's default (BitNet)
    act_int8: bool | None = None

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
        traits = ARCHITECTURES[self.architecture]
        if self.qk_norm is None:
            self.qk_norm = traits.qk_norm
        if self.post_norms is None:
            self.post_norms = traits.post_norms
        if self.ffn_act is None:
            self.ffn_act = traits.ffn_act
        if self.sub_norms is None:
            self.sub_norms = traits.sub_norms
        if self.act_int8 is None:
            self.act_int8 = traits.act_int8
        if self.embed_scale is None:
            scaled = traits.embed_scale_sqrt
            self.embed_scale = float(np.sqrt(np.float32(self.hidden_size))) if scaled else 1.0
        if self.ffn_act not in FFN_ACTIVATIONS:
            raise ValueError(f"ffn_act must be one of {', '.join(FFN_ACTIVATIONS)}, got {self.ffn_act!r}")
        h = self.ffn_hadamard
        if h < 0 or (h and (h & (h - 1) or self.intermediate_size % h)):
            raise ValueError(f"ffn_hadamard must be 0 or a power of two dividing intermediate_size, got {h}")
        if self.sliding_window < 0 or self.sliding_window_pattern < 0:
            raise ValueError("sliding_window and sliding_window_pattern must be >= 0")
        if self.attn_scale < 0 or self.rope_local_theta < 0:
            raise ValueError("attn_scale and rope_local_theta must be >= 0")
        if not (0 <= self.rope_dim <= self.head_dim and self.rope_dim % 2 == 0):
            raise ValueError(f"rope_dim must be even, in [0, {self.head_dim}], got {self.rope_dim}")
        s = self.rope_scaling or {}
        if s.get("type") == "longrope":
            half = (self.rope_dim or self.head_dim) // 2
            if len(s.get("factors", ())) != half or len(s.get("long_factors", ())) != half:
                raise ValueError(f"longrope needs {half} short and {half} long factors (rope_dim / 2)")
            if int(s.get("original_context", 0)) < 1:
                raise ValueError("longrope needs original_context >= 1")

    @property
    def traits(self) -> ArchTraits:
        return ARCHITECTURES[self.architecture]

    def is_sliding(self, layer: int) -> bool:
        """True when ``layer`` attends to the last sliding_window positions only."""
        if self.sliding_window <= 0:
            return False
        return self.sliding_window_pattern <= 0 or (layer + 1) % self.sliding_window_pattern != 0

    def layer_rope_theta(self, layer: int) -> float:
        if self.is_sliding(layer) and self.rope_local_theta > 0:
            return self.rope_local_theta
        return self.rope_theta

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim or self.head_dim

    @property
    def query_scale(self) -> float:
        return self.attn_scale if self.attn_scale > 0 else float(1.0 / np.sqrt(self.head_dim))


def expected_tensors(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor name the config implies, with its (N, K) or (N,) shape, in file order."""
    h, hd = config.hidden_size, config.head_dim
    q, kv = config.n_heads * hd, config.n_kv_heads * hd
    per_layer = {
        "attn_norm.weight": (h,),
        "attn_q.weight": (q, h),
        "attn_q.bias": (q,),
        "attn_k.weight": (kv, h),
        "attn_k.bias": (kv,),
        "attn_v.weight": (kv, h),
        "attn_v.bias": (kv,),
        "attn_q_norm.weight": (hd,),  # one RMSNorm weight shared by every head
        "attn_k_norm.weight": (hd,),
        "attn_sub_norm.weight": (q,),
        "attn_output.weight": (h, q),
        "post_attention_norm.weight": (h,),
        "ffn_norm.weight": (h,),
        "ffn_gate.weight": (config.intermediate_size, h),
        "ffn_up.weight": (config.intermediate_size, h),
        "ffn_sub_norm.weight": (config.intermediate_size,),
        "ffn_down.weight": (h, config.intermediate_size),
        "post_ffw_norm.weight": (h,),
    }
    absent = set()
    if not config.attn_bias:
        absent |= {"attn_q.bias", "attn_k.bias", "attn_v.bias"}
    if not config.qk_norm:
        absent |= {"attn_q_norm.weight", "attn_k_norm.weight"}
    if not config.post_norms:
        absent |= {"post_attention_norm.weight", "post_ffw_norm.weight"}
    if not config.sub_norms:
        absent |= {"attn_sub_norm.weight", "ffn_sub_norm.weight"}
    out: dict[str, tuple[int, ...]] = {"token_embd.weight": (config.vocab_size, h)}
    for i in range(config.n_layers):
        for name in LAYER_TENSORS:
            if name not in absent:
                out[f"blk.{i}.{name}"] = per_layer[name]
    out["output_norm.weight"] = (h,)
    if not config.tie_embeddings:
        out["output.weight"] = (config.vocab_size, h)
    return out


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
    # Trained low-bit imports (GPTQ, AWQ, BitNet): name -> the packed spec (qtype, group, asym)
    # its source codes are exact in (or, without source_codes, the width to re-quantise at).
    # Conversion keeps these tensors at this spec whatever the recipe says.
    source_specs: dict[str, tuple[str, int, bool]] = field(default_factory=dict)
    # What the import read (format, bits, groups, what is exact), recorded in the model file.
    import_info: dict[str, Any] = field(default_factory=dict)

    def layer_tensor(self, layer: int, name: str) -> np.ndarray | None:
        return self.tensors.get(f"blk.{layer}.{name}")
