"""Shared fixtures and the default skip of @pytest.mark.slow tests."""

from __future__ import annotations

import numpy as np
import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The default run skips slow tests; any -m expression (e.g. -m slow) decides for itself.
    if config.getoption("-m"):
        return
    skip = pytest.mark.skip(reason="slow test; run with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rng() -> np.random.Generator:
    """A fixed-seed generator so failures reproduce."""
    return np.random.default_rng(1234)
