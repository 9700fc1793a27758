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
answer from its prompt cache. The decode rate of `edgelut bench -p P -n N`
(the engine alone, no HTTP; P the request's prompt tokens, so it decodes at
the same positions) is measured in the same rounds; the server's overhead
per token is 1/server_rate - 1/bench_rate.

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
    prompt_tokens: int
    text: str


ESSAY = {"type": "object", "properties": {"essay": {"type": "string"}}, "required": ["essay"]}


def stream_request(
    port: int, i: int, n: int, constrained: bool = False, messages: list[dict[str, str]] | None = None
) -> Stream:
    """One streaming completion; timing from the request to its first and last token events.

    ``constrained``: a chat request whose reply must match a JSON schema (a long string
    field, so the reply runs to max_tokens); the grammar masks every token.
    ``messages``: a chat request of these messages instead of the numbered prompt.

    The client only timestamps where each SSE event starts while the stream runs and
    parses the events after it ended: on a 2-core machine a client that parses JSON
    per token takes CPU from the server it measures (~0.2 ms a token with
    http.client + json.loads per line).
    """
    body: dict = {"max_tokens": n, "temperature": 0, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if messages is not None:
        path = "/v1/chat/completions"
        body["messages"] = messages
    elif constrained:
        path = "/v1/chat/completions"
        body["messages"] = [{"role": "user", "content": PROMPT.format(i=i)}]
        body["response_format"] = {"type": "json_schema", "json_schema": {"name": "essay", "schema": ESSAY}}
    else:
        path = "/v1/completions"
        body["prompt"] = PROMPT.format(i=i)
        body["ignore_eos"] = True
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    ).encode()
    buf = bytearray()
    marks: list[tuple[int, float]] = []  # (offset of an event's "data: ", arrival time)
    with socket.create_connection(("127.0.0.1", port), timeout=300) as sock:
        t0 = time.perf_counter()
        sock.sendall(head + payload)
        while True:
            data = sock.recv(1 << 16)
            if not data:
                break
            now = time.perf_counter()
            buf += data
            # From 5 bytes before this read: a marker may be split across two reads.
            k = buf.find(b"data: ", max(0, len(buf) - len(data) - 5))
            while k >= 0:
                if not marks or marks[-1][0] != k:
                    marks.append((k, now))
                k = buf.find(b"data: ", k + 6)
    status = bytes(buf[: buf.find(b"\r\n")])
    if b" 200 " not in status:
        raise RuntimeError(f"{status.decode(errors='replace')}: {bytes(buf[:400])!r}")
    first = last = 0.0
    events = 0
    usage = None
    text: list[str] = []
    for k, when in marks:
        line = bytes(buf[k + 6 : buf.find(b"\n", k)]).strip()
        if line == b"[DONE]":
            continue
        obj = json.loads(line)
        if obj.get("usage"):
            usage = obj["usage"]
        choice = obj["choices"][0] if obj.get("choices") else {}
        piece = choice.get("text") or (choice.get("delta") or {}).get("content")
        if piece:
            text.append(piece)
            first = first or when
            last = when
            events += 1
    tokens = usage["completion_tokens"] if usage else events
    decode = (tokens - 1) / (last - first) if last > first else 0.0
    prompt = usage["prompt_tokens"] if usage else 0
    return Stream(
        ttft_s=first - t0,
        decode_tps=decode,
        tokens=tokens,
        end=last,
        prompt_tokens=prompt,
        text="".join(text),
    )


BACKGROUND = (
    "The river starts in the mountains, where snow melts in spring and feeds a hundred small streams. "
    "Lower down it turns mills, waters fields and carries boats between market towns, and every town "
    "along it has a bridge, a quay and a story about the year the water rose. "
) * 6


def interleaved(port: int, n: int, turns: int) -> float:
    """Median time to first token (ms) of two conversations that take turns, over
    every turn after each conversation's first: does a server continue each one
    from its own cache, or evaluate its history again?"""
    convs = [[{"role": "system", "content": f"Conversation {k}. {BACKGROUND}"}] for k in (1, 2)]
    ttfts = []
    for t in range(turns):
        for conv in convs:
            conv.append({"role": "user", "content": f"Question {t}: what happens next?"})
            s = stream_request(port, 0, n, messages=conv)
            conv.append({"role": "assistant", "content": s.text})
            if t > 0:
                ttfts.append(s.ttft_s * 1e3)
    return statistics.median(ttfts)


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


