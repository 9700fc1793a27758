"""Small evaluation texts, fetched through the package registry and cached.

The Lee corpus (Lee, Pincombe & Welsh 2005, 300 short news documents) ships
inside gensim's wheel as test data; ``pip download`` brings the wheel and we
keep only that one file under ~/.cache/edgelut.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

LEE_MEMBER = "gensim/test/test_data/lee_background.cor"


def cache_dir() -> Path:
    """~/.cache/edgelut, or $EDGELUT_CACHE."""
    return Path(os.environ.get("EDGELUT_CACHE", Path.home() / ".cache" / "edgelut")).expanduser()


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Copy one file out of a wheel (zip) to ``dest`` (written atomically)."""
    try:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(member)
    except (zipfile.BadZipFile, KeyError) as e:
        raise RuntimeError(f"{archive}: cannot read {member} ({e})") from e
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(dest)
    return dest


def pip_download(package: str, dest: Path, *, sdist: bool = False) -> Path:
    """Download one wheel (or, with ``sdist``, the source archive) without dependencies; its path.

    ``package`` may pin a version (``name==1.2``).
    """
    dest.mkdir(parents=True, exist_ok=True)
    name = re.split(r"[=<>!~ ]", package, maxsplit=1)[0]
    kind = ["--no-binary", name] if sdist else ["--only-binary=:all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "-q", "-d", str(dest), package]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"`pip download {package}` failed: {tail[0]}")
    pattern = f"{name.replace('-', '_')}-*" + (".tar.gz" if sdist else ".whl")
    found = sorted(dest.glob(pattern))
    if not found:
        raise RuntimeError(f"`pip download {package}` produced no {'sdist' if sdist else 'wheel'} in {dest}")
    return found[-1]


def lee_corpus(path: Path | None = None) -> Path:
    """Path of lee_background.cor, downloading gensim's wheel once if needed."""
    dest = path or cache_dir() / "lee_background.cor"
    if dest.is_file():
        return dest
    with tempfile.TemporaryDirectory(prefix="edgelut-dl-") as tmp:
        wheel = pip_download("gensim", Path(tmp))
        return extract_member(wheel, LEE_MEMBER, dest)


def lee_text() -> str:
    return lee_corpus().read_text(encoding="utf-8", errors="replace")


__all__ = ["cache_dir", "extract_member", "lee_corpus", "lee_text", "pip_download"]
