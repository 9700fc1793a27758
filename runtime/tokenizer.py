"""Tokenizer and chat template (``edgelut.tokenizer``).

Everything is a Hugging Face ``tokenizers`` object: a GGUF vocabulary is turned
into a tokenizers JSON document (BPE model, pre-tokenizer chosen by llama.cpp's
``tokenizer.ggml.pre`` name, byte-level or SentencePiece-style decoder) so the
same document can be stored in a model file and rebuilt anywhere. Chat
templates are Jinja2, rendered in a sandbox with the helpers that Hugging Face
templates call.
"""

from __future__ import annotations

import ctypes
import dataclasses
import datetime
import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from edgelut.models.config import TokenizerData

# llama.cpp token types (tokenizer.ggml.token_type).
TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = 1, 2, 3, 4, 5, 6

# Pre-tokenizer split patterns, by family (the published regexes of each model family).
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tokenizer.ggml.pre name -> pre-tokenizer family.
_PRE_FAMILIES = {
    None: "gpt2",
    "default": "gpt2",
    "gpt2": "gpt2",
    "gpt-2": "gpt2",
    "smollm": "smollm",
    "qwen2": "qwen2",
    "deepseek-r1-qwen": "qwen2",
    "llama-bpe": "llama3",
    "llama3": "llama3",
    "smaug-bpe": "llama3",
}


def _byte_level_pre_tokenizer(pre: str | None) -> tuple[Any, bool]:
    """(pre-tokenizer, ignore_merges) for a byte-level BPE vocabulary."""
    family = _PRE_FAMILIES.get(pre)
    if family is None:
        raise ValueError(
            f"pre-tokenizer {pre!r} is not supported (known: {', '.join(k for k in _PRE_FAMILIES if k)})"
        )
    if family == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True), False
    if family == "smollm":
        # Every digit is its own word, then GPT-2's regex.
        seq = [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ]
        return pre_tokenizers.Sequence(seq), False
    pattern = _QWEN2_SPLIT if family == "qwen2" else _LLAMA3_SPLIT
    seq = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]
    # Llama 3 looks a whole word up in the vocabulary before merging.
    return pre_tokenizers.Sequence(seq), family == "llama3"


def _spm_merges(
    tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]
) -> list[tuple[str, str]]:
    """Merges for a SentencePiece-BPE vocabulary, ranked by the merged piece's score.

    llama.cpp's SPM tokenizer repeatedly merges the adjacent pair whose union
    has the highest score; BPE with merges in that order does the same.
    """
    ids = {t: i for i, t in enumerate(tokens)}
    found: list[tuple[float, int, int, str, str]] = []
    for i, piece in enumerate(tokens):
        if types[i] != TOKEN_NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                found.append((-float(scores[i]), ids[left], ids[right], left, right))
    found.sort()
    return [(a, b) for _, _, _, a, b in found]


def tokenizer_json_from_gguf_vocab(
    *,
    model: str,
    tokens: Sequence[str],
    token_types: Sequence[int] | None,
    scores: Sequence[float] | None = None,
    merges: Sequence[str] | None = None,
    pre: str | None = None,
    bos_id: int | None = None,
    unk_id: int | None = None,
    add_bos: bool = False,
    add_space_prefix: bool | None = None,
) -> str:
    """Build a tokenizers JSON document from llama.cpp's tokenizer.ggml.* metadata."""
    types = list(token_types) if token_types is not None else [TOKEN_NORMAL] * len(tokens)
    vocab = {t: i for i, t in enumerate(tokens)}
    if model == "gpt2":
        # A vocabulary without merges is legal (every token a byte); None means the key is absent.
        pairs = [tuple(m.split(" ", 1)) for m in merges or []]
        pre_tok, ignore_merges = _byte_level_pre_tokenizer(pre)
        tk = HFTokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, ignore_merges=ignore_merges))
        tk.pre_tokenizer = pre_tok
        tk.decoder = decoders.ByteLevel()
    elif model == "llama":
        if scores is None:
            raise ValueError("SentencePiece vocabulary has no tokenizer.ggml.scores")
        unk = tokens[unk_id] if unk_id is not None else None
        bpe = models.BPE(
            vocab=vocab,
            merges=_spm_merges(tokens, scores, types),
            unk_token=unk,
            fuse_unk=True,
            byte_fallback=True,
        )
        tk = HFTokenizer(bpe)
        space_prefix = True if add_space_prefix is None else bool(add_space_prefix)
        norm = [normalizers.Replace(" ", "\u2581")]
        if space_prefix:
            norm.insert(0, normalizers.Prepend("\u2581"))
        tk.normalizer = normalizers.Sequence(norm)
        dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
        if space_prefix:
            dec.append(decoders.Strip(" ", 1, 0))
        tk.decoder = decoders.Sequence(dec)
    else:
        raise ValueError(f"tokenizer model {model!r} is not supported (gpt2 BPE and llama SentencePiece are)")

    added = [
        AddedToken(tokens[i], special=types[i] == TOKEN_CONTROL, normalized=False)
        for i in range(len(tokens))
        if types[i] in (TOKEN_CONTROL, TOKEN_USER_DEFINED)
    ]
    tk.add_special_tokens([a for a in added if a.special])
    tk.add_tokens([a for a in added if not a.special])
    if add_bos and bos_id is not None:
        bos = tokens[bos_id]
        tk.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, int(bos_id))]
        )
    return tk.to_str()


