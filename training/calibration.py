"""Calibrating a decomposition network's spread on validation cases, and recalibrating a model.

The raw Monte Carlo spread is too narrow or too wide by a factor of its own for each muscle; on
the validation set, with dropout on and the draws made as inference makes them (half on the
mirrored image with ``mc_mirror``), :func:`spread_calibration` sets:

* ``sd_scale`` (and ``mass_sd_scale``): per muscle, the factor that makes the 95 % interval cover
  95 % of the validation volumes (masses); with mirrored draws a muscle and its twin are pooled;
* ``group_sd_scale`` (and ``group_mass_sd_scale``): the same for each muscle group's sum;
* ``cv_threshold``: per muscle, the coefficient of variation above which an image is ``uncertain``
  (about 2 % of new images like the validation ones);
* the coverage before and after, and the number of validation images.

:func:`recalibrate` does it again for a finished model on another validation set (``xraymuscle
calibrate``): the weights and the out-of-distribution statistics are kept as they are, as the
latter are made from training images.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from training.data import DrrTrainingSet, GridSpec, collect, twin_order
from training.unet import BayesianUNet
from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.inference import McResult, mc_predict, sd_scales
from xraymuscle.model import METADATA, WEIGHTS, load_model, metadata_text
from xraymuscle.muscle_groups import group_table, group_truth, model_groups
from xraymuscle.run_lock import is_empty, locks_output

# the share of in-distribution images that the `uncertain` threshold is set to flag
UNCERTAIN_RATE = 0.02


def spread_calibration(
    network: BayesianUNet,
    val_set: DrrTrainingSet,
    *,
    samples: int,
    mirrored: bool,
    device: str,
    progress: bool = False,
) -> tuple[dict[str, Any], McResult]:
    """The calibration block of ``model.json`` but the out-of-distribution statistics (see the
    module doc), and the draws it was made from (their features set those statistics)."""
    images, truth, mass, valid = collect(val_set)
    mc = mc_predict(
        network, images, samples=samples, pixel_area_mm2=val_set.grid.pixel_area_mm2,
        map_scale_mm=val_set.map_scale, device=device, keep_maps=False,
        twins=val_set.twins if mirrored else None, progress="calibrating" if progress else None,
    )  # fmt: skip

    def paired(a: np.ndarray) -> np.ndarray:
        """With mirrored draws a muscle and its twin are read alike: their validation cases are
        pooled, so that a mirrored radiograph gets the original's calibration, sides exchanged."""
        return np.concatenate([a, a[:, val_set.twins]]) if mirrored else a

    scales = sd_scales(paired(mc.volume), paired(mc.volume_sd), paired(truth), paired(valid))
    mass_scales = (
        sd_scales(paired(mc.mass), paired(mc.mass_sd), paired(mass), paired(valid))
        if mc.mass is not None and mc.mass_sd is not None
        else scales
    )
    groups = _group_scales(mc, truth, mass, valid, scales, mass_scales, val_set, mirrored)
    cv = mc.volume_sd * scales / np.maximum(mc.volume, 1.0)
    thresholds = cv_thresholds(paired(cv), paired(valid), images=len(cv))
    calibrated = np.abs(mc.volume - truth) <= 1.96 * mc.volume_sd * scales
    raw = np.abs(mc.volume - truth) <= 1.96 * mc.volume_sd
    calibration = {
        "sd_scale": scales.tolist(),
        "mass_sd_scale": np.asarray(mass_scales).tolist(),
        "cv_threshold": thresholds,
        "validation_coverage95_raw": float(raw[valid].mean()),
        "validation_coverage95_calibrated": float(calibrated[valid].mean()),
        "validation_cases": len(val_set),
        **groups,
    }
    return calibration, mc


