"""A live `edgelut serve` process for tests: started on a free loopback port (the OS picks
it: `--port 0`, read back from the server's first line), stopped with SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


class ServerProcess:
    def __init__(self, model: str | Path | None, *args: str, env: dict[str, str] | None = None) -> None:
        cmd = [sys.executable, "-m", "edgelut.cli", "serve"]
        cmd += [str(model)] if model is not None else []
        cmd += ["--port", "0", "-t", "2", *args]
        self.proc = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.lines: list[str] = []
        self._port: list[int] = []
        self._seen = threading.Event()
        self._drainer = threading.Thread(target=self._drain, daemon=True)
        self._drainer.start()
        if not self._seen.wait(60) or not self._port:
            self.stop()
            raise RuntimeError("server did not start: " + "".join(self.lines))
        self.port = self._port[0]
        self.base = f"http://127.0.0.1:{self.port}"

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)
            m = re.search(r"listening on http://[^:]+:(\d+)", line)
            if m and not self._port:
                self._port.append(int(m.group(1)))
                self._seen.set()
        self._seen.set()

    @property
    def stderr(self) -> str:
        return "".join(self.lines)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.stderr}")
            status, _, _ = self.request("GET", "/health")
            if status == 200:
                return
            time.sleep(0.2)
        raise TimeoutError("the model did not load in time: " + self.stderr)

    def conn(self, timeout: float = 120) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | dict | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], Any]:
        """(status, headers, parsed JSON body or text) of one request on a fresh connection."""
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        c = self.conn()
        try:
            c.request(
                method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})}
            )
            r = c.getresponse()
            raw = r.read().decode("utf-8", "replace")
            try:
                parsed: Any = json.loads(raw)
            except json.JSONDecodeError:
                parsed = raw
            return r.status, {k.lower(): v for k, v in r.getheaders()}, parsed
        finally:
            c.close()

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health")[2]

    def wait_idle(self, timeout: float) -> float:
        """Seconds until no generation runs; raises on timeout."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            h = self.health()
            if not h["busy"] and h["waiting"] == 0:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"server still busy after {timeout} s: {self.health()}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drainer.join(10)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def open_stream(
    server: ServerProcess, path: str, body: dict[str, Any]
) -> tuple[http.client.HTTPConnection, Any]:
    """A streaming request left open: (connection, response) to read events from."""
    c = server.conn()
    c.request(
        "POST", path, body=json.dumps({**body, "stream": True}), headers={"Content-Type": "application/json"}
    )
    r = c.getresponse()
    assert r.status == 200, r.read()
    return c, r


def read_events(response: Any, n: int | None = None) -> list[str]:
    """The data lines of up to n SSE events (all of them when n is None)."""
    out: list[str] = []
    while n is None or len(out) < n:
        line = response.readline()
        if not line:
            break
        line = line.decode().strip()
        if line.startswith("data: "):
            out.append(line[6:])
    return out


# A ChatML template that renders tools the way Qwen2.5's does (a tools block in the system turn).
TOOLS_TEMPLATE = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>\n"
    "{% for t in tools %}{{ t | tojson }}\n{% endfor %}</tools>\n"
    'Reply with <tool_call>{"name": ..., "arguments": ...}</tool_call>.<|im_end|>\n{% endif %}'
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def write_tiny_tools_model(directory: Path) -> Path:
    """A tiny random Hugging Face model whose chat template supports tools."""
    from model_fixtures import tiny_config, tiny_weights, write_hf_dir

    cfg = tiny_config()
    write_hf_dir(directory, cfg, tiny_weights(cfg))
    tc = {
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>"},
        "chat_template": TOOLS_TEMPLATE,
    }
    (directory / "tokenizer_config.json").write_text(json.dumps(tc), encoding="utf-8")
    return directory
