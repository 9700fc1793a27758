#!/usr/bin/env bash
# Builds, with zig for aarch64-linux-musl (PyPI `ziglang`, tools/aarch64_toolenv.sh):
#   edgelut-chat   examples/c/chat.c as one static executable (no libc++_shared,
#                  no libomp, no loader): runs on Raspberry Pi OS, any aarch64
#                  Linux, and from `adb shell` or Termux on Android
#   libedgelut.so  the C ABI as a shared library with libc++ inside, 16 KB
#                  page-aligned LOAD segments and only the C library as NEEDED
#                  (what an Android app can load; tools/check_elf_aarch64.py checks it)
#
#   tools/build_static_aarch64.sh [OUT_DIR]     (default build/aarch64-musl)
#
# Sources and flags come from csrc/sources.txt and csrc/isa_flags.txt. A static
# executable cannot dlopen the tokenizer library, so edgelut-chat takes token
# ids (--ids); see examples/c/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${EDGELUT_ARM_CACHE:-$HOME/.cache/edgelut-arm}"
case "${1:-}" in -h|--help) sed -n '2,15p' "${BASH_SOURCE[0]}"; exit 0 ;; -*) echo "build_static_aarch64.sh: unknown option '$1'" >&2; exit 2 ;; esac
OUT="${1:-$ROOT/build/aarch64-musl}"
mkdir -p "$OUT/obj"
OUT="$(cd "$OUT" && pwd)"
TOOLENV="$(bash "$ROOT/tools/aarch64_toolenv.sh")"
# zig's cache (its libc++ and libc builds per target) lives with the rest, so CI keeps it.
export ZIG_GLOBAL_CACHE_DIR="${ZIG_GLOBAL_CACHE_DIR:-$CACHE/zig}"
zig=("$TOOLENV/bin/python" -m ziglang)
target=aarch64-linux-musl

table() { sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$ROOT/csrc/$1"; }
# -ffunction-sections/--gc-sections drop the engine code the chat never calls.
base=(-O3 -fno-math-errno -std=c++17 -Wall -Wextra -fPIC -fvisibility=hidden -ffunction-sections -fdata-sections
  -I"$ROOT/csrc" -I"$ROOT/csrc/include")
pids=()
wait_all() {
  local pid
  for pid in "${pids[@]}"; do wait "$pid"; done
  pids=()
}
compile() {  # compile SRC OBJ FLAGS...
  local src="$1" obj="$2"
  shift 2
  "${zig[@]}" c++ -target "$target" "${base[@]}" "$@" -c "$ROOT/$src" -o "$obj" &
  pids+=($!)
  if [[ ${#pids[@]} -ge 2 ]]; then wait_all; fi
}

objects=()
while read -r path kind; do
  [[ $kind == core || $kind == neon || $kind == capi ]] || continue
  obj="$OUT/obj/$(echo "${path%.*}" | tr '/' '_').o"
  # zig's aarch64 baseline is armv8-a already and it rejects -march (see
  # build_wheel_aarch64.sh), so the neon row's flags are not passed.
  compile "$path" "$obj"
  objects+=("$obj")
done < <(table sources.txt)
# The static executable's tokenizer backend says why it cannot load one.
compile csrc/capi/tokenizer_backend.cc "$OUT/obj/tokenizer_backend_static.o" -DEDGELUT_NO_DLOPEN
"${zig[@]}" cc -target "$target" -O2 -std=c99 -Wall -Wextra -pedantic -I"$ROOT/csrc/include" \
  -c "$ROOT/examples/c/chat.c" -o "$OUT/obj/chat.o" &
pids+=($!)
wait_all

static_objects=()
for o in "${objects[@]}"; do
  [[ $o == */csrc_capi_tokenizer_backend.o ]] && o="$OUT/obj/tokenizer_backend_static.o"
  static_objects+=("$o")
done
"${zig[@]}" c++ -target "$target" -static -pthread -Wl,--gc-sections -s \
  "$OUT/obj/chat.o" "${static_objects[@]}" -o "$OUT/edgelut-chat"
"${zig[@]}" c++ -target "$target" -shared -pthread -Wl,--gc-sections -s -Wl,-z,max-page-size=16384 \
  -Wl,--version-script="$ROOT/csrc/capi/exports.map" "${objects[@]}" -o "$OUT/libedgelut.so"
echo "$OUT/edgelut-chat"
echo "$OUT/libedgelut.so"
