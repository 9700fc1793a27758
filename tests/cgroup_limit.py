"""Run a subprocess under a hard memory limit: a cgroup v1 memory child group.

The group is made under this process's own memory cgroup (from
/proc/self/cgroup), the limit set on memory and memory+swap, the child moved
in before it execs, and the group removed afterwards. ``available()`` says why
not when the controller is missing or not writable (not root, cgroup v2 only).
"""

from __future__ import annotations

import os
import subprocess
import uuid
from pathlib import Path

ROOT = Path("/sys/fs/cgroup/memory")


def _own_group() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if "memory" in controllers.split(","):
                return ROOT / path.lstrip("/")
    except OSError:
        return None
    return None


def available() -> str:
    """'' when a limited child group can be made here, else the reason it cannot."""
    group = _own_group()
    if group is None or not (group / "memory.limit_in_bytes").is_file():
        return "no cgroup v1 memory controller for this process"
    probe = group / f"edgelut-probe-{uuid.uuid4().hex[:8]}"
    try:
        probe.mkdir()
    except OSError as e:
        return f"the memory cgroup {group} is not writable ({e.strerror})"
    try:
        (probe / "memory.limit_in_bytes").write_text(str(256 << 20))
    except OSError as e:
        return f"cannot set memory.limit_in_bytes under {group} ({e.strerror})"
    finally:
        probe.rmdir()
    return ""


def run_limited(
    cmd: list[str], limit_bytes: int, timeout: float = 300, **kw
) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs cmd inside a fresh memory cgroup limited to limit_bytes; returns the result and the
    group's counters (max_usage_in_bytes, failcnt, oom_kill from memory.oom_control)."""
    group = _own_group()
    assert group is not None
    child = group / f"edgelut-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    child.mkdir()
    try:
        (child / "memory.limit_in_bytes").write_text(str(limit_bytes))
        memsw = child / "memory.memsw.limit_in_bytes"
        if memsw.is_file():
            memsw.write_text(str(limit_bytes))
        procs = str(child / "cgroup.procs")

        def enter() -> None:  # in the child, before exec: the whole run is charged to the group
            with open(procs, "w") as f:
                f.write(str(os.getpid()))

        proc = subprocess.run(cmd, preexec_fn=enter, timeout=timeout, capture_output=True, text=True, **kw)
        stats = {
            "max_usage": int((child / "memory.max_usage_in_bytes").read_text()),
            "failcnt": int((child / "memory.failcnt").read_text()),
        }
        for line in (child / "memory.oom_control").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                stats["oom_kill"] = int(value)
        return proc, stats
    finally:
        child.rmdir()
