"""``xraymuscle demo``: the pipeline on built-in data, end to end.

Phantom CTs → DRR datasets → a short training → prediction on held-out phantom radiographs
(exported as DICOM with their pixel spacing) → a table of true against predicted volumes.

Then a short domain adaptation (``adapt=True``, the default): a small second phantom cohort made
to look like processed clinical radiographs stands in for the real radiographs; a short CycleGAN
learns that style, ``adapt`` translates the training DRRs, a model is trained on them, and both
models measure clinical-style versions of the held-out radiographs.
"""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np

from drr.presets import load_preset
from training.config import CycleGanConfig, DecompositionConfig
from training.cyclegan import train_cyclegan
from training.decomposition import train_decomposition
from xraymuscle.adapt import adapt_dataset
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.clinical_style import clinical_style, stylise_dataset
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.predict import predict_images
from xraymuscle.preview import montage, titled, write_png

HELD_OUT = 4
STYLE_CASES = 8
DEMO_GAN = {
    "crop_size": 64,
    "base_channels": 8,
    "residual_blocks": 3,
    "disc_channels": 16,
    "batch_size": 4,
    "epochs": 4,
    "iterations_per_epoch": 30,
}
SHOWN = ("gluteus_maximus_left", "gluteus_medius_left", "gluteus_minimus_left", "iliopsoas_left")


def _quiet(_: str) -> None:
    """Steps of the demo run without their own messages."""


def _read_png(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR) if path.is_file() else None
    return None if img is None else img[..., ::-1].astype(np.float32) / 255.0


def run_demo(
    out: Path, *, n: int = 24, seed: int = 0, views: int = 4, epochs: int = 30, adapt: bool = True
) -> str:
    """Run the pipeline on ``n`` phantoms (the last four held out); return a summary as text.

    Writes under ``out``: ``phantoms/`` (cohort and previews), ``drr/`` and ``drr_heldout/`` (DRR
    datasets with previews), ``model/`` (the trained model), ``heldout_radiographs/*.dcm``,
    ``predictions/`` (table, overlays, uncertainty maps), ``overview.png`` and ``drr_overview.png``;
    with ``adapt``, also ``style_phantoms/``, ``drr_style/``, ``clinical_style/``, ``real_style/``
    (the stand-in real radiographs), ``cyclegan/``, ``drr_adapted/``, ``model_adapted/`` and
    ``clinical_predictions/``.
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
    if adapt:
        lines += _adaptation(out, options, heldout, in_field, recipe, epochs, seed)
    return "\n".join(lines)


def _adaptation(
    out: Path,
    options: GenerateOptions,
    heldout: DrrDataset,
    in_field: list[np.ndarray],
    recipe: DecompositionConfig,
    epochs: int,
    seed: int,
) -> list[str]:
    """The short adaptation step; returns the lines of its summary table."""
    catalog = options.catalog
    style_csv = make_cohort(
        STYLE_CASES, out / "style_phantoms", seed=seed + 100, spacing=3.0, catalog=catalog
    )
    style_cases, _ = read_cohort(style_csv)
    generate_drr(
        style_cases, out / "drr_style", dataclasses.replace(options, views=1, seed=seed + 2, preview=False)
    )
    stylise_dataset(out / "drr_style", out / "clinical_style", seed=seed + 3, progress=False, echo=_quiet)
    styled = DrrDataset.load(out / "clinical_style")
    spacing = float(styled.info["pixel_spacing_mm"])
    for i, row in enumerate(styled.rows):
        write_dx(
            out / "real_style" / f"{row['sample_id']}.dcm",
            styled.sample(i)["image"],
            pixel_spacing_mm=spacing,
        )
    gan = out / "cyclegan"
    if not (gan / "samples" / f"epoch_{DEMO_GAN['epochs']:03d}.png").is_file():
        train_cyclegan(
            out / "drr", out / "real_style", gan, CycleGanConfig.from_dict(DEMO_GAN),
            resume=True, device="cpu", echo=_quiet,
        )  # fmt: skip
    adapt_dataset(gan, out / "drr", out / "drr_adapted", progress=False, echo=_quiet)
    model = out / "model_adapted"
    if not (model / "model.json").is_file():
        train_decomposition(
            out / "drr_adapted", model, recipe, epochs=epochs, resume=(model / "checkpoint").is_dir()
        )
    # clinical-style versions of the held-out radiographs, measured by both models
    radiographs = []
    rng_seed = seed + 4
    for index, row in enumerate(heldout.rows):
        rng = np.random.default_rng([rng_seed, index])
        image = clinical_style(heldout.sample(index)["image"], float(heldout.info["pixel_spacing_mm"]), rng)
        path = out / "clinical_heldout" / f"{row['case_id']}.dcm"
        radiographs.append(write_dx(path, image, pixel_spacing_mm=float(heldout.info["pixel_spacing_mm"])))
    errors = {}
    for name, folder in (("trained on plain DRRs", out / "model"), ("trained on adapted DRRs", model)):
        rows = predict_images(
            radiographs,
            out / "clinical_predictions" / folder.name,
            model_dir=folder,
            progress=False,
            echo=_quiet,
        )
        errs = [
            abs(row[f"volume_ml__{m}"] - field[j]) / max(field[j], 1.0) * 100
            for row, field in zip(rows, in_field, strict=True)
            for j, m in enumerate(heldout.muscles)
            if f"volume_ml__{m}" in row and field[j] > 1.0
        ]
        errors[name] = float(np.mean(errs)) if errs else float("nan")
    return [
        "",
        "domain adaptation (short): held-out radiographs made clinical-style, mean absolute % error over "
        "all muscles:",
        *(f"  model {name:24s}: {value:5.1f} %" for name, value in errors.items()),
        f"CycleGAN translations: {gan / 'samples'}; adapted DRRs: {out / 'drr_adapted'}",
    ]
