"""The model folder contract: ``model.safetensors`` (weights) and ``model.json`` (everything else).

``model.json`` holds the muscles (channel order), the network's grid (input size and pixel
spacing at the isocentre plane), the intensity normalisation, the architecture and its settings,
the map scale, the default number of Monte Carlo samples and whether half of them are drawn on
the mirrored image (``mc_mirror``, false when absent), the calibration (per-muscle scale of the
raw spread, the coefficient-of-variation threshold for ``uncertain``, the out-of-distribution
statistics and threshold), the training data's provenance, the recipe, the code version, and a
``notice`` that every output made with the model repeats. Loading reads JSON and tensors only:
nothing is unpickled.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from training.data import twin_order
from training.unet import BayesianUNet
from xraymuscle.atomic import atomic_dir
from xraymuscle.errors import InputError
from xraymuscle.inference import OodModel
from xraymuscle.typing import PathLikeStr

FORMAT = "xraymuscle-model"
VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "model.json"
PHANTOM_NOTICE = "trained on synthetic phantoms only; not for clinical radiographs"


@dataclass
class LoadedModel:
    """A network ready for inference, with its metadata."""

    network: BayesianUNet
    meta: dict[str, Any]
    path: Path

    @property
    def muscles(self) -> list[str]:
        return list(self.meta["muscles"])

    @property
    def input_size(self) -> int:
        return int(self.meta["input"]["size"])

    @property
    def pixel_spacing_mm(self) -> float:
        return float(self.meta["input"]["pixel_spacing_mm"])

    @property
    def notice(self) -> str:
        return str(self.meta.get("notice", ""))

    @property
    def twins(self) -> list[int] | None:
        """Each channel's left/right twin when the model draws half its samples on the mirrored
        image (``mc_mirror``); None for a model calibrated without (every folder made before it)."""
        return twin_order(self.muscles) if self.meta.get("mc_mirror", False) else None

    @functools.cached_property
    def ood(self) -> OodModel:
        """The out-of-distribution score's statistics and threshold, from the calibration."""
        return OodModel.from_dict(self.meta["calibration"]["ood"])


def build_network(architecture: dict[str, Any], n_muscles: int) -> BayesianUNet:
    """The network an ``architecture`` block describes."""
    if architecture.get("name") != "bayesian_unet":
        raise ValueError(f"unknown architecture {architecture.get('name')!r}")
    return BayesianUNet(
        n_muscles,
        base_channels=int(architecture["base_channels"]),
        depth=int(architecture["depth"]),
        dropout=float(architecture["dropout"]),
        mass_head=bool(architecture["mass_head"]),
        global_gain=bool(architecture.get("global_gain", False)),
        coordinates=bool(architecture.get("coordinates", False)),
        aleatoric=bool(architecture.get("aleatoric", False)),
        gain_bound=None if architecture.get("gain_bound") is None else float(architecture["gain_bound"]),
        materials=int(architecture.get("materials", 0)),
    )


def save_model(folder: PathLikeStr, network: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """Write the folder atomically (a reader never sees half a model)."""
    folder = Path(folder)
    meta = {"format": FORMAT, "version": VERSION, **meta}
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / METADATA).write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return folder


def load_model(folder: PathLikeStr, *, device: str = "cpu") -> LoadedModel:
    """Read a model folder.

    Raises
    ------
    InputError
        When files are missing, the format or version is not this one, or the weights do not fit.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError("no such model folder", folder)
    for name in (METADATA, WEIGHTS):
        if not (folder / name).is_file():
            raise InputError(f"model folder lacks {name}", folder)
    try:
        meta = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"not valid JSON ({exc})", folder / METADATA) from None
    if meta.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} folder (format {meta.get('format')!r})", folder / METADATA)
    if meta.get("version") != VERSION:
        raise InputError(
            f"model version {meta.get('version')!r}; this code reads version {VERSION}", folder / METADATA
        )
    try:
        network = build_network(meta["architecture"], len(meta["muscles"]))
        state = load_file(str(folder / WEIGHTS), device="cpu")
        network.load_state_dict(state, strict=True)
    except (KeyError, ValueError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"weights do not fit the metadata ({first})", folder / WEIGHTS) from None
    network.to(device).eval()
    return LoadedModel(network, meta, folder)
