"""The starter's plugin hooks: it registers the model name ``starter`` (a built-in plugin of the host)."""

from __future__ import annotations

from typing import Callable

from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.sources import ModelSource
from mmassist.core.recipes.starter.paths import NAME, model_path


@hookimpl
def register_models(register: Callable[[ModelSource], None]) -> None:
    register(ModelSource(NAME, model_path, description="the bundled starter assistant (mmassist train-starter)"))
