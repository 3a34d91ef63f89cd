"""Fixtures shared by the whole suite, and how it is spread over processes (``make test``: pytest-xdist)."""

from __future__ import annotations

import os

# Several test processes (pytest-xdist workers) share the CPU cores: each computes with its share of them,
# since torch's default of every core per process would oversubscribe them. Set before torch is imported,
# so that the subprocesses the tests start (the CLI, torchrun) inherit it.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import pytest  # noqa: E402

from mmassist import core  # noqa: E402

# The longest test files (minutes, one test each running the README or the benchmarks) go out first, so that
# the other processes work through the rest meanwhile rather than wait for them at the end.
LONGEST_FIRST = ("test_readme.py", "test_bench.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its own order


@pytest.fixture(scope="session")
def host() -> core.Host:
    """The built-in plugins only (no entry points), so an installed third-party plugin cannot change a test."""
    return core.Host(load_entrypoints=False)
