"""`edgelut serve` against llama.cpp's `llama-server` on the same model, measured in one run.

Both servers run as child processes with the same thread count; each round
measures, one server after the other (interleaved, so a busy period of the
shared machine hits both):

- 1 client: one streaming /v1/completions request of --n tokens (ignore_eos),
  time to first token (TTFT) and decode tokens/s between the first and the
  last token;
- 1 client, constrained: a chat request with a json_schema response_format
  (edgelut: llguidance mask + Python decode loop; llama-server: its grammar);
- C concurrent clients for each C in --clients: every client sends one such
  request at the same moment; total tokens/s = all tokens / wall time.

Every request's prompt starts with a unique number so neither server can
answer from its prompt cache. The decode rate of `edgelut bench -p 1 -n N`
(the engine alone, no HTTP) is measured in the same rounds; the server's
overhead per token is 1/server_rate - 1/bench_rate.

llama-server gets --parallel max(C) slots (its continuous batching) and a
context of max(C) x --ctx, so each slot has --ctx; edgelut serves one request
at a time (FIFO) with --ctx.

Example (from the repository root, edgelut installed):

    python tools/bench_serve.py --llama-server /work/peers/llama.cpp/build/bin/llama-server \\
        --elut ~/.cache/edgelut/models/smollm2-135m-instruct-q4g32.elut \\
        --gguf ~/.cache/edgelut/models/SmolLM2-135M-Instruct.Q4_1.gguf -t 2 -n 64 -r 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

PROMPT = (
    "Request {i}. The history of the city of Paris begins with a settlement on an island in the Seine. "
    "Over the centuries it grew into a capital of trade, learning and art, and its streets, bridges and "
    "markets tell that story. Write a long essay about it:"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """A server process on a free loopback port, ready once /health answers 200."""

    def __init__(self, name: str, cmd: list[str], port: int) -> None:
        self.name, self.port = name, port
        self.log = open(f"/tmp/bench_serve_{name}_{os.getpid()}.log", "w")  # noqa: SIM115 (closed in stop)
        print(f"$ {shlex.join(cmd)}", file=sys.stderr)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with {self.proc.returncode}; see {self.log.name}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                c.request("GET", "/health")
                if c.getresponse().status == 200:
                    c.close()
                    return
                c.close()
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"{name} did not become ready")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Stream:
    ttft_s: float
    decode_tps: float
    tokens: int
    end: float


ESSAY = {"type": "object", "properties": {"essay": {"type": "string"}}, "required": ["essay"]}


def stream_request(port: int, i: int, n: int, constrained: bool = False) -> Stream:
    """One streaming completion; timing from the request to its first and last token events.

    ``constrained``: a chat request whose reply must match a JSON schema (a long string
    field, so the reply runs to max_tokens); the grammar masks every token.
    """
    body: dict = {"max_tokens": n, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if constrained:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": PROMPT.format(i=i)}]
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "essay", "schema": ESSAY}}
    else:
        path = "/v1/completions"
        body["prompt"] = PROMPT.format(i=i)
        body["ignore_eos"] = True
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    t0 = time.perf_counter()
    c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"HTTP {r.status}: {r.read()[:300]!r}")
    first = last = 0.0
    events = 0
    usage = None
    while True:
        line = r.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        obj = json.loads(line[6:])
        if obj.get("usage"):
            usage = obj["usage"]["completion_tokens"]
        choice = obj["choices"][0] if obj.get("choices") else {}
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            now = time.perf_counter()
            first = first or now
            last = now
            events += 1
    c.close()
    tokens = usage or events
    decode = (tokens - 1) / (last - first) if last > first else 0.0
    return Stream(ttft_s=first - t0, decode_tps=decode, tokens=tokens, end=last)


def concurrent(port: int, clients: int, n: int, base: int) -> float:
    """Total completion tokens/s of `clients` simultaneous requests."""
    results: list[Stream] = []
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)

    def one(i: int) -> None:
        start.wait()
        try:
            results.append(stream_request(port, base + i, n))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return sum(r.tokens for r in results) / (max(r.end for r in results) - t0)


def engine_decode(elut: str, threads: int, n: int) -> float:
    out = subprocess.run(
        [sys.executable, "-m", "edgelut.cli", "bench", elut, "-p", "1", "-n", str(n), "-t", str(threads)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"tg\d+: ([\d.]+) tokens/s", out).group(1))


@dataclass
class Rows:
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, key: str, v: float) -> None:
        self.values.setdefault(key, []).append(v)
        print(f"  {key}: {v:.2f}", file=sys.stderr, flush=True)  # progress; figures of a cut-short run

    def med(self, key: str) -> float:
        return statistics.median(self.values[key])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--llama-server", required=True, help="path to llama.cpp's llama-server")
    ap.add_argument("--elut", required=True, help="edgelut model file")
    ap.add_argument("--gguf", required=True, help="the GGUF llama-server loads (same model, same bits)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("-n", type=int, default=64, help="tokens per request")
    ap.add_argument("-c", "--ctx", type=int, default=1024, help="context per request slot")
    ap.add_argument("--clients", type=int, nargs="+", default=[4, 8])
    ap.add_argument("-r", "--rounds", type=int, default=3)
    args = ap.parse_args()
    for p in (args.llama_server, args.elut, args.gguf):
        if not Path(p).exists():
            ap.error(f"{p} does not exist")
    slots = max(args.clients)
    t, n = str(args.threads), args.n
    servers = {
        "edgelut": lambda port: [
            sys.executable, "-m", "edgelut.cli", "serve", args.elut, "-t", t, "--ctx", str(args.ctx),
            "--port", str(port), "--max-queue", str(slots),
        ],
        "llama.cpp": lambda port: [
            args.llama_server, "-m", args.gguf, "-t", t, "-tb", t, "-c", str(args.ctx * slots),
            "--parallel", str(slots), "--port", str(port), "--host", "127.0.0.1", "--no-webui",
        ],
    }  # fmt: skip
    rows = {name: Rows() for name in servers}
    base = int(time.time())  # unique prompts across rounds too
    for rnd in range(args.rounds):
        rows["edgelut"].add("bench", engine_decode(args.elut, args.threads, n))
        for name, cmd in servers.items():
            port = free_port()
            child = Child(name, cmd(port), port)
            try:
                stream_request(port, base, 8)  # warm-up
                base += 1
                s = stream_request(port, base, n)
                base += 1
                rows[name].add("ttft_ms", s.ttft_s * 1e3)
                rows[name].add("decode", s.decode_tps)
                rows[name].add("json", stream_request(port, base, n, constrained=True).decode_tps)
                base += 1
                for c in args.clients:
                    rows[name].add(f"total{c}", concurrent(port, c, n, base))
                    base += c
            finally:
                child.stop()
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    e, ll = rows["edgelut"], rows["llama.cpp"]
    print(f"\n{args.rounds} rounds, medians; -t {t}, {n} tokens per request, load {os.getloadavg()[0]:.1f}\n")
    print("| metric | edgelut serve | llama-server | edgelut / llama |")
    print("| --- | --- | --- | --- |")
    keys = [("ttft_ms", "TTFT, 1 client (ms)"), ("decode", "decode tokens/s, 1 client")]
    keys += [("json", "decode tokens/s, 1 client, json_schema")]
    keys += [(f"total{c}", f"total tokens/s, {c} clients") for c in args.clients]
    for key, label in keys:
        a, b = e.med(key), ll.med(key)
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    bench = e.med("bench")
    overhead = (1 / e.med("decode") - 1 / bench) * 1e3
    print(f"\n`edgelut bench -p 1 -n {n} -t {t}` decode: {bench:.1f} tokens/s; the server's")
    print(f"single-client decode is {e.med('decode') / bench:.3f}x of it: {overhead:.2f} ms per token")
    print("of HTTP + SSE + Python.")
    print(json.dumps({k: v.values for k, v in rows.items()}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
