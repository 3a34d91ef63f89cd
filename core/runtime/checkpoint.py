"""Checkpoints: a folder with config.json, model.safetensors, tokenizer files and manifest.json.

``model.safetensors`` holds only what cannot be rebuilt from a named source: a frozen encoder or
decoder with pretrained weights on this machine is referenced in the manifest, not copied. Loading
is strict: a missing or unexpected tensor is an error. No pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from mmassist.core.runtime.config import FusionConfig, in_part
from mmassist.core.hf import quiet_transformers
from mmassist.core.errors import ConfigError, MissingPluginError
from mmassist.core.contract.host import Host
from mmassist.core.version import __version__

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
MANIFEST = "manifest.json"


def referenced_prefixes(model) -> dict[str, str]:
    """State-dict prefixes of parts whose base weights stay as loaded from a named source -> that
    source: frozen pretrained parts, and pretrained parts trained through LoRA adapters only."""
    cfg = model.cfg
    lora = cfg.training.lora
    out = {}
    for m, enc_cfg in cfg.encoders.items():
        source = model.encoders[m].pretrained_source
        if source and (enc_cfg.freeze or (lora.enabled and m in lora.encoders)):
            out[f"encoders.{m}."] = source
    if cfg.decoder.path and (cfg.decoder.freeze or lora.enabled):  # new token rows are deterministic
        out["decoder."] = cfg.decoder.path
    return out


def _trained_tensors(model) -> list[tuple[str, torch.Tensor]]:
    """Every parameter and persistent buffer, once each (tied weights once), minus referenced parts (but
    for the ``trainable`` parts of frozen encoders and LoRA adapters)."""
    skip = tuple(referenced_prefixes(model))
    kept = tuple(f"encoders.{m}.{p}" for m, e in model.cfg.encoders.items() for p in e.trainable)
    out = []
    seen = set()
    for name, t in list(model.named_parameters()) + _persistent_buffers(model):
        if id(t) in seen:
            continue
        if name.startswith(skip) and "lora_" not in name and not any(in_part(name, k) for k in kept):
            continue
        seen.add(id(t))
        out.append((name, t))
    return out


def trained_state(model) -> dict[str, torch.Tensor]:
    """What ``model.safetensors`` holds: :func:`_trained_tensors`, gathered to the CPU."""
    state = {}
    for name, t in _trained_tensors(model):
        if hasattr(t, "full_tensor"):  # a DTensor shard under FSDP: gather it (a collective)
            t = t.full_tensor()
        state[name] = t.detach().contiguous().cpu()
    return state


def _persistent_buffers(model) -> list[tuple[str, torch.Tensor]]:
    keys = set(model.state_dict(keep_vars=True))
    return [(n, b) for n, b in model.named_buffers() if n in keys]


def save_checkpoint(model, tokenizer, cfg: FusionConfig, path: str | Path, host: Host, extra: dict | None = None,
                    write_more: Callable[[Path], None] | None = None,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """Write a checkpoint folder atomically: into a temporary sibling, then renamed into place.

    ``write_more(folder)`` may add files (the trainer state) before the folder is renamed.
    ``state`` is :func:`trained_state` gathered beforehand (needed under FSDP, where gathering is
    a collective and only one process writes).
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        save_file(state if state is not None else trained_state(model), str(tmp / WEIGHTS), metadata={"format": "pt"})
        (tmp / CONFIG).write_text(cfg.to_json(), encoding="utf-8")
        tokenizer.save_pretrained(str(tmp))
        if write_more is not None:
            write_more(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest(model, cfg, host, extra), indent=2), encoding="utf-8")
        _fsync_dir(tmp)
        recover_checkpoint(path)
        if path.exists():
            old = _set_aside(path)
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except BaseException:
                os.replace(old, path)  # put the previous checkpoint back: never leave no checkpoint
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _set_aside(path: Path) -> Path:
    """Where :func:`save_checkpoint` moves the previous checkpoint while it renames the new one in."""
    return path.with_name(f".{path.name}.old")


def recover_checkpoint(path: str | Path) -> bool:
    """Put back a checkpoint left set aside by a process killed between :func:`save_checkpoint`'s two
    renames (``path`` gone, the previous checkpoint complete at ``.<name>.old``).

    :return: whether it was put back.
    """
    path = Path(path)
    old = _set_aside(path)
    if path.exists() or not ((old / CONFIG).is_file() and (old / MANIFEST).is_file() and (old / WEIGHTS).is_file()):
        return False
    os.replace(old, path)
    return True


