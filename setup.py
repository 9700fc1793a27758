"""Builds the C++ core `edgelut._core` and the C ABI library from csrc/ (see csrc/sources.txt).

The C ABI library is installed as edgelut/lib/libedgelut.so with its header
edgelut/include/edgelut.h (edgelut.capi.library_path() / include_dir()).

Kernel sources for one ISA are compiled with that ISA's flags only, so one
wheel runs on any x86-64 or aarch64 CPU and picks its kernels at run time.
"""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
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
    # sysconfig's platform, not platform.machine(): a cross-build
    # (tools/build_wheel_aarch64.sh) sets _PYTHON_HOST_PLATFORM to the target.
    machine = sysconfig.get_platform().rsplit("-", 1)[-1].lower()
    if machine in ("x86_64", "amd64"):
        return "x86_64"
    if machine in ("aarch64", "arm64"):
        return "aarch64"
    return machine


TARGETS_FOR_ARCH = {
    "x86_64": {"core", "avx2", "avx512", "python", "capi"},
    "aarch64": {"core", "neon", "python", "capi"},
}
SOURCES = [
    (path, target)
    for path, target in _read_table("sources.txt")
    if target in TARGETS_FOR_ARCH.get(_arch(), {"core", "python", "capi"})
]
ISA_FLAGS = {row[0]: row[1:] for row in _read_table("isa_flags.txt")}
# The C ABI files, relative to the edgelut package directory.
CAPI_FILES = ("lib/libedgelut.so", "include/edgelut.h")
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
        self._build_capi(ext, objects)

    def _build_capi(self, ext: Pybind11Extension, isa_objects: list[str]) -> None:
        """libedgelut.so: the core and ISA objects of the extension plus the C ABI sources."""
        core = [p for p, t in SOURCES if t == "core"]
        core_objects = self.compiler.object_filenames(core, output_dir=self.build_temp)
        capi_objects = self.compiler.compile(
            [p for p, t in SOURCES if t == "capi"],
            output_dir=self.build_temp,
            include_dirs=ext.include_dirs,
            extra_postargs=[*ext.extra_compile_args, "-std=c++17", "-fPIC"],
            depends=ext.depends,
        )
        package_dir = Path(self.build_lib) / "edgelut"
        link_args = ["-pthread"]
        if sys.platform.startswith("linux"):
            # Export the C ABI only, so the engine's C++ symbols cannot clash with the app's.
            link_args.append(f"-Wl,--version-script={ROOT / 'csrc' / 'capi' / 'exports.map'}")
        self.compiler.link_shared_object(
            [*capi_objects, *core_objects, *isa_objects],
            str(package_dir / "lib" / "libedgelut.so"),
            libraries=["dl"],
            extra_postargs=link_args,
            target_lang="c++",
        )
        (package_dir / "include").mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / "csrc" / "include" / "edgelut.h", package_dir / "include" / "edgelut.h")

    def _capi_mapping(self) -> dict[str, str]:
        """Built C ABI file -> its place in the source tree (editable installs)."""
        source_dir = Path(self.get_finalized_command("build_py").get_package_dir("edgelut"))
        built = Path(self.build_lib) / "edgelut"
        return {str(built / rel): str(source_dir / rel) for rel in CAPI_FILES}

    def copy_extensions_to_source(self) -> None:
        super().copy_extensions_to_source()
        for built, source in self._capi_mapping().items():
            Path(source).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(built, source)

    def get_outputs(self) -> list[str]:
        return [*super().get_outputs(), *self._capi_mapping()]

    def get_output_mapping(self) -> dict[str, str]:
        mapping = super().get_output_mapping()
        if self.inplace:
            mapping.update(self._capi_mapping())
        return mapping


# EDGELUT_BUILD_JOBS=N compiles N sources at a time (default one; the
# aarch64 cross-build uses two).
ParallelCompile("EDGELUT_BUILD_JOBS", default=1).install()

ext = Pybind11Extension(
    "edgelut._core",
    sources=[p for p, t in SOURCES if t not in ISA_FLAGS and t != "capi"],
    include_dirs=["csrc"],
    cxx_std=17,
    extra_compile_args=BASE_FLAGS,
    extra_link_args=["-pthread"],
    libraries=["dl"],  # libzmq is loaded at run time (csrc/net/zmq_lib.cc)
    depends=[str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*.h")],
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExt})
