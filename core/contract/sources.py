"""Named models and data URI schemes: what the ``register_models`` and ``register_data_sources`` hooks
register (see :mod:`mmassist.core.contract.hookspecs`)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmassist.core.errors import PluginError

_MODEL_NAME_RE = re.compile(r"^[a-z][a-z0-9_.-]*$")
_SCHEME_RE = re.compile(r"^[a-z][a-z0-9+.-]+$")  # two characters at least: "C:" is a drive, not a scheme


MODEL_KINDS = ("assistant", "decoder")


@dataclass(frozen=True)
class ModelSource:
    """A model a user loads by name. ``path()`` returns its folder: for ``kind="assistant"`` a mmassist
    checkpoint (``Assistant.from_pretrained(name)``), for ``kind="decoder"`` a Hugging Face causal LM folder
    (``decoder.path: <name>``), which ``path()`` may build on first use (e.g. from a GGUF file, with
    :func:`mmassist.core.runtime.pretrained.gguf_folder`). ``requires`` is the pip requirement that provides
    its files, named in the error when they are missing."""

    name: str
    path: Callable[[], Path]
    description: str = ""
    kind: str = "assistant"
    requires: str = ""
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def __post_init__(self):
        if not _MODEL_NAME_RE.match(self.name):
            raise PluginError(f"model name {self.name!r} must be lower case letters, digits, '.', '_' or '-'")
        if not callable(self.path):
            raise PluginError(f"model {self.name!r}: path must be a function that returns the folder")
        if self.kind not in MODEL_KINDS:
            raise PluginError(f"model {self.name!r}: kind must be one of {', '.join(MODEL_KINDS)}, not {self.kind!r}")


@dataclass(frozen=True)
class DataSource:
    """A data URI scheme: ``resolve("<scheme>:<rest>")`` returns the local path that URI names."""

    scheme: str
    resolve: Callable[[str], Path]
    description: str = ""
    plugin: str = ""
    distribution: str = ""
    version: str = ""

    def __post_init__(self):
        if not _SCHEME_RE.match(self.scheme):
            raise PluginError(f"data scheme {self.scheme!r} must be two or more lower case letters, digits, '+.-'")
        if not callable(self.resolve):
            raise PluginError(f"data scheme {self.scheme!r}: resolve must be a function of the URI")


def uri_scheme(path: object) -> str | None:
    """The scheme of ``"<scheme>:<rest>"``, or None for a plain path (``C:\\...`` included)."""
    if not isinstance(path, str):
        return None
    scheme, sep, _ = path.partition(":")
    return scheme if sep and _SCHEME_RE.match(scheme) else None
