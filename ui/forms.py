"""Form fields built from the config dataclasses: labels, help texts and choices come from the
fields' metadata (``core.configs.help_field``), so the form and the YAML never disagree on meaning.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from mmassist.core.runtime.config import FusionConfig
from mmassist.core.errors import ConfigError

# The options the Fine-tune form shows, by dotted config path. Everything else is in the YAML.
FORM_FIELDS = (
    "task.kind",
    "task.prompt",
    "task.labels",
    "training.epochs",
    "training.max_steps",
    "training.batch_size",
    "training.lr",
    "training.eval_every",
    "data.validation_fraction",
    "decoder.freeze",
    "training.lora.enabled",
)

# The form's labels, in words (the config path is shown beside the help text).
LABELS = {
    "task.kind": "Task",
    "task.prompt": "Prompt",
    "task.labels": "Labels",
    "training.epochs": "Epochs",
    "training.max_steps": "Max steps",
    "training.batch_size": "Batch size",
    "training.lr": "Learning rate",
    "training.eval_every": "Validate every (steps)",
    "data.validation_fraction": "Validation share",
    "decoder.freeze": "Freeze the language model",
    "training.lora.enabled": "LoRA adapters",
}


@dataclass(frozen=True)
class FormField:
    """One config field as a form input."""

    path: str  # dotted, e.g. training.lr
    kind: str  # "choice", "bool", "int", "float", "list", "text"
    help: str
    choices: tuple = ()
    optional: bool = False

    @property
    def label(self) -> str:
        """The field's name in words: training.max_steps -> "Max steps"."""
        return LABELS.get(self.path) or self.path.rsplit(".", 1)[-1].replace("_", " ").capitalize()

    @property
    def param(self) -> str:
        """The field's name as a function parameter and API argument: training.lr -> training_lr."""
        return self.path.replace(".", "_")

    def to_form(self, value: Any) -> Any:
        """A config value as the form shows it."""
        if self.kind == "list":
            return ", ".join(str(v) for v in value or [])
        return value

    def from_form(self, value: Any) -> Any:
        """A form value as a config value; raise ConfigError naming the field when it is not one."""
        if self.kind == "list":
            return [v.strip() for v in str(value or "").split(",") if v.strip()]
        if value is None or value == "":
            if self.optional:
                return None
            raise ConfigError(f"{self.path} needs a value ({self.help})")
        if self.kind == "int":
            if float(value) != int(float(value)):
                raise ConfigError(f"{self.path}={value!r} must be a whole number")
            return int(float(value))
        if self.kind == "float":
            return float(value)
        return value


def field_for(path: str, root: type = FusionConfig) -> FormField:
    """The :class:`FormField` of a dotted config path, from the dataclass field's type and metadata."""
    cls, parts = root, path.split(".")
    for i, name in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if name not in fields:
            raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a config field")
        f = fields[name]
        tp = typing.get_type_hints(cls)[name]
        if i < len(parts) - 1:
            cls = tp
            continue
        optional = _is_optional(tp)
        base = _strip_optional(tp)
        choices = tuple(f.metadata.get("choices", ()))
        if choices:
            kind = "choice"
        elif base is bool:
            kind = "bool"
        elif base is int:
            kind = "int"
        elif base is float:
            kind = "float"
        elif typing.get_origin(base) is list:
            kind = "list"
        else:
            kind = "text"
        return FormField(path, kind, f.metadata.get("help", ""), choices, optional)
    raise ConfigError(f"{path} is not a config field")


def form_fields() -> list[FormField]:
    return [field_for(p) for p in FORM_FIELDS]


def get_path(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = data
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


def _is_optional(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _strip_optional(tp: Any) -> Any:
    if _is_optional(tp):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp
