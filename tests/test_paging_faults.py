"""Faults under a paged engine: a model file that returns a read error, shrinks
or vanishes in the middle of a generation.

The faults are injected into a real `edgelut run` subprocess by an LD_PRELOAD
shim, compiled here with the system C compiler, that interposes pread/pread64
on the model file only (the pager's reads; nothing else in the process uses
pread on it). After a given number of reads it either returns EIO in the
middle of a read (the first half of the bytes arrive, the rest fails), or
truncates the file, or unlinks it, so the fault lands at a known point of the
generation rather than at a time a test would have to guess.

What must happen: a read error or a truncation stops the generation with a
one-line error naming the file and the layer and a non-zero exit status, and
what was printed before is a prefix of the fault-free output (no garbage
after the fault, no crash, no hang). An unlinked file keeps its data for
the open descriptor (POSIX), so that generation must simply complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from mfile_helpers import tiny_model

from edgelut.model import pack_tensors
from edgelut.models.modelfile import read_model_file, write_model_file

N_LAYERS = 6
WINDOW = 2

SHIM_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

typedef ssize_t (*pread_fn)(int, void*, size_t, off_t);

static long calls;     /* reads of the target file so far */
static int half_done;  /* EIO mode: the first half of the faulting read was served */
static int acted;      /* truncate/unlink mode: done once */

static int is_target(int fd) {
  const char* want = getenv("FAULT_PATH");
  char link[64], path[4096];
  if (!want) return 0;
  snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
  ssize_t n = readlink(link, path, sizeof path - 1);
  if (n < 0) return 0;
  path[n] = 0;
  return strstr(path, want) != NULL;
}

static ssize_t faulty(pread_fn real, int fd, void* buf, size_t count, off_t off) {
  if (!is_target(fd)) return real(fd, buf, count, off);
  const char* mode = getenv("FAULT_MODE");
  long after = atol(getenv("FAULT_AFTER") ? getenv("FAULT_AFTER") : "0");
  if (half_done) {            /* the rest of a read that was cut in half */
    errno = EIO;
    return -1;
  }
  if (calls++ < after || !mode) return real(fd, buf, count, off);
  if (strcmp(mode, "eio") == 0) {
    if (count >= 2) {         /* serve half, then fail the continuation */
      half_done = 1;
      return real(fd, buf, count / 2, off);
    }
    errno = EIO;
    return -1;
  }
  if (!acted) {
    acted = 1;
    const char* path = getenv("FAULT_PATH");
    if (strcmp(mode, "truncate") == 0) truncate(path, atol(getenv("FAULT_SIZE")));
    if (strcmp(mode, "unlink") == 0) unlink(path);
  }
  return real(fd, buf, count, off);
}

ssize_t pread(int fd, void* buf, size_t count, off_t off) {
  static pread_fn real;
  if (!real) real = (pread_fn)dlsym(RTLD_NEXT, "pread");
  return faulty(real, fd, buf, count, off);
}

ssize_t pread64(int fd, void* buf, size_t count, off_t off) {
  static pread_fn real;
  if (!real) real = (pread_fn)dlsym(RTLD_NEXT, "pread64");
  return faulty(real, fd, buf, count, off);
}
"""

PROMPT = "the cat of a"
MAX_TOKENS = 12
# The loader reads ahead from layer 0 as soon as the engine opens, the prompt
# is one pass (prefill_chunk 64) and each further token one pass: after this
# many reads the fault lands in the 3rd decoded token.
AFTER = 3 * N_LAYERS + 2


