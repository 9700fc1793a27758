"""`edgelut serve [MODEL]`: an OpenAI-compatible HTTP server (chat, completions, models, health).

Listens on 127.0.0.1:8080 unless told otherwise; the port is open at once and
/health answers 503 until the model has loaded. --api-key (or
$EDGELUT_API_KEY) requires `Authorization: Bearer KEY` on /v1; --cors ORIGIN
allows browser pages from ORIGIN. SIGTERM or Ctrl-C stops a running
generation and shuts down cleanly.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
from pathlib import Path

from edgelut.cli import UserError
from edgelut.cli.common import add_model_args, load_model, parse_size, positive_int, resolve_model

API_KEY_ENV = "EDGELUT_API_KEY"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API", description=__doc__)
    add_model_args(p)
    net = p.add_argument_group("server")
    net.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    net.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 = any free port)")
    net.add_argument(
        "--api-key", default=None, help=f"require this Bearer key (default: ${API_KEY_ENV}, else none)"
    )
    net.add_argument(
        "--cors", action="append", default=[], metavar="ORIGIN", help="allow browser requests from ORIGIN"
    )
    net.add_argument(
        "--max-queue", type=int, default=32, help="requests waiting behind the running one before 429"
    )
    net.add_argument(
        "--max-body", type=parse_size, default=4 << 20, metavar="SIZE", help="largest request body"
    )
    net.add_argument(
        "--cache-ram",
        type=parse_size,
        default=None,
        metavar="SIZE",
        help="host memory for the KV caches of other conversations, so interleaved conversations "
        "each continue from their own cache (default 256M; 0 with --memory-budget, which it would exceed)",
    )
    net.add_argument(
        "--stream-interval",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="send a stream's new text at most this often (default 0: every token as it comes); "
        "fewer, larger chunks leave more of a small machine's cores to the model",
    )
    net.add_argument("--model-id", default=None, help="the model's name in the API (default: from MODEL)")
    net.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))
    p.set_defaults(func=run)


def _listen(host: str, port: int) -> socket.socket:
    """The listening socket, opened before anything loads so a taken port is a clear error at once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise UserError(f"cannot resolve --host {host!r}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(128)
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _cache_ram(args: argparse.Namespace) -> int:
    if args.cache_ram is not None:
        positive_int("--cache-ram", args.cache_ram, allow_zero=True)
        return args.cache_ram
    # A memory budget bounds the whole process; saved caches are not in its count.
    return 0 if args.memory_budget else 256 << 20


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from edgelut.server import Server, ServerConfig, create_app

    if not 0 <= args.port <= 65535:
        raise UserError(f"--port must be in [0, 65535], got {args.port}")
    positive_int("--max-queue", args.max_queue)
    positive_int("--max-body", args.max_body)
    if not 0.0 <= args.stream_interval <= 1.0:
        raise UserError(f"--stream-interval must be in [0, 1] seconds, got {args.stream_interval}")
    if args.model is not None:
        resolve_model(args.model)  # a missing file is an error now, not after the port opened
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None
    model_id = args.model_id or (
        Path(args.model).name.removesuffix(".elut") if args.model else "smollm2-135m-instruct"
    )
    server = Server(
        ServerConfig(
            model_id=model_id,
            api_key=api_key,
            cors_origins=list(args.cors),
            max_waiting=args.max_queue,
            max_body_bytes=args.max_body,
            prompt_cache_bytes=_cache_ram(args),
            stream_interval_s=args.stream_interval,
        )
    )
    sock = _listen(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        create_app(server),
        log_level=args.log_level,
        access_log=args.log_level in ("debug", "info"),
        timeout_graceful_shutdown=10,
        lifespan="off",
    )
    uv = _uvicorn_server(config, server)
    failure: list[BaseException] = []

    def load() -> None:
        try:
            server.set_model(load_model(args))
        except BaseException as e:  # reported by the main thread after the server stops
            failure.append(e)
            uv.should_exit = True
            return
        print(f"edgelut serve: {model_id} ready (context {server.state.model.n_ctx} tokens)", file=sys.stderr)

    shown = "[" + host + "]" if ":" in host else host
    print(
        f"edgelut serve: listening on http://{shown}:{port} (loading {model_id})", file=sys.stderr, flush=True
    )
    threading.Thread(target=load, name="edgelut-serve-load", daemon=True).start()
    uv.run(sockets=[sock])
    if failure:
        e = failure[0]
        raise UserError(f"cannot load the model: {e}") from e
    return 0


def _uvicorn_server(config, server):
    """uvicorn's server, told to stop the running generation as soon as a signal asks it to exit
    (uvicorn then waits for the open responses, which end with that generation)."""
    import uvicorn

    class _Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            server.scheduler.shutdown()
            super().handle_exit(sig, frame)

    return _Server(config)
