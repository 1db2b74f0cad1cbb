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
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.data import twin_order
from training.unet import BayesianUNet
from xraymuscle.atomic import write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.muscle_groups import model_groups
from xraymuscle.ood import OodModel
from xraymuscle.typing import PathLikeStr
from xraymuscle.weights_file import read_tensors, write_tensors

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
    def groups(self) -> dict[str, list[int]]:
        """The default catalogue's muscle groups whose muscles the model all measures, as the
        channels of each (their summed volumes are reported beside the muscles')."""
        return model_groups(self.muscles)

    def group_sd_scales(self, kind: str = "volume") -> np.ndarray:
        """Each group's sd scale from the calibration (``kind`` ``volume`` or ``mass``), 1 where
        the model's calibration set none (models calibrated before groups)."""
        key = "group_sd_scale" if kind == "volume" else "group_mass_sd_scale"
        scales = self.meta["calibration"].get(key) or {}
        return np.array([float(scales.get(g, 1.0)) for g in self.groups])

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
    """Write the weights, then ``model.json``, each under a temporary name and renamed.

    ``model.json`` names the weights' SHA-256 (``weights_sha256``), so a reader that comes between
    the two renames is told so by :func:`load_model` instead of pairing new weights with old
    metadata. Whatever else the folder holds (the training checkpoint and log, a user's own files)
    is left as it is.
    """
    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    digest = write_tensors(folder / WEIGHTS, state, metadata={"format": FORMAT})
    meta = {"format": FORMAT, "version": VERSION, **meta, "weights_sha256": digest}
    write_text_atomic(folder / METADATA, metadata_text(meta))
    return folder


def metadata_text(meta: dict[str, Any]) -> str:
    """``model.json``'s text: indented one space a level, as ``json.dumps(meta, indent=1)``, but
    each list of numbers on one line (the calibration holds some 30 000 numbers, which one line
    each would spread over as many lines)."""
    return _json_text(meta, 0) + "\n"