def manifest(model, cfg: FusionConfig, host: Host, extra: dict | None = None) -> dict[str, Any]:
    encoders = {}
    for m, enc_cfg in cfg.encoders.items():
        spec = host.encoders.get(enc_cfg.name)
        encoders[m] = {"name": spec.name, "plugin": spec.plugin, "distribution": spec.distribution,
                       "version": spec.version}
    out = {
        "format_version": FORMAT_VERSION,
        "mmassist_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "encoders": encoders,
        "referenced": referenced_prefixes(model),
    }
    source = host.model_source(cfg.decoder.path) if cfg.decoder.path else None
    if source is not None:  # a decoder by registered name: say where it comes from, for a machine without it
        out["decoder"] = {"name": source.name, "requires": source.requires, "plugin": source.plugin,
                          "distribution": source.distribution, "version": source.version}
    return {**out, **(extra or {})}


def read_checkpoint(path: str | Path, host: Host) -> tuple[FusionConfig, dict[str, Any]]:
    """The config and manifest of a checkpoint, after checking that every plugin it needs is here."""
    path = Path(path)
    recover_checkpoint(path)
    if not (path / CONFIG).is_file() or not (path / MANIFEST).is_file():
        raise ConfigError(f"{path} is not a mmassist checkpoint (it needs {CONFIG} and {MANIFEST})")
    man = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    if man.get("format_version", 0) > FORMAT_VERSION:
        raise ConfigError(f"{path} was written by a newer mmassist ({man.get('mmassist_version')}); upgrade mmassist")
    for m, enc in man.get("encoders", {}).items():
        if enc["name"] not in host.encoders:
            dist = enc.get("distribution") or "the plugin that provides it"
            raise MissingPluginError(
                f"{path} needs the encoder {enc['name']!r} for {m} input, from {dist} {enc.get('version', '')}; "
                f"install it with: pip install {dist}"
            )
        _check_origin(path, m, enc, host.encoders.get(enc["name"]))
    decoder = man.get("decoder")
    if decoder and decoder["name"] not in host.models:
        what = decoder.get("requires") or decoder.get("distribution") or "the plugin that registers it"
        raise MissingPluginError(f"{path} is built on the decoder {decoder['name']!r}, which no installed plugin "
                                 f"registers; it comes from {what}: pip install {what}")
    cfg = FusionConfig.from_dict(json.loads((path / CONFIG).read_text(encoding="utf-8")))
    return cfg, man


def _check_origin(path: Path, modality: str, saved: Mapping[str, Any], spec: Any) -> None:
    """The encoder a checkpoint names must come from the distribution it was made with: two plugins may
    register one name, and another's weights layout would load wrong or not at all. Another version of the
    same distribution is a warning (its preprocessing may have changed)."""
    dist = saved.get("distribution")
    if dist and spec.distribution and dist != spec.distribution:
        raise MissingPluginError(
            f"{path} was made with the encoder {saved['name']!r} of {dist} for {modality} input, but here that "
            f"name comes from {spec.distribution} ({spec.plugin}); install {dist} (pip install {dist}) and "
            f"uninstall {spec.distribution}, or set MMASSIST_LOAD_PLUGINS to load only the one you want")
    version = saved.get("version")
    if dist and version and spec.version and version != spec.version:
        warnings.warn(f"{path} was made with {dist} {version} (encoder {saved['name']!r}); {spec.version} is "
                      "installed here, and its outputs may differ", stacklevel=3)


def without_initial_weights(cfg: FusionConfig, manifest: dict[str, Any], host: Host) -> FusionConfig:
    """``cfg`` with each encoder's ``EncoderSpec.initial_weights`` keys reset, in every encoder whose weights
    are all in the checkpoint (not referenced in ``manifest``): a model fine-tuned from a local weights file
    then loads where that file is not, and its weights come from ``model.safetensors`` alone, as before."""
    referenced = manifest.get("referenced", {})

    def reset(value: Any, keys: Mapping[str, Any]) -> Any:
        if not isinstance(value, dict):
            return value
        return {k: keys[k] if k in keys else reset(v, keys) for k, v in value.items()}

    encoders = {m: enc if f"encoders.{m}." in referenced or enc.name not in host.encoders else
                dataclasses.replace(enc, config=reset(enc.config, host.encoders.get(enc.name).initial_weights))
                for m, enc in cfg.encoders.items()}
    return dataclasses.replace(cfg, encoders=encoders)


