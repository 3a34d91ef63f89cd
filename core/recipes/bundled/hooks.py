"""The bundled datasets' plugin hooks: ``bundled:<dataset>/<file>`` data URIs (a built-in plugin of the host)."""

from __future__ import annotations

from typing import Callable

from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.sources import DataSource
from mmassist.core.recipes import bundled


@hookimpl
def register_data_sources(register: Callable[[DataSource], None]) -> None:
    register(DataSource(bundled.URI_PREFIX.rstrip(":"), bundled.resolve,
                        description="the project's generated datasets, built on first use under the user cache"))
