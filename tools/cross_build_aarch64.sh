#!/usr/bin/env bash
# Builds the C++ kernel check (tests/cpp/kernel_check.cc) with the core and
# ISA sources listed in csrc/sources.txt and the flags of csrc/isa_flags.txt.
#
#   tools/cross_build_aarch64.sh [--native] [--run] [BUILD_DIR] [-- ARGS...]
#
# Default: cross-compile for aarch64 with aarch64-linux-gnu-g++ into one static
# binary in BUILD_DIR (default build/aarch64 in the repository; a relative
# BUILD_DIR is taken from the current directory). --run executes it under
# qemu-aarch64 with QEMU_CPU=max unless QEMU_CPU is set. --native builds for
# this machine with g++ (default build/native), so the check runs on x86-64
# too. ARGS after -- go to kernel_check (e.g. --quick, --verbose).
# Needs the Debian packages g++-aarch64-linux-gnu and qemu-user.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
native=0
run=0
build_dir=""
check_args=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --native) native=1 ;;
    --run) run=1 ;;
    --) shift; check_args=("$@"); break ;;
    -h|--help) sed -n '2,13p' "${BASH_SOURCE[0]}"; exit 0 ;;
    -*) echo "cross_build_aarch64.sh: unknown option '$1' (expected --native, --run or --)" >&2; exit 2 ;;
    *) build_dir="$1" ;;
  esac
  shift
done

if [[ $native == 1 ]]; then
  cxx="${CXX:-g++}"
  case "$(uname -m)" in
    x86_64|amd64) targets="core avx2 avx512" ;;
    aarch64|arm64) targets="core neon" ;;
    *) targets="core" ;;
  esac
  build_dir="${build_dir:-$ROOT/build/native}"
  link_flags=(-pthread)
else
  cxx="${CXX_AARCH64:-aarch64-linux-gnu-g++}"
  targets="core neon"
  build_dir="${build_dir:-$ROOT/build/aarch64}"
  link_flags=(-static -pthread)
  for tool in "$cxx" qemu-aarch64; do
    if [[ $tool == qemu-aarch64 && $run == 0 ]]; then continue; fi
    if ! command -v "$tool" >/dev/null; then
      echo "cross_build_aarch64.sh: '$tool' not found; install the Debian packages g++-aarch64-linux-gnu and qemu-user" >&2
      exit 3
    fi
  done
fi
mkdir -p "$build_dir"
build_dir="$(cd "$build_dir" && pwd)"

# Strip comments and blank lines from one of the csrc/ tables.
table() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT/csrc/$1"; }

base_flags=(-O2 -std=c++17 -Wall -Wextra -I"$ROOT/csrc")
objects=()
pids=()
compile() {  # compile SRC OBJ EXTRA_FLAGS...
  local src="$1" obj="$2"
  shift 2
  "$cxx" "${base_flags[@]}" "$@" -c "$ROOT/$src" -o "$obj"
}
wait_all() {
  local pid
  for pid in "${pids[@]}"; do wait "$pid"; done
  pids=()
}

# Two compiler jobs at a time: the build machines have two cores.
while read -r path target; do
  [[ " $targets " == *" $target "* ]] || continue
  flags=()
  if [[ $target != core ]]; then
    read -r -a flags <<<"$(table isa_flags.txt | awk -v t="$target" '$1 == t { $1 = ""; print }')"
  fi
  obj="$build_dir/$(echo "${path%.*}" | tr '/' '_').o"
  compile "$path" "$obj" "${flags[@]}" &
  pids+=($!)
  objects+=("$obj")
  if [[ ${#pids[@]} -ge 2 ]]; then wait_all; fi
done < <(table sources.txt)
compile tests/cpp/kernel_check.cc "$build_dir/kernel_check.o" &
pids+=($!)
wait_all
"$cxx" "${objects[@]}" "$build_dir/kernel_check.o" "${link_flags[@]}" -o "$build_dir/kernel_check"
echo "built $build_dir/kernel_check"

if [[ $run == 1 ]]; then
  if [[ $native == 1 ]]; then
    "$build_dir/kernel_check" "${check_args[@]}"
  else
    QEMU_CPU="${QEMU_CPU:-max}" qemu-aarch64 "$build_dir/kernel_check" "${check_args[@]}"
  fi
fi
