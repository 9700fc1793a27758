#!/usr/bin/env bash
# Makes an arm64 Debian sysroot (glibc, libstdc++, python3.11 and its headers)
# for cross-building and for `qemu-aarch64 -L SYSROOT`, without touching the
# system's apt setup: a private apt configuration (its own sources list,
# APT::Architecture=arm64, state and cache in a temporary directory) resolves
# and downloads the packages, and dpkg-deb -x extracts them.
#
#   tools/aarch64_sysroot.sh [SYSROOT]
#
# SYSROOT defaults to ~/.cache/edgelut-arm/sysroot (EDGELUT_ARM_CACHE overrides
# ~/.cache/edgelut-arm). A finished sysroot (its .complete stamp lists the
# packages) is reused; delete the directory to rebuild it. Prints its path.
set -euo pipefail

CACHE="${EDGELUT_ARM_CACHE:-$HOME/.cache/edgelut-arm}"
SYSROOT="${1:-$CACHE/sysroot}"
MIRROR="${EDGELUT_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# python3.11 (the interpreter, its stdlib, headers and sysconfig data) pulls in
# libc6, zlib, libffi, libssl, ... through its dependencies.
PACKAGES=(libc6-dev libstdc++6 libgcc-s1 python3.11-minimal libpython3.11-stdlib libpython3.11-dev python3.11)

if [[ -f $SYSROOT/.complete ]] && [[ "$(head -n1 "$SYSROOT/.complete")" == "${PACKAGES[*]}" ]]; then
  echo "$SYSROOT"
  exit 0
fi
for tool in apt-get dpkg-deb; do
  command -v "$tool" >/dev/null || { echo "aarch64_sysroot.sh: '$tool' not found (a Debian system is needed)" >&2; exit 3; }
done

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work"/{etc/preferences.d,state/lists/partial,cache/archives/partial,debs}
: >"$work/status"
cat >"$work/etc/sources.list" <<SRC
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE main
deb [arch=arm64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $SUITE-updates main
SRC
apt_opts=(
  -o "APT::Architecture=arm64" -o "APT::Architectures::=arm64"
  -o "Dir::Etc::SourceList=$work/etc/sources.list" -o "Dir::Etc::SourceParts=$work/none"
  -o "Dir::Etc::Preferences=$work/none" -o "Dir::Etc::PreferencesParts=$work/etc/preferences.d"
  -o "Dir::State=$work/state" -o "Dir::State::status=$work/status" -o "Dir::Cache=$work/cache"
  -o "Debug::NoLocking=1" -o "APT::Install-Recommends=0" -o "APT::Sandbox::User=$(id -un)"
)
apt-get "${apt_opts[@]}" -qq update
# An empty dpkg status makes the resolver list the whole dependency closure.
apt-get "${apt_opts[@]}" -qq -y --download-only install "${PACKAGES[@]}" >/dev/null

rm -rf "$SYSROOT.part"
mkdir -p "$SYSROOT.part"
for deb in "$work"/cache/archives/*.deb; do
  dpkg-deb -x "$deb" "$SYSROOT.part"
done
# Debian's merged /usr: /lib -> usr/lib, so the loader path of arm64 binaries
# (/lib/ld-linux-aarch64.so.1) resolves under qemu -L.
for d in lib bin sbin; do
  if [[ -d $SYSROOT.part/usr/$d && ! -e $SYSROOT.part/$d ]]; then ln -s "usr/$d" "$SYSROOT.part/$d"; fi
done
{ echo "${PACKAGES[*]}"; ls "$work"/cache/archives/*.deb | xargs -n1 basename; } >"$SYSROOT.part/.complete"
rm -rf "$SYSROOT"
mv "$SYSROOT.part" "$SYSROOT"
echo "$SYSROOT"
