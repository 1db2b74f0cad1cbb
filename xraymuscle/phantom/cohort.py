"""A cohort of phantom cases on disk: ``DIR/<case_id>/{ct,labels}.nii.gz`` and ``DIR/cohort.csv``.

Each case is written into a temporary folder and renamed when complete, with a ``case.json``
holding its table row; a rerun skips complete cases, so a killed run resumes where it stopped.
``cohort.csv`` is assembled from the rows at the end (atomically). Case ``i`` of seed ``S`` is
drawn from its own random stream ``(S, i)``: the same case comes out whatever ``n`` is.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from drr.materials import density_from_hu
from xraymuscle.atomic import atomic_dir, write_text_atomic
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.errors import InputError
from xraymuscle.measure import muscle_volumes
from xraymuscle.phantom.anatomy import (
    DEFAULT_LAYERING,
    MUSCLE_LAYERINGS,
    build_phantom,
    label_names,
    sample_params,
)
from xraymuscle.preview import montage, overlay_masks, titled, window, write_png
from xraymuscle.run_lock import locks_output
from xraymuscle.volume import Volume

LABEL_SOURCE = "phantom"
# peak memory of building one phantom at 1 mm (measured: 4.0 GB; it goes with the voxel count,
# 1 / spacing³), and the share of this machine's memory one phantom may take
GB_AT_1MM = 4.0
MEMORY_SHARE = 0.8
CASE_FILES = ("ct.nii.gz", "labels.nii.gz", "case.json")


def case_id(index: int) -> str:
    return f"phantom_{index:04d}"


def make_case(
    seed: int,
    index: int,
    out_dir: Path,
    *,
    spacing: float,
    catalog: MuscleCatalog,
    preview: bool,
    layering: str = DEFAULT_LAYERING,
) -> dict[str, Any]:
    """Draw, build and write one case; return its cohort row."""
    rng = np.random.default_rng([seed, index])
    params = sample_params(rng)
    start = time.perf_counter()
    ct, labels = build_phantom(params, spacing, layering)
    seconds = time.perf_counter() - start
    cid = case_id(index)
    row: dict[str, Any] = {
        "case_id": cid,
        "ct": f"{cid}/ct.nii.gz",
        "labels": f"{cid}/labels.nii.gz",
        "label_source": LABEL_SOURCE,
    }
    truth = muscle_volumes(ct, labels, catalog, LABEL_SOURCE)
    row.update({f"volume_ml__{m}": round(v["volume_ml"], 3) for m, v in truth.items()})
    row.update({f"mass_g__{m}": round(v["mass_g"], 3) for m, v in truth.items()})
    row.update({"seed": seed, "index": index, "spacing_mm": spacing, "layering": layering})
    row["build_seconds"] = round(seconds, 3)
    row.update({f"param__{k}": v for k, v in params.flat().items()})
    with atomic_dir(out_dir / cid) as tmp:
        # labels fit in 8 bits, and the CT's integer HU in 16: small files, exact values
        Volume(labels.array.astype(np.uint8), labels.spacing, labels.origin, labels.direction).save(
            tmp / "labels.nii.gz"
        )
        Volume(ct.array.astype(np.int16), ct.spacing, ct.origin, ct.direction).save(tmp / "ct.nii.gz")
        if preview:
            write_png(tmp / "preview.png", phantom_preview(ct, labels, catalog))
        (tmp / "case.json").write_text(json.dumps(row, indent=1), encoding="utf-8")
    return row


def _case_done(folder: Path) -> dict[str, Any] | None:
    if not all((folder / f).is_file() for f in CASE_FILES):
        return None
    try:
        row = dict(json.loads((folder / "case.json").read_text(encoding="utf-8")))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    row.setdefault("layering", "carve")  # a case written before the column: carved
    return row


def _check_only_ours(folder: Path) -> None:
    """A case folder is replaced whole when drawn again: refuse one that holds files of another kind."""
    if not folder.is_dir():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in (*CASE_FILES, "preview.png"))
    if foreign:
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        raise InputError(f"holds files that are not a phantom case's ({shown}); use a new --out", folder)


def _check_memory(spacing: float, total_gb: float | None = None) -> None:
    """Refuse a spacing whose phantoms would not fit in this machine's memory (``total_gb``:
    the machine's, read from the system when None)."""
    if total_gb is None:
        try:
            total_gb = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
        except (ValueError, OSError, AttributeError):  # not known here: no check
            return
    need = GB_AT_1MM / spacing**3
    if need > MEMORY_SHARE * total_gb:
        finest = (GB_AT_1MM / (MEMORY_SHARE * total_gb)) ** (1 / 3)
        raise InputError(
            f"--spacing {spacing:g} mm needs about {need:.0f} GB of memory per phantom and this machine "
            f"has {total_gb:.0f} GB; use {np.ceil(finest * 100) / 100:g} mm or more"
        )


