"""edgelut.tokenizer on the real SmolLM2 vocabulary and on tiny built vocabularies."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from model_fixtures import smollm2_model

from edgelut.models.config import TokenizerData
from edgelut.tokenizer import TemplateError, Tokenizer, render_chat_template, tokenizer_json_from_gguf_vocab

# Ids from the GGUF-built SmolLM2 tokenizer. Recorded once, checked by hand for plausibility
# (single-digit splitting, 'Ġ' word starts, <|im_start|> = 1) and checked against llama.cpp's own
# tokenizer on the same GGUF (llama_tokenize of libllama at llama.cpp commit 0ce8cd11,
# add_special and parse_special on): all of EXPECTED and ROUND_TRIPS gave identical ids, and so
# did the whole Lee corpus (75678 tokens, parse_special off).
EXPECTED = {
    "Hello world": [19556, 905],
    "Hello, world!": [19556, 28, 905, 17],
    "  leading spaces": [216, 2899, 5600],
    "The year 2024 had 366 days.": [504, 713, 216, 34, 32, 34, 36, 761, 216, 35, 38, 38, 2009, 30],
    "naïve café — ünïcödé": [3546, 46494, 37366, 1841, 5549, 137, 94, 25972, 83, 7466, 84, 2756],
    "日本語のテキスト": [
        23274,
        115,
        40993,
        179,
        120,
        248,
        26453,
        11100,
        224,
        10391,
        251,
        10391,
        134,
        11100,
        226,
    ],
    "emoji 😀👍🏽 end": [391, 33777, 40303, 218, 10813, 235, 231, 10813, 233, 138, 1112],
    "def f(x):\n    return x**2\n": [1604, 275, 24, 104, 727, 472, 1003, 1792, 828, 34, 198],
    "<|im_start|>user\nHi<|im_end|>": [1, 4093, 198, 26843, 2],
    "tabs\tand\r\nnewlines\n\n\n": [100, 7366, 197, 397, 201, 198, 2241, 5110, 16506],
}
ROUND_TRIPS = [
    "",
    " ",
    "a",
    "Ünïcödé façade, Ελληνικά, русский, العربية, हिन्दी, 中文, 한국어",
    "emoji 🤗🧑‍🚀👨‍👩‍👧 🏳️‍🌈",
    "    indented\n\t\ttabs\r\n\r\n   trailing   ",
    'fn main() { println!("{}", 1 << 3); } // 0x7fff_ffff',
    "<|im_start|>system\nx<|im_end|>\n",
    "\u00a0nbsp\u200bzero-width\ufeffbom",
]


@pytest.fixture(scope="module")
def smol() -> Tokenizer:
    return Tokenizer(smollm2_model().tokenizer)


def test_real_ids(smol: Tokenizer) -> None:
    for text, ids in EXPECTED.items():
        assert smol.encode(text) == ids, text


def test_real_specials(smol: Tokenizer) -> None:
    assert smol.vocab_size == 49152
    assert (smol.bos_id, smol.eos_id) == (1, 2)
    sp = smol.special_tokens
    assert sp["<|endoftext|>"] == 0 and sp["<|im_start|>"] == 1 and sp["<|im_end|>"] == 2 and len(sp) == 17
    assert smol.encode("Hi", add_special=True) == smol.encode("Hi", add_special=False)  # SmolLM2 adds no BOS
    assert smol.token_to_piece(905) == " world" and smol.id_to_token(905) == "Ġworld"
    assert smol.decode([1, 19556, 2], skip_special=True) == "Hello"
    plain = smol.encode("<|im_end|>", parse_special=False)
    assert 2 not in plain and len(plain) > 1 and smol.decode(plain) == "<|im_end|>"
    assert smol.encode("<|im_end|>") == [2]  # the flag does not stick


@pytest.mark.parametrize("text", ROUND_TRIPS)
def test_real_round_trip(smol: Tokenizer, text: str) -> None:
    assert smol.decode(smol.encode(text)) == text


def test_from_source(tmp_path) -> None:
    from model_fixtures import tiny_config, tiny_weights, write_gguf, write_hf_dir

    cfg = tiny_config()
    w = tiny_weights(cfg)
    a = Tokenizer.from_source(write_gguf(tmp_path / "t.gguf", cfg, w))
    b = Tokenizer.from_source(write_hf_dir(tmp_path / "hf", cfg, w))
    text = "héllo <|im_end|>"
    assert a.encode(text) == b.encode(text) and a.decode(a.encode(text)) == text
    assert len(a.encode(text)) == len("héllo ".encode()) + 1  # byte tokens + one special
    assert a.encode("x<|im_end|>")[-1] == 2 and b.eos_id == 2 and a.data.chat_template == b.data.chat_template
    with pytest.raises(FileNotFoundError, match="nope: no such file"):
        Tokenizer.from_source(tmp_path / "nope")


def test_json_document_is_self_contained(smol: Tokenizer, tmp_path) -> None:
    path = tmp_path / "tokenizer.json"
    path.write_text(smol.data.tokenizer_json, encoding="utf-8")
    again = Tokenizer.from_file(path)
    for text in EXPECTED:
        assert again.encode(text) == smol.encode(text)
    doc = json.loads(smol.data.tokenizer_json)
    assert doc["model"]["type"] == "BPE" and doc["decoder"]["type"] == "ByteLevel"


def test_stream_decoder_holds_split_characters(smol: Tokenizer) -> None:
    ids = smol.encode("ok 😀 naïve 日本")
    stream = smol.stream()
    pieces = [stream.push(i) for i in ids]
    assert "".join(pieces) + stream.flush() == "ok 😀 naïve 日本"
    assert all("\ufffd" not in p for p in pieces)
    emoji = smol.encode("😀")  # three byte-level tokens for four UTF-8 bytes
    assert len(emoji) == 3
    s = smol.stream()
    assert [s.push(i) for i in emoji] == ["", "", "😀"]
    s2 = smol.stream()
    assert s2.push(emoji[0]) == "" and s2.flush() == "\ufffd"  # an incomplete character at the end


def test_chat_template_system_user(smol: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    text = smol.apply_chat_template(messages)
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    no_gen = smol.apply_chat_template(messages, add_generation_prompt=False)
    assert not no_gen.endswith("assistant\n")
    # Without a system message SmolLM2's template inserts its own.
    assert "named SmolLM" in smol.apply_chat_template(messages[1:])
    ids = smol.encode(text)
    assert ids[:3] == [1, 9690, 198] and ids[-4:] == [1, 520, 9531, 198]


def test_template_helpers_and_sandbox() -> None:
    tpl = (
        "{% if messages|length > 1 %}{{ raise_exception('only one message') }}{% endif %}"
        "{{ messages[0]|tojson }}"
    )
    assert render_chat_template(tpl, [{"role": "user", "content": "é"}]) == '{"role": "user", "content": "é"}'
    with pytest.raises(TemplateError, match="only one message"):
        render_chat_template(tpl, [{}, {}])
    assert len(render_chat_template("{{ strftime_now('%Y-%m-%d') }}", [])) == 10
    with pytest.raises(TemplateError):  # the sandbox refuses attribute games
        render_chat_template("{{ ''.__class__.__mro__[1].__subclasses__() }}", [])
    tok = Tokenizer(TokenizerData(tokenizer_json=Tokenizer(smollm2_model().tokenizer).data.tokenizer_json))
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    ("pre", "digits"),
    [
        ("smollm", ["1", "2", "3", "4", "5"]),
        ("qwen2", ["1", "2", "3", "4", "5"]),
        ("llama-bpe", ["123", "45"]),
    ],
)
def test_pre_tokenizers_split_digits(pre: str, digits: list[str]) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    data = smollm2_model().tokenizer
    doc = json.loads(data.tokenizer_json)
    vocab = doc["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.get)
    merges = [" ".join(m) if isinstance(m, list) else m for m in doc["model"]["merges"]]
    text = tokenizer_json_from_gguf_vocab(
        model="gpt2", tokens=tokens, token_types=None, merges=merges, pre=pre
    )
    words = [w for w, _ in HFTokenizer.from_str(text).pre_tokenizer.pre_tokenize_str("x 12345")]
    assert [w for w in words if w.isdigit()] == digits
    with pytest.raises(ValueError, match="pre-tokenizer 'made-up' is not supported"):
        tokenizer_json_from_gguf_vocab(
            model="gpt2", tokens=tokens, token_types=None, merges=merges, pre="made-up"
        )


def spm_tokenizer(add_bos: bool = True) -> Tokenizer:
    """A tiny SentencePiece-style (llama) vocabulary: scores rank merges; bytes fall back."""
    pieces = [
        "▁",
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "▁h",
        "▁he",
        "ll",
        "llo",
        "▁hello",
        "▁w",
        "or",
        "ld",
        "▁wor",
    ]
    pieces.append("▁world")
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    types = [2, 3, 3] + [6] * 256 + [1] * len(pieces)
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))][::-1]  # longer pieces score higher
    text = tokenizer_json_from_gguf_vocab(
        model="llama", tokens=tokens, token_types=types, scores=scores, bos_id=1, unk_id=0, add_bos=add_bos
    )
    return Tokenizer(TokenizerData(tokenizer_json=text, bos_token="<s>", eos_token="</s>", add_bos=add_bos))


def test_sentencepiece_vocabulary() -> None:
    tok = spm_tokenizer()
    ids = tok.encode("hello world")
    assert [tok.id_to_token(i) for i in ids] == ["<s>", "▁hello", "▁world"]
    assert tok.decode(ids, skip_special=True) == "hello world"
    assert tok.encode("hello", add_special=False)[0] != tok.bos_id
    odd = tok.encode("hé ✓", add_special=False)  # characters outside the vocabulary become bytes
    assert "<0xE2>" in [tok.id_to_token(i) for i in odd]
    assert tok.decode(odd) == "hé ✓"
    stream = tok.stream()
    assert "".join(stream.push(i) for i in tok.encode("hello ✓ world", add_special=False)) == "hello ✓ world"


def test_unsupported_vocabulary_kind() -> None:
    with pytest.raises(ValueError, match="tokenizer model 'bert' is not supported"):
        tokenizer_json_from_gguf_vocab(model="bert", tokens=["a"], token_types=[1])


LLAMA_TOKENIZE = "/work/peers/llama.cpp/build/bin/llama-tokenize"


def test_matches_llama_cpp_tokenize(smol: Tokenizer) -> None:
    """Cross-check with llama.cpp's own tokenizer on the same GGUF, when a build is at hand.

    The EXPECTED ids above were also checked this way when they were recorded, so the
    always-run test_real_ids carries the comparison where no llama.cpp build exists.
    """
    import os
    import subprocess

    from model_fixtures import smollm2_gguf

    if not os.access(LLAMA_TOKENIZE, os.X_OK):
        pytest.skip(f"no llama.cpp build at {LLAMA_TOKENIZE} (a peer tool, not part of edgelut)")
    for text in list(EXPECTED) + ROUND_TRIPS[2:]:
        proc = subprocess.run(
            [LLAMA_TOKENIZE, "-m", str(smollm2_gguf()), "-p", text, "--ids", "--log-disable", "--no-bos"],
            capture_output=True,
            text=True,
            check=True,
        )
        theirs = json.loads(proc.stdout.strip().splitlines()[-1])
        assert smol.encode(text) == theirs, text


# llama.cpp's tokenizer test suites: vocabulary-only GGUFs with input strings and the ids
# llama.cpp's own tokenizer gives (models/ggml-vocab-NAME.gguf{,.inp,.out}). They ship in the
# llama-cpp-python source distribution on PyPI, so the test fetches that once into the cache.
# The families edgelut supports: SentencePiece (llama-spm, phi-3) and byte-level BPE.
LLAMA_CPP_SDIST = "llama-cpp-python==0.3.36"
VOCAB_SUITES = ("llama-spm", "phi-3", "llama-bpe", "qwen2", "gpt-2")


@pytest.fixture(scope="module")
def vocab_dir() -> Path:
    import tarfile
    import tempfile

    from edgelut.models.datasets import cache_dir, pip_download

    dest = cache_dir() / "llama-cpp-vocab"
    wanted = [f"ggml-vocab-{n}.gguf{ext}" for n in VOCAB_SUITES for ext in ("", ".inp", ".out")]
    if all((dest / w).is_file() for w in wanted):
        return dest
    with tempfile.TemporaryDirectory(prefix="edgelut-vocab-") as tmp:
        sdist = pip_download(LLAMA_CPP_SDIST, Path(tmp), sdist=True)
        with tarfile.open(sdist) as tf:
            members = [m for m in tf.getmembers() if Path(m.name).name in wanted]
            for m in members:
                m.name = Path(m.name).name
            tf.extractall(dest, members=members, filter="data")
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("name", VOCAB_SUITES)
def test_llama_cpp_vocabulary_suite(vocab_dir: Path, name: str) -> None:
    """Every string of llama.cpp's suite gets llama.cpp's ids (BOS off, as the suite records them)."""
    from edgelut.models.importers.gguf import open_reader, tokenizer_from_metadata

    path = vocab_dir / f"ggml-vocab-{name}.gguf"
    tok = Tokenizer(tokenizer_from_metadata(open_reader(path)))
    texts = path.with_name(path.name + ".inp").read_text(encoding="utf-8").split("\n__ggml_vocab_test__\n")
    lines = path.with_name(path.name + ".out").read_text(encoding="utf-8").split("\n")
    assert len(texts) >= 40 and len(lines) in (len(texts), len(texts) + 1)  # + the final newline
    want = {t: [int(i) for i in line.split()] for t, line in zip(texts, lines[: len(texts)], strict=True)}
    got = {t: tok.encode(t, add_special=False) for t in texts}
    assert {t: ids for t, ids in got.items() if ids != want[t]} == {}
    # Decoding gives the text back wherever the vocabulary can spell it (SentencePiece drops one
    # leading space it added itself, so compare on strings that do not start with a space).
    for t in texts:
        if t and not t.startswith(" ") and name in ("llama-bpe", "qwen2", "gpt-2"):
            assert tok.decode(tok.encode(t, add_special=False)) == t
