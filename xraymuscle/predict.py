"""``predict``: per-muscle volume (and mass) with an uncertainty, from radiographs.

For each image: read it (DICOM, PNG, JPEG, TIFF) with its pixel spacing; bring it to the model's
grid (spacing at the isocentre plane; a detector-plane spacing is divided by the magnification
of the model's training geometry); normalise its intensities by robust percentiles; draw the
maps ``T`` times with dropout on. A volume is the integral of its mean map, its sd the calibrated
spread (and, with ``spacing_sd_percent``, what the pixel spacing's own uncertainty adds:
:mod:`xraymuscle.spacing_error`). Every image gets a row of ``predictions.csv``:

* ``ok``;
* ``uncertain``: some muscle's coefficient of variation passes the model's threshold;
* ``rejected``: not a plausible hip radiograph (colour, too small, too narrow a field, or an
  out-of-distribution score past the model's threshold), or no known pixel spacing;
* ``error``: the file cannot be read.

Per image, ``overlays/<n>_<name>.png`` (the maps in colour over the radiograph) and
``uncertainty/<n>_<name>.png`` (where the maps vary between draws) are written.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xraymuscle.atomic import write_text_atomic
from xraymuscle.decoding import prepare_input
from xraymuscle.errors import InputError
from xraymuscle.inference import check_mc_samples, mc_predict
from xraymuscle.model import LoadedModel, load_model
from xraymuscle.muscle_groups import group_volumes
from xraymuscle.paths import default_model_dir, shown
from xraymuscle.prepare import (
    GridTarget,
    Prepared,
    check_spacing_options,
    prepare,
    read_and_prepare,
)
from xraymuscle.preview import legend, montage, overlay_masks, side_marks, titled, write_png
from xraymuscle.run_lock import LOCK_FILE, locks_output
from xraymuscle.spacing_error import attach_spacing_sds, check_spacing_sd
from xraymuscle.study import StudyInput, find_inputs, left_out_line
from xraymuscle.study_list import check_listed

__all__ = [
    "STATUSES",
    "GridTarget",
    "Prepared",
    "expand_folders",
    "format_cell",
    "predict_images",
    "prediction_row",
    "predictions_columns",
    "predictions_csv",
    "prepare",
    "read_and_prepare",
    "write_pictures",
]

STATUSES = ("ok", "uncertain", "rejected", "error")
PICTURE_MM = 40.0
BATCH = 8
PICTURE_FOLDERS = ("overlays", "uncertainty")  # per image: maps over the radiograph, their spread


def predictions_columns(model: LoadedModel) -> list[str]:
    """Column order of ``predictions.csv`` (the DESIGN contract, then extras)."""
    columns = ["image", "status", "reason", "pixel_spacing_mm", "spacing_source"]
    for m in model.muscles:
        columns += [f"volume_ml__{m}", f"volume_sd_ml__{m}"]
    if model.meta["architecture"].get("mass_head"):
        for m in model.muscles:
            columns += [f"mass_g__{m}", f"mass_sd_g__{m}"]
    for g in model.groups:
        columns += [f"group_volume_ml__{g}", f"group_volume_sd_ml__{g}"]
    if model.meta["architecture"].get("mass_head"):
        for g in model.groups:
            columns += [f"group_mass_g__{g}", f"group_mass_sd_g__{g}"]
    return [*columns, "ood_score", "spacing_sd_percent", "model", "notice", "notes"]


TEXT_COLUMNS = frozenset({"image", "status", "reason", "spacing_source", "model", "notice", "notes"})


def numeric_columns(model: LoadedModel) -> frozenset[str]:
    """The columns of :func:`predictions_columns` that hold numbers (empty where there is none)."""
    return frozenset(predictions_columns(model)) - TEXT_COLUMNS


@locks_output("out")
def predict_images(
    paths: Sequence[str | Path],
    out: Path,
    *,
    model_dir: Path | None = None,
    pixel_spacing: float | None = None,
    magnification: float | None = None,
    hip_height_mm: float | None = None,
    marker_mm: float | None = None,
    spacing_sd_percent: float | None = None,
    mc_samples: int | None = None,
    device: str = "cpu",
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Predict every image (a folder: the radiographs in it); write ``predictions.csv`` and pictures
    under ``out``; return the rows. ``magnification`` divides spacings given at the detector
    (default: :meth:`GridTarget.magnification_for`, from the file's source-to-detector distance
    and ``hip_height_mm``, the hip's height above the detector, else the training geometry's);
    ``marker_mm``, a calibration marker's diameter, takes every spacing from its shadow instead;
    ``spacing_sd_percent``, the spacing's relative sd, adds what it makes of each volume's sd."""
    model = load_model(model_dir or default_model_dir(), device=device)
    check_mc_samples(mc_samples)
    check_spacing_options(pixel_spacing, magnification, hip_height_mm, marker_mm)
    check_spacing_sd(spacing_sd_percent)
    inputs = expand_folders(paths, skip=out, on_output_folder=lambda f: echo(left_out_line(f)))
    if not inputs:
        raise InputError("no images given")
    check_listed([i.listed for i in inputs], marker_mm=marker_mm, magnification=magnification)
    target = GridTarget.of(
        model,
        magnification=magnification,
        marker_mm=marker_mm,
        hip_height_mm=hip_height_mm,
    )  # (prepare_input makes the spacing probes of the images that carry a spacing sd)
    out = Path(out)
    _check_out(out)
    earlier = picture_names(out / "predictions.csv")  # an earlier run's, replaced by this one's
    written: set[str] = set()
    samples = mc_samples or int(model.meta["mc_samples"])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(inputs), desc="predicting", unit="image", disable=not progress)
    for start in range(0, len(inputs), BATCH):
        chunk = [
            Prepared(item.path, status="error", reason=item.problem)
            if item.problem
            else prepare_input(
                item, target, pixel_spacing=pixel_spacing, spacing_sd_percent=spacing_sd_percent
            )[0]
            for item in inputs[start : start + BATCH]
        ]
        for p in chunk:
            p.path = shown(p.path)  # read from the path, shown by its name
        ready = [p for p in chunk if p.image is not None]
        results: dict[int, Any] = {}
        if ready:
            images = torch.from_numpy(np.stack([p.image for p in ready if p.image is not None]))[:, None]
            mc = mc_predict(
                model.network,
                images,
                samples=samples,
                pixel_area_mm2=model.pixel_spacing_mm**2,
                map_scale_mm=float(model.meta["map_scale_mm"]),
                device=device,
                twins=model.twins,
            )
            attach_spacing_sds(mc, model, images, ready, device=device)
            scores = model.ood.score(mc.features)
            for i, p in enumerate(ready):
                results[id(p)] = (mc, i, float(scores[i]))
        for offset, p in enumerate(chunk):
            index = start + offset
            row = prediction_row(p, model, results.get(id(p)))
            rows.append(row)
            if pictures and p.image is not None and id(p) in results:
                mc, i, _ = results[id(p)]
                name = picture_name(index, p.path)
                write_pictures(out, name, p, mc.maps[i], mc.map_sd[i], row)
                written.add(name)
            bar.update(1)
    bar.close()
    write_text_atomic(out / "predictions.csv", predictions_csv(model, rows))
    for name in earlier - written:  # the table no longer names their images: a picture of it would mislead
        for folder in PICTURE_FOLDERS:
            (out / folder / name).unlink(missing_ok=True)
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    echo(
        ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; {model.notice}; table: {out / 'predictions.csv'}"
    )
    return rows


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that holds files of its own and no earlier ``predictions.csv``: the
    tables and pictures would land among them (a run stopped before its table is taken up again:
    its picture folders, lock and temporary files are its own)."""
    if (out / "predictions.csv").is_file():
        return
    own = {*PICTURE_FOLDERS, LOCK_FILE}
    others = sorted(
        p.name for p in out.iterdir() if p.name not in own and not p.name.startswith(".predictions.csv.")
    )
    if others:
        shown_names = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise InputError(
            f"folder holds other files ({shown_names}) and no predictions.csv; use a new --out", out
        )


def expand_folders(
    paths: Sequence[str | Path],
    *,
    skip: str | Path | None = None,
    on_output_folder: Callable[[str], None] | None = None,
) -> list[StudyInput]:
    """The paths as given, each folder replaced by the radiographs in it, found as ``screen``
    finds a study's (recursively, in a stable order, not searching the folder ``skip`` nor the
    output folders of earlier runs, which ``on_output_folder`` is told of), and each ``.csv``
    file by the files it lists (a study list, with what it gives each: see
    :mod:`xraymuscle.study_list`), each with the problem found while listing (``""`` for none): a
    subfolder that cannot be read, a folder with no radiographs, or a list that cannot be read
    becomes a row of its own with status ``error`` and that reason.
    """
    out: list[StudyInput] = []
    for path in paths:
        is_list = Path(path).suffix.lower() == ".csv" and Path(path).is_file()
        if not (Path(path).is_dir() or is_list):
            out.append(StudyInput(len(out), str(path)))
            continue
        if skip is not None and Path(path).is_dir() and os.path.realpath(path) == os.path.realpath(skip):
            raise InputError("--out must be a folder of its own, not one searched for radiographs", skip)
        try:
            found = find_inputs(path, skip=skip, on_output_folder=on_output_folder)
            out += [replace(item, index=len(out) + i) for i, item in enumerate(found)]
        except InputError as exc:
            out.append(StudyInput(len(out), str(path), exc.problem))
    return out


def prediction_row(p: Prepared, model: LoadedModel, result: Any) -> dict[str, Any]:
    """The table row of one image: its status and, when it was read, volumes with calibrated sd.

    ``result`` is ``(McResult, index in it, ood score)`` or ``None`` when the image never reached
    the network.
    """
    cal, ood = model.meta["calibration"], model.ood
    row: dict[str, Any] = {
        "image": p.path,
        "status": p.status,
        "reason": p.reason,
        "pixel_spacing_mm": p.spacing_mm,
        "spacing_source": p.spacing_source,
        "model": str(model.path),
        "notice": model.notice,
        "notes": "; ".join(p.notes),  # how the file was read: orientation, spacing, padding, ...
    }
    if result is None:
        return row
    mc, i, score = result
    scales = np.asarray(cal["sd_scale"])
    volume, sd = mc.volume[i], mc.volume_sd[i] * scales  # the model's own (calibrated) sd
    # the spacing's part adds in quadrature to what is reported, not to the QC status below: the
    # thresholds are the model's, and a study-wide spacing sd would flag every image alike
    total = sd if mc.spacing_volume_sd is None else np.hypot(sd, mc.spacing_volume_sd[i])
    for j, m in enumerate(model.muscles):
        row[f"volume_ml__{m}"] = float(volume[j])
        row[f"volume_sd_ml__{m}"] = float(total[j])
    _group_cells(row, model, "volume", volume, sd, mc.volume_correlation, mc.spacing_volume_sd, i)
    if mc.mass is not None and mc.mass_sd is not None:
        model_mass_sd = mc.mass_sd[i] * np.asarray(cal.get("mass_sd_scale", scales))
        mass_sd = model_mass_sd
        if mc.spacing_mass_sd is not None:
            mass_sd = np.hypot(model_mass_sd, mc.spacing_mass_sd[i])
        for j, m in enumerate(model.muscles):
            row[f"mass_g__{m}"] = float(mc.mass[i, j])
            row[f"mass_sd_g__{m}"] = float(mass_sd[j])
        _group_cells(
            row, model, "mass", mc.mass[i], model_mass_sd, mc.mass_correlation, mc.spacing_mass_sd, i
        )
    row["ood_score"] = score
    percent = None if mc.spacing_sd_percent is None else float(mc.spacing_sd_percent[i])
    row["spacing_sd_percent"] = percent if percent is not None and math.isfinite(percent) else None
    if not (np.isfinite(volume).all() and np.isfinite(total).all() and math.isfinite(score)):
        # a NaN compares false with every threshold: without this it would pass as "ok"
        row["status"] = "error"
        row["reason"] = "the network gave values that are not finite numbers"
        return row
    if score > ood.threshold:
        row["status"] = "rejected"
        row["reason"] = f"not like the radiographs the model knows (score {score:.2f} > {ood.threshold:.2f})"
        return row
    cv = sd / np.maximum(volume, 1.0)
    over = [m for j, m in enumerate(model.muscles) if cv[j] > cal["cv_threshold"][j]]
    if over:
        row["status"] = "uncertain"
        row["reason"] = f"wide uncertainty for {', '.join(over)}"
    return row


def _group_cells(
    row: dict[str, Any],
    model: LoadedModel,
    kind: str,
    values: np.ndarray,
    sd: np.ndarray,
    correlation: np.ndarray | None,
    spacing_sd: np.ndarray | None,
    i: int,
) -> None:
    """The muscle groups' sums and sds (``kind`` ``volume`` or ``mass``) into ``row``, from the
    image's values, their calibrated sds and how they vary together over the draws
    (:mod:`xraymuscle.muscle_groups`), times the group's own scale; a spacing sd adds its muscles'
    parts summed, as one spacing error moves them all together."""
    value_key, sd_key = ("volume_ml__", "volume_sd_ml__") if kind == "volume" else ("mass_g__", "mass_sd_g__")
    scales = model.group_sd_scales(kind)
    for (g, members), scale in zip(model.groups.items(), scales, strict=True):
        total, group_sd = group_volumes(values, sd, None if correlation is None else correlation[i], members)
        group_sd *= scale
        if spacing_sd is not None:
            group_sd = math.hypot(group_sd, float(spacing_sd[i][members].sum()))
        row[f"group_{value_key}{g}"], row[f"group_{sd_key}{g}"] = total, group_sd


def predictions_csv(model: LoadedModel, rows: list[dict[str, Any]]) -> str:
    """The table as CSV text (numbers rounded, missing values empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=predictions_columns(model), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_cell(v) for k, v in row.items()})
    return buf.getvalue()


