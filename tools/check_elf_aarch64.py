"""Checks that an aarch64 shared library is what an Android app (or a 16 KB
page Linux kernel, e.g. Raspberry Pi 5's default) can load, with binutils'
readelf:

- the ELF machine is AArch64;
- every PT_LOAD segment is aligned to at least 16 KB (Android 15+ devices may
  use 16 KB pages; a 4 KB-aligned library fails to load there) and its file
  offset and address agree modulo 16 KB;
- NEEDED names only the C library, libm and libdl (no libc++_shared.so, no
  libomp.so: those must be inside the library or absent).

    python tools/check_elf_aarch64.py LIB.so [--allow NAME ...]

--allow adds a NEEDED name (e.g. libpthread.so.0 for the glibc 2.17 wheel,
where pthreads is a separate library; bionic and musl have it in libc).
Prints one line per check and exits 1 when one fails, 2 on bad input.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

PAGE = 16384
ALLOWED_NEEDED = re.compile(r"^lib(c|m|dl)\.so(\.[0-9]+)*$")


@dataclass
class ElfReport:
    machine: str
    loads: list[tuple[int, int, int]]  # (offset, vaddr, align)
    needed: list[str]
    problems: list[str] = field(default_factory=list)


def _readelf(path: str, *flags: str) -> str:
    exe = shutil.which("readelf") or shutil.which("aarch64-linux-gnu-readelf")
    if exe is None:
        raise SystemExit("check_elf_aarch64: readelf not found (install binutils)")
    proc = subprocess.run([exe, "-W", *flags, path], capture_output=True, text=True, check=False)
    if proc.returncode != 0 or "Not an ELF file" in proc.stderr:
        raise ValueError(f"{path} is not an ELF file ({proc.stderr.strip().splitlines()[-1:]})")
    return proc.stdout


def inspect(path: str, allow: tuple[str, ...] = ()) -> ElfReport:
    """Reads the header, program headers and dynamic section; fills in problems."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist")
    header = _readelf(path, "-h")
    match = re.search(r"Machine:\s+(.+)", header)
    machine = match.group(1).strip() if match else "unknown"
    loads = []
    for line in _readelf(path, "-l").splitlines():
        parts = line.split()
        if parts and parts[0] == "LOAD":
            loads.append((int(parts[1], 16), int(parts[2], 16), int(parts[-1], 16)))
    needed = re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", _readelf(path, "-d"))
    report = ElfReport(machine, loads, needed)
    if machine != "AArch64":
        report.problems.append(f"machine is {machine}, not AArch64")
    if not loads:
        report.problems.append("no LOAD segments")
    for offset, vaddr, align in loads:
        if align < PAGE:
            report.problems.append(f"LOAD at 0x{vaddr:x} is aligned to {align} bytes, not {PAGE}")
        elif offset % PAGE != vaddr % PAGE:
            report.problems.append(
                f"LOAD at 0x{vaddr:x}: offset 0x{offset:x} and address differ modulo {PAGE}"
            )
    for name in needed:
        if not ALLOWED_NEEDED.match(name) and name not in allow:
            report.problems.append(f"NEEDED {name}: only libc, libm and libdl are allowed")
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("library")
    ap.add_argument(
        "--allow", action="append", default=[], metavar="NAME", help="another allowed NEEDED name"
    )
    args = ap.parse_args(argv)
    try:
        report = inspect(args.library, tuple(args.allow))
    except (ValueError, FileNotFoundError) as e:
        print(f"check_elf_aarch64: {e}", file=sys.stderr)
        return 2
    print(f"{args.library}: machine {report.machine}")
    print(f"LOAD segments: {len(report.loads)}, alignments {sorted({a for _, _, a in report.loads})}")
    print(f"NEEDED: {' '.join(report.needed) or '(none)'}")
    for problem in report.problems:
        print(f"FAIL: {problem}")
    if not report.problems:
        extra = f" (and {', '.join(args.allow)} as allowed)" if args.allow else ""
        print(f"ok: 16 KB-aligned LOAD segments, NEEDED only libc/libm/libdl{extra}")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