def release_free_heap() -> None:
    """Return the C heap's free pages to the system, where the C library can (glibc's malloc_trim).

    tokenizers builds a model from JSON through transient copies of its whole subtree, several
    times the tokenizer's own size (Gemma 3: 181-379 MiB against 78 MiB kept); glibc keeps
    most of that freed memory in the process, counted in its RSS and under a memory budget.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to call
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)


# --- chat templates -----------------------------------------------------------------------------


class TemplateError(ValueError):
    """A chat template called raise_exception or failed to render."""


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.datetime.now().strftime(fmt)


def _tojson(value: Any, indent: int | None = None, separators: Any = None, sort_keys: bool = False) -> str:
    # Templates expect unescaped unicode (as transformers renders them), not jinja's HTML-safe tojson.
    return json.dumps(value, ensure_ascii=False, indent=indent, separators=separators, sort_keys=sort_keys)


def render_chat_template(template: str, messages: Sequence[dict[str, Any]], **variables: Any) -> str:
    """Render a Hugging Face-style Jinja2 chat template in a sandbox."""
    from jinja2 import TemplateError as JinjaError
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template).render(messages=list(messages), **variables)
    except JinjaError as e:
        raise TemplateError(f"chat template failed: {e}") from e


# --- the tokenizer ------------------------------------------------------------------------------


class Tokenizer:
    """Encode/decode text and render chat prompts for one model."""

    def __init__(self, data: TokenizerData) -> None:
        # The JSON text is not kept: for a 262k-token vocabulary (Gemma 3) it is a 45 MB str
        # (4 bytes a character once one is outside the BMP) plus its 13 MB UTF-8 cache.
        self._data = dataclasses.replace(data, tokenizer_json="")
        try:
            # From UTF-8 bytes, so no UTF-8 copy is cached on the caller's str.
            self._tk = HFTokenizer.from_buffer(data.tokenizer_json.encode("utf-8"))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"invalid tokenizer JSON: {e}") from e
        release_free_heap()
        self.bos_id = self._id_or_none(data.bos_token)
        self.eos_id = self._id_or_none(data.eos_token)

    @property
    def data(self) -> TokenizerData:
        """What rebuilds this tokenizer; its JSON document is serialised anew on each access."""
        return dataclasses.replace(self._data, tokenizer_json=self._tk.to_str())

    @property
    def settings(self) -> TokenizerData:
        """The chat template, special tokens and BOS rule, without the JSON document (free to
        read, unlike ``data``, which serialises it: tens of MB for a large vocabulary)."""
        return self._data

    @classmethod
    def from_source(cls, source: str | Path) -> Tokenizer:
        """The tokenizer of a model source (.gguf file, HF or ONNX export directory) without its weights."""
        from edgelut.models.importers import ModelNotFoundError
        from edgelut.models.importers.gguf import GGUFImporter, open_reader, tokenizer_from_metadata
        from edgelut.models.importers.huggingface import tokenizer_from_dir

        path = Path(source).expanduser()
        if not path.exists():
            raise ModelNotFoundError(f"{path}: no such file or directory")
        if GGUFImporter.can_load(path):
            return cls(tokenizer_from_metadata(open_reader(path)))
        return cls(tokenizer_from_dir(path if path.is_dir() else path.parent))

    @classmethod
    def from_file(cls, path: str | Path, chat_template: str | None = None) -> Tokenizer:
        """From a tokenizer.json file."""
        text = Path(path).read_text(encoding="utf-8")
        return cls(TokenizerData(tokenizer_json=text, chat_template=chat_template))

    def _id_or_none(self, token: str | None) -> int | None:
        return None if token is None else self._tk.token_to_id(token)

    @property
    def vocab_size(self) -> int:
        return self._tk.get_vocab_size(with_added_tokens=True)

    @property
    def special_tokens(self) -> dict[str, int]:
        """Special (control) tokens: content -> id."""
        return {t.content: i for i, t in self._tk.get_added_tokens_decoder().items() if t.special}

    def token_to_id(self, token: str) -> int | None:
        return self._tk.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        """The raw vocabulary entry (e.g. 'Ġworld')."""
        return self._tk.id_to_token(token_id)

    def token_to_piece(self, token_id: int) -> str:
        """The text of one token as it would print (may be partial UTF-8, shown as U+FFFD)."""
        return self._tk.decode([token_id], skip_special_tokens=False)

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Token ids.

        ``add_special`` adds what the model's post-processor adds (e.g. BOS).
        ``parse_special=False`` treats special-token text such as ``<|im_end|>`` as plain text
        (for untrusted input and for llama.cpp-compatible perplexity).
        """
        if parse_special:
            return self._tk.encode(text, add_special_tokens=add_special).ids
        # A flag on the shared tokenizers object: one Tokenizer must not encode from two threads here.
        self._tk.encode_special_tokens = True
        try:
            return self._tk.encode(text, add_special_tokens=add_special).ids
        finally:
            self._tk.encode_special_tokens = False

    def encode_batch(self, texts: Iterable[str], add_special: bool = True) -> list[list[int]]:
        return [e.ids for e in self._tk.encode_batch(list(texts), add_special_tokens=add_special)]

    def decode(self, ids: Sequence[int], skip_special: bool = False) -> str:
        return self._tk.decode(list(ids), skip_special_tokens=skip_special)

    def stream(self, skip_special: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special=skip_special)

    def apply_chat_template(
        self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True, **variables: Any
    ) -> str:
        """The prompt text for ``messages`` ([{"role": ..., "content": ...}, ...])."""
        if not self._data.chat_template:
            raise ValueError("this model has no chat template")
        variables.setdefault("bos_token", self._data.bos_token or "")
        variables.setdefault("eos_token", self._data.eos_token or "")
        return render_chat_template(
            self._data.chat_template, messages, add_generation_prompt=add_generation_prompt, **variables
        )


