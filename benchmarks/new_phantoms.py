"""New phantoms as the shipped model's held-out radiographs were made, for the benchmarks.

``phantom --seed SEED --spacing 3`` (not the shipped model's cohorts), rendered with ``hip_ap``
at 128 pixels, one view each, and written as DICOM with their pixel spacing. Every step is
skipped when its output is there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from drr.presets import load_preset
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.generate import GenerateOptions, generate_drr, read_cohort
from xraymuscle.paths import config_file
from xraymuscle.phantom.cohort import make_cohort


def new_phantom_radiographs(work: Path, n: int, seed: int) -> tuple[DrrDataset, list[Path], np.ndarray]:
    """The DRR dataset under ``work``, its radiographs as DICOM files, and each one's volumes in
    its field of view (ml, ``(n, K)``: the integrals of its maps)."""
    catalog = MuscleCatalog.load()
    cohort = work / "phantoms" / "cohort.csv"
    if not cohort.is_file():
        cohort = make_cohort(n, work / "phantoms", seed=seed, spacing=3.0, catalog=catalog)
    drr = work / "drr"
    if not (drr / "dataset.json").is_file():
        preset = load_preset(config_file("geometry", "hip_ap"), image_size=128)
        generate_drr(
            read_cohort(cohort)[0], drr, GenerateOptions(catalog, "phantom", preset, views=1, seed=1)
        )
    data = DrrDataset.load(drr)
    spacing = float(data.info["pixel_spacing_mm"])
    images = []
    for index, row in enumerate(data.rows):
        path = work / "radiographs" / f"{row['sample_id']}.dcm"
        if not path.is_file():
            write_dx(path, data.sample(index)["image"], pixel_spacing_mm=spacing)
        images.append(path)
    in_field = np.array([
        data.sample(i, keys=("maps",))["maps"].sum(axis=(1, 2)) * r["pixel_area_mm2"] / 1000
        for i, r in enumerate(data.rows)
    ])  # fmt: skip
    return data, images, in_field
