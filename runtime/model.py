"""The public model API: ``edgelut.load(...)`` -> :class:`Model` (generate, chat, eval).

The forward pass, KV cache, sampler and the decode loop run in C++
(``_core.Engine``); this module turns text into token ids and back, keeps
track of what the KV cache holds so a new call reuses the longest common
prefix (prompt caching across chat turns), and applies stop strings.

Context policy (``Model.context_overflow``): with "error" (the default) a
prompt longer than ``n_ctx - 1`` tokens raises ValueError and generation that
fills the context stops with ``finish_reason == "context"``; nothing is
dropped silently. With "slide" (opt-in: ``edgelut.load(...,
context_overflow="slide")``) the first ``n_keep`` tokens and the most recent
half of the rest are kept and their KV cache recomputed, then generation goes
on; an over-long prompt is cut the same way.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from edgelut import _core
from edgelut.kernels import pack
from edgelut.models.config import LINEAR_TENSORS, ModelConfig
from edgelut.thinking import filter_stream, strip_thinking
from edgelut.tokenizer import StreamDecoder

if TYPE_CHECKING:
    from edgelut.distributed.options import DistributedOptions

__all__ = [
    "GenerateOptions",
    "GenerationStats",
    "Model",
    "PagingStats",
    "engine_config",
    "load",
    "pack_tensors",
    "shard_tensors",
    "TokenConstraint",
]


class TokenizerLike(Protocol):
    """What Model needs from a tokenizer (edgelut.tokenizer.Tokenizer has it)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(
        self, messages: list[dict[str, str]], add_generation_prompt: bool = True
    ) -> Any: ...


def engine_config(cfg: ModelConfig) -> _core.EngineConfig:
    """The C++ engine's view of a ModelConfig (RoPE scaling: linear, per-frequency factors or LongRoPE)."""
    factor, freq_factors, long_factors, original = 1.0, [], [], 0
    if cfg.rope_scaling:
        kind = cfg.rope_scaling.get("type", cfg.rope_scaling.get("rope_type"))
        if kind == "linear":
            factor = float(cfg.rope_scaling["factor"])
        elif kind in ("freq_factors", "longrope"):  # each frequency divided by its own factor
            freq_factors = [float(f) for f in cfg.rope_scaling["factors"]]
            if kind == "longrope":  # Phi-3: other factors past the original context
                long_factors = [float(f) for f in cfg.rope_scaling["long_factors"]]
                original = int(cfg.rope_scaling["original_context"])
        else:
            raise ValueError(f"rope_scaling type {kind!r} is not supported (linear, freq_factors, longrope)")
    c = _core.EngineConfig()
    c.architecture = cfg.architecture
    c.dim = cfg.hidden_size
    c.hidden_dim = cfg.intermediate_size
    c.n_layers = cfg.n_layers
    c.n_heads = cfg.n_heads
    c.n_kv_heads = cfg.n_kv_heads
    c.head_dim = cfg.head_dim
    c.vocab_size = cfg.vocab_size
    c.norm_eps = cfg.rms_norm_eps
    c.rope_theta = cfg.rope_theta
    c.rope_neox = cfg.rope_style == "neox"
    c.rope_dim = cfg.rope_dim
    c.rope_mscale = cfg.rope_mscale
    c.rope_linear_factor = factor
    c.rope_freq_factors = freq_factors
    c.rope_long_factors = long_factors
    c.rope_original_ctx = original
    c.attn_bias = cfg.attn_bias
    c.tie_embeddings = cfg.tie_embeddings
    c.qk_norm = bool(cfg.qk_norm)
    c.post_norms = bool(cfg.post_norms)
    c.ffn_gelu = cfg.ffn_act == "gelu_tanh"
    c.ffn_relu2 = cfg.ffn_act == "relu2"
    c.sub_norms = bool(cfg.sub_norms)
    c.act_int8 = bool(cfg.act_int8)
    c.embed_scale = float(cfg.embed_scale or 1.0)
    c.attn_scale = cfg.attn_scale
    c.sliding_window = cfg.sliding_window
    c.sliding_window_pattern = cfg.sliding_window_pattern
    c.rope_local_theta = cfg.rope_local_theta
    c.ffn_hadamard = cfg.ffn_hadamard
    c.validate()
    return c


def shard_slices(
    head_dim: int, q_heads: tuple[int, int], kv_heads: tuple[int, int], ffn: tuple[int, int]
) -> tuple[dict[str, slice], dict[str, slice]]:
    """Which rows (first dict) and columns (second) of each layer tensor, by name suffix, a shard holds."""
    q = slice(q_heads[0] * head_dim, q_heads[1] * head_dim)
    kv = slice(kv_heads[0] * head_dim, kv_heads[1] * head_dim)
    f = slice(*ffn)
    rows = {"attn_q.weight": q, "attn_q.bias": q, "attn_k.weight": kv, "attn_k.bias": kv}
    rows |= {"attn_v.weight": kv, "attn_v.bias": kv, "ffn_gate.weight": f, "ffn_up.weight": f}
    return rows, {"attn_output.weight": q, "ffn_down.weight": f}


def shard_tensors(
    cfg: ModelConfig, tensors: dict[str, np.ndarray], shard: _core.ShardSpec
) -> dict[str, np.ndarray]:
    """The slice of every layer one shard holds: its q heads, the kv heads they read, its FFN columns.

    A kv head whose q heads straddle two shards is held by both. Splits at
    multiples of the quantisation group size keep the quantised shards
    bit-identical to slices of the quantised whole model. Without the
    lm_head (a worker), output.weight is left out.
    """
    s = shard.resolved(engine_config(cfg))
    rows, cols = shard_slices(
        cfg.head_dim,
        (s.q_head_begin, s.q_head_end),
        (s.kv_head_begin, s.kv_head_end),
        (s.ffn_begin, s.ffn_end),
    )
    out = {}
    for name, t in tensors.items():
        if name == "output.weight" and not s.lm_head:
            continue
        suffix = name.split(".", 2)[2] if name.startswith("blk.") else ""
        if suffix in rows:
            t = t[rows[suffix]]
        elif suffix in cols:
            t = t[:, cols[suffix]]
        out[name] = np.ascontiguousarray(t, dtype=np.float32)
    return out