def _group_scales(
    mc: Any,
    truth: np.ndarray,
    mass: np.ndarray | None,
    valid: np.ndarray,
    scales: np.ndarray,
    mass_scales: np.ndarray,
    val_set: DrrTrainingSet,
    mirrored: bool,
) -> dict[str, Any]:
    """Each muscle group's own sd scale (``group_sd_scale``, ``group_mass_sd_scale``: name →
    factor), set on the validation images as the muscles' are, on the groups' sds made from the
    calibrated muscles' (:mod:`xraymuscle.muscle_groups`); with mirrored draws a group and its twin
    are pooled. Nothing for a model whose muscles make no group."""
    groups = model_groups(val_set.data.muscles)
    if not groups:
        return {}
    twins = twin_order(list(groups))  # the groups' names end in _left and _right as the muscles' do

    def paired(a: np.ndarray) -> np.ndarray:
        return np.concatenate([a, a[:, twins]]) if mirrored else a

    out: dict[str, Any] = {}
    kinds = [("group_sd_scale", mc.volume, mc.volume_sd * scales, mc.volume_correlation, truth)]
    if mc.mass is not None and mc.mass_sd is not None and mass is not None:
        kinds.append(
            ("group_mass_sd_scale", mc.mass, mc.mass_sd * np.asarray(mass_scales), mc.mass_correlation, mass)
        )
    for key, values, sd, correlation, true in kinds:
        sums, sds = group_table(values, sd, correlation, groups)
        true_sums, known = group_truth(true, valid, groups)
        factors = sd_scales(paired(sums), paired(sds), paired(true_sums), paired(known))
        out[key] = {g: float(f) for g, f in zip(groups, factors, strict=True)}
    return out


