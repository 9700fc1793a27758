"""The C++ kernel check (tests/cpp/kernel_check.cc), built by
tools/cross_build_aarch64.sh: cross-compiled for aarch64 and run under
qemu-aarch64 (covers the NEON kernel on an x86 machine), and built natively.

Under qemu the quick mode (every type, group size and symmetry on small shapes)
runs by default and the full shape set is marked slow; natively the full set is
fast enough for the default run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "cross_build_aarch64.sh"
CROSS_TOOLS = ("aarch64-linux-gnu-g++", "qemu-aarch64")
DEBIAN_PACKAGES = "g++-aarch64-linux-gnu qemu-user"
# Cases per ISA: 5 types x 3 group sizes x 3 scale forms (symmetric, asymmetric, two-level)
# x shapes x token counts.
QUICK_CASES = 5 * 3 * 3 * 3 * 2
FULL_CASES = 5 * 3 * 3 * 5 * 3
SUMMARY = re.compile(r"^kernel_check: (\d+) passed, (\d+) failed$", re.MULTILINE)


def _require_cross_tools() -> None:
    """Skips (fails under CI) when the cross toolchain or qemu is missing."""
    missing = [tool for tool in CROSS_TOOLS if shutil.which(tool) is None]
    if missing:
        message = (
            f"{' and '.join(missing)} not found: install the Debian packages {DEBIAN_PACKAGES} "
            f"(apt-get install -y {DEBIAN_PACKAGES})"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _build(build_dir: Path, *flags: str) -> Path:
    proc = subprocess.run(
        ["bash", str(SCRIPT), *flags, str(build_dir)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, f"build failed:\n{proc.stdout}\n{proc.stderr}"
    binary = build_dir / "kernel_check"
    assert binary.is_file()
    return binary


def _check_output(proc: subprocess.CompletedProcess[str], isa: str) -> int:
    """Asserts a clean kernel_check run that covered `isa`; returns the pass count."""
    assert proc.returncode == 0, f"kernel_check failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}"
    isa_line = proc.stdout.splitlines()[0]
    assert isa in isa_line.split(":", 1)[1].split(), isa_line
    match = SUMMARY.search(proc.stdout)
    assert match is not None, proc.stdout[-2000:]
    passed, failed = int(match.group(1)), int(match.group(2))
    assert failed == 0
    return passed


@pytest.fixture(scope="module")
def aarch64_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require_cross_tools()
    return _build(tmp_path_factory.mktemp("aarch64"))


@pytest.fixture(scope="module")
def native_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("native"), "--native")


def _run_qemu(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # QEMU_CPU=max turns on every optional AArch64 feature qemu emulates.
    env = {**os.environ, "QEMU_CPU": os.environ.get("QEMU_CPU", "max")}
    return subprocess.run(
        ["qemu-aarch64", str(binary), *args], capture_output=True, text=True, env=env, check=False
    )


def test_cross_tools_present_or_reported() -> None:
    # Runs first and alone states why the NEON tests below would be skipped.
    _require_cross_tools()


def test_aarch64_binary_is_static_arm(aarch64_binary: Path) -> None:
    # ELF64 little-endian, machine EM_AARCH64 (183), and no PT_INTERP program
    # header: a static binary needs no aarch64 sysroot under qemu.
    elf = aarch64_binary.read_bytes()
    assert elf[:6] == b"\x7fELF\x02\x01"
    assert int.from_bytes(elf[18:20], "little") == 183
    phoff = int.from_bytes(elf[32:40], "little")
    phentsize = int.from_bytes(elf[54:56], "little")
    phnum = int.from_bytes(elf[56:58], "little")
    types = [
        int.from_bytes(elf[phoff + i * phentsize : phoff + i * phentsize + 4], "little") for i in range(phnum)
    ]
    pt_load, pt_interp = 1, 3
    assert pt_load in types and pt_interp not in types


def test_neon_kernels_quick_under_qemu(aarch64_binary: Path) -> None:
    passed = _check_output(_run_qemu(aarch64_binary, "--quick"), "neon")
    assert passed == QUICK_CASES * 2  # scalar and neon


@pytest.mark.slow
def test_neon_kernels_full_under_qemu(aarch64_binary: Path) -> None:
    passed = _check_output(_run_qemu(aarch64_binary), "neon")
    assert passed == FULL_CASES * 2  # scalar and neon


def test_kernel_check_rejects_unknown_argument(native_binary: Path) -> None:
    proc = subprocess.run([str(native_binary), "--fast"], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert "unknown argument '--fast'" in proc.stderr


def test_native_kernels_full(native_binary: Path) -> None:
    # Natively the full shape set takes a few seconds, so it stays in the default run.
    proc = subprocess.run([str(native_binary)], capture_output=True, text=True, check=False)
    passed = _check_output(proc, "scalar")
    assert passed > 0 and passed % FULL_CASES == 0
