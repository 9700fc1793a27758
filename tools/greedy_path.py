"""The greedy path of a model file: the first N tokens after a prompt and the
logits at every step, saved to an .npz so two machines (x86-64 natively and
aarch64 under qemu, tests/test_aarch64_wheel.py) can be compared token by token
and logit by logit.

    python tools/greedy_path.py MODEL.elut OUT.npz [-p PROMPT] [-n 16] [-t THREADS] [--matmul-path lut]

--matmul-path picks the prefill matmul family on both machines alike: "auto"
(the default) takes the int8 prefill kernel where the ISA has one (AVX-512
VNNI, the scalar reference) and the LUT GEMM elsewhere (NEON), so two ISAs
can evaluate the same prompt with different approximations.

Prints the generated text, the token ids, the ISA and the CPU features.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import edgelut
from edgelut import kernels

DEFAULT_PROMPT = "The capital of France is"


def greedy_path(model: edgelut.Model, prompt: str, n_tokens: int) -> tuple[list[int], np.ndarray]:
    """(ids, logits): n_tokens greedy ids and the (n_tokens, vocab) logits each was picked from."""
    engine = model.engine
    ids = model.tokenize(prompt)
    logits = np.asarray(engine.eval(np.asarray(ids, dtype=np.int32), 0)).reshape(-1)
    pos, out, rows = len(ids), [], []
    for _ in range(n_tokens):
        rows.append(logits.copy())
        tok = int(np.argmax(logits))
        out.append(tok)
        logits = np.asarray(engine.eval(np.asarray([tok], dtype=np.int32), pos)).reshape(-1)
        pos += 1
    return out, np.stack(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out", help="the .npz to write (ids, logits, isa)")
    ap.add_argument("-p", "--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("-n", "--tokens", type=int, default=16)
    ap.add_argument("-t", "--threads", type=int, default=1)
    ap.add_argument("--matmul-path", choices=("auto", "lut", "int8"), default="auto")
    args = ap.parse_args(argv)
    if args.tokens < 1:
        ap.error(f"--tokens must be >= 1, got {args.tokens}")
    model = edgelut.load(args.model, n_threads=args.threads, n_ctx=256)
    model.engine.matmul_path = args.matmul_path
    ids, logits = greedy_path(model, args.prompt, args.tokens)
    np.savez(args.out, ids=np.asarray(ids, dtype=np.int32), logits=logits, isa=kernels.cpu_isa())
    text = model.detokenize(ids)
    print(f"isa: {kernels.cpu_isa()}  features: {' '.join(kernels.cpu_features())}")
    print(f"ids: {' '.join(map(str, ids))}")
    print(f"text: {text!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
