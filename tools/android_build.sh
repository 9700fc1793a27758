#!/usr/bin/env bash
# Builds libedgelut.so (the C ABI, csrc/include/edgelut.h) for Android arm64-v8a
# with the NDK's CMake toolchain, as an app needs it: libc++ linked in
# statically (no libc++_shared.so to ship), no OpenMP, hidden visibility (only
# the edgelut_* functions exported), and 16 KB-aligned LOAD segments for
# Android 15+ devices with 16 KB pages. Then checks the result with
# tools/check_elf_aarch64.py.
#
#   ANDROID_NDK_HOME=/path/to/ndk tools/android_build.sh [BUILD_DIR] [API_LEVEL]
#
# BUILD_DIR defaults to build/android-arm64, API_LEVEL to 24. Needs cmake
# (and ninja or make). kernel_check is built too: `adb push` it to
# /data/local/tmp and run it with --quick to test the NEON kernels on the phone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
case "${1:-}" in -h|--help) sed -n '2,14p' "${BASH_SOURCE[0]}"; exit 0 ;; -*) echo "android_build.sh: unknown option '$1'" >&2; exit 2 ;; esac
BUILD="${1:-$ROOT/build/android-arm64}"
API="${2:-24}"
NDK="${ANDROID_NDK_HOME:-${ANDROID_NDK_ROOT:-${ANDROID_NDK:-}}}"
[[ -n $NDK ]] || { echo "android_build.sh: set ANDROID_NDK_HOME to the Android NDK (r23 or newer)" >&2; exit 2; }
TOOLCHAIN="$NDK/build/cmake/android.toolchain.cmake"
[[ -f $TOOLCHAIN ]] || { echo "android_build.sh: $TOOLCHAIN does not exist; is ANDROID_NDK_HOME an NDK?" >&2; exit 2; }
[[ $API =~ ^[0-9]+$ ]] || { echo "android_build.sh: API_LEVEL must be a number, got '$API'" >&2; exit 2; }
command -v cmake >/dev/null || { echo "android_build.sh: cmake not found" >&2; exit 3; }

generator=()
command -v ninja >/dev/null && generator=(-G Ninja)
cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" \
  -DCMAKE_TOOLCHAIN_FILE="$TOOLCHAIN" \
  -DANDROID_ABI=arm64-v8a \
  -DANDROID_PLATFORM="android-$API" \
  -DANDROID_STL=c++_static \
  -DANDROID_SUPPORT_FLEXIBLE_PAGE_SIZES=ON \
  -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_CXX_VISIBILITY_PRESET=hidden \
  -DCMAKE_VISIBILITY_INLINES_HIDDEN=ON \
  -DCMAKE_SHARED_LINKER_FLAGS="-Wl,-z,max-page-size=16384 -Wl,--gc-sections -Wl,--exclude-libs,ALL" \
  -DEDGELUT_BUILD_TESTS=ON
cmake --build "$BUILD" -j2
python3 "$ROOT/tools/check_elf_aarch64.py" "$BUILD/libedgelut.so"
echo "$BUILD/libedgelut.so"
