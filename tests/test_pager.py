"""The sliding-window weight pager (csrc/io/pager.h) through its test bindings.

Files live under /var/tmp (disk-backed on common systems) rather than a tmpfs,
so O_DIRECT and posix_fadvise behave as they would on a model file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgelut._core import Pager

# Not page multiples, different from each other, the largest in the middle.
SIZES = [5000, 7001, 12345, 100, 4096, 9999, 3, 8191]
N = len(SIZES)
LEAD = 123  # bytes before layer 0, so no offset is page-aligned


@pytest.fixture
def disk_dir() -> Iterator[Path]:
    base = "/var/tmp" if os.path.isdir("/var/tmp") else None
    d = Path(tempfile.mkdtemp(prefix="edgelut-pager-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)


def write_layers(path: Path, sizes: list[int], seed: int = 0) -> tuple[bytes, list[tuple[int, int]]]:
    """Writes LEAD bytes, then one random block per layer, then a tail."""
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, LEAD + sum(sizes) + 777, dtype=np.uint8).tobytes()
    path.write_bytes(data)
    offsets = LEAD + np.concatenate([[0], np.cumsum(sizes[:-1])])
    return data, [(int(o), s) for o, s in zip(offsets, sizes, strict=True)]


def cycle(pager: Pager, data: bytes, ranges: list[tuple[int, int]], tokens: int) -> None:
    """Uses every layer in order, `tokens` times, checking each layer's bytes."""
    for _ in range(tokens):
        for layer, (offset, size) in enumerate(ranges):
            view = pager.acquire(layer)
            assert view.dtype == np.uint8 and view.shape == (size,)
            assert view.tobytes() == data[offset : offset + size], f"layer {layer}"
            pager.release(layer)


def sequence_bytes(reads: int, sizes: list[int]) -> int:
    """Bytes the loader has read after `reads` layers in wrapping file order."""
    return sum(sizes[i % len(sizes)] for i in range(reads))


@pytest.mark.parametrize("window", [1, 2, 4, N])
@pytest.mark.parametrize("mode", ["plain", "drop_cache", "direct_io"])
def test_cycles_return_the_file_bytes(disk_dir: Path, window: int, mode: str) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES, seed=window)
    pager = Pager(str(path), ranges, window, drop_cache=mode != "plain", direct_io=mode == "direct_io")
    assert pager.n_layers == N and pager.window == window and pager.resident == (window == N)
    if mode == "direct_io" and not pager.direct_io:
        # The filesystem refused O_DIRECT: the pager says so and reads anyway.
        assert "O_DIRECT" in pager.io_note and str(path) in pager.io_note
    cycle(pager, data, ranges, tokens=3)


def test_direct_io_on_tmpfs_works_or_explains(tmp_path: Path) -> None:
    # /dev/shm is a tmpfs, which refuses O_DIRECT on older kernels.
    shm = Path("/dev/shm")
    folder = Path(tempfile.mkdtemp(dir=shm)) if shm.is_dir() else tmp_path
    try:
        path = folder / "layers.bin"
        data, ranges = write_layers(path, SIZES)
        pager = Pager(str(path), ranges, 2, direct_io=True)
        if pager.direct_io:
            assert pager.io_note == ""
        else:
            assert "direct I/O refused" in pager.io_note and "O_DIRECT" in pager.io_note
            assert str(path) in pager.io_note and "buffered" in pager.io_note
        cycle(pager, data, ranges, tokens=2)
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder, ignore_errors=True)


def test_views_are_read_only_and_keep_the_pager_alive(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, N)
    view = pager.acquire(2)
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 1
    del pager
    offset, size = ranges[2]
    assert view.tobytes() == data[offset : offset + size]


def test_out_of_order_and_restarted_passes(disk_dir: Path) -> None:
    """An aborted forward pass restarts at layer 0; odd orders still give the right bytes."""
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    for window in (1, 2, 4):
        pager = Pager(str(path), ranges, window)
        order = [0, 1, 2, 0, 1, 2, 3, 4, 5, 6, 7, 5, 3, 7, 0, 0, 6, 1]
        for layer in order:
            offset, size = ranges[layer]
            assert pager.acquire(layer).tobytes() == data[offset : offset + size]
            pager.release(layer)
        cycle(pager, data, ranges, tokens=2)


def test_a_layer_can_be_held_twice(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, 2)
    first = pager.acquire(0)
    second = pager.acquire(0)
    pager.release(0)
    assert first.tobytes() == second.tobytes() == data[ranges[0][0] : ranges[0][0] + ranges[0][1]]
    pager.release(0)
    with pytest.raises(ValueError, match=r"release\(0\) without a matching acquire"):
        pager.release(0)


def test_holding_every_slot_is_an_error_not_a_hang(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    _, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, 2)
    pager.acquire(0)
    pager.acquire(1)
    with pytest.raises(RuntimeError, match=r"acquire\(2\) needs a slot but all 2 are held; release a layer"):
        pager.acquire(2)
    pager.release(0)
    pager.acquire(2)