def pack_tensors(
    cfg: ModelConfig,
    tensors: dict[str, np.ndarray],
    *,
    bits: int = 4,
    group_size: int = 32,
    asym: bool | None = None,
    clip_search: bool = True,
    source_codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Quantise (RTN) and pack every linear layer and the embedding; norms and biases stay float32.

    The packed embedding serves both the row lookup and, when the model ties
    embeddings (or has no output.weight), the lm_head. Each matrix goes through
    ``edgelut.quantize.convert.quantize_tensor``, the quantiser ``edgelut
    quantize`` runs, so this path and a converted file agree: Q4_0/Q4_1 codes
    of the source (``source_codes``) are kept as they are at q4 g32, and the
    embedding gets the plain clip search. ``asym=None`` takes the recipe's
    default for the type (see ``edgelut.quantize.recipe.default_asym``).
    ``clip_search=False`` (tests that only need some quantised model) skips the
    clip grid.
    """
    from edgelut.quantize.convert import quantize_tensor
    from edgelut.quantize.recipe import TensorSpec, default_asym
    from edgelut.quantize.rtn import quantize_rtn

    qtype = f"q{bits}"
    if asym is None:
        asym = default_asym(qtype)
    spec = TensorSpec(qtype, group_size, asym)
    linear = {f"blk.{i}.{n}" for i in range(cfg.n_layers) for n in LINEAR_TENSORS}
    linear |= {"token_embd.weight", "output.weight"}
    codes_of = source_codes or {}
    out: dict[str, Any] = {}
    for name, t in tensors.items():
        if name == "output.weight" and cfg.tie_embeddings:
            continue  # the packed token_embd is the lm_head
        t = np.asarray(t, dtype=np.float32)
        if name not in linear:
            out[name] = np.ascontiguousarray(t)
        elif clip_search:
            out[name] = quantize_tensor(name, t, spec, "rtn", source_codes=codes_of.get(name))
        else:
            codes, scales, mins = quantize_rtn(t, qtype, group_size, asym=asym, clip_grid=None)
            out[name] = pack(codes, scales, mins, qtype, group_size)
    return out


def _peak_rss_mb() -> float:
    """Peak resident memory of this process (VmHWM), in MiB; 0 where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


@dataclass
class PagingStats:
    """What paging cost over `tokens` decoded tokens (engine.pager_stats() deltas).

    io_read_s is the loader thread's time in pread; io_wait_s the part of it the
    engine waited for (blocked in acquire). Compute is the token latency minus
    that wait, so max(io, compute) / latency is 1.0 when I/O and compute overlap
    perfectly and falls towards 0.5 when they run one after the other.
    """

    window: int = 0  # resident layer slots (W)
    tokens: int = 0  # decoded tokens measured
    seconds: float = 0.0  # their total latency
    io_wait_s: float = 0.0  # engine blocked waiting for a layer
    io_read_s: float = 0.0  # loader time reading layers
    bytes_read: int = 0  # layer bytes read from the file

    @classmethod
    def between(cls, window: int, before: dict, after: dict, tokens: int, seconds: float) -> PagingStats:
        """From two engine.pager_stats() snapshots around `tokens` decoded tokens."""
        return cls(
            window=window,
            tokens=tokens,
            seconds=seconds,
            io_wait_s=(after["wait_ns"] - before["wait_ns"]) / 1e9,
            io_read_s=(after["read_ns"] - before["read_ns"]) / 1e9,
            bytes_read=after["bytes_read"] - before["bytes_read"],
        )

    def _per_token(self, x: float) -> float:
        return x / self.tokens if self.tokens > 0 else 0.0

    @property
    def token_ms(self) -> float:
        return self._per_token(self.seconds) * 1e3

    @property
    def io_wait_ms(self) -> float:
        return self._per_token(self.io_wait_s) * 1e3

    @property
    def io_ms(self) -> float:
        return self._per_token(self.io_read_s) * 1e3

    @property
    def compute_ms(self) -> float:
        return self._per_token(self.seconds - self.io_wait_s) * 1e3

    @property
    def bytes_per_token(self) -> float:
        return self._per_token(self.bytes_read)

    @property
    def overlap(self) -> float:
        """max(io, compute) / token latency; 0 when nothing was measured."""
        return max(self.io_ms, self.compute_ms) / self.token_ms if self.token_ms > 0 else 0.0

    def summary(self) -> str:
        """One line for /stats and `edgelut bench`."""
        return (
            f"paging W={self.window}: per token {self.token_ms:.1f} ms = compute {self.compute_ms:.1f} ms "
            f"+ I/O wait {self.io_wait_ms:.1f} ms (I/O {self.io_ms:.1f} ms, "
            f"{self.bytes_per_token / (1 << 20):.1f} MiB read), overlap {self.overlap:.2f}"
        )


@dataclass
class GenerationStats:
    """Numbers of the last generate/chat call."""

    prompt_tokens: int = 0  # tokens in the prompt
    cached_tokens: int = 0  # of which reused from the KV cache
    completion_tokens: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0
    finish_reason: str = ""  # "eos", "length", "stop", "context", "cancelled"
    peak_rss_mb: float = 0.0
    # Decode-phase paging numbers when the layers are paged (window > 0), else None.
    paging: PagingStats | None = None
    # Tensor-parallel transport of the call (coordinator's view) when the model
    # coordinates a group, else None: comm_s, bytes_sent / bytes_received per device.
    comm: dict[str, Any] | None = None

    @property
    def prefill_tokens_per_s(self) -> float:
        n = self.prompt_tokens - self.cached_tokens
        return n / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tokens_per_s(self) -> float:
        return (self.completion_tokens - 1) / self.decode_s if self.decode_s > 0 else 0.0


class TokenConstraint(Protocol):
    """A grammar that decides which tokens may come next (e.g. an llguidance matcher).

    A request with one runs the decode loop in Python (the C++ loop has no
    per-token logits hook): each step masks the logits, samples, then advances.
    """

    def mask(self, logits: np.ndarray) -> None:
        """Push the logits of the tokens not allowed next far below the rest, in place."""
        ...

    def advance(self, token: int) -> None:
        """The sampled token; raises ValueError if the grammar rejects it."""
        ...

    def finished(self) -> bool:
        """True once the grammar accepts no more tokens."""
        ...


@dataclass
class GenerateOptions:
    """The settings of one generation request, passed whole from the server (or any caller)
    to :meth:`Model.complete`; the sampler checks the values and names a bad one."""

    max_tokens: int = 128
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: Sequence[str] = ()
    ignore_eos: bool = False  # generate max_tokens tokens whatever comes (benchmarks)
    constraint: TokenConstraint | None = field(default=None, compare=False)


class _TextStream:
    """Token ids in, text pieces out: incremental detokenisation plus stop strings.

    Decodes a short window of ids and emits only the new suffix, holding back
    an incomplete UTF-8 character and any tail that could start a stop string.
    """

    def __init__(self, tokenizer: TokenizerLike, stop: Sequence[str]) -> None:
        self.decoder = StreamDecoder(tokenizer)
        self.stop = [s for s in stop if s]
        self.text = ""  # all text decoded so far
        self.sent = 0  # characters of text already emitted
        self.done = False

    def push(self, token: int) -> str:
        self.text += self.decoder.push(token)
        return self._release()

    def _release(self) -> str:
        end = len(self.text)
        for s in self.stop:
            i = self.text.find(s, max(0, self.sent - len(s) + 1))
            if i >= 0 and i < end:
                end, self.done = i, True
        if not self.done:
            # Hold back a tail that is a prefix of some stop string.
            for s in self.stop:
                for n in range(min(len(s) - 1, end - self.sent), 0, -1):
                    if s.startswith(self.text[end - n : end]):
                        end -= n
                        break
        piece = self.text[self.sent : end] if end > self.sent else ""
        self.sent = max(self.sent, end)
        return piece

    def flush(self) -> str:
        """What is left at the end (a held-back tail that never became a stop string)."""
        if self.done:
            return ""
        piece = self.text[self.sent :]
        self.sent = len(self.text)
        return piece


class Completion:
    """One generation as a producer (the engine loop) and a consumer (text pieces).

    ``run`` blocks in the engine loop. With ``inline`` every token is consumed
    in the loop's own callback on the same thread, and run's ``emit`` gets the
    text pieces as they come. Otherwise the tokens go through a TokenChannel:
    the loop never takes the GIL, and a consumer on another thread calls
    ``pieces`` whenever ``fileno`` is readable, until ``finished``. Either way
    ``finish`` (after run returned) gives the last pieces, sets the model's
    stats and raises what run raised. A stop string seen by the consumer
    cancels the loop; it may have sampled a token more, which the reply drops
    (the KV cache keeps it, and the model knows it did).
    """

    def __init__(
        self,
        model: Model,
        ids: list[int],
        max_tokens: int,
        sampler: _core.SamplerParams,
        stops: list[str],
        *,
        constraint: TokenConstraint | None = None,
        ignore_eos: bool = False,
        cancel: threading.Event | None = None,
        inline: bool = False,
    ) -> None:
        self._m = model
        self._ids, self._max_tokens, self._sampler = ids, max_tokens, sampler
        self._constraint = constraint
        self._cancel = cancel if cancel is not None else threading.Event()
        self._text = _TextStream(model.tokenizer, stops) if model.tokenizer is not None else None
        self._eos = [] if ignore_eos else model._eos_ids()
        self.channel = None if inline else _core.TokenChannel()
        self._tokens: list[int] = []  # the tokens of the reply, as consumed
        self._stopped = False
        self._finished = inline
        self._decode_start: dict | None = None
        self._cached = 0
        self._result: dict[str, Any] | None = None
        self._error: BaseException | None = None
        self.stats: GenerationStats | None = None  # set by finish

    # ---- producer ----------------------------------------------------------
    def run(self, emit: Callable[[str], None] | None = None) -> None:
        """The engine loop, from reusing the cached prefix to the last token; raises its failure."""
        m = self._m
        try:
            self._cached = m._reuse_prefix(self._ids)
            if m.group is not None:
                m.group.reset_stats()
            if self.channel is not None:
                sink: Any = self.channel
            else:

                def sink(tok: int) -> bool:
                    piece = self._consume(tok)
                    if piece and emit is not None:
                        emit(piece)
                    return not self._stopped

            args = (self._ids, self._cached, self._max_tokens, self._eos, self._sampler)
            if self._constraint is not None:
                push = sink.push if self.channel is not None else sink
                self._result = m._masked_generate(*args, push, self._constraint)
            else:
                self._result = m._engine_generate(*args, sink)
        except BaseException as e:
            self._error = e
            raise
        finally:
            if self.channel is not None:
                self.channel.finish()

    def run_inline(self, emit: Callable[[str], None]) -> None:
        """An inline completion from start to ``finish`` on this thread, every piece to emit."""
        self.run(emit)
        for piece in self.finish():
            emit(piece)

    def run_quietly(self) -> None:
        """``run`` for a worker thread: a failure is kept for ``finish`` to raise."""
        with contextlib.suppress(BaseException):
            self.run()

    # ---- consumer ----------------------------------------------------------
    def fileno(self) -> int:
        assert self.channel is not None, "an inline completion has no channel"
        return self.channel.fileno()

    @property
    def finished(self) -> bool:
        """The producer is done and every token it made went through ``pieces``."""
        return self._finished

    def cancel(self) -> None:
        """Stop the loop before its next token (finish_reason "cancelled"); any thread."""
        self._cancel.set()
        if self.channel is not None:
            self.channel.cancel()

    def pieces(self) -> list[str]:
        """The text of the tokens that arrived since the last call."""
        assert self.channel is not None, "an inline completion's pieces go to run's emit"
        tokens, self._finished = self.channel.drain()
        out = [p for p in map(self._consume, tokens) if p]
        if self._stopped:
            self.channel.cancel()
        return out

    def finish(self) -> list[str]:
        """The last pieces once ``run`` returned; sets the model's stats and last_tokens."""
        out = self.pieces() if self.channel is not None else []
        if self._error is not None:
            raise self._error
        if self._result is None:
            raise RuntimeError("the completion has not run")
        if self._text is not None:
            tail = self._text.flush()
            if tail:
                out.append(tail)
        m, r = self._m, self._result
        reason = r["stop_reason"]
        if self._text is not None and self._text.done:
            reason = "stop"  # a stop string, whether or not the loop saw it before it ended
        elif reason == "callback":
            reason = "cancelled" if self._cancel.is_set() else "stop"
        decode_start = self._decode_start
        self.stats = m.stats = GenerationStats(
            prompt_tokens=len(self._ids),
            cached_tokens=self._cached,
            completion_tokens=len(self._tokens),
            prefill_s=r["prefill_s"],
            decode_s=r["decode_s"],
            finish_reason=reason,
            peak_rss_mb=_peak_rss_mb(),
            paging=PagingStats.between(
                m._engine.window, decode_start, m._engine.pager_stats(), r["n_decode"], r["decode_s"]
            )
            if decode_start is not None
            else None,
            comm=m.group.stats() if m.group is not None else None,
        )
        m.last_tokens = list(self._tokens)
        return out

    def _consume(self, tok: int) -> str:
        if self._stopped:
            return ""  # sampled after the consumer stopped the loop: not part of the reply
        engine = self._m._engine
        if engine.window and not self._tokens:
            # Pager counters at the first token (prefill done): the paging stats
            # cover the decode phase only. (From the consumer thread they are
            # read up to one token late.)
            self._decode_start = engine.pager_stats()
        self._tokens.append(tok)
        if self._cancel.is_set():
            self._stopped = True
            return ""
        if self._text is None or tok in self._eos:
            return ""  # an EOS token ends the loop in C++ and adds no text
        piece = self._text.push(tok)
        self._stopped = self._text.done
        return piece


CONTEXT_OVERFLOW = ("error", "slide")


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Leading tokens a and b share, short of b's last (its logits are always evaluated)."""
    n, limit = 0, min(len(a), len(b) - 1)
    while n < limit and a[n] == b[n]:
        n += 1
    return n


class Model:
    """A loaded model: generate, chat, eval and tokenize, llama-cpp-python style."""

    # What happens when the context fills up (see the module docstring and
    # set_context_overflow); class defaults so every constructor path has them.
    context_overflow: str = "error"
    n_keep: int = 32
    # With True, a reused prompt prefix is cut back to a multiple of prefill_chunk, so the rest
    # of the prompt runs in the same chunks, hence the same kernels, as a cold prompt: a
    # repeated request then gets the cold request's reply. Without it the last prompt token
    # alone goes through the decode GEMV instead of the prefill GEMM (int8 activations), and
    # a close greedy choice can flip. Costs up to prefill_chunk - 1 re-evaluated tokens.
    chunk_aligned_reuse: bool = False
    # Bytes of host memory for saved KV caches of other conversations (0: only the
    # current one is kept). A prompt that shares less with the cache than with a
    # saved conversation swaps them, so interleaved conversations (several
    # clients of one server, a chat app's side requests) each continue from
    # their own cache instead of evaluating their whole history again.
    prompt_cache_bytes: int = 0
    # The tensor-parallel link when this model coordinates a group (edgelut.distributed), else None.
    group: Any = None

    def __init__(
        self, engine: _core.Engine, config: ModelConfig, tokenizer: TokenizerLike | None = None
    ) -> None:
        self._engine = engine
        self.config = config
        self.tokenizer = tokenizer
        self._cache_ids: list[int] = []  # the tokens whose K/V sit in the cache, in order
        self._saved: list[tuple[list[int], bytes]] = []  # other conversations' caches, oldest first
        self.stats = GenerationStats()
        self.last_tokens: list[int] = []  # token ids sampled by the last call

    @classmethod
    def from_float(
        cls,
        config: ModelConfig,
        tensors: dict[str, np.ndarray],
        tokenizer: TokenizerLike | None = None,
        *,
        bits: int = 4,
        group_size: int = 32,
        asym: bool | None = None,
        clip_search: bool = True,
        n_ctx: int = 2048,
        n_threads: int = 0,
        kv_type: str = "f16",
        prefill_chunk: int = 64,
        shard: _core.ShardSpec | None = None,
        communicator: _core.Communicator | None = None,
        source_codes: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
    ) -> Model:
        """Quantise float weights (GGUF names, (N, K) orientation) with RTN and build the engine.

        ``shard`` keeps only one shard's slice of every layer; ``communicator``
        sums the partial results across shards (see ``_core.make_local_group``).
        ``source_codes`` are an import's Q4_0/Q4_1 codes, kept as they are (not with a shard).
        """
        if shard is not None:
            tensors = shard_tensors(config, tensors, shard)
            source_codes = None
        packed = pack_tensors(
            config,
            tensors,
            bits=bits,
            group_size=group_size,
            asym=asym,
            clip_search=clip_search,
            source_codes=source_codes,
        )
        return cls.from_packed(
            config,
            packed,
            tokenizer,
            n_ctx=n_ctx,
            n_threads=n_threads,
            kv_type=kv_type,
            prefill_chunk=prefill_chunk,
            shard=shard,
            communicator=communicator,
        )

    @classmethod
    def from_packed(
        cls,
        config: ModelConfig,
        tensors: dict[str, Any],
        tokenizer: TokenizerLike | None = None,
        *,
        n_ctx: int = 2048,
        n_threads: int = 0,
        kv_type: str = "f16",
        prefill_chunk: int = 64,
        shard: _core.ShardSpec | None = None,
        communicator: _core.Communicator | None = None,
    ) -> Model:
        """Build the engine from ready tensors: PackedMatrix for linear layers, float32 for the rest.

        With ``shard``, the tensors are that shard's slices (see :func:`shard_tensors`).
        """
        engine = _core.Engine(
            engine_config(config),
            tensors,
            n_ctx=n_ctx,
            n_threads=n_threads,
            kv_type=kv_type,
            prefill_chunk=prefill_chunk,
            shard=shard,
            communicator=communicator,
        )
        return cls(engine, config, tokenizer)

    # ---- properties -------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._engine.n_ctx

    @property
    def n_threads(self) -> int:
        return self._engine.n_threads

    @property
    def prefill_chunk(self) -> int:
        """Tokens per GEMM pass of the engine: also the prompt cache's unit of reuse."""
        return self._engine.prefill_chunk

    @property
    def engine(self) -> _core.Engine:
        return self._engine

    # ---- tokens -------------------------------------------------------------
    def _need_tokenizer(self) -> TokenizerLike:
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer; pass token ids, or give Model a tokenizer")
        return self.tokenizer

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids; ``add_special`` adds what the tokenizer adds by itself (e.g. BOS)."""
        tok = self._need_tokenizer()
        try:
            return list(tok.encode(text, add_special=add_special))
        except TypeError:  # a tokenizer without the add_special switch
            return list(tok.encode(text))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._need_tokenizer().decode(list(ids))

    def _eos_ids(self) -> list[int]:
        eos = set(self.config.eos_token_ids)
        for attr in ("eos_id", "eos_token_id"):
            tok_eos = getattr(self.tokenizer, attr, None)
            if isinstance(tok_eos, int):
                eos.add(tok_eos)
        return sorted(eos)

    # ---- evaluation ---------------------------------------------------------
    def eval(self, ids: Sequence[int]) -> np.ndarray:
        """Logits (T, vocab) of every position of ids, evaluated from position 0 (for perplexity)."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("eval: ids is empty")
        self._cache_ids = []
        logits = self._engine.eval(np.asarray(ids, dtype=np.int32), 0, all_logits=True)
        self._cache_ids = ids
        return logits

    def eval_tail(self, ids: Sequence[int], first: int, block: int = 256) -> Iterator[np.ndarray]:
        """Logits of positions first.. of ids, evaluated from position 0, ``block`` rows at a time.

        Positions before ``first`` are evaluated for their KV cache only and the
        rest in blocks, so at most ``block`` rows of logits exist at once (perplexity
        scores the second half of each window: for a 151936-token vocabulary a
        whole 2048-token window of logits is 1.2 GB, a block of 256 rows 148 MiB).
        """
        ids = [int(i) for i in ids]
        if not 0 <= first < len(ids):
            raise ValueError(f"eval_tail: first must be in [0, {len(ids)}), got {first}")
        if block < 1:
            raise ValueError(f"eval_tail: block must be >= 1, got {block}")
        self._cache_ids = []
        self._engine.reset()
        # LongRoPE picks its factors by the length of the whole window, as one call over it would.
        # A tensor-parallel group's workers are not told it (see Engine::eval), so it goes by blocks.
        end = len(ids) if self.group is None else 0
        if first:
            self._engine.eval(np.asarray(ids[:first], dtype=np.int32), 0, all_logits=False, rope_end=end)
        self._cache_ids = ids[:first]
        for a in range(first, len(ids), block):
            chunk = ids[a : a + block]
            logits = self._engine.eval(np.asarray(chunk, dtype=np.int32), a, all_logits=True, rope_end=end)
            self._cache_ids = ids[: a + len(chunk)]
            yield logits

    def reset(self) -> None:
        """Forget the KV cache (the next call evaluates its whole prompt)."""
        self._engine.reset()
        self._cache_ids = []

    def _reuse_prefix(self, ids: list[int]) -> int:
        """Truncate the KV cache to its longest common prefix with ids; return that length.

        At least the last prompt token is always re-evaluated: its logits are
        what the first sampled token needs.
        """
        n = _common_prefix(self._cache_ids[: self._engine.n_past], ids)
        if self.prompt_cache_bytes > 0 and self.group is None:
            n = self._swap_saved_cache(ids, n)
        n = self._engine.reusable_prefix(n, len(ids))  # LongRoPE: keys of the other factors are not kept
        if self.chunk_aligned_reuse:
            n -= n % self.prefill_chunk
        self._engine.truncate(n)
        # A sliding-window ring may not hold the window before n any more: the engine then keeps nothing.
        n = self._engine.n_past
        self._cache_ids = self._cache_ids[:n]
        return n

    def _swap_saved_cache(self, ids: list[int], n: int) -> int:
        """Save the current cache when ids would drop much of it; restore a saved one that
        shares more with ids. Returns the common prefix of ids and the cache it leaves."""
        # Worth a copy only when a prefill chunk or more would be lost or won.
        min_gain = self.prefill_chunk
        best, best_n = -1, n
        for i, (saved_ids, _) in enumerate(self._saved):
            m = _common_prefix(saved_ids, ids)
            if m >= best_n + min_gain:
                best, best_n = i, m
        # The snapshot holds the engine's n_past positions; their ids must be known.
        held = self._engine.n_past
        if held - n >= min_gain and len(self._cache_ids) >= held:
            self._save_cache(self._cache_ids[:held], self._engine.kv_snapshot())
        if best < 0:
            return n
        saved_ids, blob = self._saved.pop(best)
        self._engine.kv_restore(blob, len(saved_ids))
        self._cache_ids = list(saved_ids)
        return best_n

    def _save_cache(self, ids: list[int], blob: bytes) -> None:
        # A conversation is kept once: a newer copy (a longer history) replaces the older.
        self._saved = [(s, b) for s, b in self._saved if ids[: len(s)] != s]
        if len(blob) > self.prompt_cache_bytes:
            return
        self._saved.append((ids, blob))
        while sum(len(b) for _, b in self._saved) > self.prompt_cache_bytes:
            self._saved.pop(0)  # least recently used

    # ---- generation ---------------------------------------------------------
    def generate(
        self,
        prompt: str | Sequence[int],
        max_tokens: int = 128,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        stream: bool = False,
    ) -> str | Iterator[str]:
        """Continue a prompt (text or token ids); ``stream=True`` yields text pieces as they come."""
        ids = self.tokenize(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
        return self._run(ids, max_tokens, self._sampler(**_sampling_args(locals())), stop, stream)

    def chat(
        self,
        messages: list[dict[str, str]],
        max_tokens: int = 256,
        *,
        temperature: float = 0.8,
        top_k: int = 40,
        top_p: float = 0.95,
        min_p: float = 0.05,
        repeat_penalty: float = 1.0,
        repeat_last_n: int = 64,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
        seed: int | None = None,
        stop: str | Sequence[str] = (),
        stream: bool = False,
        enable_thinking: bool | None = None,
        show_thinking: bool = False,
    ) -> str | Iterator[str]:
        """Reply to a conversation ([{"role": ..., "content": ...}]) using the tokenizer's chat template.

        Consecutive turns share a prefix, so only the new turn is evaluated.
        ``enable_thinking`` is handed to the template (Qwen3's switch; None
        leaves the template's default); a ``<think>...</think>`` block in the
        reply is dropped from the returned text unless ``show_thinking``.
        """
        extra = {} if enable_thinking is None else {"enable_thinking": bool(enable_thinking)}
        rendered = self._need_tokenizer().apply_chat_template(messages, add_generation_prompt=True, **extra)
        # The template writes any BOS itself.
        ids = (
            self.tokenize(rendered, add_special=False)
            if isinstance(rendered, str)
            else [int(i) for i in rendered]
        )
        out = self._run(ids, max_tokens, self._sampler(**_sampling_args(locals())), stop, stream)
        if show_thinking:
            return out
        return filter_stream(out) if stream else strip_thinking(out)  # type: ignore[arg-type]

    @classmethod
    def sampler_params(cls, o: GenerateOptions) -> _core.SamplerParams:
        """The engine's sampler settings for options; ValueError naming a bad value."""
        return cls._sampler(
            o.temperature,
            o.top_k,
            o.top_p,
            o.min_p,
            o.repeat_penalty,
            o.repeat_last_n,
            o.seed,
            o.presence_penalty,
            o.frequency_penalty,
        )

    @staticmethod
    def _sampler(
        temperature: float,
        top_k: int,
        top_p: float,
        min_p: float,
        repeat_penalty: float,
        repeat_last_n: int,
        seed: int | None,
        presence_penalty: float = 0.0,
        frequency_penalty: float = 0.0,
    ) -> _core.SamplerParams:
        p = _core.SamplerParams()
        p.temperature = float(temperature)
        p.top_k = int(top_k)
        p.top_p = float(top_p)
        p.min_p = float(min_p)
        p.repeat_penalty = float(repeat_penalty)
        p.repeat_last_n = int(repeat_last_n)
        p.presence_penalty = float(presence_penalty)
        p.frequency_penalty = float(frequency_penalty)
        p.seed = int.from_bytes(os.urandom(8), "little") if seed is None else int(seed) % 2**64
        p.validate()  # ValueError naming the bad parameter
        return p

    def _run(
        self,
        ids: list[int],
        max_tokens: int,
        sampler: _core.SamplerParams,
        stop: str | Sequence[str],
        stream: bool,
    ) -> str | Iterator[str]:
        ids, stops = self._prepare(ids, max_tokens, stop)
        if stream:
            return self._stream(ids, max_tokens, sampler, stops)
        pieces: list[str] = []
        self._generate(ids, max_tokens, sampler, stops, pieces.append)
        return "".join(pieces)

    def _prepare(
        self, ids: list[int], max_tokens: int, stop: str | Sequence[str]
    ) -> tuple[list[int], list[str]]:
        """The checked prompt (slid when the context overflows and the policy says so) and stop list."""
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) >= self.n_ctx and self.context_overflow == "slide":
            ids = self._slide(ids)
        if len(ids) >= self.n_ctx:
            raise ValueError(
                f"the prompt has {len(ids)} tokens but the context holds {self.n_ctx} (n_ctx); "
                "shorten it or load the model with a larger n_ctx"
            )
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        stops = [stop] if isinstance(stop, str) else list(stop)
        if stops and self.tokenizer is None:
            raise ValueError("stop strings need a tokenizer")
        return ids, stops

    def complete(
        self,
        ids: Sequence[int],
        options: GenerateOptions,
        on_text: Callable[[str], None],
        cancel: threading.Event | None = None,
    ) -> GenerationStats:
        """Continue prompt token ids with one request's options; text pieces go to on_text as they come.

        Setting ``cancel`` (from any thread) stops the loop before the next
        token (finish_reason "cancelled"). A ``constraint`` in the options
        masks every step. Returns the call's stats (also in ``self.stats``).
        """
        self.completion(ids, options, inline=True, cancel=cancel).run_inline(on_text)
        return self.stats

    def completion(
        self,
        ids: Sequence[int],
        options: GenerateOptions,
        *,
        inline: bool = False,
        cancel: threading.Event | None = None,
    ) -> Completion:
        """One request's generation, checked but not started (see :class:`Completion`)."""
        o = options
        sampler = self.sampler_params(o)
        prompt, stops = self._prepare([int(i) for i in ids], o.max_tokens, o.stop)
        return Completion(
            self, prompt, o.max_tokens, sampler, stops,
            constraint=o.constraint, ignore_eos=o.ignore_eos, cancel=cancel, inline=inline,
        )  # fmt: skip

    def _generate(
        self,
        ids: list[int],
        max_tokens: int,
        sampler: _core.SamplerParams,
        stops: list[str],
        emit: Callable[[str], None],
    ) -> None:
        """A checked prompt's generation on this thread, text pieces to emit as they come."""
        Completion(self, ids, max_tokens, sampler, stops, inline=True).run_inline(emit)

    # ---- context overflow ---------------------------------------------------
    def set_context_overflow(self, mode: str, n_keep: int | None = None) -> None:
        """``mode`` "error" (stop / raise when the context is full) or "slide" (keep the
        first ``n_keep`` tokens and the most recent half of the rest, recompute, go on)."""
        if mode not in CONTEXT_OVERFLOW:
            raise ValueError(f"context_overflow must be one of {', '.join(CONTEXT_OVERFLOW)}, got {mode!r}")
        if n_keep is not None:
            if not 0 <= n_keep < self.n_ctx // 2:
                raise ValueError(f"n_keep must be in [0, n_ctx / 2) = [0, {self.n_ctx // 2}), got {n_keep}")
            self.n_keep = int(n_keep)
        self.context_overflow = mode

    def _slide(self, ids: list[int]) -> list[int]:
        """The first n_keep tokens (system prompt, BOS) and the most recent half of the rest.

        Kept tokens stay at their positions, so the prefix reuse keeps their
        cache; the recent half moves and is evaluated again (exact, not shifted).
        """
        keep = min(self.n_keep, self.n_ctx // 2 - 1)
        recent = (self.n_ctx - keep) // 2
        return ids[:keep] + ids[-recent:]

    def _engine_generate(
        self,
        ids: list[int],
        cached: int,
        max_tokens: int,
        eos: list[int],
        sampler: _core.SamplerParams,
        sink: Callable[[int], bool] | _core.TokenChannel,
    ) -> dict[str, Any]:
        """The C++ loop, run again on a slid window each time it fills the context
        (context_overflow == "slide"); returns its result summed over the runs.

        ``sink`` takes every sampled token: a Python callback (run with the GIL,
        on this thread) or a TokenChannel (no GIL; the consumer is elsewhere)."""
        total: dict[str, Any] = {
            "tokens": [],
            "prefill_s": 0.0,
            "decode_s": 0.0,
            "n_decode": 0,
            "stop_reason": "",
        }
        channel = sink if isinstance(sink, _core.TokenChannel) else None
        prompt = ids
        while True:
            try:
                r = self._engine.generate(
                    np.asarray(prompt[cached:], dtype=np.int32),
                    max_tokens=max_tokens - len(total["tokens"]),
                    eos=eos,
                    sampler=sampler,
                    history=prompt[:cached],
                    on_token=None if channel is not None else sink,
                    channel=channel,
                )
            except ConnectionError:
                # A device of the group failed (PeerError): a worker that comes back
                # has an empty cache, so the next request starts from position 0.
                self._engine.reset()
                self._cache_ids = []
                raise
            except BaseException:
                # Which sampled tokens reached the cache is not known here: keep the prompt's part.
                self._engine.truncate(min(self._engine.n_past, len(prompt)))
                self._cache_ids = prompt[: self._engine.n_past]
                raise
            # The KV cache holds what the engine evaluated: the prompt and every
            # sampled token but the last.
            self._cache_ids = (prompt + list(r["tokens"]))[: self._engine.n_past]
            total["tokens"] += list(r["tokens"])
            total["prefill_s"] += r["prefill_s"]
            total["decode_s"] += r["decode_s"]
            total["n_decode"] += r["n_decode"]
            total["stop_reason"] = r["stop_reason"]
            if r["stop_reason"] != "context" or self.context_overflow != "slide":
                return total
            # The last sampled token is not in the cache yet: it ends the new prompt.
            prompt = self._slide(prompt + list(r["tokens"]))
            cached = self._reuse_prefix(prompt)

    def _masked_generate(
        self,
        ids: list[int],
        cached: int,
        max_tokens: int,
        eos: list[int],
        sampler: _core.SamplerParams,
        on_token,
        constraint: TokenConstraint,
    ) -> dict[str, Any]:
        """The decode loop in Python, for a constraint: the same steps and result as the C++
        loop (Engine::generate), with the constraint's mask applied to every step's logits."""
        smp = _core.Sampler(sampler)
        hist = list(ids)
        tokens: list[int] = []
        t0 = time.perf_counter()
        try:
            logits = self._engine.eval(np.asarray(ids[cached:], dtype=np.int32), cached, all_logits=False)
            self._cache_ids = list(ids)
            prefill_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            n_decode = 0
            while True:
                constraint.mask(logits)
                recent = np.asarray(hist[-max(sampler.repeat_last_n, 1) :], dtype=np.int32)
                tok = int(smp.sample(logits, recent))
                constraint.advance(tok)
                tokens.append(tok)
                hist.append(tok)
                if not on_token(tok):
                    reason = "callback"
                elif tok in eos:
                    reason = "eos"
                elif constraint.finished():
                    reason = "stop"
                elif len(tokens) >= max_tokens:
                    reason = "length"
                elif self._engine.n_past >= self.n_ctx:
                    reason = "context"
                else:
                    logits = self._engine.eval(np.asarray([tok], dtype=np.int32), self._engine.n_past)
                    self._cache_ids.append(tok)
                    n_decode += 1
                    continue
                break
        finally:
            self._cache_ids = self._cache_ids[: self._engine.n_past]
        return {
            "tokens": tokens,
            "prefill_s": prefill_s,
            "decode_s": time.perf_counter() - t0,
            "n_decode": n_decode,
            "stop_reason": reason,
        }

    def _stream(
        self, ids: list[int], max_tokens: int, sampler: _core.SamplerParams, stops: list[str]
    ) -> Iterator[str]:
        # The C++ loop runs on a worker thread without the GIL and hands tokens
        # over a TokenChannel; this generator turns them into text. Closing it
        # early stops the loop after its current token.
        c = Completion(self, ids, max_tokens, sampler, stops)
        worker = threading.Thread(target=c.run_quietly, name="edgelut-generate", daemon=True)
        worker.start()
        try:
            while not c.finished:
                select.select([c.fileno()], [], [])
                yield from c.pieces()
            worker.join()
            yield from c.finish()
        finally:
            c.cancel()
            worker.join()


def _sampling_args(scope: dict[str, Any]) -> dict[str, Any]:
    keys = ("temperature", "top_k", "top_p", "min_p", "repeat_penalty", "repeat_last_n", "seed")
    keys += ("presence_penalty", "frequency_penalty")
    return {k: scope[k] for k in keys}


def load(
    source: Any,
    *,
    n_threads: int = 0,
    n_ctx: int = 2048,
    tokenizer: TokenizerLike | None = None,
    bits: int = 4,
    group_size: int = 32,
    kv_type: str = "f16",
    window: int = 0,
    memory_budget: int = 0,
    drop_cache: bool = False,
    direct_io: bool = False,
    page_output: bool = False,
    context_overflow: str = "error",
    n_keep: int = 32,
    distributed: DistributedOptions | None = None,
    mmap: bool = False,
) -> Model:
    """Load a model.

    ``source`` is a registry model name (``edgelut list``; pulled and converted
    once), an edgelut model file (.elut), a path / hub id the importers in
    ``edgelut.models.importers`` understand (GGUF, Hugging Face, ONNX), which is
    converted once into the cache (RTN at ``bits``, groups of ``group_size``;
    see ``edgelut.store``) and loaded from there, or an ImportedModel-like object
    (``.config`` and float ``.tensors``, quantised in memory by the same
    quantiser). The tokenizer comes from the file or the import unless one is given.

    For a model file, ``window`` (1..n_layers) pages the layer weights through
    that many slots, a loader thread reading ahead while the engine computes.
    ``memory_budget`` (bytes) picks the largest window that fits. 0 for both
    reads the layers through the file mapping. ``drop_cache`` and
    ``direct_io`` keep paged reads out of the page cache. ``page_output``
    (with paging) also streams the lm_head through the pager and reads each
    token's embedding row on demand, instead of keeping both resident.
    A resident model file is read into memory backed by transparent huge
    pages where the kernel offers them (decode streams the weights faster);
    ``mmap`` maps the file instead, sharing its pages with the page cache.

    ``kv_type`` is the KV cache storage: "f16" (default), "f32", or "q8"
    (int8 with a scale per 32 values, 0.56x the memory of f16).
    ``context_overflow`` "slide" keeps the first ``n_keep`` tokens and the
    recent half when the context fills (see :meth:`Model.set_context_overflow`).

    ``distributed`` (with ``listen`` and ``shards``) makes this process the
    coordinator of a tensor-parallel group: it holds its slice of the model
    and waits for the workers (``edgelut worker``) to dial in; see
    :mod:`edgelut.distributed`.
    """
    if distributed is not None:
        if not isinstance(source, (str, os.PathLike)):
            raise TypeError("a distributed load takes a model name or path")
        if window or memory_budget or page_output:
            raise ValueError("paging a slice of a whole model file is not supported (make shard files)")
        from edgelut import store

        path = store.resolve(os.fspath(source), store.ConvertOptions(bits=bits, group_size=group_size))
        model = _load_file(
            os.fspath(path),
            tokenizer,
            n_ctx=n_ctx,
            n_threads=n_threads,
            kv_type=kv_type,
            distributed=distributed,
            mmap=mmap,
        )
        model.set_context_overflow(context_overflow, min(n_keep, model.n_ctx // 2 - 1))
        return model
    model = _load(
        source,
        n_threads,
        n_ctx,
        tokenizer,
        bits,
        group_size,
        kv_type,
        window,
        memory_budget,
        drop_cache,
        direct_io,
        page_output,
        mmap,
    )
    model.set_context_overflow(context_overflow, min(n_keep, model.n_ctx // 2 - 1))
    return model


def _load(
    source: Any,
    n_threads: int,
    n_ctx: int,
    tokenizer: TokenizerLike | None,
    bits: int,
    group_size: int,
    kv_type: str,
    window: int,
    memory_budget: int,
    drop_cache: bool,
    direct_io: bool,
    page_output: bool = False,
    mmap: bool = False,
) -> Model:
    if isinstance(source, (str, os.PathLike)):
        # One way in: a registry name or a source path becomes a cached model file first.
        from edgelut import store

        path = store.resolve(os.fspath(source), store.ConvertOptions(bits=bits, group_size=group_size))
        return _load_file(
            os.fspath(path),
            tokenizer,
            n_ctx=n_ctx,
            n_threads=n_threads,
            kv_type=kv_type,
            window=window,
            budget_bytes=memory_budget,
            drop_cache=drop_cache,
            direct_io=direct_io,
            page_output=page_output,
            mmap=mmap,
        )
    if window or memory_budget or page_output:
        raise ValueError(
            "window, memory_budget and page_output page the weights of an edgelut model file; "
            "convert the model first (edgelut quantize)"
        )
    if not hasattr(source, "config") or not hasattr(source, "tensors"):
        raise TypeError("load() takes a path or an ImportedModel-like object with .config and .tensors")
    if tokenizer is None and getattr(source, "tokenizer", None) is not None:
        try:
            from edgelut.tokenizer import Tokenizer

            tokenizer = Tokenizer(source.tokenizer)
        except ImportError:
            tokenizer = None  # token ids in, token ids out
    return Model.from_float(
        source.config,
        source.tensors,
        tokenizer,
        bits=bits,
        group_size=group_size,
        n_ctx=n_ctx,
        n_threads=n_threads,
        kv_type=kv_type,
        source_codes=getattr(source, "source_codes", None),
    )


def _file_header(
    path: str, tokenizer: TokenizerLike | None, engine_kw: dict[str, Any]
) -> tuple[ModelConfig, TokenizerLike | None, int]:
    """The config, the tokenizer (the given one, else the file's) and, under a memory budget,
    the engine's smallest footprint (0 otherwise) of a model file.

    A function of its own so that the file's metadata, the tokenizer's JSON text among it (a
    45 MB str for Gemma 3's 262k-token vocabulary), is freed before the engine maps the weights.
    """
    from edgelut.models.gguf_file import ModelFileError
    from edgelut.models.modelfile import read_model_file
    from edgelut.tokenizer import Tokenizer

    # The config and tokenizer only; the engine checks the CRCs as it opens the file.
    with read_model_file(path, verify_crc=False) as mf:
        config, tok_data = mf.config, mf.tokenizer
        early = 0
        if (
            engine_kw.get("budget_bytes", 0) > 0
            and not engine_kw.get("page_output")
            and not engine_kw.get("window")
        ):
            from edgelut import budget as mem

            early = mem.engine_minimum(mf, int(engine_kw["n_ctx"]), str(engine_kw["kv_type"]))
    if tokenizer is None and tok_data.tokenizer_json:
        try:
            tokenizer = Tokenizer(tok_data)
        except ValueError as e:
            raise ModelFileError(f"{path}: field 'edgelut.tokenizer.json' is unusable: {e}") from None
    return config, tokenizer, early


def _load_file(path: str, tokenizer: TokenizerLike | None, **engine_kw: Any) -> Model:
    """A Model over a model file: the C++ engine reads, maps or pages the weights itself."""
    budget = int(engine_kw.get("budget_bytes", 0))
    # The tokenizer comes first, so that a memory budget counts it (see edgelut.budget).
    config, tokenizer, early = _file_header(path, tokenizer, engine_kw)
    if budget > 0:
        from edgelut import budget as mem

        baseline = mem.rss_bytes()
        refused = mem.refuse_early(budget, baseline, config.vocab_size, early)
        if refused is not None:
            raise refused
        engine_kw["budget_bytes"] = mem.engine_budget(budget, baseline, config.vocab_size)
        try:
            engine = _core.Engine.from_file(path, **engine_kw)
        except ValueError as e:
            restated = mem.too_small(e, budget, baseline, config.vocab_size)
            if restated is None:
                raise
            raise restated from None
    elif "distributed" in engine_kw:
        from edgelut.distributed.group import open_coordinator

        opts = engine_kw.pop("distributed")
        engine, group = open_coordinator(path, opts, engine_kw)
        model = Model(engine, config, tokenizer)
        model.group = group
        return model
    else:
        engine = _core.Engine.from_file(path, **engine_kw)
    return Model(engine, config, tokenizer)