def _json_text(value: Any, level: int) -> str:
    inner, outer = " " * (level + 1), " " * level
    if isinstance(value, list) and value:
        if all(_is_number(v) for v in value):
            return "[" + ", ".join(json.dumps(v) for v in value) + "]"
        items = [inner + _json_text(v, level + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + outer + "]"
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_json_text(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + outer + "}"
    return json.dumps(value)


def load_model(folder: PathLikeStr, *, device: str = "cpu") -> LoadedModel:
    """Read a model folder.

    Raises
    ------
    InputError
        When files are missing, the format or version is not this one, ``model.json`` lacks what
        inference needs, or the weights cannot be read, hold NaN or do not fit.
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
    if not isinstance(meta, dict):
        raise InputError(f"holds a JSON {type(meta).__name__}, not a model's metadata", folder / METADATA)
    if meta.get("format") != FORMAT:
        raise InputError(f"not a {FORMAT} folder (format {meta.get('format')!r})", folder / METADATA)
    if meta.get("version") != VERSION:
        raise InputError(
            f"model version {meta.get('version')!r}; this code reads version {VERSION}", folder / METADATA
        )
    problem = metadata_problem(meta)
    if problem:
        raise InputError(problem, folder / METADATA)
    try:
        network = build_network(meta["architecture"], len(meta["muscles"]))
    except (KeyError, ValueError, TypeError) as exc:
        problem = f"architecture cannot be built ({type(exc).__name__}: {exc})"
        raise InputError(problem, folder / METADATA) from None
    ood = OodModel.from_dict(meta["calibration"]["ood"])
    features = network.feature_count(ood.features)
    if len(ood.mean) != features:
        problem = f"calibration.ood describes {len(ood.mean)} features; the network gives {features}"
        raise InputError(problem, folder / METADATA)
    # weights_sha256 is absent in folders written before it was recorded
    state = read_tensors(
        folder / WEIGHTS, sha256=meta.get("weights_sha256"), described_as=f"the weights {METADATA} describes"
    )
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputError(f"weights do not fit the metadata ({first})", folder / WEIGHTS) from None
    network.to(device).eval()
    return LoadedModel(network, meta, folder)


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean, which Python counts as an int)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _numbers(value: Any, n: int | None = None, *, positive: bool = False) -> bool:
    """A list of ``n`` (any number when None) finite numbers, all > 0 when ``positive``."""
    if not isinstance(value, list) or not value or (n is not None and len(value) != n):
        return False
    ok = all(_is_number(v) and math.isfinite(v) for v in value)
    return ok and (not positive or all(v > 0 for v in value))


def model_summary(model: LoadedModel) -> dict[str, Any]:
    """What ``inspect`` says of a model folder: its grid, training and calibration in brief."""
    meta, training = model.meta, model.meta.get("training") or {}
    calibration = meta.get("calibration") or {}
    return {
        "kind": "model",
        "path": str(model.path),
        "format": meta.get("format"),
        "version": meta.get("version"),
        "code_version": meta.get("code_version"),
        "notice": model.notice,
        "muscles": model.muscles,
        "input_size": model.input_size,
        "pixel_spacing_mm": model.pixel_spacing_mm,
        "parameters": sum(p.numel() for p in model.network.parameters()),
        "mc_samples": meta.get("mc_samples"),
        "mc_mirror": meta.get("mc_mirror", False),
        "training": {
            k: training.get(k)
            for k in (
                "data",
                "samples",
                "cases",
                "validation",
                "best_epoch",
                "best_validation_mape",
                "seconds",
            )
        },
        "calibration": {
            k: calibration.get(k)
            for k in (
                "sd_scale",
                "group_sd_scale",
                "validation_coverage95_raw",
                "validation_coverage95_calibrated",
                "validation_cases",
                "recalibrated",
            )
        },
    }


def metadata_problem(meta: dict[str, Any]) -> str | None:
    """What ``model.json`` lacks for inference, in one line (None: nothing).

    Checks the keys that :func:`load_model`'s users read: the muscles, the input grid, the
    architecture, map scale and number of draws, and the calibration (per-muscle sd scales and
    ``uncertain`` thresholds, the out-of-distribution statistics). Optional keys added after the
    first release (``mc_mirror``, ``training``, ...) are not required.
    """
    muscles = meta.get("muscles")
    if not isinstance(muscles, list) or not muscles or not all(isinstance(m, str) for m in muscles):
        return "muscles must be a non-empty list of names"
    if len(set(muscles)) != len(muscles):
        return "muscles holds a name twice"
    k = len(muscles)
    grid = meta.get("input")
    size = [grid.get("size"), grid.get("pixel_spacing_mm")] if isinstance(grid, dict) else None
    if not _numbers(size, positive=True):
        return "input must give a positive size and pixel_spacing_mm"
    if not isinstance(meta.get("architecture"), dict):
        return "architecture is missing"
    if not _numbers([meta.get("map_scale_mm")], positive=True):
        return "map_scale_mm must be a positive number"
    if not isinstance(meta.get("mc_samples"), int) or meta["mc_samples"] < 1:
        return "mc_samples must be a positive whole number"
    cal = meta.get("calibration")
    if not isinstance(cal, dict):
        return "calibration is missing"
    for key in ("sd_scale", "cv_threshold"):
        if not _numbers(cal.get(key), k, positive=True):
            return f"calibration.{key} must hold {k} positive numbers, one per muscle"
    if "mass_sd_scale" in cal and not _numbers(cal["mass_sd_scale"], k, positive=True):
        return f"calibration.mass_sd_scale must hold {k} positive numbers, one per muscle"
    for key in ("group_sd_scale", "group_mass_sd_scale"):
        scales = cal.get(key)
        if scales is not None and (
            not isinstance(scales, dict) or (scales and not _numbers(list(scales.values()), positive=True))
        ):
            return f"calibration.{key} must map group names to positive numbers"
    ood = cal.get("ood")
    if (
        not isinstance(ood, dict)
        or not _numbers(ood.get("mean"))
        or not _numbers(ood.get("std"), len(ood["mean"]), positive=True)
        or not _numbers([ood.get("threshold")], positive=True)
    ):
        return "calibration.ood must give mean, std (as many, positive) and a positive threshold"
    if ood.get("features", "bottleneck") not in ("levels", "bottleneck"):
        return f"calibration.ood.features must be levels or bottleneck, not {ood['features']!r}"
    rows = ood.get("precision_cholesky")
    if rows is not None and (
        not isinstance(rows, list)
        or len(rows) != len(ood["mean"])
        or not all(_numbers(row, i + 1) for i, row in enumerate(rows))
    ):
        return "calibration.ood.precision_cholesky must hold rows of 1, 2, ... numbers, one per feature"
    return None
