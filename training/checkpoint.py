"""Training checkpoints without pickles: tensors in safetensors, everything else in JSON.

A checkpoint folder holds ``last.safetensors`` (each network's weights under ``<name>.`` and each
optimiser's tensors under ``optim.<name>.<param id>.``) and ``state.json`` (the optimisers'
scalars and settings, plus whatever the trainer adds). Both are written atomically, the tensors
first, so a run killed while saving resumes from the previous complete checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.weights_file import read_tensors

TENSORS = "last.safetensors"
STATE = "state.json"


def module_state(network: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A network's weights and buffers on the CPU, contiguous (ready for safetensors)."""
    return {key: value.detach().cpu().contiguous() for key, value in network.state_dict().items()}


def save_checkpoint(
    folder: Path,
    networks: Mapping[str, torch.nn.Module],
    optimisers: Mapping[str, torch.optim.Optimizer],
    info: dict[str, Any],
) -> None:
    """Write the networks, the optimisers and ``info`` (JSON-ready) to ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    for name, network in networks.items():
        tensors.update({f"{name}.{key}": value for key, value in module_state(network).items()})
    scalars: dict[str, dict[str, float]] = {}
    groups: dict[str, list[dict[str, Any]]] = {}
    for name, optimiser in optimisers.items():
        state = optimiser.state_dict()
        scalars[name] = {}
        for pid, entry in state["state"].items():
            for key, value in entry.items():
                if torch.is_tensor(value) and value.ndim > 0:
                    tensors[f"optim.{name}.{pid}.{key}"] = value.detach().cpu().contiguous()
                else:
                    scalars[name][f"{pid}.{key}"] = float(value)
        groups[name] = [{k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / TENSORS) as tmp:
        save_file(tensors, str(tmp))
    state_json = {**info, "optimiser_scalars": scalars, "optimiser_groups": groups}
    write_text_atomic(folder / STATE, json.dumps(state_json, indent=1))


def read_info(folder: Path) -> dict[str, Any]:
    """The JSON part of a checkpoint (InputError naming the file when it is missing or broken)."""
    try:
        info = json.loads((folder / STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError("no checkpoint to resume from", folder / STATE) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", folder / STATE) from None
    if not isinstance(info, dict):
        raise InputError("not a checkpoint's state", folder / STATE)
    return info


def load_checkpoint(
    folder: Path,
    networks: Mapping[str, torch.nn.Module],
    optimisers: Mapping[str, torch.optim.Optimizer],
) -> dict[str, Any]:
    """Restore the networks and optimisers saved by :func:`save_checkpoint`; return its ``info``."""
    info = read_info(folder)
    tensors = read_tensors(folder / TENSORS)
    for name, network in networks.items():
        prefix = f"{name}."
        network.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    for name, optimiser in optimisers.items():
        state = optimiser.state_dict()
        restored: dict[int, dict[str, Any]] = {}
        prefix = f"optim.{name}."
        for key, value in tensors.items():
            if key.startswith(prefix):
                pid, entry = key[len(prefix) :].split(".", 1)
                restored.setdefault(int(pid), {})[entry] = value
        for key, value in info["optimiser_scalars"].get(name, {}).items():
            pid, entry = key.split(".", 1)
            restored.setdefault(int(pid), {})[entry] = torch.tensor(value)
        for group, saved in zip(state["param_groups"], info["optimiser_groups"][name], strict=True):
            group.update({k: v for k, v in saved.items() if k != "params"})
        state["state"] = restored
        optimiser.load_state_dict(state)
    return info
