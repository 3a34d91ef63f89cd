"""Which model answers: the bundled starter, a checkpoint folder, or a run fine-tuned in this app.

Models load on first use and stay cached by their resolved path. Each cached model has a lock:
every call into it (tokenizing, each generation step, captioning) holds the lock, so concurrent
requests interleave token by token instead of racing on the tokenizer or the weights.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from mmassist.core.runtime.assistant import Assistant
from mmassist.core.runtime.config import FusionConfig, GenerationConfig
from mmassist.core.errors import ConfigError, MMAssistError
from mmassist.core.contract.host import Host

STARTER = "starter"


@dataclass
class LoadedModel:
    """An assistant and the lock that every use of it holds."""

    name: str
    assistant: Assistant
    lock: threading.Lock = field(default_factory=threading.Lock)

    def stream(self, pieces: Iterator[str]) -> Iterator[str]:
        """Pull ``pieces`` one at a time under the lock, never holding it while the caller waits."""
        while True:
            with self.lock:
                try:
                    piece = next(pieces)
                except StopIteration:
                    return
            yield piece


def is_model_folder(path: Path) -> bool:
    """A finished checkpoint folder: the manifest is written last, so its presence means complete."""
    return (path / "config.json").is_file() and (path / "manifest.json").is_file()


class ModelStore:
    """Resolves model choices and keeps the most recently used models loaded.

    :param host: the plugin host every model is built with.
    :param runs_dir: where fine-tunes started in the app (or by ``mmassist finetune``) are written.
    :param default: the model used when none is chosen: ``"starter"`` or a checkpoint folder.
    :param capacity: how many models stay loaded at once.
    """

    def __init__(self, host: Host, runs_dir: str | Path, default: str | None = None, capacity: int = 4):
        self.host = host
        self.runs_dir = Path(runs_dir)
        self.default = str(default) if default else STARTER
        self.capacity = capacity
        self._loaded: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    def choices(self) -> list[tuple[str, str]]:
        """(label, value) pairs for the model picker: the default, the starter, then runs, newest first."""
        out: list[tuple[str, str]] = []
        if self.default != STARTER:
            out.append((f"{Path(self.default).name} (default)", self.key(self.default)))
        out.append(("starter (bundled)", STARTER))
        seen = {value for _, value in out}
        for run in self.runs():
            value = str(run)
            if value not in seen:
                out.append((f"{run.name} (fine-tuned)", value))
                seen.add(value)
        return out

    def runs(self) -> list[Path]:
        """Finished model folders under ``runs_dir``, newest first."""
        if not self.runs_dir.is_dir():
            return []
        found = [p.resolve() for p in self.runs_dir.iterdir() if p.is_dir() and is_model_folder(p)]
        return sorted(found, key=lambda p: (p / "manifest.json").stat().st_mtime, reverse=True)

    def key(self, choice: str | None) -> str:
        """The cache key of a choice: ``"starter"`` or the absolute path of a folder."""
        choice = (choice or "").strip() or self.default
        if choice == STARTER:
            return STARTER
        return str(Path(choice).expanduser().resolve())

    def generation(self, choice: str | None) -> GenerationConfig:
        """The decoding defaults a model was saved with (its config's ``generation``), read without loading
        it; the library's defaults when its config cannot be read (loading it will say why)."""
        key = self.key(choice)
        loaded = self._loaded.get(key)
        if loaded is not None:
            return loaded.assistant.cfg.generation
        try:
            return FusionConfig.from_file(self.host.model_folder(key) / "config.json").generation
        except (OSError, ValueError, TypeError, MMAssistError):
            return GenerationConfig()

    def get(self, choice: str | None) -> LoadedModel:
        """The loaded model for a picker value, loading it on first use."""
        key = self.key(choice)
        with self._lock:  # one load at a time; a second request for the same model waits for it
            model = self._loaded.get(key)
            if model is None:
                model = LoadedModel(key, self._load(key))
                self._loaded[key] = model
                while len(self._loaded) > self.capacity:
                    self._loaded.popitem(last=False)
            self._loaded.move_to_end(key)
            return model

    def _load(self, key: str) -> Assistant:
        if key == STARTER:
            try:
                return Assistant.from_pretrained(STARTER, host=self.host)
            except Exception as e:  # absent from this install (or broken): say what to do instead
                reason = str(e) if isinstance(e, MMAssistError) else f"{type(e).__name__}: {e}"
                raise ConfigError(
                    "the bundled starter model is not available in this install "
                    f"({reason}); type the path of a checkpoint folder in the model box, "
                    "or fine-tune a model in the Fine-tune tab") from None
        path = Path(key)
        if not path.is_dir():
            raise ConfigError(f"model {key!r} is not a folder; give a checkpoint folder (config.json + "
                              "model.safetensors), 'starter', or a model fine-tuned here")
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a model folder: it has no config.json. Give the folder "
                              "that core.finetune or Assistant.save_pretrained wrote")
        return Assistant.from_pretrained(path, host=self.host)
