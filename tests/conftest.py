"""Fixtures shared by the whole suite."""

from __future__ import annotations

import pytest

from mmassist import core


@pytest.fixture(scope="session")
def host() -> core.Host:
    """The built-in plugins only (no entry points), so an installed third-party plugin cannot change a test."""
    return core.Host(load_entrypoints=False)
