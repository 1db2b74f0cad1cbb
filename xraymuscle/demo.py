"""``xraymuscle demo``: the pipeline on built-in data, end to end.

Phantom CTs → DRR datasets → a short training → prediction on held-out phantom radiographs
(exported as DICOM with their pixel spacing) → a table of true against predicted volumes.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from drr.presets import load_preset
from training.config import DecompositionConfig
from training.decomposition import train_decomposition
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.predict import predict_images
from xraymuscle.preview import montage, titled, write_png

HELD_OUT = 4
SHOWN = ("gluteus_maximus_left", "gluteus_medius_left", "gluteus_minimus_left", "iliopsoas_left")


def _read_png(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else img[..., ::-1].astype(np.float32) / 255.0


def run_demo(out: Path, *, n: int = 24, seed: int = 0, views: int = 4, epochs: int = 12) -> str:
    """Run the pipeline on ``n`` phantoms (the last four held out); return a summary as text.

    Writes under ``out``: ``phantoms/`` (cohort and previews), ``drr/`` and ``drr_heldout/`` (DRR
    datasets with previews), ``model/`` (the trained model), ``heldout_radiographs/*.dcm``,
    ``predictions/`` (table, overlays, uncertainty maps), ``overview.png`` and ``drr_overview.png``.
    """
    if n < HELD_OUT + 2:
        raise ValueError(f"the demo needs at least {HELD_OUT + 2} phantoms, not {n}")
    out = Path(out)
    catalog = MuscleCatalog.load()
    csv_path = make_cohort(n, out / "phantoms", seed=seed, spacing=3.0, preview=True, catalog=catalog)
    cases, _ = read_cohort(csv_path)
    train_cases, held_cases = cases[:-HELD_OUT], cases[-HELD_OUT:]
    panels = [_read_png(csv_path.parent / c.case_id / "preview.png") for c in held_cases]
    shown = [
        titled(p, c.case_id, height=300) for p, c in zip(panels, held_cases, strict=True) if p is not None
    ]
    if shown:
        write_png(out / "overview.png", montage(shown, columns=1))

    preset = load_preset(config_file("geometry", "hip_ap"), image_size=128)
    options = GenerateOptions(catalog, "phantom", preset, views=views, seed=seed, preview=True)
    generate_drr(train_cases, out / "drr", options)
    held = dataclasses.replace(options, views=1, seed=seed + 1)
    generate_drr(held_cases, out / "drr_heldout", held)
    heldout = DrrDataset.load(out / "drr_heldout")
    firsts = [_read_png(out / "drr_heldout" / "previews" / f"{r['sample_id']}.png") for r in heldout.rows]
    if any(p is not None for p in firsts):
        write_png(out / "drr_overview.png", montage([p for p in firsts if p is not None], columns=1))

    recipe = DecompositionConfig.load(config_file("train", "decomposition"))
    model = out / "model"
    if not (model / "model.json").is_file():
        train_decomposition(out / "drr", model, recipe, epochs=epochs, resume=(model / "checkpoint").is_dir())

    radiographs = []
    spacing = float(heldout.info["pixel_spacing_mm"])
    for index, row in enumerate(heldout.rows):
        path = out / "heldout_radiographs" / f"{row['case_id']}.dcm"
        radiographs.append(write_dx(path, heldout.sample(index)["image"], pixel_spacing_mm=spacing))
    rows = predict_images(radiographs, out / "predictions", model_dir=model)

    # The truth a radiograph can show: each muscle's volume in the field of view (its true map's integral).
    in_field = [
        heldout.sample(i, keys=("maps",))["maps"].sum(axis=(1, 2)) * r["pixel_area_mm2"] / 1000
        for i, r in enumerate(heldout.rows)
    ]
    lines = [f"held-out phantoms, volume in the field of view, ml: true / predicted ± sd ({epochs} epochs)"]
    lines.append(
        f"{'case':14s} {'status':10s} " + " ".join(f"{m.replace('_left', ' L'):>24s}" for m in SHOWN)
    )
    for truth, field, row in zip(heldout.rows, in_field, rows, strict=True):
        cells = []
        for m in SHOWN:
            if f"volume_ml__{m}" in row:
                value, sd = row[f"volume_ml__{m}"], row[f"volume_sd_ml__{m}"]
                cells.append(f"{field[heldout.muscles.index(m)]:7.0f} / {value:5.0f} ± {sd:4.0f}")
            else:
                cells.append(f"{'-':>24s}")
        lines.append(f"{truth['case_id']:14s} {row['status']:10s} " + " ".join(f"{c:>24s}" for c in cells))
    lines.append(
        "A demo-length training: the volumes show the pipeline, not its accuracy "
        "(benchmarks/accuracy.py measures that)."
    )
    lines.append(
        f"table: {out / 'predictions' / 'predictions.csv'}; pictures: {out / 'predictions' / 'overlays'}"
    )
    with (out / "predictions" / "predictions.csv").open(encoding="utf-8") as fh:
        assert len(list(csv.DictReader(fh))) == len(rows)
    return "\n".join(lines)