@locks_output("out")
def make_cohort(
    n: int,
    out: Path,
    *,
    seed: int = 0,
    spacing: float = 2.0,
    preview: bool = False,
    catalog: MuscleCatalog | None = None,
    progress: bool = True,
    layering: str = DEFAULT_LAYERING,
) -> Path:
    """Write ``n`` phantom cases and ``cohort.csv`` under ``out``; return the CSV's path.

    ``layering`` is how overlapping muscles share the space (:func:`build_phantom`); it is
    recorded in each row (``layering``). Cases already complete under ``out`` with the same seed,
    spacing and layering are kept, not redrawn (a case written before the column existed was carved).
    """
    if n < 1:
        raise InputError(f"--n must be at least 1, not {n}")
    if not spacing > 0 or spacing > 10:
        raise InputError(f"--spacing must be in (0, 10] mm, not {spacing}")
    _check_memory(spacing)
    if layering not in MUSCLE_LAYERINGS:
        raise InputError(f"--layering must be one of {', '.join(MUSCLE_LAYERINGS)}, not {layering!r}")
    catalog = catalog or MuscleCatalog.load()
    catalog.check_source(LABEL_SOURCE)
    out = Path(out)
    rows: list[dict[str, Any]] = []
    for index in tqdm(range(n), desc="phantom cases", unit="case", disable=not progress):
        folder = out / case_id(index)
        row = _case_done(folder)
        if (
            row is None
            or row.get("seed") != seed
            or float(row.get("spacing_mm", -1)) != spacing
            or row["layering"] != layering
            or (preview and not (folder / "preview.png").is_file())
        ):
            _check_only_ours(folder)
            row = make_case(
                seed, index, out, spacing=spacing, catalog=catalog, preview=preview, layering=layering
            )
        rows.append(row)
    write_text_atomic(
        out / "label_names.json",
        json.dumps({str(k): v for k, v in label_names().items()}, indent=1),
    )
    csv_path = out / "cohort.csv"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(csv_path, buf.getvalue())
    return csv_path


def phantom_preview(ct: Volume, labels: Volume, catalog: MuscleCatalog) -> np.ndarray:
    """A montage of a case: coronal, axial and sagittal slices with muscle overlays, and AP sums.

    Images follow radiograph reading: superior up, the patient's right on the image's left.
    """
    hu, lab = ct.array, labels.array
    masks = catalog.masks(lab, LABEL_SOURCE)
    ijk_origin = np.linalg.solve(ct.index_to_world, [0, 0, 0, 1])[:3]  # hip centre, in voxels
    i0, j0, k0 = (int(round(v)) for v in ijk_origin)
    nk, nj, ni = hu.shape
    j0, k0, i0 = np.clip(j0, 0, nj - 1), np.clip(k0, 0, nk - 1), np.clip(i0, 0, ni - 1)
    i_hip = int(np.clip(i0 + round(92 / ct.spacing[0]), 0, ni - 1))
    k_wing = int(np.clip(k0 + round(70 / ct.spacing[2]), 0, nk - 1))
    soft = (-250.0, 350.0)

    def over(sl: tuple[Any, ...], flip: bool = True) -> np.ndarray:
        grey = window(hu[sl], *soft)
        rgb = overlay_masks(grey, [m[sl] for m in masks.values()])
        return rgb[::-1] if flip else rgb

    # an AP "radiograph": line integral of density (bone bright), and the muscles' thickness
    rho = density_from_hu(hu).sum(axis=1)[::-1]
    thickness = [m.sum(axis=1)[::-1].astype(np.float32) for m in masks.values()]
    body = rho > 0.5 * rho.max() * 0.05
    lo, hi = np.percentile(rho[body], [2, 99.9]) if body.any() else (0.0, 1.0)
    ap = window(rho, float(lo), float(hi))
    ap_muscles = overlay_masks(ap, [t / max(float(t.max()), 1.0) for t in thickness], alpha=0.7)
    panels = [
        titled(over((slice(None), j0, slice(None))), "coronal, hip centre"),
        titled(over((k0, slice(None), slice(None)), flip=False), "axial, hip centre"),
        titled(over((k_wing, slice(None), slice(None)), flip=False), "axial, iliac wings"),
        titled(over((slice(None), slice(None), i_hip)), "sagittal, left hip"),
        titled(ap, "AP density sum"),
        titled(ap_muscles, "AP muscle thickness"),
    ]
    return montage(panels, columns=3)
