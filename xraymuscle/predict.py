"""``predict``: per-muscle volume (and mass) with an uncertainty, from radiographs.

For each image: read it (DICOM, PNG, JPEG, TIFF) with its pixel spacing; bring it to the model's
grid (spacing at the isocentre plane; a detector-plane spacing is divided by the magnification
of the model's training geometry); normalise its intensities by robust percentiles; draw the
maps ``T`` times with dropout on. A volume is the integral of its mean map, its sd the calibrated
spread. Every image gets a row of ``predictions.csv``:

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xraymuscle.atomic import write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.inference import OodModel, mc_predict
from xraymuscle.model import LoadedModel, load_model
from xraymuscle.model_grid import fit_to_grid, normalise
from xraymuscle.paths import default_model_dir
from xraymuscle.preview import montage, overlay_masks, titled, write_png
from xraymuscle.radiograph import Radiograph, read_radiograph

STATUSES = ("ok", "uncertain", "rejected", "error")
MIN_SIDE_PX = 64
MIN_FIELD_MM = 150.0
PICTURE_MM = 40.0
CROSS_SECTIONAL = ("CT", "MR", "PT", "NM", "US")  # a hip radiograph shows at least this much of the pelvis
BATCH = 8


@dataclass
class Prepared:
    """An image read and brought to the model's grid, or the reason it could not be."""

    path: str
    status: str = "ok"
    reason: str = ""
    spacing_mm: float | None = None
    spacing_source: str = ""
    image: np.ndarray | None = None  # (S, S) normalised
    notes: list[str] = field(default_factory=list)


def predictions_columns(model: LoadedModel) -> list[str]:
    """Column order of ``predictions.csv`` (the DESIGN contract, then extras)."""
    columns = ["image", "status", "reason", "pixel_spacing_mm", "spacing_source"]
    for m in model.muscles:
        columns += [f"volume_ml__{m}", f"volume_sd_ml__{m}"]
    if model.meta["architecture"].get("mass_head"):
        for m in model.muscles:
            columns += [f"mass_g__{m}", f"mass_sd_g__{m}"]
    return [*columns, "ood_score", "model", "notice"]


@dataclass(frozen=True)
class GridTarget:
    """What bringing an image to a model's grid needs: size, spacing, training magnification.

    Small and picklable, so decoding can run in worker processes without the network.
    """

    size: int
    spacing_mm: float
    magnification: float

    @classmethod
    def of(cls, model: LoadedModel) -> GridTarget:
        return cls(model.input_size, model.pixel_spacing_mm, _training_magnification(model))


def prepare(
    path: str | Path, model: LoadedModel | GridTarget, *, pixel_spacing: float | None = None
) -> Prepared:
    """Read one radiograph and map it onto the model's grid; problems become a status and reason."""
    prepared, _ = read_and_prepare(path, model, pixel_spacing=pixel_spacing)
    return prepared


def read_and_prepare(
    path: str | Path, model: LoadedModel | GridTarget, *, pixel_spacing: float | None = None
) -> tuple[Prepared, Radiograph | None]:
    """:func:`prepare`, also returning the radiograph read (``None`` when it could not be)."""
    target = model if isinstance(model, GridTarget) else GridTarget.of(model)
    prepared = Prepared(str(path))
    try:
        radiograph = read_radiograph(path, pixel_spacing=pixel_spacing)
    except InputError as exc:
        prepared.status, prepared.reason = "error", exc.problem
        return prepared, None
    return _to_grid(radiograph, target, prepared), radiograph


def _to_grid(radiograph: Radiograph, target: GridTarget, prepared: Prepared) -> Prepared:
    prepared.spacing_source = radiograph.spacing_source
    prepared.notes = list(radiograph.notes)
    h, w = radiograph.shape
    modality = (radiograph.metadata.get("modality") or "").upper()
    if modality in CROSS_SECTIONAL:
        return _reject(prepared, f"a {modality} image (modality {modality}), not a radiograph")
    view = (radiograph.metadata.get("view_position") or "").upper()
    if view in ("LAT", "LL", "RL", "LATERAL"):
        return _reject(prepared, f"a lateral view ({view}); the model reads AP radiographs")
    if radiograph.is_colour:
        return _reject(prepared, "a colour image, not a radiograph")
    if min(h, w) < MIN_SIDE_PX:
        return _reject(prepared, f"image of {w} x {h} pixels is too small for a hip radiograph")
    if max(h, w) > 8 * min(h, w):
        return _reject(prepared, f"image of {w} x {h} pixels is too narrow for a hip radiograph")
    if radiograph.pixel_spacing is None:
        return _reject(prepared, "pixel spacing unknown (none in the file); give --pixel-spacing MM")
    spacing = float(np.mean(radiograph.pixel_spacing))
    if radiograph.spacing_plane == "detector":
        magnification = target.magnification
        spacing /= magnification
        prepared.notes.append(f"detector spacing divided by the training magnification {magnification:.3f}")
    prepared.spacing_mm = spacing
    if min(h, w) * spacing < MIN_FIELD_MM:
        return _reject(
            prepared, f"field of view {min(h, w) * spacing:.0f} mm is too small for a hip radiograph"
        )
    scale = spacing / target.spacing_mm
    grid = fit_to_grid(radiograph.pixels[None].astype(np.float32), scale, target.size)[0]
    prepared.image = normalise(grid)
    return prepared


