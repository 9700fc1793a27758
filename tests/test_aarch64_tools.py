"""The aarch64 tools' checks and error paths, fast enough for the default run:
the ELF checker on tiny libraries from the Debian cross-compiler, token_ids.py,
and the scripts' answers to bad arguments (the builds themselves run in
tests/test_aarch64.py, marked slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgelut import capi

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
CROSS_CXX = "aarch64-linux-gnu-g++"


def _run(*cmd: str, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=300, check=False, **kw)


def _check_elf(lib: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run(sys.executable, str(TOOLS / "check_elf_aarch64.py"), str(lib), *extra)


def _cross_lib(tmp_path: Path, name: str, *flags: str) -> Path:
    if shutil.which(CROSS_CXX) is None:
        message = f"{CROSS_CXX} not found: apt-get install -y g++-aarch64-linux-gnu"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    src = tmp_path / "f.cc"
    src.write_text(
        '#include <string>\nextern "C" int f(const char* s) { return (int)std::string(s).size(); }\n'
    )
    out = tmp_path / name
    proc = _run(CROSS_CXX, "-shared", "-fPIC", "-O1", str(src), "-o", str(out), *flags)
    assert proc.returncode == 0, proc.stderr
    return out


def test_check_elf_accepts_16k_aligned_libc_only(tmp_path: Path) -> None:
    lib = _cross_lib(tmp_path, "ok.so", "-static-libstdc++", "-static-libgcc", "-Wl,-z,max-page-size=16384")
    proc = _check_elf(lib)
    assert proc.returncode == 0, proc.stdout
    assert "machine AArch64" in proc.stdout and "ok: 16 KB-aligned" in proc.stdout


def test_check_elf_rejects_4k_pages_and_shared_libstdcxx(tmp_path: Path) -> None:
    lib = _cross_lib(tmp_path, "bad.so", "-Wl,-z,max-page-size=4096", "-Wl,-z,common-page-size=4096")
    proc = _check_elf(lib)
    assert proc.returncode == 1
    assert "is aligned to 4096 bytes, not 16384" in proc.stdout
    assert "FAIL: NEEDED libstdc++.so.6: only libc, libm and libdl are allowed" in proc.stdout
    # --allow extends the NEEDED list, not the alignment rule.
    proc = _check_elf(lib, "--allow", "libstdc++.so.6", "--allow", "libgcc_s.so.1")
    assert proc.returncode == 1 and "NEEDED libstdc++" not in proc.stdout


def test_check_elf_rejects_other_machines_and_bad_input(tmp_path: Path) -> None:
    proc = _check_elf(capi.library_path())  # this machine's x86-64 libedgelut.so
    assert proc.returncode == 1 and "not AArch64" in proc.stdout
    text = tmp_path / "notes.txt"
    text.write_text("not an ELF file\n")
    proc = _check_elf(text)
    assert proc.returncode == 2 and f"{text} is not an ELF file" in proc.stderr
    proc = _check_elf(tmp_path / "missing.so")
    assert proc.returncode == 2 and "missing.so does not exist" in proc.stderr


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("build_wheel_aarch64.sh", ["--fast"], "unknown option '--fast'"),
        ("build_static_aarch64.sh", ["--fast"], "unknown option '--fast'"),
        ("qemu_aarch64_python.sh", ["--", "-c", "1"], "--wheel WHEEL is required"),
        (
            "qemu_aarch64_python.sh",
            ["--wheel", "/nonexistent.whl"],
            "wheel '/nonexistent.whl' does not exist",
        ),
        ("qemu_aarch64_python.sh", ["--cpus", "max"], "unknown option '--cpus'"),
        ("android_build.sh", ["--fast"], "unknown option '--fast'"),
    ],
)
def test_scripts_reject_bad_arguments(script: str, args: list[str], message: str) -> None:
    proc = _run("bash", str(TOOLS / script), *args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


def test_android_build_needs_an_ndk(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDROID_NDK")}
    proc = _run("bash", str(TOOLS / "android_build.sh"), env=env)
    assert proc.returncode == 2 and "set ANDROID_NDK_HOME" in proc.stderr
    proc = _run("bash", str(TOOLS / "android_build.sh"), env={**env, "ANDROID_NDK_HOME": str(tmp_path)})
    assert proc.returncode == 2 and "android.toolchain.cmake does not exist" in proc.stderr
    (tmp_path / "build" / "cmake").mkdir(parents=True)
    (tmp_path / "build" / "cmake" / "android.toolchain.cmake").write_text("")
    proc = _run(
        "bash", str(TOOLS / "android_build.sh"), "out", "v24", env={**env, "ANDROID_NDK_HOME": str(tmp_path)}
    )
    assert proc.returncode == 2 and "API_LEVEL must be a number, got 'v24'" in proc.stderr


def test_token_ids_round_trip_and_errors(tmp_path: Path) -> None:
    from edgelut import cache

    model = str(cache.default_model_file())
    enc = _run(sys.executable, str(TOOLS / "token_ids.py"), model, "encode", "Hello there", "--raw")
    assert enc.returncode == 0, enc.stderr
    ids = enc.stdout.split()
    dec = _run(sys.executable, str(TOOLS / "token_ids.py"), model, "decode", ",".join(ids))
    assert dec.returncode == 0 and dec.stdout.strip() == "Hello there"
    chat = _run(sys.executable, str(TOOLS / "token_ids.py"), model, "encode", "Hello there")
    assert len(chat.stdout.split()) > len(ids)  # the template's role markers
    bad = _run(sys.executable, str(TOOLS / "token_ids.py"), model, "decode", "12", "x7")
    assert bad.returncode == 2 and "'x7' is not a token id" in bad.stderr
    missing = _run(sys.executable, str(TOOLS / "token_ids.py"), str(tmp_path / "none.elut"), "encode", "hi")
    assert missing.returncode == 2 and "none.elut" in missing.stderr