class StreamDecoder:
    """Incremental detokenizer: feed ids one at a time, get only complete text back.

    A character split across tokens (byte-level BPE or byte fallback) decodes
    to U+FFFD until its last byte arrives; such text is held back. Decoding
    from the previous token on (not from the first) keeps the work per token
    small and keeps decoders that strip a leading space (SentencePiece) right.
    """

    def __init__(self, tokenizer: Any, skip_special: bool = False) -> None:
        # Any object with decode(ids) (the model's TokenizerLike); skip_special
        # needs edgelut's Tokenizer.
        self._decode: Callable[[list[int]], str] = (
            (lambda ids: tokenizer.decode(ids, skip_special=True)) if skip_special else tokenizer.decode
        )
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window re-decoded each time
        self._read = 0  # ids before this one have been emitted

    def push(self, token_id: int) -> str:
        """Add one id; return the newly completed text (possibly empty)."""
        self._ids.append(int(token_id))
        done = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        if len(full) > len(done) and not full.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return full[len(done) :]
        return ""

    def flush(self) -> str:
        """Whatever is held back (an incomplete character decodes as U+FFFD)."""
        done = self._decode(self._ids[self._prefix : self._read])
        full = self._decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return full[len(done) :]


__all__ = [
    "StreamDecoder",
    "TemplateError",
    "Tokenizer",
    "release_free_heap",
    "render_chat_template",
    "tokenizer_json_from_gguf_vocab",
]