def cv_thresholds(
    cv: np.ndarray, valid: np.ndarray, rate: float = UNCERTAIN_RATE, *, images: int | None = None
) -> list[float]:
    """Per muscle, the coefficient of variation above which an image is ``uncertain``.

    Each muscle's log CV is standardised by its validation mean and sd; one common level ``z`` on
    that scale is set so that about ``rate`` of new images have some muscle above it. Each of the
    ``n`` validation images gets its largest log CV standardised by the other images' means and sds
    (as a new image's is by theirs); ``z`` is the ``ceil((n + 1)(1 - rate))``-th smallest of these.
    A new image exchangeable with the validation ones passes the ``k``-th of ``n`` with probability
    ``(n + 1 - k) / (n + 1)``, which that rank holds at ``rate`` or just under for any ``n`` from
    ``1 / rate - 1`` up. The plain 98th percentile of in-sample scores lies lower and flags more,
    the more so the fewer the images: on held-out radiographs, 2.5–2.7 % at 240 validation images
    and 4.5–4.9 % at 60, against 1.6–1.7 % and 1.6–2.1 % so (docs/accuracy.md). With fewer than ``1
    / rate - 1`` images no rank lies that far out: ``z`` is then the largest, and about ``1 / (n +
    1)`` of new images are flagged; views of one body are alike, so with few bodies the share is
    higher still. The log-normal tail of ``rate / K`` per muscle that earlier models took flagged
    several times ``rate``, as the CVs' tails are heavier and the muscles' CVs rise together; it is
    left only for a validation set with no usable CVs.

    ``images`` is the number of distinct images among the rows (default: the rows). With mirrored
    draws the rows are the ``images`` images and then their mirrors with the sides exchanged; a
    muscle and its twin share one standardisation, so an image and its mirror share one largest
    value, counted once.
    """
    k = cv.shape[1]
    z = NormalDist().inv_cdf(1.0 - rate / k)
    n_images = max(images or len(cv), 1)
    if len(cv) % n_images:
        raise ValueError(f"{len(cv)} rows are not whole copies of {n_images} images")
    usable = valid & (cv > 0)
    logs = np.log(np.where(usable, cv, 1.0))
    counts = usable.sum(axis=0)
    known = counts >= 5
    centre, spread = np.full(k, np.nan), np.full(k, np.nan)
    for j in np.flatnonzero(known):
        values = logs[usable[:, j], j]
        centre[j], spread[j] = values.mean(), max(float(values.std(ddof=1)), 1e-6)
    # Each image is scored against the mean and sd of the other images (its own rows left out), as
    # a new image will be against all of them: scored against statistics it is part of, an
    # outlying image looks less so, and a level set from such scores flags more than ``rate``.
    kept = np.where(usable, logs, 0.0)
    copies = (len(cv) // n_images, n_images, k)  # row r is image r % n_images
    rest_n = counts - usable.reshape(copies).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rest_mean = (kept.sum(axis=0) - kept.reshape(copies).sum(axis=0)) / rest_n
        rest_sq = (kept**2).sum(axis=0) - (kept**2).reshape(copies).sum(axis=0)
        rest_sd = np.sqrt(np.maximum((rest_sq - rest_n * rest_mean**2) / (rest_n - 1), 1e-12))
        score = (logs.reshape(copies) - rest_mean) / rest_sd
    score = np.where(usable.reshape(copies) & known & (rest_n >= 2), score, -np.inf)
    largest = score.max(axis=(0, 2)) if k and len(cv) else np.full(n_images, -np.inf)
    largest = np.sort(largest[np.isfinite(largest)])
    if len(largest):
        # (the allowance keeps a product that is whole from rounding up past it)
        rank = min(math.ceil((len(largest) + 1) * (1.0 - rate) - 1e-9), len(largest))
        z = float(largest[rank - 1])
    return [float(np.exp(c + z * s)) if np.isfinite(c) else 0.5 for c, s in zip(centre, spread, strict=True)]


@locks_output("out")
def recalibrate(
    model_dir: str | os.PathLike[str],
    val_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Calibrate a finished model's spread again on the DRR dataset at ``val_dir`` (cases it did
    not learn) and write the model to ``out``: the same weights, byte for byte, and ``model.json``
    with the new calibration. The out-of-distribution statistics are kept (they are made from
    training images); ``calibration.recalibrated`` names the validation set and the figures it
    replaced. Returns the new calibration block.

    Raises
    ------
    InputError
        When ``out`` is the model's folder or holds files, the dataset is empty, is the model's
        training set, or lists other muscles than the model, or cannot be read.
    """
    out = Path(out)
    model_dir = Path(model_dir)
    if os.path.realpath(out) == os.path.realpath(model_dir):
        raise InputError("--out must be a new folder, not the model's own", out)
    if not is_empty(out):
        raise InputError("holds files already; use a new --out", out)
    model = load_model(model_dir, device=device)
    data = DrrDataset.load(val_dir)
    if len(data) == 0:
        raise InputError("the dataset has no samples", val_dir)
    if data.muscles != model.muscles:
        raise InputError("the dataset lists other muscles than the model", val_dir)
    trained_on = (model.meta.get("training") or {}).get("data")
    if trained_on and os.path.realpath(trained_on) == os.path.realpath(data.root):
        raise InputError(
            "is the model's training set; calibrated on the cases it learnt, the intervals would be too "
            "narrow: give held-out cases",
            val_dir,
        )
    architecture = model.meta["architecture"]
    val_set = DrrTrainingSet(
        data,
        list(range(len(data))),
        GridSpec(model.input_size, model.pixel_spacing_mm),
        map_scale_mm=float(model.meta["map_scale_mm"]),
        mass=bool(architecture.get("mass_head")),
    )
    calibration, _ = spread_calibration(
        model.network,
        val_set,
        samples=int(model.meta["mc_samples"]),
        mirrored=bool(model.meta.get("mc_mirror", False)),
        device=device,
        progress=progress,
    )
    before = model.meta["calibration"]
    calibration["ood"] = before["ood"]
    calibration["recalibrated"] = {
        "validation": str(data.root),
        "replaced": {
            key: before.get(key)
            for key in ("validation_cases", "validation_coverage95_calibrated", "sd_scale")
        },
    }
    meta = {**model.meta, "calibration": calibration}
    _write_model_folder(model_dir, out, meta)
    return calibration


def _write_model_folder(source: Path, out: Path, meta: dict[str, Any]) -> None:
    """``source``'s weights and ``meta`` as the model folder ``out``: the weights first, then
    ``model.json``, each under a temporary name and renamed; ``model.json`` names the weights'
    SHA-256, so a folder with only the first is no model (:func:`load_model` says so)."""
    with atomic_path(out / WEIGHTS) as tmp:
        shutil.copyfile(source / WEIGHTS, tmp)
    write_text_atomic(out / METADATA, metadata_text(meta))
    load_model(out)  # what was written reads back as a model