def format_cell(value: Any) -> Any:
    """A table cell: numbers rounded (3 decimals, or 4 significant digits when tiny or huge), missing as
    empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        # an absurd value (a spacing of 1e308 mm, say) in a few characters, not hundreds of digits
        return f"{value:.4g}" if abs(value) < 1e-3 or abs(value) >= 1e9 else f"{value:.3f}"
    return value


def picture_name(index: int, image: str) -> str:
    """The file name of the pictures of the table's row ``index`` (from 0), whose image is ``image``."""
    return f"{index:04d}_{Path(image).stem}.png"


def picture_names(table: Path) -> set[str]:
    """The names of the pictures an earlier run wrote beside ``table`` (its ``predictions.csv``),
    from its rows; none when there is no such table or it cannot be read."""
    try:
        with table.open(encoding="utf-8", newline="") as fh:
            return {
                picture_name(i, row["image"]) for i, row in enumerate(csv.DictReader(fh)) if row.get("image")
            }
    except (OSError, UnicodeDecodeError, csv.Error):
        return set()


def _legend_line(muscle: str, row: dict[str, Any]) -> str:
    """``gluteus medius L  242 ml, sd 18`` (the name alone when the row holds no volume)."""
    name = muscle.replace("_left", " L").replace("_right", " R").replace("_", " ")
    volume, sd = row.get(f"volume_ml__{muscle}"), row.get(f"volume_sd_ml__{muscle}")
    if not isinstance(volume, int | float) or not isinstance(sd, int | float):
        return name
    return f"{name}  {volume:.0f} ml, sd {sd:.0f}"


