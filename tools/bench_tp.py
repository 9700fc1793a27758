"""Tensor parallelism over a (simulated) LAN: edgelut shards against llama.cpp RPC, same links, same run.

For each model: decode and prefill tokens/s of
  - edgelut, 1 device, 1 thread (`edgelut bench`);
  - edgelut, 2 shards in one process, 1 thread each (the in-process all-reduce: the split's
    compute with a free network, the ceiling of the 2-device rows);
  - edgelut, 2 devices (coordinator + `edgelut worker`, 1 thread each, separate network
    namespaces) at each one-way delay, fp32 and int8 sync, and at a rate limit: the head split
    (tensor parallel, row "tp") and the layer split (`edgelut shard --split layers`, row "layers");
  - llama.cpp, 1 device, 1 thread (llama-bench) and 2 devices over RPC (ggml-rpc-server in the
    other namespace, llama-bench --rpc) on the Q4_0 of the same model, on the same links.
Links are tools/netlab.py: veth + `tc tbf` for the rate; this kernel has no sch_netem, so the
delay is tools/delay_relay.py, a user-space relay on the dialling side (at 0 ms the dialling
side connects straight over the veth). Needs root.

    python tools/bench_tp.py --llama-build /work/peers/llama.cpp/build --workdir /tmp/tp \\
        --models smollm2,qwen1.5b --delays 0,0.5,2 --rate 100 -p 64 -n 32

It also prints the latency model t = compute / N + 2 L x RTT + bytes / bandwidth, fitted to
nothing: its inputs are the model's shape and a device's measured or published speed.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import netlab  # noqa: E402

EDGELUT = [sys.executable, "-m", "edgelut.cli"]
MODELS = {
    # name: (source GGUF, edgelut file name)
    "smollm2": (Path.home() / ".cache/edgelut/models/SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2-q4g32.elut"),
    # where `edgelut pull qwen2.5-coder-1.5b-instruct` leaves the joined GGUF
    "qwen1.5b": (
        Path.home() / ".cache/edgelut/models/qwen2.5-coder-1.5b-instruct.gguf",
        "qwen2.5-coder-1.5b-q4g32.elut",
    ),
}
RPC_PORT = 50052
TP_PORT = 5555


@dataclass
class Row:
    model: str
    system: str  # "edgelut" or "llama.cpp"
    devices: int
    link: str  # "local", "in-process", "0 ms", "0.5 ms", "2 ms @ 100 Mbit/s", ...
    sync: str  # "fp32", "int8" or "-"
    prefill: float | None  # tokens/s
    decode: float | None
    note: str = ""


def run(cmd: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True, **kw)  # type: ignore[call-overload]


# ---- preparation ----------------------------------------------------------------------------
def prepare(name: str, workdir: Path, llama_bin: Path) -> dict[str, Path]:
    source, elut_name = MODELS[name]
    if not source.is_file():
        raise SystemExit(f"bench_tp: {source} is missing")
    elut = workdir / elut_name
    if not elut.is_file():
        run([*EDGELUT, "quantize", str(source), "-o", str(elut), "-q"], timeout=3600)
    shards = workdir / f"{name}-2"
    if not (shards / "manifest.json").is_file():
        run([*EDGELUT, "shard", str(elut), "-o", str(shards), "--devices", "2"], timeout=3600)
    layers = workdir / f"{name}-2-layers"
    if not (layers / "manifest.json").is_file():
        cmd = [*EDGELUT, "shard", str(elut), "-o", str(layers), "--devices", "2", "--split", "layers"]
        run(cmd, timeout=3600)
    q4_0 = workdir / f"{name}-q4_0.gguf"
    if not q4_0.is_file():
        run(
            [str(llama_bin / "llama-quantize"), "--allow-requantize", str(source), str(q4_0), "Q4_0", "1"],
            timeout=3600,
        )
    return {"elut": elut, "shards": shards, "layers": layers, "q4_0": q4_0}


def floor_note(
    base: dict[str, tuple[float, float]], sync: str, decode: float, rtt: float, n_layers: int
) -> str:
    """The head split's per-token cost of a link against its floor, (2 L + 1) x the RTT added.

    A decode token makes two all-reduces per layer plus the token's hand-over, each a round
    trip. The first link a sync mode runs on (normally 0 ms) is the base: what a slower link
    adds to the token time is compared with what its RTT adds to the floor.
    """
    token = 1.0 / decode if decode else float("inf")
    if sync not in base:
        base[sync] = (token, rtt)
        return f"RTT {rtt * 1e3:.2f} ms"
    token0, rtt0 = base[sync]
    floor = (2 * n_layers + 1) * (rtt - rtt0)
    ratio = (token - token0) / floor if floor > 0 else float("nan")
    return f"RTT {rtt * 1e3:.2f} ms; added {1e3 * (token - token0):.0f} ms/token = {ratio:.2f}x the floor"


# ---- edgelut ------------------------------------------------------------------------------
def edgelut_one(elut: Path, p: int, n: int, r: int) -> tuple[float, float]:
    out = run(
        [*EDGELUT, "bench", str(elut), "-t", "1", "-p", str(p), "-n", str(n), "-r", str(r), "--json"], 1800
    )
    j = json.loads(out.stdout.strip().splitlines()[-1])
    return j["prefill_tokens_per_s"], j["decode_tokens_per_s"]


IN_PROCESS = r"""
import json, sys, time, numpy as np
from edgelut.local_shards import LocalShardGroup
d, p, n, r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
g = LocalShardGroup(d, n_ctx=p + n + 8, n_threads=1)
pre, dec = [], []
for _ in range(r):
    for e in g.engines: e.reset()
    ids = list(np.random.default_rng(0).integers(100, 1000, p))
    t0 = time.perf_counter(); logits = g.eval(ids); pre.append(p / (time.perf_counter() - t0))
    tok, pos = int(np.argmax(logits)), p
    t0 = time.perf_counter()
    for _ in range(n):
        logits = g.eval([tok], pos); tok, pos = int(np.argmax(logits)), pos + 1
    dec.append(n / (time.perf_counter() - t0))
