#!/usr/bin/env python3
"""SmolLM2 written as a GPTQ / AWQ checkpoint, imported back: is it the same model?

    python tools/lowbit_roundtrip.py [--chunks 4] [--out DIR]

No GPTQ/AWQ checkpoint can be downloaded here (no model hub), so this makes
them: the real SmolLM2-135M-Instruct weights (its Q4_1 GGUF, dequantised) are
quantised with integer zero points and written in the published layouts by
tests/lowbit_writers.py, then imported with ``edgelut quantize`` as a user
would. For each layout it reports how many linear layers of the edgelut file
equal the numpy dequantisation ``s * (q - z)`` of the checkpoint bit for bit
(and the largest difference of the others: fp16-rounded mins), the engine's
perplexity on Lee (context 512) against the numpy reference's on the
checkpoint's own float weights, and whether greedy decoding agrees.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

# (label, writer arguments)
LAYOUTS = [
    ("GPTQ 4-bit g128 sym (v1)", {"method": "gptq", "bits": 4, "group": 128, "sym": True, "v1": True}),
    (
        "GPTQ 4-bit g128 sym act-order",
        {"method": "gptq", "bits": 4, "group": 128, "sym": True, "act_order": True},
    ),
    ("GPTQ 3-bit g128 asym (v2)", {"method": "gptq", "bits": 3, "group": 128, "sym": False, "v1": False}),
    ("GPTQ 2-bit g64 asym (v2)", {"method": "gptq", "bits": 2, "group": 64, "sym": False, "v1": False}),
    ("AWQ 4-bit g128 (GEMM)", {"method": "awq", "bits": 4, "group": 128}),
]
PROMPT = "The capital of France is"


def _perplexity_engine(path: Path, ids: list[int], chunks: int, ctx: int = 512) -> float:
    """The engine on the same windows the reference scores: disjoint windows, second half scored."""
    from edgelut import _core
    from edgelut.models.reference import log_softmax

    engine = _core.Engine.from_file(str(path), n_ctx=ctx, n_threads=2, kv_type="f32")
    nll, count = 0.0, 0
    for w in range(min(chunks, len(ids) // ctx)):
        window = np.asarray(ids[w * ctx : (w + 1) * ctx], dtype=np.int32)
        logits = engine.eval(window, 0, all_logits=True)
        half = ctx // 2
        ls = log_softmax(logits[half : ctx - 1].astype(np.float64))
        nll -= float(ls[np.arange(ctx - 1 - half), window[half + 1 :]].sum())
        count += ctx - 1 - half
    return math.exp(nll / count)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--chunks", type=int, default=4, help="Lee windows of 512 tokens (default 4)")
    ap.add_argument("--out", type=Path, help="keep the checkpoints and files here (default: a temp dir)")
    args = ap.parse_args(argv)

    import real_model
    from lowbit_writers import write_quantized_hf_dir

    import edgelut
    from edgelut.models.datasets import lee_corpus
    from edgelut.models.importers import load_model
    from edgelut.models.modelfile import read_model_file
    from edgelut.models.reference import greedy_generate, perplexity
    from edgelut.tokenizer import Tokenizer

    src = load_model(real_model.smollm2_gguf())
    floats = {name: np.asarray(src.tensors[name], dtype=np.float32) for name in src.tensors}
    text = Path(lee_corpus())
    tok = Tokenizer(src.tokenizer)
    ids = tok.encode(text.read_text(encoding="utf-8"), add_special=True, parse_special=False)
    prompt = tok.encode(PROMPT, add_special=True, parse_special=False)
    work = args.out or Path(tempfile.mkdtemp(prefix="lowbit-roundtrip-"))
    work.mkdir(parents=True, exist_ok=True)
    print(
        "| checkpoint | layers bit-exact | max diff of the rest | engine ppl | reference ppl | greedy agree |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for label, kw in LAYOUTS:
        slug = re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-")
        ckpt = write_quantized_hf_dir(
            work / slug, src.config, floats, tokenizer_json=src.tokenizer.tokenizer_json, **kw
        )
        elut = work / f"{slug}.elut"
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "edgelut.cli", "quantize", str(ckpt.path), "-o", str(elut), "-q"],
            check=True,
        )
        took = time.perf_counter() - start
        mf = read_model_file(elut)
        stored = {k: v if isinstance(v, np.ndarray) else v.dequantize() for k, v in mf.tensors().items()}
        exact, worst = 0, 0.0
        permuted = mf.recipe["import"].get("permuted_layers", 0)
        requantised = mf.recipe["import"]["requantised"]
        for name, layer in ckpt.layers.items():
            deq = layer.dequantize()
            if name in requantised:
                continue
            if permuted:  # act-order: the FFN's hidden channels are in group order in the file
                g = ckpt.layers[re.sub(r"ffn_\w+", "ffn_down", name)].g_idx
                p = np.argsort(g, kind="stable")
                deq = (
                    deq[:, p]
                    if "ffn_down" in name
                    else deq[p]
                    if "ffn_gate" in name or "ffn_up" in name
                    else deq
                )
            if np.array_equal(stored[name], deq):
                exact += 1
            else:
                worst = max(worst, float(np.abs(stored[name] - deq).max()))
        # The reference runs the checkpoint's float weights; only the embedding (float in the
        # checkpoint, tied lm_head) comes from the file, as the engine needs it packed.
        ref_model = type("W", (), {})()
        ref_model.config = mf.config
        ref_model.tensors = {**ckpt.dequantized, "token_embd.weight": stored["token_embd.weight"]}
        ref_model.tensors = {k: v for k, v in ref_model.tensors.items() if k in stored}
        ref_ppl = perplexity(ref_model, ids, ctx=512, n_chunks=args.chunks, bos_id=None).perplexity
        eng_ppl = _perplexity_engine(elut, ids, args.chunks)
        m = edgelut.load(str(elut), n_threads=2)
        m.generate(prompt, max_tokens=16, temperature=0.0)
        eng_greedy = list(m.last_tokens)
        ref_greedy = greedy_generate(ref_model, prompt, 16, stop=mf.config.eos_token_ids)
        same = next(
            (i for i, (a, b) in enumerate(zip(eng_greedy, ref_greedy, strict=False)) if a != b),
            len(eng_greedy),
        )
        rq = f" ({len(requantised)} re-quantised)" if requantised else ""
        print(
            f"| {label} | {exact}/{len(ckpt.layers)}{rq} | {worst:.2e} | {eng_ppl:.3f} | {ref_ppl:.3f} | "
            f"{same}/{len(eng_greedy)} |  (import+convert {took:.1f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
