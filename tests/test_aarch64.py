"""aarch64 as a tested target, on an x86-64 machine: the manylinux2014_aarch64
wheel (tools/build_wheel_aarch64.sh) under qemu-aarch64 with Debian's arm64
python3.11, and the static musl `edgelut-chat` and Android-style libedgelut.so
(tools/build_static_aarch64.sh). Each qemu check runs on two CPU models:
`max` (dotprod, i8mm) and `cortex-a53` (plain ARMv8.0 NEON).

Marked slow (the builds and qemu take minutes) and aarch64: the CI stage runs
`python -m pytest -m aarch64` (README, `ci:aarch64`). EDGELUT_AARCH64_WHEEL and
EDGELUT_AARCH64_STATIC_DIR reuse earlier builds. Speed under qemu means
nothing and is never measured here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import edgelut
from edgelut import cache

ROOT = Path(__file__).resolve().parents[1]
TOOLS = ROOT / "tools"
CPUS = ("max", "cortex-a53")
# What Linux reports on each qemu CPU model (kernels.cpu_features()).
FEATURES = {"max": ["asimd", "asimddp", "i8mm"], "cortex-a53": ["asimd"]}
N_TOKENS = 16
# The part of the suite run under qemu: kernels against the scalar reference,
# the model-file reader, the engine against numpy on tiny models.
QEMU_SUITE = ("tests/test_kernels.py", "tests/test_modelfile.py", "tests/test_engine.py")
# Deselected under qemu: the hypothesis sweep (40 random shapes) and the numpy
# reference forward of the real model (minutes under qemu; the greedy-token
# test below covers the real model against x86-64 instead).
QEMU_DESELECT = "not property and not smollm2"

pytestmark = [pytest.mark.slow, pytest.mark.aarch64]


def _require(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"{' and '.join(missing)} not found: apt-get install -y qemu-user binutils"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _run(cmd: list[str], timeout: float = 1800, **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("qemu-aarch64", "readelf", "apt-get", "dpkg-deb")
    if prebuilt := os.environ.get("EDGELUT_AARCH64_WHEEL"):  # a wheel built before, to rerun the checks
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("wheel")
    proc = _run(["bash", str(TOOLS / "build_wheel_aarch64.sh"), str(out)])
    assert proc.returncode == 0, f"wheel build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    (path,) = out.glob("edgelut-*.whl")
    return path


@pytest.fixture(scope="module")
def static_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    _require("qemu-aarch64", "readelf")
    if prebuilt := os.environ.get("EDGELUT_AARCH64_STATIC_DIR"):  # tools/build_static_aarch64.sh's OUT_DIR
        return Path(prebuilt)
    out = tmp_path_factory.mktemp("musl")
    proc = _run(["bash", str(TOOLS / "build_static_aarch64.sh"), str(out)])
    assert proc.returncode == 0, f"static build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out


def _qemu_python(
    wheel: Path, cpu: str, *args: str, timeout: float = 1800
) -> subprocess.CompletedProcess[str]:
    cmd = ["bash", str(TOOLS / "qemu_aarch64_python.sh"), "--wheel", str(wheel), "--cpu", cpu, "--", *args]
    return _run(cmd, timeout=timeout, cwd=ROOT)


def _elf_check(lib: Path, *allow: str) -> subprocess.CompletedProcess[str]:
    extra = [a for name in allow for a in ("--allow", name)]
    return _run([sys.executable, str(TOOLS / "check_elf_aarch64.py"), str(lib), *extra])


# ---- the wheel ------------------------------------------------------------------


def test_wheel_is_manylinux2014_aarch64(wheel: Path, tmp_path: Path) -> None:
    assert wheel.name.endswith("-cp311-cp311-manylinux2014_aarch64.manylinux_2_17_aarch64.whl"), wheel.name
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(tmp_path)
    libs = [n for n in names if n.endswith(".so")]
    assert sorted(libs) == ["edgelut/_core.cpython-311-aarch64-linux-gnu.so", "edgelut/lib/libedgelut.so"], (
        libs
    )
    assert "edgelut/include/edgelut.h" in names
    for lib in libs:
        # glibc 2.17 keeps pthreads in its own library; everything else is libc/libm/libdl
        # (zig links libc++ statically: no libstdc++ or libc++_shared to find).
        proc = _elf_check(tmp_path / lib, "libpthread.so.0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        versions = set(
            re.findall(r"GLIBC_(\d+)\.(\d+)", _run(["readelf", "-VW", str(tmp_path / lib)]).stdout)
        )
        assert versions and max((int(a), int(b)) for a, b in versions) <= (2, 17), versions


@pytest.mark.parametrize("cpu", CPUS)
def test_isa_detection_under_qemu(wheel: Path, cpu: str) -> None:
    code = (
        "from edgelut import kernels as k; print(k.cpu_isa(), ','.join(k.cpu_features()), k.supported_isas())"
    )
    proc = _qemu_python(wheel, cpu, "-c", code)
    assert proc.returncode == 0, proc.stderr[-3000:]
    isa, features, supported = proc.stdout.split(maxsplit=2)
    assert isa == "neon"
    assert features.split(",") == FEATURES[cpu]
    assert supported.strip() == "['scalar', 'neon']"


def _default_model_file() -> Path:
    """The real SmolLM2 q4 file (made once per cache, as `edgelut chat` does)."""
    return Path(cache.default_model_file())


def _greedy(
    out: Path, path: str, wheel: Path | None = None, cpu: str = ""
) -> tuple[list[int], np.ndarray, str]:
    """tools/greedy_path.py natively (wheel None) or under qemu: (ids, logits, stdout)."""
    args = [str(TOOLS / "greedy_path.py"), str(_default_model_file()), str(out), "-n", str(N_TOKENS)]
    args += ["--matmul-path", path]
    proc = _run([sys.executable, *args]) if wheel is None else _qemu_python(wheel, cpu, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = np.load(out)
    return data["ids"].tolist(), data["logits"], proc.stdout


@pytest.fixture(scope="module")
def x86_greedy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[int], np.ndarray, str]]:
    """The greedy path on this (x86-64) machine, per prefill matmul path, and
    with the scalar kernels ("scalar", LUT path) for the spread between ISAs."""
    out = tmp_path_factory.mktemp("greedy")
    runs = {path: _greedy(out / f"x86-{path}.npz", path) for path in ("lut", "auto")}
    os.environ["EDGELUT_ISA"] = "scalar"
    try:
        runs["scalar"] = _greedy(out / "x86-scalar.npz", "lut")
    finally:
        del os.environ["EDGELUT_ISA"]
    return runs


@pytest.mark.parametrize("cpu", CPUS)
def test_real_model_greedy_tokens_match_x86(wheel: Path, cpu: str, x86_greedy: dict, tmp_path: Path) -> None:
    # The LUT path on both. NEON and every x86-64 LUT GEMM are bit-exact to the
    # scalar reference for the same tables; what differs is the float code
    # around them. NEON runs the portable float code (libm exp/tanh, the
    # reference attention), as the x86-64 "scalar" ISA does; since session 5
    # the AVX2 paths use a polynomial exp in the FFN activation too, which on
    # SmolLM2 flips a near-tie at the 10th greedy token. So the tokens are
    # compared with the x86-64 scalar run.
    ids, logits, stdout = _greedy(tmp_path / "a64.npz", "lut", wheel, cpu)
    assert f"isa: neon  features: {' '.join(FEATURES[cpu])}" in stdout
    x86_ids, x86_logits, _ = x86_greedy["scalar"]
    assert ids == x86_ids, (ids, x86_ids)
    diff = float(np.max(np.abs(logits - x86_logits)))
    # The int8 tables round float activations; a last-bit change in a table
    # scale moves entries by one level, so ISAs differ by up to ~1 logit on
    # SmolLM2 (logits up to ~34). The bound is the spread between two x86-64
    # ISAs (AVX-512 vs scalar), over the steps before their tokens part.
    lut_ids, lut_logits, _ = x86_greedy["lut"]
    parts = [i for i, (a, b) in enumerate(zip(lut_ids, x86_ids, strict=True)) if a != b]
    same = parts[0] + 1 if parts else len(x86_ids)
    spread = float(np.max(np.abs(x86_logits[:same] - lut_logits[:same])))
    print(
        f"{cpu}: {N_TOKENS} greedy tokens equal to x86-64 (LUT path); largest logit difference "
        f"{diff:.3g} (x86-64 AVX-512 vs scalar: {spread:.3g})"
    )
    assert diff <= 2 * max(spread, 0.05), (diff, spread)


def test_default_prefill_path_on_neon_is_the_lut_path(wheel: Path, x86_greedy: dict, tmp_path: Path) -> None:
    # NEON has no int8 prefill kernel, so `auto` runs the LUT GEMM there, while
    # x86-64 with AVX-512 VNNI prefills with int8 activations: a different
    # approximation of the prompt, and after it possibly other greedy tokens.
    ids, _, _ = _greedy(tmp_path / "a64-auto.npz", "auto", wheel, "max")
    assert ids == x86_greedy["scalar"][0]  # the LUT path with the portable float code
    print(f"aarch64 auto = LUT path {ids}; x86-64 auto {x86_greedy['auto'][0]}")


@pytest.mark.parametrize("cpu", CPUS)
def test_real_model_cli_run(wheel: Path, cpu: str) -> None:
    # `edgelut run` as a user types it (python -m, the wheel's console script needs a real aarch64 pip).
    model = _default_model_file()
    proc = _qemu_python(
        wheel,
        cpu,
        "-m",
        "edgelut.cli",
        "run",
        str(model),
        "-p",
        "The capital of France is",
        "-n",
        "4",
        "-t",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Paris" in proc.stdout


@pytest.mark.parametrize("cpu", CPUS)
def test_suite_part_under_qemu(wheel: Path, cpu: str) -> None:
    proc = _qemu_python(
        wheel,
        cpu,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow",
        "-k",
        QEMU_DESELECT,
        *QEMU_SUITE,
        timeout=3600,
    )
    tail = proc.stdout[-4000:]
    assert proc.returncode == 0, tail + proc.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", tail).group(1))
    print(f"{cpu}: {passed} passed under qemu")
    assert passed >= 30, tail


# ---- the static chat binary and the Android-style library ----------------------------


def _program_headers(path: Path) -> str:
    return _run(["readelf", "-lW", str(path)]).stdout


def test_static_chat_is_static_aarch64(static_build: Path) -> None:
    chat = static_build / "edgelut-chat"
    headers = _program_headers(chat)
    assert "AArch64" in _run(["readelf", "-hW", str(chat)]).stdout
    assert "INTERP" not in headers and "DYNAMIC" not in headers, headers
    assert "NEEDED" not in _run(["readelf", "-dW", str(chat)]).stdout


def test_android_library_elf(static_build: Path) -> None:
    proc = _elf_check(static_build / "libedgelut.so")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "NEEDED: libc.so\n" in proc.stdout
    exported = _run(["readelf", "--dyn-syms", "-W", str(static_build / "libedgelut.so")]).stdout
    names = {line.split()[-1] for line in exported.splitlines() if " GLOBAL " in line and " UND " not in line}
    assert names and all(n.startswith("edgelut_") for n in names), sorted(names)[:20]


def _qemu_chat(static_build: Path, cpu: str, stdin: str, *args: str) -> subprocess.CompletedProcess[str]:
    # A static binary: no -L sysroot needed.
    cmd = ["qemu-aarch64", "-cpu", cpu, str(static_build / "edgelut-chat"), *args]
    return _run(cmd, input=stdin, timeout=1200)


@pytest.mark.parametrize("cpu", CPUS)
def test_static_chat_answers_in_token_ids(static_build: Path, cpu: str) -> None:
    model = _default_model_file()
    encode = _run(
        [sys.executable, str(TOOLS / "token_ids.py"), str(model), "encode", "What is the capital of France?"]
    )
    assert encode.returncode == 0, encode.stderr
    proc = _qemu_chat(
        static_build, cpu, encode.stdout, str(model), "--ids", "-t", "0", "-n", "12", "--threads", "2"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reply_ids = proc.stdout.split()
    assert reply_ids and all(w.isdigit() for w in reply_ids), proc.stdout
    decode = _run([sys.executable, str(TOOLS / "token_ids.py"), str(model), "decode", *reply_ids])
    assert decode.returncode == 0, decode.stderr
    assert "Paris" in decode.stdout, decode.stdout
    # The same greedy reply as the x86-64 Python engine.
    m = edgelut.load(str(model), n_threads=1)
    m.engine.matmul_path = "lut"  # what NEON prefills with (no int8 kernel there)
    prompt = [int(w) for w in encode.stdout.split()]
    expected = []
    logits = np.asarray(m.engine.eval(np.asarray(prompt, dtype=np.int32), 0)).reshape(-1)
    for pos in range(len(prompt), len(prompt) + len(reply_ids)):
        expected.append(int(np.argmax(logits)))
        logits = np.asarray(m.engine.eval(np.asarray(expected[-1:], dtype=np.int32), pos)).reshape(-1)
    assert [int(w) for w in reply_ids] == expected[: len(reply_ids)]


def test_static_chat_without_ids_says_why(static_build: Path) -> None:
    proc = _qemu_chat(static_build, "max", "hello\n", str(_default_model_file()))
    assert proc.returncode == 1
    assert "static build of edgelut" in proc.stderr and "--ids" in proc.stderr, proc.stderr


def test_static_chat_rejects_bad_ids(static_build: Path) -> None:
    proc = _qemu_chat(static_build, "max", "1 2 x3\n", str(_default_model_file()), "--ids")
    assert proc.returncode == 2
    assert "'x3' is not a token id" in proc.stderr, proc.stderr
    proc = _qemu_chat(static_build, "max", "", "/nonexistent.elut", "--ids")
    assert proc.returncode == 1 and "/nonexistent.elut" in proc.stderr, proc.stderr