def write_pictures(
    out: Path, name: str, p: Prepared, maps: np.ndarray, sd: np.ndarray, row: dict[str, Any]
) -> Path:
    """``overlays/<name>`` (maps in colour over the radiograph) and ``uncertainty/<name>``."""
    assert p.image is not None
    # One fixed scale for every muscle (a thickness of PICTURE_MM shows full colour): a faint, spread
    # map then looks faint instead of being stretched to full colour.
    scaled = [np.clip(m / PICTURE_MM, 0, 1) for m in maps]
    status = f"{row['status']}" + (f": {row['reason'][:60]}" if row["reason"] else "")
    panels = [
        side_marks(titled(overlay_masks(p.image, scaled, alpha=0.7), Path(p.path).name[:40])),
        titled(overlay_masks(np.zeros_like(p.image), scaled, alpha=1.0), status),
        legend(
            [
                _legend_line(column[len("volume_ml__") :], row)
                for column in row
                if column.startswith("volume_ml__")
            ]
        ),
    ]
    write_png(out / PICTURE_FOLDERS[0] / name, montage(panels, columns=3))
    spread = sd.sum(axis=0) / max(float(maps.sum(axis=0).max()), 1e-6)
    heat = np.clip(spread / max(float(np.percentile(spread, 99.5)), 1e-6), 0, 1)
    rgb = np.stack([heat, heat**2, 0.3 * (1 - heat)], axis=-1)
    write_png(out / PICTURE_FOLDERS[1] / name, titled(rgb, "map sd between dropout draws"))
    return out / PICTURE_FOLDERS[0] / name
