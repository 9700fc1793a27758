"""The default thread count leaves out the little cores of big.LITTLE CPUs,
read from a fake /sys/devices/system/cpu tree (cpu_capacity, else cpufreq)."""

from __future__ import annotations

import os
from pathlib import Path

from edgelut import _core, kernels


def _cpu_tree(
    root: Path,
    capacity: list[int] | None = None,
    freq: list[int] | None = None,
    offline: tuple[int, ...] = (),
) -> str:
    n = len(capacity if capacity is not None else freq or [])
    for i in range(n):
        cpu = root / f"cpu{i}"
        cpu.mkdir(parents=True)
        if capacity is not None:
            (cpu / "cpu_capacity").write_text(f"{capacity[i]}\n")
        if freq is not None:
            (cpu / "cpufreq").mkdir()
            (cpu / "cpufreq" / "cpuinfo_max_freq").write_text(f"{freq[i]}\n")
        if i > 0:
            (cpu / "online").write_text("0\n" if i in offline else "1\n")
    # Entries that are not CPUs, as in the real tree.
    (root / "cpufreq").mkdir()
    (root / "cpuidle").mkdir()
    (root / "online").write_text(f"0-{n - 1}\n")
    return str(root)


def test_phone_capacity_excludes_little_cores(tmp_path: Path) -> None:
    # Snapdragon-like 1 prime + 3 big + 4 little: the little ones run at a third of the pace.
    tree = _cpu_tree(tmp_path, capacity=[325, 325, 325, 325, 787, 787, 787, 1024])
    assert _core.fast_core_count(tree) == 4


def test_homogeneous_cpu_keeps_every_core(tmp_path: Path) -> None:
    # Raspberry Pi 4/5: four equal cores, all 1024.
    assert _core.fast_core_count(_cpu_tree(tmp_path, capacity=[1024] * 4)) == 4


def test_frequency_fallback_without_capacity(tmp_path: Path) -> None:
    # 4x A55 at 1.8 GHz, 4x A76 at 2.4 GHz (75%: little), no cpu_capacity files.
    tree = _cpu_tree(tmp_path, freq=[1800000] * 4 + [2400000] * 4)
    assert _core.fast_core_count(tree) == 4
    # 2.2 of 2.4 GHz is the same kind of core.
    assert _core.fast_core_count(_cpu_tree(tmp_path / "b", freq=[2200000, 2400000])) == 2


def test_offline_cores_are_not_counted(tmp_path: Path) -> None:
    tree = _cpu_tree(tmp_path, capacity=[1024, 1024, 1024, 1024], offline=(2, 3))
    assert _core.fast_core_count(tree) == 2


def test_unknown_topology_is_zero(tmp_path: Path) -> None:
    # No sysfs at all (containers, non-Linux) and a CPU with neither file: unknown.
    assert _core.fast_core_count(str(tmp_path / "missing")) == 0
    tree = tmp_path / "partial"
    _cpu_tree(tree, capacity=[1024, 512])
    (tree / "cpu1" / "cpu_capacity").unlink()
    assert _core.fast_core_count(str(tree)) == 0
    (tree / "cpu1" / "cpu_capacity").write_text("garbage\n")
    assert _core.fast_core_count(str(tree)) == 0


def test_default_threads_on_this_machine() -> None:
    # Between 1 and the core count; equal to it here unless sysfs says some cores are little.
    n = kernels.default_threads()
    assert 1 <= n <= (os.cpu_count() or 1)
    fast = _core.fast_core_count("/sys/devices/system/cpu")
    assert n == (fast if 0 < fast < (os.cpu_count() or 1) else os.cpu_count())


def test_cpu_features_names() -> None:
    features = kernels.cpu_features()
    assert set(features) <= {"avx2", "avx512", "asimd", "asimddp", "i8mm"}
    assert ("neon" in kernels.supported_isas()) == ("asimd" in features)
    assert ("avx2" in kernels.supported_isas()) == ("avx2" in features)
