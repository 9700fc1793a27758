#!/usr/bin/env bash
# Cross-builds the edgelut wheel for aarch64 Linux on an x86-64 machine:
# zig (PyPI `ziglang`) compiles for glibc 2.17 against Debian's arm64 Python
# 3.11 headers (tools/aarch64_sysroot.sh), and `auditwheel repair` tags the
# result manylinux2014_aarch64.
#
#   tools/build_wheel_aarch64.sh [OUT_DIR]
#
# OUT_DIR (default dist/aarch64) receives edgelut-*-cp311-*-manylinux*_aarch64.whl;
# the script prints its path last. The toolchain venv (ziglang, auditwheel,
# setuptools, pybind11) and the sysroot are cached under ~/.cache/edgelut-arm
# (EDGELUT_ARM_CACHE overrides). Needs python3.11 on the build machine (the
# target's Python version: setuptools reads the target's sysconfig data).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGELUT_ARM_CACHE:-$HOME/.cache/edgelut-arm}"
case "${1:-}" in -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;; -*) echo "build_wheel_aarch64.sh: unknown option '$1'" >&2; exit 2 ;; esac
OUT="$(mkdir -p "${1:-$ROOT/dist/aarch64}" && cd "${1:-$ROOT/dist/aarch64}" && pwd)"
SYSROOT="$(bash "$ROOT/tools/aarch64_sysroot.sh")"
TOOLENV="$(bash "$ROOT/tools/aarch64_toolenv.sh")"
# zig's cache (its libc++ and libc builds per target) lives with the rest, so CI keeps it.
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$CACHE/zig}"
PY="$TOOLENV/bin/python"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# Zig as the C and C++ compiler for aarch64 glibc 2.17 (manylinux2014); each
# shared object carries zig's libc++ statically. zig spells CPUs its own way and
# rejects -march=armv8-a (csrc/isa_flags.txt); its aarch64 baseline is that
# already, so the wrapper drops it.
for lang in cc c++; do
  cat >"$work/zig-$lang" <<WRAP
#!/bin/bash
args=()
for a in "\$@"; do [[ \$a == -march=armv8-a ]] || args+=("\$a"); done
exec "$PY" -m ziglang $lang -target aarch64-linux-gnu.2.17 "\${args[@]}"
WRAP
  chmod +x "$work/zig-$lang"
done

# The target's sysconfig data with the compiler and include paths pointed at
# zig and the sysroot; _PYTHON_SYSCONFIGDATA_NAME makes setuptools read it.
# Debian's pyconfig.h includes <aarch64-linux-gnu/python3.11/pyconfig.h>; a
# private include dir finds it without putting the sysroot's glibc 2.36
# headers ahead of zig's 2.17 ones.
name=_sysconfigdata__linux_aarch64-linux-gnu
mkdir -p "$work/sysconfig" "$work/pyinc/aarch64-linux-gnu"
ln -s "$SYSROOT/usr/include/aarch64-linux-gnu/python3.11" "$work/pyinc/aarch64-linux-gnu/python3.11"
"$PY" - "$SYSROOT/usr/lib/python3.11/$name.py" "$work/sysconfig/$name.py" "$SYSROOT" "$work" <<'PYEOF'
import runpy, sys, pprint
src, dst, sysroot, work = sys.argv[1:]
v = runpy.run_path(src)["build_time_vars"]
cc, cxx = f"{work}/zig-cc", f"{work}/zig-c++"
v.update(
    CC=cc, CXX=cxx, LDSHARED=f"{cc} -shared -s", LDCXXSHARED=f"{cxx} -shared -s",  # -s: zig strips (auditwheel --strip runs the host strip)
    CFLAGS=f"-DNDEBUG -O2 -Wall -I{work}/pyinc", CCSHARED="-fPIC", LDFLAGS="", CPPFLAGS="", OPT="-DNDEBUG -O2",
    INCLUDEPY=f"{sysroot}/usr/include/python3.11", CONFINCLUDEPY=f"{sysroot}/usr/include/python3.11",
    # Not Py_ENABLE_SHARED: no -L to the sysroot's glibc 2.36 libraries.
    Py_ENABLE_SHARED=0, AR=f"{sys.executable} -m ziglang ar",
)
with open(dst, "w") as f:
    f.write("build_time_vars = " + pprint.pformat(v) + "\n")
PYEOF

# Build from a clean copy of the tracked sources, so an in-place x86 build
# (edgelut/_core*.so, lib/libedgelut.so) can never leak into the wheel.
git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar -cf -) | tar -xf - -C "$work" --one-top-level=src 2>/dev/null ||
  { mkdir -p "$work/src" && git -C "$ROOT" ls-files -z | (cd "$ROOT" && xargs -0 tar -cf -) | tar -xf - -C "$work/src"; }
rm -f "$OUT"/edgelut-*.whl
(
  cd "$work/src"
  export _PYTHON_HOST_PLATFORM=linux-aarch64 _PYTHON_SYSCONFIGDATA_NAME=$name PYTHONPATH="$work/sysconfig"
  # Two compile jobs (setup.py's EDGELUT_BUILD_JOBS); nice keeps a shared machine usable.
  EDGELUT_BUILD_JOBS="${EDGELUT_BUILD_JOBS:-2}" nice "$PY" -m pip wheel . --no-deps --no-build-isolation -q -w "$work/raw"
)
raw="$(ls "$work"/raw/edgelut-*linux_aarch64.whl)"
# auditwheel lists only the build machine's architecture for --plat; `auto`
# takes the wheel's (aarch64) and the oldest glibc its symbols allow, which
# must come out as manylinux_2_17 (manylinux2014).
PATH="$TOOLENV/bin:$PATH" "$TOOLENV/bin/auditwheel" repair --plat auto -w "$OUT" "$raw" >"$work/auditwheel.log" 2>&1 ||
  { cat "$work/auditwheel.log" >&2; exit 1; }
wheel="$(ls "$OUT"/edgelut-*_aarch64.whl)"
case "$wheel" in
  *manylinux2014_aarch64*) ;;
  *) echo "build_wheel_aarch64.sh: $wheel is not manylinux2014_aarch64:" >&2; cat "$work/auditwheel.log" >&2; exit 1 ;;
esac
echo "$wheel"
