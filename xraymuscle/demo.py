"""``xraymuscle demo``: the pipeline on built-in data, end to end as far as it exists."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from xraymuscle.catalog import MuscleCatalog
from xraymuscle.phantom.cohort import make_cohort
from xraymuscle.preview import montage, titled, write_png


def run_demo(out: Path, *, n: int = 4, seed: int = 0) -> str:
    """Make a small phantom cohort with previews; return a summary table as text.

    Writes ``out/phantoms/`` (the cohort, a preview per case) and ``out/overview.png``.
    """
    import cv2

    catalog = MuscleCatalog.load()
    csv_path = make_cohort(n, Path(out) / "phantoms", seed=seed, spacing=2.0, preview=True, catalog=catalog)
    with csv_path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    previews = []
    for row in rows:
        png = csv_path.parent / row["case_id"] / "preview.png"
        img = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if img is not None:
            previews.append(titled(img[..., ::-1].astype(np.float32) / 255.0, row["case_id"], height=300))
    if previews:
        write_png(Path(out) / "overview.png", montage(previews, columns=1))
    lines = [f"{'muscle':24s} " + " ".join(f"{r['case_id'][-4:]:>7s}" for r in rows) + "   (volume, ml)"]
    for m in catalog.muscles_of("phantom"):
        lines.append(f"{m:24s} " + " ".join(f"{float(r[f'volume_ml__{m}']):7.1f}" for r in rows))
    lines.append(f"cohort: {csv_path}; pictures: {Path(out) / 'overview.png'} and each case's preview.png")
    return "\n".join(lines)