@pytest.fixture(scope="module")
def work() -> Iterator[Path]:
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    d = Path(tempfile.mkdtemp(prefix="edgelut-faults-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def shim(work: Path) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        pytest.skip("no C compiler on this machine to build the pread fault shim")
    src = work / "fault_shim.c"
    src.write_text(SHIM_C)
    lib = work / "fault_shim.so"
    subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", str(lib), str(src), "-ldl"], check=True)
    return lib


@pytest.fixture(scope="module")
def source(work: Path) -> Path:
    m = tiny_model(layers=N_LAYERS, hidden=128, inter=192, seed=10)  # greedy text reaches 12 tokens
    packed = pack_tensors(m.config, m.tensors, bits=4, group_size=32, clip_search=False)
    return write_model_file(work / "source.elut", m.config, m.tokenizer, packed)


def edgelut_run(path: Path, shim: Path | None = None, **fault: str) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    if shim is not None:
        env["LD_PRELOAD"] = str(shim)
        env["FAULT_PATH"] = str(path)
        env.update({f"FAULT_{k.upper()}": v for k, v in fault.items()})
    cmd = [sys.executable, "-m", "edgelut.cli", "run", str(path), "-p", PROMPT, "-n", str(MAX_TOKENS)]
    cmd += ["-t", "1", "-c", "64", "--temp", "0", "--window", str(WINDOW)]
    # A hang would be a failure; the timeout turns it into one.
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def copy_of(source: Path, work: Path, name: str) -> Path:
    dst = work / name
    shutil.copy(source, dst)
    return dst


def test_clean_run_reads_many_layers(shim: Path, source: Path, work: Path) -> None:
    """The shim interposes but does nothing without a mode; the run must need more than AFTER reads."""
    path = copy_of(source, work, "clean.elut")
    plain = edgelut_run(path)
    shimmed = edgelut_run(path, shim, after="0")
    assert plain.returncode == 0 and shimmed.returncode == 0, plain.stderr + shimmed.stderr
    assert plain.stdout == shimmed.stdout and plain.stdout.strip()
    # With an EIO at read 0 the very first layer fails: proof the shim sees the pager's reads.
    first = edgelut_run(path, shim, mode="eio", after="0")
    assert first.returncode != 0 and "layer 0" in first.stderr


def expect_clean_failure(r: subprocess.CompletedProcess, path: Path, reference: str, cause: str) -> None:
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1, r.stderr  # one line, no traceback
    msg = lines[0]
    assert msg.startswith("edgelut run: error: pager:") and str(path) in msg and cause in msg, msg
    assert "layer" in msg
    # What was printed before the fault is the fault-free text so far, nothing more.
    assert reference.startswith(r.stdout.rstrip("\n")), (r.stdout, reference)


@pytest.mark.parametrize("after", [0, 1, AFTER, AFTER + 3])
def test_read_error_mid_read_stops_generation(shim: Path, source: Path, work: Path, after: int) -> None:
    path = copy_of(source, work, f"eio{after}.elut")
    reference = edgelut_run(path).stdout
    r = edgelut_run(path, shim, mode="eio", after=str(after))
    expect_clean_failure(r, path, reference, "Input/output error (errno 5)")


def test_file_shrinking_mid_generation_stops_generation(shim: Path, source: Path, work: Path) -> None:
    path = copy_of(source, work, "shrink.elut")
    reference = edgelut_run(path).stdout
    with read_model_file(path, verify_crc=False) as mf:
        ranges = list(mf.layer_ranges)
    # Cut inside layer 3: layers 0-2 still read, layer 3 comes back short.
    cut = ranges[3][0] + 100
    r = edgelut_run(path, shim, mode="truncate", after=str(AFTER), size=str(cut))
    expect_clean_failure(r, path, reference, "unexpected end of file")
    assert "layer 3" in r.stderr
    assert path.stat().st_size == cut  # the shim really did shrink it


def test_file_shrinking_below_the_pinned_tensors_is_no_crash(shim: Path, source: Path, work: Path) -> None:
    """Paged engines copy the pinned tensors out of the mapping at open, so even a
    cut before the first layer (into the embeddings' pages) is a read error, not SIGBUS."""
    path = copy_of(source, work, "shrink0.elut")
    reference = edgelut_run(path).stdout
    r = edgelut_run(path, shim, mode="truncate", after=str(AFTER), size="4096")
    expect_clean_failure(r, path, reference, "unexpected end of file")


def test_file_vanishing_mid_generation_completes(shim: Path, source: Path, work: Path) -> None:
    path = copy_of(source, work, "vanish.elut")
    reference = edgelut_run(path)
    r = edgelut_run(path, shim, mode="unlink", after=str(AFTER))
    assert not path.exists()  # the shim really did unlink it
    # The open descriptor keeps the data: the run completes with the same text.
    assert r.returncode == 0, r.stderr
    assert r.stdout == reference.stdout


def test_missing_file_at_start_is_one_line(work: Path) -> None:
    r = edgelut_run(work / "never-there.elut")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "does not exist" in r.stderr


@pytest.mark.slow
def test_smollm2_read_error_after_some_text(shim: Path, work: Path) -> None:
    """On the real model some text is out when the fault hits: it must be the
    fault-free text so far, and the error must follow on stderr."""
    from edgelut import cache

    path = copy_of(cache.default_model_file(), work, "smollm2.elut")
    n_layers = len(read_model_file(path, verify_crc=False).layer_ranges)
    env = {"LD_PRELOAD": str(shim), "FAULT_PATH": str(path), "FAULT_MODE": "eio"}
    cmd = [
        sys.executable,
        "-m",
        "edgelut.cli",
        "run",
        str(path),
        "-p",
        "The capital of France is",
        "-n",
        "24",
    ]
    cmd += ["-t", "2", "-c", "128", "--temp", "0", "--window", "4"]
    reference = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0 and len(reference.stdout.split()) >= 4, reference.stderr
    # The prompt is one pass; the fault lands in the 6th decoded token.
    after = 6 * n_layers + n_layers // 2
    r = subprocess.run(
        cmd, env={**os.environ, **env, "FAULT_AFTER": str(after)}, capture_output=True, text=True, timeout=300
    )
    expect_clean_failure(r, path, reference.stdout, "Input/output error (errno 5)")
    assert r.stdout.strip() and r.stdout.strip() != reference.stdout.strip()