def test_bad_arguments(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    _, ranges = write_layers(path, SIZES)
    with pytest.raises(ValueError, match=r"window must be in 1\.\.8 \(the layer count\), got 0"):
        Pager(str(path), ranges, 0)
    with pytest.raises(ValueError, match=r"window must be in 1\.\.8 \(the layer count\), got 9"):
        Pager(str(path), ranges, 9)
    with pytest.raises(ValueError, match="no layer ranges given"):
        Pager(str(path), [], 1)
    with pytest.raises(ValueError, match="layer 1 is empty"):
        Pager(str(path), [(0, 10), (10, 0)], 1)
    with pytest.raises(RuntimeError, match=r"cannot open .*missing\.bin: No such file or directory"):
        Pager(str(disk_dir / "missing.bin"), ranges, 1)
    pager = Pager(str(path), ranges, 2)
    with pytest.raises(ValueError, match=r"layer 8 out of range 0\.\.7"):
        pager.acquire(8)
    with pytest.raises(ValueError, match=r"layer -1 out of range"):
        pager.release(-1)


def test_range_beyond_end_of_file_is_refused_at_construction(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    bad = list(ranges)
    bad[5] = (len(data) - 10, 11)
    for window in (1, N):
        with pytest.raises(ValueError) as err:
            Pager(str(path), bad, window)
        msg = str(err.value)
        assert str(path) in msg and "layer 5" in msg and "beyond the end of the file" in msg
        assert f"({len(data)} bytes)" in msg


def test_deleted_file_still_reads(disk_dir: Path) -> None:
    # On Linux an open file outlives its directory entry: paging continues.
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, 2, drop_cache=True)
    first = pager.acquire(0)
    path.unlink()
    assert first.tobytes() == data[ranges[0][0] : ranges[0][0] + ranges[0][1]]
    pager.release(0)
    cycle(pager, data, ranges, tokens=3)


TRUNCATE_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from edgelut._core import Pager
    path, ranges, cut, window, direct = json.loads(sys.argv[1])
    data = open(path, "rb").read()
    pager = Pager(path, [tuple(r) for r in ranges], window, direct_io=direct)
    pager.acquire(0)
    os.truncate(path, cut)  # while the loader runs
    pager.release(0)
    out = {"ok": [], "errors": {}}
    for layer in range(1, len(ranges)):
        try:
            view = pager.acquire(layer)
        except RuntimeError as e:
            out["errors"][layer] = str(e)
            continue
        off, size = ranges[layer]
        assert view.tobytes() == data[off : off + size], layer
        out["ok"].append(layer)
        pager.release(layer)
    print(json.dumps(out))
    """
)


@pytest.mark.parametrize("direct", [False, True])
def test_truncated_file_raises_without_hanging(disk_dir: Path, direct: bool) -> None:

    path = disk_dir / "layers.bin"
    _, ranges = write_layers(path, SIZES)
    cut = ranges[4][0] + 50  # in the middle of layer 4: a short read, then end of file
    args = json.dumps([str(path), ranges, cut, 2, direct])
    # A subprocess with a timeout: a hang fails the test instead of the run.
    proc = subprocess.run(
        [sys.executable, "-c", TRUNCATE_SCRIPT, args], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] == [1, 2, 3]
    errors = {int(k): v for k, v in out["errors"].items()}
    assert sorted(errors) == [4, 5, 6, 7]
    msg = errors[4]
    assert msg.startswith("pager: reading layer 4 ") and str(path) in msg
    assert "unexpected end of file" in msg and "truncated" in msg
    # Later layers name themselves and the read that failed.
    assert errors[6].startswith("pager: layer 6 is unavailable because an earlier read failed: ")
    assert "reading layer 4" in errors[6]


SHUTDOWN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from edgelut._core import Pager
    path, ranges = json.loads(sys.argv[1])
    ranges = [tuple(r) for r in ranges]
    for _ in range(20):
        Pager(path, ranges, 2, drop_cache=True)  # destroyed while the loader reads
    pager = Pager(path, ranges, 2)
    pager.acquire(0)
    pager.acquire(1)  # every slot held: the loader sleeps waiting for one
    del pager  # the views are gone, so this destroys it
    print("done")
    """
)