def _reject(prepared: Prepared, reason: str) -> Prepared:
    prepared.status, prepared.reason = "rejected", reason
    return prepared


def _training_magnification(model: LoadedModel) -> float:
    geometry = (model.meta.get("training") or {}).get("geometry") or {}
    sid, sod = geometry.get("sid"), geometry.get("sod")
    return float(sid) / float(sod) if sid and sod else 1.0


def predict_images(
    paths: Sequence[str | Path],
    out: Path,
    *,
    model_dir: Path | None = None,
    pixel_spacing: float | None = None,
    mc_samples: int | None = None,
    device: str = "cpu",
    pictures: bool = True,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Predict every image; write ``predictions.csv`` and pictures under ``out``; return the rows."""
    model = load_model(model_dir or default_model_dir(), device=device)
    if mc_samples is not None and mc_samples < 2:
        raise InputError(f"--mc-samples must be at least 2, not {mc_samples}")
    if not paths:
        raise InputError("no images given")
    if pixel_spacing is not None and not (math.isfinite(pixel_spacing) and pixel_spacing > 0):
        raise InputError(f"--pixel-spacing must be a positive number of mm, not {pixel_spacing}")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError("output exists and is not a folder", out)
    out.mkdir(parents=True, exist_ok=True)
    samples = mc_samples or int(model.meta["mc_samples"])
    cal = model.meta["calibration"]
    ood = OodModel.from_dict(cal["ood"])
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(paths), desc="predicting", unit="image", disable=not progress)
    for start in range(0, len(paths), BATCH):
        chunk = [prepare(p, model, pixel_spacing=pixel_spacing) for p in paths[start : start + BATCH]]
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
            )
            scores = ood.score(mc.features)
            for i, p in enumerate(ready):
                results[id(p)] = (mc, i, float(scores[i]))
        for offset, p in enumerate(chunk):
            index = start + offset
            row = prediction_row(p, model, results.get(id(p)))
            rows.append(row)
            if pictures and p.image is not None and id(p) in results:
                mc, i, _ = results[id(p)]
                write_pictures(out, f"{index:04d}_{Path(p.path).stem}.png", p, mc.maps[i], mc.map_sd[i], row)
            bar.update(1)
    bar.close()
    write_text_atomic(out / "predictions.csv", predictions_csv(model, rows))
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    echo(
        ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; {model.notice}; table: {out / 'predictions.csv'}"
    )
    return rows


def prediction_row(p: Prepared, model: LoadedModel, result: Any) -> dict[str, Any]:
    """The table row of one image: its status and, when it was read, volumes with calibrated sd.

    ``result`` is ``(McResult, index in it, ood score)`` or ``None`` when the image never reached
    the network.
    """
    cal = model.meta["calibration"]
    ood = OodModel.from_dict(cal["ood"])
    row: dict[str, Any] = {
        "image": p.path,
        "status": p.status,
        "reason": p.reason,
        "pixel_spacing_mm": p.spacing_mm,
        "spacing_source": p.spacing_source,
        "model": str(model.path),
        "notice": model.notice,
    }
    if result is None:
        return row
    mc, i, score = result
    scales = np.asarray(cal["sd_scale"])
    volume, sd = mc.volume[i], mc.volume_sd[i] * scales
    for j, m in enumerate(model.muscles):
        row[f"volume_ml__{m}"] = float(volume[j])
        row[f"volume_sd_ml__{m}"] = float(sd[j])
    if mc.mass is not None:
        mass_scales = np.asarray(cal.get("mass_sd_scale", scales))
        for j, m in enumerate(model.muscles):
            row[f"mass_g__{m}"] = float(mc.mass[i, j])
            row[f"mass_sd_g__{m}"] = float(mc.mass_sd[i, j] * mass_scales[j])
    row["ood_score"] = score
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
    """A table cell: numbers rounded (3 decimals, or 4 significant digits when tiny), missing as empty."""
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}" if abs(value) < 1e-3 else f"{value:.3f}"
    return value


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
        titled(overlay_masks(p.image, scaled, alpha=0.7), Path(p.path).name[:40]),
        titled(overlay_masks(np.zeros_like(p.image), scaled, alpha=1.0), status),
    ]
    write_png(out / "overlays" / name, montage(panels, columns=2))
    spread = sd.sum(axis=0) / max(float(maps.sum(axis=0).max()), 1e-6)
    heat = np.clip(spread / max(float(np.percentile(spread, 99.5)), 1e-6), 0, 1)
    rgb = np.stack([heat, heat**2, 0.3 * (1 - heat)], axis=-1)
    write_png(out / "uncertainty" / name, titled(rgb, "map sd between dropout draws"))
    return out / "overlays" / name
