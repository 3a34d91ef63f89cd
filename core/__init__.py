"""mmassist core: the plugin host, configs, the fused model, fine-tuning and checkpoints.

Importing ``core`` loads no plugin and no model: that happens when a :class:`Host` is created.
"""

from core.assistant import Assistant
from core.config import (
    DataConfig,
    DecoderConfig,
    EncoderConfig,
    FusionConfig,
    GenerationConfig,
    TaskConfig,
    TrainingConfig,
)
from core.encoders import Encoder, EncoderOutput, EncoderSpec
from core.errors import (
    ConfigError,
    DataFormatError,
    MissingPluginError,
    MMAssistError,
    PluginError,
    UndecodableInputError,
    UnknownNameError,
    UnsupportedInputError,
)
from core.callbacks import TrainerCallback, TrainerControl, TrainerState
from core.finetune import FinetuneResult, finetune
from core.hookspecs import hookimpl
from core.host import FailedPlugin, Host
from core.media import Media

__version__ = "0.1.0"

__all__ = [
    "Assistant",
    "DataConfig",
    "DecoderConfig",
    "EncoderConfig",
    "FusionConfig",
    "GenerationConfig",
    "TaskConfig",
    "TrainingConfig",
    "TrainerCallback",
    "TrainerControl",
    "TrainerState",
    "finetune",
    "ConfigError",
    "DataFormatError",
    "Encoder",
    "EncoderOutput",
    "EncoderSpec",
    "FailedPlugin",
    "FinetuneResult",
    "Host",
    "Media",
    "MissingPluginError",
    "MMAssistError",
    "PluginError",
    "UndecodableInputError",
    "UnknownNameError",
    "UnsupportedInputError",
    "hookimpl",
    "__version__",
]
