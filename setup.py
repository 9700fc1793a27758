"""Builds the C++ core `edgelut._core` from csrc/ (see csrc/sources.txt).

Kernel sources for one ISA are compiled with that ISA's flags only, so one
wheel runs on any x86-64 or aarch64 CPU and picks its kernels at run time.
"""

from __future__ import annotations

import platform
from pathlib import Path

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

ROOT = Path(__file__).parent.resolve()


def _read_table(name: str) -> list[list[str]]:
    rows = []
    for line in (ROOT / "csrc" / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            rows.append(line.split())
    return rows


def _arch() -> str:
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return machine


TARGETS_FOR_ARCH = {
    "x86_64": {"core", "avx2", "avx512", "python"},
    "aarch64": {"core", "neon", "python"},
}
SOURCES = [
    (path, target)
    for path, target in _read_table("sources.txt")
    if target in TARGETS_FOR_ARCH.get(_arch(), {"core", "python"})
]
ISA_FLAGS = {row[0]: row[1:] for row in _read_table("isa_flags.txt")}
BASE_FLAGS = ["-O3", "-fno-math-errno", "-Wall", "-Wextra"]


class BuildExt(build_ext):
    """Compiles ISA-specific sources separately, each with its own flags."""

    def build_extension(self, ext: Pybind11Extension) -> None:
        isa_sources = [(p, t) for p, t in SOURCES if t in ISA_FLAGS]
        objects = []
        for path, target in isa_sources:
            objects += self.compiler.compile(
                [path],
                output_dir=self.build_temp,
                include_dirs=ext.include_dirs,
                extra_postargs=[*ext.extra_compile_args, *ISA_FLAGS[target]],
                depends=ext.depends,
            )
        ext.extra_objects = [*ext.extra_objects, *objects]
        super().build_extension(ext)


ext = Pybind11Extension(
    "edgelut._core",
    sources=[p for p, t in SOURCES if t not in ISA_FLAGS],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=BASE_FLAGS,
    extra_link_args=["-pthread"],
    depends=[str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h")],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