print(json.dumps({"prefill": sorted(pre)[len(pre) // 2], "decode": sorted(dec)[len(dec) // 2]}))
"""


def edgelut_in_process(shards: Path, p: int, n: int, r: int) -> tuple[float, float]:
    out = run([sys.executable, "-c", IN_PROCESS, str(shards), str(p), str(n), str(r)], 1800)
    j = json.loads(out.stdout.strip().splitlines()[-1])
    return j["prefill"], j["decode"]


def has_worker() -> bool:
    r = subprocess.run([*EDGELUT, "worker", "--help"], capture_output=True, text=True, timeout=60)
    return r.returncode == 0


def edgelut_two(
    lab: netlab.NetLab, shards: Path, delay: float, sync: str, p: int, n: int, r: int, budget: list[str]
) -> tuple[float, float]:
    """Coordinator (`edgelut bench --shards`) in host 0; `edgelut worker` in host 1 dials it."""
    files = sorted(shards.glob("shard-*.elut"))
    listen = f"tcp://{lab.addr(0)}:{TP_PORT}"
    via = ":".join(map(str, lab.endpoint(1, (lab.addr(0), TP_PORT), delay)))
    auth = ["--insecure"]  # the CURVE cost is the same for both rows of a pair; keys are tp's tests
    coord_cmd = [*EDGELUT, "bench", str(files[0]), "--shards", "2", "--listen", listen, "--sync", sync, *auth]
    coord_cmd += ["-t", "1", "-p", str(p), "-n", str(n), "-r", str(r), "--json"]
    coord = lab.popen(0, coord_cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lab.wait_port(1, (lab.addr(0), TP_PORT))
    worker_cmd = [*EDGELUT, "worker", str(files[1]), "--connect", f"tcp://{via}"]
    worker_cmd += ["--rank", "1", "--shards", "2", "-t", "1", *auth, *budget]
    worker = lab.popen(1, worker_cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out, err = coord.communicate(timeout=1800)
    finally:
        worker.kill()
    if coord.returncode:
        raise RuntimeError(f"coordinator failed: {err.strip().splitlines()[-1:]}")
    j = json.loads(out.strip().splitlines()[-1])
    return j["prefill_tokens_per_s"], j["decode_tokens_per_s"]


# ---- llama.cpp ----------------------------------------------------------------------------
def llama_bench(
    lab: netlab.NetLab | None, llama_bin: Path, q4_0: Path, p: int, n: int, r: int, rpc: str | None
):
    cmd = [
        str(llama_bin / "llama-bench"),
        "-m",
        str(q4_0),
        "-t",
        "1",
        "-p",
        str(p),
        "-n",
        str(n),
        "-r",
        str(r),
    ]
    cmd += ["-o", "json"]
    if rpc:
        cmd += ["--rpc", rpc]
    out = lab.run(0, cmd, timeout=1800, capture_output=True, text=True, check=True) if lab else run(cmd, 1800)
    rows = json.loads(out.stdout)
    pre = next(x["avg_ts"] for x in rows if x["n_prompt"] > 0)
    dec = next(x["avg_ts"] for x in rows if x["n_gen"] > 0)
    return pre, dec


def llama_rpc(lab: netlab.NetLab, llama_bin: Path, q4_0: Path, delay: float, p: int, n: int, r: int):
    server = lab.popen(
        1,
        [str(llama_bin / "ggml-rpc-server"), "-H", lab.addr(1), "-p", str(RPC_PORT), "-t", "1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lab.wait_port(0, (lab.addr(1), RPC_PORT))
        via = ":".join(map(str, lab.endpoint(0, (lab.addr(1), RPC_PORT), delay)))
        return llama_bench(lab, llama_bin, q4_0, p, n, r, via)
    finally:
        server.kill()
        server.wait(10)


# ---- the latency model --------------------------------------------------------------------
def latency_model(
    weight_bytes: float,
    mem_bw: float,
    n: int,
    layers: int,
    rtt: float,
    dim: int,
    link_bw: float,
    sync_bytes: float,
) -> float:
    """Seconds per decoded token: compute / N + 2 L x RTT + bytes / bandwidth.

    Decode streams every weight once (compute = weight_bytes / mem_bw on one device). A star
    all-reduce moves, through the coordinator's link, (N - 1) partial sums in and (N - 1)
    sums out, twice per layer, each dim x sync_bytes (4 for fp32, 34/32 for int8 blocks).
    """
    compute = weight_bytes / mem_bw / n
    bytes_per_token = 2 * layers * 2 * (n - 1) * dim * sync_bytes
    return compute + 2 * layers * rtt + bytes_per_token / link_bw


def predictions() -> list[dict]:
    # Llama-3-8B: 32 layers, dim 4096; ~4.7 GB at 4 bits. Raspberry Pi 5: ~9 GB/s of usable
    # memory bandwidth (LPDDR4X-4267, 32 bit; measured STREAM figures are 8-10 GB/s).
    out = []
    w, bw, layers, dim = 4.7e9, 9e9, 32, 4096
    links = {
        "1 device": (0.0, 1.0),
        "gigabit Ethernet (RTT 0.2 ms, 117 MB/s)": (0.2e-3, 117e6),
        "Wi-Fi 5 (RTT 3 ms, 25 MB/s shared)": (3e-3, 25e6),
    }
    for link, (rtt, lbw) in links.items():
        for sync, sb in (("fp32", 4.0), ("int8", 34 / 32)):
            n = 1 if link == "1 device" else 4
            if n == 1 and sync == "int8":
                continue
            t = latency_model(w, bw, n, layers, rtt, dim, lbw, sb) if n > 1 else w / bw
            out.append(
                {"link": link, "devices": n, "sync": sync if n > 1 else "-", "ms_per_token": round(t * 1e3)}
            )
    return out


# ---- main ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--llama-build", type=Path, required=True, help="llama.cpp build directory (bin/ under it)"
    )
    ap.add_argument("--workdir", type=Path, required=True, help="private directory for converted models")
    ap.add_argument("--models", default="smollm2,qwen1.5b")
    ap.add_argument("--delays", default="0,0.5,2", help="one-way delays in ms")
    ap.add_argument("--rate", type=float, default=100.0, help="Mbit/s of the rate-limited rows (0: none)")
    ap.add_argument("--syncs", default="fp32,int8")
    ap.add_argument("-p", type=int, default=64, help="prompt tokens")
    ap.add_argument("-n", type=int, default=32, help="decoded tokens")
    ap.add_argument("-r", type=int, default=2, help="repeats (median)")
    ap.add_argument(
        "--rows",
        default="one,inproc,tp,layers,llama",
        help="which rows: one (edgelut 1 device), inproc, tp (2 devices, head split, over the links), "
        "layers (2 devices, layer split, over the links), llama",
    )
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so every NetLab removes its namespaces and processes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    want = set(args.rows.split(","))
    args.skip_llama = "llama" not in want
    why = netlab.available()
    if why:
        raise SystemExit(f"bench_tp: {why}")
    llama_bin = args.llama_build / "bin"
    if not args.skip_llama and not (llama_bin / "ggml-rpc-server").is_file():
        raise SystemExit(
            f"bench_tp: {llama_bin}/ggml-rpc-server is missing; build it with "
            f"`cmake --build {args.llama_build} --target ggml-rpc-server -j 1` (needs -DGGML_RPC=ON)"
        )
    args.workdir.mkdir(parents=True, exist_ok=True)
    delays = [float(d) for d in args.delays.split(",")]
    links = [(d, None) for d in delays] + (
        [(delays[min(1, len(delays) - 1)], args.rate)] if args.rate else []
    )
    tp = has_worker()
    rows: list[Row] = []
    load0 = os.getloadavg()[0]

    def emit(row: Row) -> None:
        rows.append(row)
        pre = f"{row.prefill:.1f}" if row.prefill else "-"
        dec = f"{row.decode:.2f}" if row.decode else "-"
        print(
            f"| {row.model} | {row.system} | {row.devices} | {row.link} | {row.sync} | {pre} | {dec} "
            f"| {row.note} |",
            flush=True,
        )

    print("| model | system | devices | link | sync | prefill tok/s | decode tok/s | note |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        files = prepare(name, args.workdir, llama_bin)
        if "one" in want:
            emit(Row(name, "edgelut", 1, "local", "-", *edgelut_one(files["elut"], args.p, args.n, args.r)))
        if "inproc" in want:
            res = edgelut_in_process(files["shards"], args.p, args.n, args.r)
            emit(Row(name, "edgelut", 2, "in-process", "fp32", *res))
        if not args.skip_llama:
            emit(
                Row(
                    name,
                    "llama.cpp",
                    1,
                    "local",
                    "-",
                    *llama_bench(None, llama_bin, files["q4_0"], args.p, args.n, args.r, None),
                )
            )
        n_layers = int(json.loads((files["shards"] / "manifest.json").read_text())["n_layers"])
        base: dict[str, tuple[float, float]] = {}  # sync -> (token s, RTT s) on the first link
        for delay, rate in links:
            link = f"{delay:g} ms" + (f" @ {rate:g} Mbit/s" if rate else "")
            with netlab.NetLab(2, rate_mbit=rate) as lab:
                rtt = lab.echo_rtt(1, delay)
                for sync in args.syncs.split(",") if "tp" in want else []:
                    res: tuple[float | None, float | None] = (None, None)
                    note = "no `edgelut worker` in this build"
                    if tp:
                        try:
                            res = edgelut_two(lab, files["shards"], delay, sync, args.p, args.n, args.r, [])
                            note = floor_note(base, sync, res[1], rtt, n_layers)
                        except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                            note = f"failed: {e}"
                    emit(Row(name, "edgelut", 2, link, sync, *res, note))
                if "layers" in want and tp:
                    try:
                        res = edgelut_two(lab, files["layers"], delay, "fp32", args.p, args.n, args.r, [])
                        emit(Row(name, "edgelut layers", 2, link, "-", *res))
                    except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                        emit(Row(name, "edgelut layers", 2, link, "-", None, None, f"failed: {e}"))
                if not args.skip_llama:
                    try:
                        res = llama_rpc(lab, llama_bin, files["q4_0"], delay, args.p, args.n, args.r)
                        emit(Row(name, "llama.cpp RPC", 2, link, "-", *res))
                    except (RuntimeError, subprocess.SubprocessError, ValueError) as e:
                        emit(Row(name, "llama.cpp RPC", 2, link, "-", None, None, f"failed: {e}"))
    print(
        f"\nload average at start {load0:.1f}, at end {os.getloadavg()[0]:.1f} (2 cores); "
        f"host {socket.gethostname()}"
    )
    print("\nLatency model, Llama-3-8B-sized (32 layers, dim 4096, 4.7 GB at 4 bits) on Raspberry Pi 5:")
    for pr in predictions():
        print(f"  {pr['link']}: {pr['devices']} device(s) {pr['sync']}: {pr['ms_per_token']} ms/token")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in rows], indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