def test_destruction_joins_the_loader(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    _, ranges = write_layers(path, SIZES)
    proc = subprocess.run(
        [sys.executable, "-c", SHUTDOWN_SCRIPT, json.dumps([str(path), ranges])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr


def test_window_for_budget() -> None:
    mib = 1 << 20
    sizes = [10 * mib] * 8
    fixed = 5 * mib
    assert Pager.window_for_budget(sizes, fixed, fixed + 80 * mib) == 8
    assert Pager.window_for_budget(sizes, fixed, fixed + 80 * mib - 1) == 7
    assert Pager.window_for_budget(sizes, fixed, fixed + 30 * mib) == 3
    assert Pager.window_for_budget(sizes, fixed, fixed + 10 * mib) == 1
    assert Pager.window_for_budget(sizes, 0, 1 << 62) == 8
    # A slot is page-rounded: 4097 bytes need 8192.
    assert Pager.slot_bytes_for([4097, 100], 1) == 8192
    assert Pager.window_for_budget([4097, 100], 0, 8191 + 4096) == 1
    # Fully resident costs the sum, which can be less than n slots of the largest.
    uneven = [40 * mib, mib, mib, mib]
    assert Pager.slot_bytes_for(uneven, 4) == 43 * mib
    assert Pager.slot_bytes_for(uneven, 3) == 120 * mib
    assert Pager.window_for_budget(uneven, 0, 100 * mib) == 4
    assert Pager.window_for_budget(uneven, 0, 42 * mib) == 1

    with pytest.raises(ValueError) as err:
        Pager.window_for_budget(sizes, fixed, fixed + 10 * mib - 1)
    msg = str(err.value)
    assert "is too small" in msg and f"the minimum is {fixed + 10 * mib} bytes (15.0 MiB" in msg
    with pytest.raises(ValueError, match="the minimum is"):
        Pager.window_for_budget(sizes, 100 * mib, 50 * mib)  # fixed alone exceeds it
    with pytest.raises(ValueError, match="no layer sizes given"):
        Pager.window_for_budget([], 0, mib)


@pytest.mark.parametrize("window", [1, 2, 4])
def test_stats_add_up_when_paging(disk_dir: Path, window: int) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, window)
    page = 4096
    assert pager.stats()["slot_bytes"] == window * -(-max(SIZES) // page) * page
    tokens = 3
    for token in range(tokens):
        for layer, (offset, size) in enumerate(ranges):
            assert pager.acquire(layer).tobytes() == data[offset : offset + size]
            s = pager.stats()
            used = token * N + layer + 1  # layers acquired so far
            # The loader runs ahead by at most the free slots; whatever it has
            # read is exactly the next layers in wrapping file order.
            assert used <= s["reads"] <= used + window - 1
            assert s["bytes_read"] == sequence_bytes(s["reads"], SIZES)
            assert s["resident_bytes"] <= s["peak_resident_bytes"]
            assert s["peak_resident_bytes"] <= window * max(SIZES)
            pager.release(layer)
    s = pager.stats()
    assert s["acquires"] == tokens * N
    assert s["waits"] <= s["acquires"]
    assert sum(s["layer_wait_ns"]) == s["wait_ns"] >= s["max_wait_ns"]
    assert s["read_ns"] > 0
    pager.reset_stats()
    s = pager.stats()
    assert s["acquires"] == s["waits"] == s["wait_ns"] == 0
    # The loader keeps reading ahead into the slots the last releases freed,
    # so a read or a few may land after the reset, never more than the window.
    assert s["reads"] <= window
    assert s["peak_resident_bytes"] >= s["resident_bytes"]


def test_stats_fully_resident_read_once(disk_dir: Path) -> None:
    path = disk_dir / "layers.bin"
    data, ranges = write_layers(path, SIZES)
    pager = Pager(str(path), ranges, N, drop_cache=True)
    s = pager.stats()
    assert s["reads"] == N and s["bytes_read"] == sum(SIZES)
    assert s["resident_bytes"] == s["peak_resident_bytes"] == sum(SIZES)
    pager.reset_stats()
    cycle(pager, data, ranges, tokens=4)
    s = pager.stats()
    assert s["reads"] == s["bytes_read"] == s["waits"] == s["wait_ns"] == 0
    assert s["acquires"] == 4 * N


RSS_SCRIPT = textwrap.dedent(
    """
    import hashlib, json, sys
    from edgelut._core import Pager
    path, ranges, digests, window = json.loads(sys.argv[1])
    pager = Pager(path, [tuple(r) for r in ranges], window, drop_cache=True)
    for _ in range(2):
        for layer in range(len(ranges)):
            # hashlib reads the slot in place: no copy of the layer.
            got = hashlib.blake2b(pager.acquire(layer), digest_size=16).hexdigest()
            assert got == digests[layer], layer
            pager.release(layer)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]) * 1024)
    """
)


def test_peak_rss_is_bounded_by_the_window(disk_dir: Path) -> None:

    mib = 1 << 20
    # ~200 MB in 20 layers of 7-13 MB, not page multiples.
    rng = np.random.default_rng(1)
    sizes = [int(s) for s in rng.integers(7 * mib, 13 * mib, 20)]
    path = disk_dir / "big.bin"
    ranges, digests = [], []
    with path.open("wb") as f:
        for size in sizes:
            block = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
            ranges.append((f.tell(), size))
            digests.append(hashlib.blake2b(block, digest_size=16).hexdigest())
            f.write(block)
    total = sum(sizes)
    overhead = 60 * mib  # the interpreter, numpy and the extension

    def peak(window: int) -> int:
        args = json.dumps([str(path), ranges, digests, window])
        proc = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, args], capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        return int(proc.stdout)

    paged = peak(2)
    assert paged < 2 * max(sizes) + overhead, (paged, max(sizes))
    resident = peak(len(sizes))
    assert total <= resident < total + overhead, (resident, total)
