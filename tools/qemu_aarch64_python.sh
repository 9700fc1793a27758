#!/usr/bin/env bash
# Runs Debian's arm64 python3.11 under qemu-aarch64 with an aarch64 edgelut
# wheel (tools/build_wheel_aarch64.sh) and its dependencies as manylinux
# aarch64 wheels from PyPI, e.g.
#
#   tools/qemu_aarch64_python.sh --wheel dist/aarch64/edgelut-*.whl --cpu cortex-a53 -- -m edgelut.cli info F
#
# --cpu is qemu's CPU model (default max: every optional AArch64 feature;
# cortex-a53: plain ARMv8.0 NEON, no dotprod or i8mm). The dependencies (plus
# pytest and hypothesis for the tests) go to ~/.cache/edgelut-arm/site-deps
# once; the wheel is unpacked to its own directory keyed by its hash. binfmt_misc
# need not be registered: qemu-aarch64 is called explicitly with -L SYSROOT.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGELUT_ARM_CACHE:-$HOME/.cache/edgelut-arm}"
wheel=""
cpu="${QEMU_CPU:-max}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --wheel) wheel="$2"; shift ;;
    --cpu) cpu="$2"; shift ;;
    --) shift; break ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "qemu_aarch64_python.sh: unknown option '$1' (expected --wheel, --cpu or --)" >&2; exit 2 ;;
  esac
  shift
done
[[ -n $wheel ]] || { echo "qemu_aarch64_python.sh: --wheel WHEEL is required" >&2; exit 2; }
[[ -f $wheel ]] || { echo "qemu_aarch64_python.sh: wheel '$wheel' does not exist" >&2; exit 2; }
command -v qemu-aarch64 >/dev/null || { echo "qemu_aarch64_python.sh: qemu-aarch64 not found; install the Debian package qemu-user" >&2; exit 3; }
SYSROOT="$(bash "$ROOT/tools/aarch64_sysroot.sh")"

pip_aarch64=(python3 -m pip install -q --disable-pip-version-check --target)
platform_args=(--platform manylinux2014_aarch64 --only-binary=:all: --python-version 3.11 --implementation cp --abi cp311)

# The wheel's own requirements (Requires-Dist without extras) plus the test runner.
requirements="$(python3 - "$wheel" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
    reqs = [l.split(":", 1)[1].strip() for l in z.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
print("\n".join(sorted(r for r in reqs if "extra ==" not in r) + ["pytest>=7", "hypothesis>=6"]))
PYEOF
)"
deps="$CACHE/site-deps"
if [[ ! -f $deps/.complete || "$(cat "$deps/.complete")" != "$requirements" ]]; then
  rm -rf "$deps" "$deps.part"
  mapfile -t reqs <<<"$requirements"
  "${pip_aarch64[@]}" "$deps.part" "${platform_args[@]}" "${reqs[@]}" >&2
  echo "$requirements" >"$deps.part/.complete"
  mv "$deps.part" "$deps"
fi
site="$CACHE/site-wheel/$(sha256sum "$wheel" | cut -c1-16)"
if [[ ! -d $site ]]; then
  rm -rf "$CACHE/site-wheel"  # one unpacked wheel at a time
  mkdir -p "$CACHE/site-wheel"
  "${pip_aarch64[@]}" "$site.part" "${platform_args[@]}" --no-deps "$wheel" >&2
  mv "$site.part" "$site"
fi

export QEMU_LD_PREFIX="$SYSROOT" QEMU_CPU="$cpu" PYTHONPATH="$site:$deps" PYTHONNOUSERSITE=1
exec qemu-aarch64 "$SYSROOT/usr/bin/python3.11" "$@"
