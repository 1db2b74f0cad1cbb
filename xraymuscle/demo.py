"""``xraymuscle demo``: the pipeline on built-in data, end to end as far as it exists."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from drr.presets import load_preset
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.preview import montage, titled, write_png


def _read_png(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else img[..., ::-1].astype(np.float32) / 255.0


def run_demo(out: Path, *, n: int = 4, seed: int = 0, views: int = 2) -> str:
    """Make a small phantom cohort, render it into a DRR dataset; return a summary as text.

    Writes ``out/phantoms/`` (the cohort, a preview per case), ``out/drr/`` (the DRR dataset
    with a preview per sample), ``out/overview.png`` (the phantoms) and ``out/drr_overview.png``
    (each case's first view with its muscle maps).
    """
    out = Path(out)
    catalog = MuscleCatalog.load()
    csv_path = make_cohort(n, out / "phantoms", seed=seed, spacing=2.0, preview=True, catalog=catalog)
    with csv_path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    previews = [_read_png(csv_path.parent / r["case_id"] / "preview.png") for r in rows]
    panels = [
        titled(p, r["case_id"], height=300) for p, r in zip(previews, rows, strict=True) if p is not None
    ]
    if panels:
        write_png(out / "overview.png", montage(panels, columns=1))

    cases, _ = read_cohort(csv_path)
    options = GenerateOptions(
        catalog=catalog,
        label_source="phantom",
        preset=load_preset(config_file("geometry", "hip_ap")),
        views=views,
        seed=seed,
        preview=True,
    )
    summary = generate_drr(cases, out / "drr", options)
    data = DrrDataset.load(out / "drr")
    firsts = [r for r in data.rows if r["view"] == 0]
    drr_panels = [_read_png(out / "drr" / "previews" / f"{r['sample_id']}.png") for r in firsts]
    if any(p is not None for p in drr_panels):
        write_png(out / "drr_overview.png", montage([p for p in drr_panels if p is not None], columns=1))

    lines = [f"{'muscle':24s} " + " ".join(f"{r['case_id'][-4:]:>7s}" for r in rows) + "   (volume, ml)"]
    for m in catalog.muscles_of("phantom"):
        lines.append(f"{m:24s} " + " ".join(f"{float(r[f'volume_ml__{m}']):7.1f}" for r in rows))
    lines.append("")
    lines.append(
        f"DRR dataset: {len(data)} samples of {data.info['geometry']['rows']} x "
        f"{data.info['geometry']['cols']} pixels ({summary.rendered} rendered now) in {out / 'drr'}"
    )
    # How well the maps keep each muscle's volume, over views where its shadow is on the detector.
    errors = []
    for index, row in enumerate(data.rows):
        maps = data.sample(index, keys=("maps",))["maps"]
        for k, m in enumerate(data.muscles):
            if row[f"offdetector__{m}"] == 0.0:
                errors.append(abs(maps[k].sum() * row["pixel_area_mm2"] / 1000 / row[f"volume_ml__{m}"] - 1))
    if errors:
        lines.append(
            f"volume kept by the maps ({len(errors)} muscle-views fully on the detector): "
            f"worst error {100 * max(errors):.3f} %"
        )
    lines.append(f"pictures: {out / 'overview.png'}, {out / 'drr_overview.png'}, {out / 'drr' / 'previews'}")
    return "\n".join(lines)
