"""Starting points for the Fine-tune tab: a small config per task, and the bundled example configs.

The templates train small models from scratch, so a first run finishes in minutes on a CPU and
needs nothing from the network. For real work, point ``decoder.path`` at a local Hugging Face
causal LM and give the image encoder pretrained weights (``checkpoint_path``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from mmassist import core
from mmassist.core.runtime.config import TASKS, FusionConfig

SMALL_DECODER = {"model_type": "llama", "hidden_size": 128, "intermediate_size": 256, "num_hidden_layers": 2,
                 "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512}
IMAGE_ENCODER = {"name": "image/timm", "config": {"model_name": "resnet18", "image_size": 64, "pool_tokens": 2}}
TEXT_ENCODER = {"name": "text/hf", "config": {"max_length": 66}, "lr": 5.0e-5}

_TEMPLATES: dict[str, dict[str, Any]] = {
    "caption": {
        "encoders": {"image": IMAGE_ENCODER},
        "decoder": {"init": SMALL_DECODER, "tokenizer": "bytes", "max_length": 256},
        "task": {"kind": "caption", "prompt": "Describe the image."},
        "data": {"validation_fraction": 0.1},
        "generation": {"max_new_tokens": 48},
        "training": {"epochs": 10, "batch_size": 8, "lr": 1.0e-3, "log_every": 1},
    },
    "chat": {
        "encoders": {"image": IMAGE_ENCODER},
        "decoder": {"init": SMALL_DECODER, "tokenizer": "bytes", "max_length": 512},
        "task": {"kind": "chat"},
        "data": {"validation_fraction": 0.1},
        "generation": {"max_new_tokens": 96},
        "training": {"epochs": 5, "batch_size": 8, "lr": 1.0e-3, "log_every": 1},
    },
    "vqa": {
        "encoders": {"image": IMAGE_ENCODER},
        "decoder": {"init": SMALL_DECODER, "tokenizer": "bytes", "max_length": 256},
        "task": {"kind": "vqa"},
        "data": {"validation_fraction": 0.1},
        "generation": {"max_new_tokens": 32},
        "training": {"epochs": 5, "batch_size": 8, "lr": 1.0e-3, "log_every": 1},
    },
    "classification": {
        "encoders": {"text": TEXT_ENCODER},
        "decoder": {"init": {**SMALL_DECODER, "num_hidden_layers": 1}, "tokenizer": "bytes", "max_length": 192,
                    "lr": 1.0e-3},
        "task": {"kind": "classification", "labels": ["negative", "positive"], "prompt": "Review: <text>\nSentiment:"},
        "data": {"validation_fraction": 0.1, "text_column": "sentence", "label_column": "label"},
        "training": {"epochs": 1, "batch_size": 32, "lr": 1.0e-3, "log_every": 5, "eval_every": 50},
    },
    # Named entities: CoNLL (word TAG lines) or JSONL ({"tokens", "tags"}); the tags come from the data.
    "token_classification": {
        "encoders": {"text": {**TEXT_ENCODER, "config": {"max_length": 128}}},
        "decoder": {"init": {**SMALL_DECODER, "num_hidden_layers": 1}, "tokenizer": "bytes", "max_length": 192,
                    "lr": 1.0e-3},
        "task": {"kind": "token_classification", "prompt": "Named entities:"},
        "data": {"validation_fraction": 0.1},
        "training": {"epochs": 3, "batch_size": 16, "lr": 1.0e-3, "log_every": 5, "patience": 3},
    },
}

HEADER = ("# The whole fine-tune config (see `mmassist finetune --help` and examples/configs/).\n"
          "# The form above overrides the fields it shows; data.train is set from the dataset you give.\n")


def template(task: str) -> dict[str, Any]:
    """The starting config (a plain dict) for one task."""
    if task not in _TEMPLATES:
        raise core.ConfigError(f"no template for task {task!r}; tasks: {', '.join(TASKS)}")
    return copy.deepcopy(_TEMPLATES[task])


def template_yaml(task: str) -> str:
    """A task's template as YAML, with every field (defaults included) so it can be edited."""
    return HEADER + FusionConfig.from_dict(template(task)).to_yaml()


def bundled_configs() -> dict[str, Path]:
    """Example configs shipped in the source tree's examples/configs, by file name."""
    folder = Path(core.__file__).resolve().parents[1] / "examples" / "configs"
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.glob("*.y*ml"))}


def bundled_yaml(name: str) -> str:
    """A bundled config as YAML, its data paths made absolute so it works from any folder."""
    configs = bundled_configs()
    if name not in configs:
        raise core.ConfigError(f"no bundled config {name!r}; bundled: {', '.join(configs) or 'none'}")
    return HEADER + FusionConfig.from_file(configs[name]).to_yaml()
