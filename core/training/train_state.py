"""Resumable training state without pickle: tensors in safetensors, everything else in JSON.

Saved beside a checkpoint's model files: the optimizer state (per-parameter moments), the
scheduler's counters, the torch / CUDA / Python / NumPy random states and the loop's position.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

TENSORS = "trainer_state.safetensors"
META = "trainer_state.json"


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state keyed by parameter name, as full tensors (gathered under FSDP).

    A collective under FSDP: call it on every process.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))


def save_train_state(folder: Path, optim_state: dict[str, Any], scheduler, loop: dict[str, Any]) -> None:
    """Write ``optimizer_state(...)``, the scheduler, the random states and ``loop`` into ``folder``."""
    from safetensors.torch import save_file

    tensors, scalars = {}, {}
    for name, values in optim_state["state"].items():  # parameter names have dots, never slashes
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim/{name}/{key}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(name, {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s
    np_state = np.random.get_state()
    tensors["rng/numpy/keys"] = torch.from_numpy(np_state[1].astype(np.int64))
    save_file(tensors, str(folder / TENSORS))
    meta = {
        "optimizer_scalars": scalars,
        "param_groups": optim_state["param_groups"],
        "scheduler": scheduler.state_dict(),  # plain numbers; lr_lambdas are saved as None
        "rng_python": _jsonable(random.getstate()),
        "rng_numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "loop": loop,
    }
    (folder / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def load_train_state(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     scheduler) -> dict[str, Any]:
    """Restore optimizer, scheduler and random states; return the loop position dict."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    tensors = load_file(str(folder / TENSORS))
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    state: dict[str, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, name, item = key.split("/")
            state.setdefault(name, {})[item] = value
    if meta.get("moments_dropped"):
        warnings.warn(f"{folder} was saved without the optimizer's moments (drop_moments): they start afresh",
                      stacklevel=2)
    for name, values in meta["optimizer_scalars"].items():
        state.setdefault(name, {}).update(values)
    groups = [{**g, "betas": tuple(g["betas"])} if "betas" in g else g for g in meta["param_groups"]]
    set_optimizer_state_dict(model, optimizer, {"state": state, "param_groups": groups},
                             options=StateDictOptions(full_state_dict=True))
    scheduler.load_state_dict(meta["scheduler"])
    torch.set_rng_state(tensors["rng/torch"])
    cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng/cuda/"))]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    random.setstate(_tuples(meta["rng_python"]))
    kind, pos, has_gauss, gauss = meta["rng_numpy"]
    np.random.set_state((kind, tensors["rng/numpy/keys"].numpy().astype(np.uint32), pos, has_gauss, gauss))
    return meta["loop"]


def drop_moments(folder: Path) -> None:
    """Remove the optimizer's per-parameter state (AdamW's moments: twice the trained weights' size) from the
    checkpoint in ``folder``, keeping the schedule, the random states and the loop's position: resumed from,
    it goes on at the same step and learning rate, its moments started afresh (as after a warm restart).
    For checkpoints shipped where size counts (a repository)."""
    from safetensors.torch import load_file, save_file

    tensors = {k: v for k, v in load_file(str(folder / TENSORS)).items() if not k.startswith("optim/")}
    save_file(tensors, str(folder / TENSORS))
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    meta.update(optimizer_scalars={}, moments_dropped=True)
    (folder / META).write_text(json.dumps(meta, indent=1), encoding="utf-8")


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return {"tuple": [_jsonable(v) for v in value]}
    return value


def _tuples(value: Any) -> Any:
    if isinstance(value, dict) and "tuple" in value:
        return tuple(_tuples(v) for v in value["tuple"])
    return value
