"""mmassist core: ``from mmassist import core``, then ``core.finetune(cfg)``, ``core.Assistant``, ``core.Host``.

The public names below are loaded on first use (PEP 562), so importing ``mmassist.core`` or one of its
lower layers (say ``mmassist.core.errors`` from a plugin) loads no model code, no plugin and no
heavy dependency; a :class:`Host` loads plugins when it is created. The package is layered, each
layer importing only those below it (``tests/test_layout.py`` enforces it):

- :mod:`.errors`, :mod:`.schema`, :mod:`.hf`: the errors, the config dataclass rules, quiet transformers.
- :mod:`.contract`: the plugin contract (hooks, ``EncoderSpec``, ``Encoder``, ``Media``, ``check_encoder``)
  and the :class:`Host` that loads plugins. Below it sit nothing but the base modules.
- :mod:`mmassist.plugins` and :mod:`mmassist.fusion`: the built-in plugins and the fusion module.
- :mod:`.runtime`: the whole config, the model, processor, generation, the assistant, checkpoints.
- :mod:`.data`: the data readers. :mod:`.training`: the fine-tuning loop and its parts.
- :mod:`.recipes`: the bundled datasets and the starter. Then the apps: :mod:`.cli`, :mod:`mmassist.ui`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from mmassist.core.version import __version__

# public name -> the module that defines it
_EXPORTS = {
    "Assistant": "mmassist.core.runtime.assistant",
    "DataConfig": "mmassist.core.runtime.config",
    "DecoderConfig": "mmassist.core.runtime.config",
    "EncoderConfig": "mmassist.core.runtime.config",
    "FusionConfig": "mmassist.core.runtime.config",
    "GenerationConfig": "mmassist.core.runtime.config",
    "TaskConfig": "mmassist.core.runtime.config",
    "TrainingConfig": "mmassist.core.runtime.config",
    "Encoder": "mmassist.core.contract.encoders",
    "EncoderOutput": "mmassist.core.contract.encoders",
    "EncoderSpec": "mmassist.core.contract.encoders",
    "Media": "mmassist.core.contract.media",
    "hookimpl": "mmassist.core.contract.hookspecs",
    "FailedPlugin": "mmassist.core.contract.host",
    "Host": "mmassist.core.contract.host",
    "check_encoder": "mmassist.core.contract.testing",
    "DataSource": "mmassist.core.contract.sources",
    "ModelSource": "mmassist.core.contract.sources",
    "ConfigError": "mmassist.core.errors",
    "DataFormatError": "mmassist.core.errors",
    "MissingPluginError": "mmassist.core.errors",
    "MMAssistError": "mmassist.core.errors",
    "PluginError": "mmassist.core.errors",
    "UndecodableInputError": "mmassist.core.errors",
    "UnknownNameError": "mmassist.core.errors",
    "UnsupportedInputError": "mmassist.core.errors",
    "TrainerCallback": "mmassist.core.training.callbacks",
    "TrainerControl": "mmassist.core.training.callbacks",
    "TrainerState": "mmassist.core.training.callbacks",
    "FinetuneResult": "mmassist.core.training.finetune",
    "finetune": "mmassist.core.training.finetune",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'mmassist.core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # for type checkers and IDEs, which do not run __getattr__
    from mmassist.core.contract.encoders import Encoder, EncoderOutput, EncoderSpec
    from mmassist.core.contract.hookspecs import hookimpl
    from mmassist.core.contract.host import FailedPlugin, Host
    from mmassist.core.contract.media import Media
    from mmassist.core.contract.sources import DataSource, ModelSource
    from mmassist.core.contract.testing import check_encoder
    from mmassist.core.errors import (ConfigError, DataFormatError, MissingPluginError, MMAssistError, PluginError,
                                      UndecodableInputError, UnknownNameError, UnsupportedInputError)
    from mmassist.core.runtime.assistant import Assistant
    from mmassist.core.runtime.config import (DataConfig, DecoderConfig, EncoderConfig, FusionConfig,
                                              GenerationConfig, TaskConfig, TrainingConfig)
    from mmassist.core.training.callbacks import TrainerCallback, TrainerControl, TrainerState
    from mmassist.core.training.finetune import FinetuneResult, finetune