def load_weights(model, path: str | Path) -> None:
    """Load model.safetensors strictly: exactly the tensors :func:`trained_state` would save."""
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / WEIGHTS))
    expected = {name for name, _ in _trained_tensors(model)}  # the names only: no copy of every weight
    missing = sorted(expected - state.keys())
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ConfigError(
            f"{path}: the weights do not fit the model in its config.json "
            f"(missing: {', '.join(missing[:5]) or 'none'}{'...' if len(missing) > 5 else ''}; "
            f"unexpected: {', '.join(unexpected[:5]) or 'none'}{'...' if len(unexpected) > 5 else ''})"
        )
    params = dict(model.named_parameters())
    params.update(dict(_persistent_buffers(model)))
    with torch.no_grad():
        for name, value in state.items():
            target = params[name]
            if target.shape != value.shape:
                raise ConfigError(f"{path}: {name} has shape {tuple(value.shape)}, the model expects "
                                  f"{tuple(target.shape)}")
            target.copy_(value)


def _plain_name(name: str) -> str:
    """A tensor's name as it is without LoRA: peft's wrapper adds ``base_model.model.`` and ``.base_layer``."""
    return name.replace("base_model.model.", "", 1).replace(".base_layer.", ".")


def load_initial_weights(model, path: str | Path, tokenizer=None) -> list[str]:
    """Start a new fine-tune from a trained model's weights (``finetune(init_from=...)``).

    Every tensor of the folder's ``model.safetensors`` must fit a tensor of ``model`` (same name, same
    shape; under LoRA, the layer it wraps); parts of ``model`` the folder lacks (a new classification
    head, a new modality's projector, LoRA adapters) keep their fresh initialisation. A LoRA run's adapters
    go on training in a run with LoRA on the same layers at the same rank (a further stage of a recipe); a
    run without LoRA cannot take them (merge them first: :meth:`Assistant.merged`).

    :param tokenizer: the new run's tokenizer; it must have the folder's vocabulary, or the embedding
        rows would mean other tokens.
    :return: the names of the trained tensors of ``model`` that the folder did not have.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer
    path = Path(path)
    recover_checkpoint(path)
    if not (path / WEIGHTS).is_file():
        raise ConfigError(f"init_from: {path} is not a model folder (it has no {WEIGHTS}); give the folder of a "
                          "fine-tuned model (a run folder, its best/ or checkpoints/step-N) or 'starter'")
    if tokenizer is not None and (path / "tokenizer_config.json").is_file():
        with quiet_transformers():
            theirs = AutoTokenizer.from_pretrained(str(path))
        if theirs.get_vocab() != tokenizer.get_vocab():
            raise ConfigError(f"init_from: {path} was trained with another tokenizer; set decoder.tokenizer to "
                              f"{path} (and decoder.path or decoder.init as it had them) so the token ids mean "
                              "the same")
    # A LoRA run saves its other tensors under peft's names too: read them as the layers' own.
    state = {k if "lora_" in k else _plain_name(k): v for k, v in load_file(str(path / WEIGHTS)).items()}
    targets: dict[str, torch.Tensor] = {}
    for name, t in list(model.named_parameters()) + _persistent_buffers(model):
        targets.setdefault(name if "lora_" in name else _plain_name(name), t)
    unexpected = sorted(set(state) - set(targets))
    if unexpected:
        raise ConfigError(
            f"init_from: {path} has weights this config's model lacks ({', '.join(unexpected[:5])}"
            f"{'...' if len(unexpected) > 5 else ''}): fine-tune it with the same encoders, fusion and decoder "
            "(its config.json), or merge its LoRA adapters first (Assistant.merged)")
    for name, value in state.items():
        if targets[name].shape != value.shape:
            raise ConfigError(f"init_from: {path}: {name} has shape {tuple(value.shape)}, this config's model "
                              f"has {tuple(targets[name].shape)}")
    trained = {n if "lora_" in n else _plain_name(n) for n, _ in _trained_tensors(model)}
    referenced = referenced_prefixes(model)
    lost = sorted(n for n in state if n not in trained and n.startswith(tuple(referenced)))
    if lost:  # they would be used in this run but not saved: its checkpoints would load the source's instead
        prefix = next(p for p in referenced if lost[0].startswith(p))
        raise ConfigError(
            f"init_from: {path} has trained weights for {', '.join(lost[:3])}{'...' if len(lost) > 3 else ''}, a "
            f"part this config freezes and references from {referenced[prefix]}; train it (freeze: false, or name "
            "it in the encoder's trainable) so that the new checkpoints keep it")
    with torch.no_grad():
        for name, value in state.items():
            targets[name].copy_(value)
    return sorted(trained - set(state))


def _fsync_dir(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
