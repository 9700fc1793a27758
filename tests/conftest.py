"""Shared test fixtures."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator so failures reproduce."""
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A per-test time limit, so a hung test fails with every thread's stack instead
    of running into CI's wall clock ("thread" also ends a hang in C++ without the
    GIL, where a signal would never be handled). Set here rather than in pyproject:
    the pytest under qemu (the aarch64 stage's own suite run) has no pytest-timeout,
    and an unknown ini option is an error there."""
    if not config.pluginmanager.hasplugin("timeout"):
        return
    for item in items:
        if item.get_closest_marker("timeout") is None:
            # The aarch64 stage's tests run whole suites under qemu: an hour each.
            limit = 3600 if item.get_closest_marker("aarch64") is not None else 900
            item.add_marker(pytest.mark.timeout(limit, method="thread"))