def engine_decode(elut: str, threads: int, n: int, prompt: int) -> float:
    """`edgelut bench` decode from position ``prompt`` on: the positions a served request decodes at."""
    cmd = [
        sys.executable,
        "-m",
        "edgelut.cli",
        "bench",
        elut,
        "-p",
        str(prompt),
        "-n",
        str(n),
        "-t",
        str(threads),
    ]
    out = subprocess.run(
        cmd,
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
    ap.add_argument(
        "--interleaved",
        type=int,
        metavar="TURNS",
        help="instead: two conversations taking TURNS turns each; TTFT with and without saved caches",
    )
    ap.add_argument(
        "--decode-only",
        action="store_true",
        help="only the single-client stream (TTFT, decode) and the engine bench: the server's overhead",
    )
    ap.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="an extra argument for `edgelut serve` (repeat; e.g. --serve-arg=--stream-interval=0.05)",
    )
    args = ap.parse_args()
    for p in (args.llama_server, args.elut, args.gguf):
        if not Path(p).exists():
            ap.error(f"{p} does not exist")
    slots = max(args.clients)
    t, n = str(args.threads), args.n
    servers = {
        "edgelut": lambda port: [
            sys.executable, "-m", "edgelut.cli", "serve", args.elut, "-t", t, "--ctx", str(args.ctx),
            "--port", str(port), "--max-queue", str(slots), *args.serve_arg,
        ],
        "llama.cpp": lambda port: [
            args.llama_server, "-m", args.gguf, "-t", t, "-tb", t, "-c", str(args.ctx * slots),
            "--parallel", str(slots), "--port", str(port), "--host", "127.0.0.1", "--no-webui",
        ],
    }  # fmt: skip
    if args.interleaved:
        servers["edgelut --cache-ram 0"] = lambda port: [*servers["edgelut"](port), "--cache-ram", "0"]
        return interleaved_rounds(servers, args.rounds, args.interleaved, t)
    rows = {name: Rows() for name in servers}
    base = int(time.time())  # unique prompts across rounds too
    for rnd in range(args.rounds):
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
                if name == "edgelut":
                    prompt = s.prompt_tokens
                if args.decode_only:
                    continue
                rows[name].add("json", stream_request(port, base, n, constrained=True).decode_tps)
                base += 1
                for c in args.clients:
                    rows[name].add(f"total{c}", concurrent(port, c, n, base))
                    base += c
            finally:
                child.stop()
        rows["edgelut"].add("bench", engine_decode(args.elut, args.threads, n, prompt))
        print(f"round {rnd + 1}/{args.rounds} done", file=sys.stderr)

    e, ll = rows["edgelut"], rows["llama.cpp"]
    extra = f"; edgelut serve {' '.join(args.serve_arg)}" if args.serve_arg else ""
    load = os.getloadavg()[0]
    print(f"\n{args.rounds} rounds, medians; -t {t}, {n} tokens per request, load {load:.1f}{extra}\n")
    print("| metric | edgelut serve | llama-server | edgelut / llama |")
    print("| --- | --- | --- | --- |")
    keys = [("ttft_ms", "TTFT, 1 client (ms)"), ("decode", "decode tokens/s, 1 client")]
    if not args.decode_only:
        keys += [("json", "decode tokens/s, 1 client, json_schema")]
        keys += [(f"total{c}", f"total tokens/s, {c} clients") for c in args.clients]
    for key, label in keys:
        a, b = e.med(key), ll.med(key)
        print(f"| {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    bench = e.med("bench")
    overhead = (1 / e.med("decode") - 1 / bench) * 1e3
    print(f"\n`edgelut bench -p {prompt} -n {n} -t {t}` decode: {bench:.1f} tokens/s; the server's")
    print(f"single-client decode is {e.med('decode') / bench:.3f}x of it: {overhead:.2f} ms per token")
    print("of HTTP + SSE + Python.")
    print(json.dumps({k: v.values for k, v in rows.items()}), file=sys.stderr)
    return 0


def interleaved_rounds(servers: dict, rounds: int, turns: int, t: str) -> int:
    rows = {name: Rows() for name in servers}
    for rnd in range(rounds):
        for name, cmd in servers.items():
            port = free_port()
            child = Child(name.replace(" ", "_"), cmd(port), port)
            try:
                rows[name].add("ttft_ms", interleaved(port, 16, turns))
            finally:
                child.stop()
        print(f"round {rnd + 1}/{rounds} done", file=sys.stderr)
    print(
        f"\n{rounds} rounds, medians; -t {t}, two conversations x {turns} turns, "
        f"load {os.getloadavg()[0]:.1f}\n"
    )
    print("| server | TTFT of a returning turn (ms) | vs llama-server |")
    print("| --- | --- | --- |")
    ref = rows["llama.cpp"].med("ttft_ms")
    for name, r in rows.items():
        print(f"| {name} | {r.med('ttft_ms'):.1f} | {r.med('ttft_ms') / ref:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
