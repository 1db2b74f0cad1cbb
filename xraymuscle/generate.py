"""``generate-drr``: render a cohort of CTs into a DRR dataset (see :mod:`xraymuscle.drr_dataset`).

Each case's views are drawn from their own random stream ``(seed, crc32(case_id), view)``, so a
sample is the same whatever the cohort's order or the number of workers. Samples are written
atomically; a case is finished when ``cases/<case_id>.json`` exists. A rerun skips finished
cases and, within an unfinished one, finished samples, so a killed run resumes without losing or
duplicating work. ``manifest.csv`` is rebuilt from the case records at the end of every run.
"""

from __future__ import annotations

import concurrent.futures as futures
import json
import math
import multiprocessing
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from drr.geometry import project_points
from drr.poses import sample_pose
from drr.presets import RenderPreset
from drr.projector import LabelGroup, Scene
from drr.renderer import Renderer
from xraymuscle import __version__
from xraymuscle.atomic import write_text_atomic
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.csv_table import read_csv_rows
from xraymuscle.drr_dataset import (
    FORMAT,
    VERSION,
    DiskFullError,
    read_sample,
    sample_file,
    write_manifest,
    write_sample,
)
from xraymuscle.errors import InputError
from xraymuscle.measure import orientation_notes, unlike_muscle, unlike_muscle_note
from xraymuscle.preview import colour_maps, montage, overlay_masks, titled, window, write_png
from xraymuscle.run_lock import is_empty, locks_output
from xraymuscle.volume import labels_at_scan_ends, read_ct_and_labels, sides_cut_off

COHORT_COLUMNS = ("case_id", "ct", "labels")
CUT_OFF_NOTE = 0.1  # report a CT whose body reaches its side borders on more than a tenth of its slices
OFFDETECTOR_NOTE = 0.001  # report muscles with more than 0.1 % of their shadow off the detector
VIEWS_PER_BATCH = 8


@dataclass(frozen=True)
class CaseInput:
    """One CT with its labels."""

    case_id: str
    ct: Path
    labels: Path
    label_source: str | None = None


@dataclass(frozen=True)
class GenerateOptions:
    """How to render a cohort."""

    catalog: MuscleCatalog
    label_source: str
    preset: RenderPreset
    views: int = 1
    seed: int = 0
    device: str = "cpu"
    backend: str = "builtin"
    workers: int = 1
    preview: bool = False
    adipose: bool = False  # also write each sample's fat map (only a recipe with materials_adipose reads it)

    def settings(self) -> dict[str, Any]:
        """What must match for a rerun to add to an existing dataset."""
        return {
            "muscles": list(self.catalog.muscles),
            "catalog": self.catalog.name,
            **self.preset.to_dict(),
            "pixel_area_mm2": self.preset.geometry.iso_pixel_area_mm2,
            "pixel_spacing_mm": self.preset.geometry.iso_pixel_spacing,
            "renderer": {"backend": self.backend, "projector": "plane-warp", "max_shift_px": 0.25},
            "seed": self.seed,
            "views_per_case": self.views,
            **({"adipose": True} if self.adipose else {}),  # absent: samples without the fat map
        }


@dataclass
class GenerateSummary:
    """What a run did."""

    rendered: int = 0
    skipped: int = 0
    cases_done: int = 0
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def case_id_from_path(path: Path) -> str:
    """A case id from a CT file or folder name (``ct_01.nii.gz`` → ``ct_01``)."""
    name = path.name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def read_cohort(path: Path) -> tuple[list[CaseInput], list[str]]:
    """Cases of a cohort CSV, and one problem line per row that cannot be used.

    Paths are relative to the CSV's folder. Missing columns refuse the whole file. A row is
    refused for an empty or repeated case_id, files that do not exist, or the CT of an earlier row
    (the same file, by its resolved path).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", path)
    table = read_csv_rows(path, COHORT_COLUMNS)
    header = [h.strip() for h in table[0]] if table else []
    missing = [c for c in COHORT_COLUMNS if c not in header]
    if missing:
        raise InputError(f"cohort CSV lacks column(s) {missing} (needs {list(COHORT_COLUMNS)})", path)
    raw = [dict(zip(header, row, strict=False)) for row in table[1:] if any(cell.strip() for cell in row)]
    cases: list[CaseInput] = []
    problems: list[str] = []
    seen: set[str] = set()
    bodies: dict[str, str] = {}  # each CT file, resolved, and the case that renders it
    for number, row in enumerate(raw, start=2):
        cid = (row.get("case_id") or "").strip()
        where = f"{path}: row {number}" + (f" (case {cid})" if cid else "")
        if not cid or not (row.get("ct") or "").strip() or not (row.get("labels") or "").strip():
            problems.append(f"{where}: empty case_id, ct or labels")
            continue
        if cid in seen:
            problems.append(f"{where}: case_id appears twice; the first row is used")
            continue
        if not all(c.isalnum() or c in "-_." for c in cid):
            problems.append(f"{where}: case_id may hold only letters, digits, '-', '_' and '.'")
            continue
        ct, labels = path.parent / row["ct"].strip(), path.parent / row["labels"].strip()
        absent = [str(p) for p in (ct, labels) if not p.exists()]
        if absent:
            problems.append(f"{where}: no such file: {', '.join(absent)}")
            continue
        body = os.path.realpath(ct)
        if body in bodies:
            problems.append(
                f"{where}: the same CT as case {bodies[body]}; one body under two case_ids would be "
                "split into training and validation both"
            )
            continue
        seen.add(cid)
        bodies[body] = cid
        source = (row.get("label_source") or "").strip() or None
        cases.append(CaseInput(cid, ct, labels, source))
    return cases, problems


def _stream(seed: int, case_id: str, view: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(case_id.encode("utf-8")), view])


def sample_id(case_id: str, view: int) -> str:
    """``<case_id>_v<view>``."""
    return f"{case_id}_v{view:03d}"


def render_case(
    case: CaseInput, out: Path, options: GenerateOptions, on_view: Callable[[int], None]
) -> dict[str, Any]:
    """Render (the missing views of) one case; return its record (rows and notes).

    Raises
    ------
    InputError
        When the case's files cannot be read or its label source is unknown.
    """
    source = case.label_source or options.label_source
    table = options.catalog.check_source(source)
    ct, labels = read_ct_and_labels(case.ct, case.labels, masks=options.catalog.mask_values(source))
    muscles = list(options.catalog.muscles)
    groups = [LabelGroup(m, tuple(table[m])) for m in muscles if m in table]
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scene = Scene(ct.array, ct.index_to_world, labels.array, groups)
    notes += [f"case {case.case_id}: {w.message}" for w in caught]
    ends = labels_at_scan_ends(labels)
    cut_by_range = [g.name for g in groups if ends & set(g.labels)]
    if cut_by_range:
        notes.append(
            f"case {case.case_id}: {cut_by_range} reach the first or last slice of the CT: only the part "
            "in the scan is in their volumes and maps, and the DRRs end where the scan does"
        )
    cut = sides_cut_off(ct)
    if cut > CUT_OFF_NOTE:
        notes.append(
            f"case {case.case_id}: the body reaches the CT's left or right border on {cut:.0%} of its "
            "slices; tissue beyond the field of view is missing from its DRRs"
        )
    present = {g.name: i for i, g in enumerate(groups) if scene.voxel_counts[i] > 0}
    empty = [g.name for g in groups if g.name not in present]  # labelled by the source, not in this CT
    if empty:
        notes.append(f"case {case.case_id}: no voxels for {empty}; rendered the rest")
    if groups and not present:
        values = np.unique(labels.array)
        values = values[values != 0]
        if values.size:  # labels, but none of the source's muscles: most likely another numbering
            shown = ", ".join(str(v) for v in values[:12]) + (", …" if values.size > 12 else "")
            notes.append(
                f"case {case.case_id}: the label map holds values {shown} but none of the muscles of "
                f"label source {source!r}; is that its label source?"
            )
    del ct, labels  # the scene holds what rendering needs
    unlabelled = [m for m in muscles if m not in table]
    if unlabelled:
        notes.append(
            f"case {case.case_id}: label source {source!r} has no {unlabelled}; their columns are empty"
        )
    volumes = scene.group_volumes_mm3() / 1000.0
    masses = scene.group_masses_g()
    unlike = unlike_muscle((g.name, volumes[i], masses[i]) for i, g in enumerate(groups))
    if unlike:
        notes.append(f"case {case.case_id}: {unlike_muscle_note(unlike)}")
    renderer = Renderer(options.preset, device=options.device, backend=options.backend)
    isocentre = scene.centroid()
    rows: list[dict[str, Any]] = []
    todo = []
    for view in range(options.views):
        sid = sample_id(case.case_id, view)
        path = out / sample_file(sid)
        if path.is_file():
            try:
                rows.append(read_sample(path, keys=("meta",))["meta"])
                on_view(0)
                continue
            except InputError:
                path.unlink()  # unreadable leftovers are redone
        todo.append(view)
    points = {name: scene.group_points(i) for name, i in present.items()}
    centres = {name: pts.mean(axis=0) for name, pts in points.items()}
    notes += [f"case {case.case_id}: {line}" for line in orientation_notes(centres)]
    for start in range(0, len(todo), VIEWS_PER_BATCH):
        batch = todo[start : start + VIEWS_PER_BATCH]
        rngs = [_stream(options.seed, case.case_id, v) for v in batch]
        poses = [sample_pose(rng, options.preset.pose_ranges) for rng in rngs]
        try:
            views = renderer.render(scene, poses, isocentre=isocentre, rngs=rngs)
        except ValueError as exc:  # e.g. the source inside the volume: this case cannot be drawn
            raise InputError(str(exc), case.ct) from None
        for b, view in enumerate(batch):
            row = _row(case.case_id, view, views.images.shape[1:], options, muscles, present, volumes, masses)
            row.update({f"pose_{k}": v for k, v in poses[b].to_dict().items()})
            row.update(
                dict(zip(("isocentre_x", "isocentre_y", "isocentre_z"), map(float, isocentre), strict=True))
            )
            for name, pts in points.items():
                row[f"offdetector__{name}"] = _offdetector(views.matrices[b], pts, options)
            arrays = _arrays(views, b, muscles, present, adipose=options.adipose)
            write_sample(out, row["sample_id"], arrays, row)
            if options.preview:
                write_png(out / "previews" / f"{row['sample_id']}.png", sample_preview(arrays, muscles, row))
            rows.append(row)
            on_view(1)
    worst = {m: max(r[f"offdetector__{m}"] for r in rows) for m in present} if rows else {}
    off = [f"{m} {100 * f:.1f} %" for m, f in worst.items() if f > OFFDETECTOR_NOTE]
    if off:
        notes.append(f"case {case.case_id}: shadow partly off the detector (worst view): {', '.join(off)}")
    record: dict[str, Any] = {
        "case_id": case.case_id,
        "ct": os.path.abspath(case.ct),  # absolute: a relative one would depend on where the run started
        "labels": os.path.abspath(case.labels),
        "label_source": source,
        "rows": sorted(rows, key=lambda r: r["sample_id"]),
        "notes": notes,
        "missing": [m for m in muscles if m not in present],  # either way: no volume to learn
        "rendered": len(todo),
    }
    write_text_atomic(out / "cases" / f"{case.case_id}.json", json.dumps(record, indent=1))
    return record


def _row(
    cid: str,
    view: int,
    shape: tuple[int, ...],
    options: GenerateOptions,
    muscles: list[str],
    present: dict[str, int],
    volumes: np.ndarray,
    masses: np.ndarray,
) -> dict[str, Any]:
    sid = sample_id(cid, view)
    row: dict[str, Any] = {
        "sample_id": sid,
        "case_id": cid,
        "view": view,
        "file": sample_file(sid),
        "height": int(shape[0]),
        "width": int(shape[1]),
        "pixel_area_mm2": options.preset.geometry.iso_pixel_area_mm2,
    }
    for m in muscles:
        i = present.get(m)
        row[f"volume_ml__{m}"] = math.nan if i is None else float(volumes[i])
        row[f"mass_g__{m}"] = math.nan if i is None else float(masses[i])
        row[f"offdetector__{m}"] = math.nan if i is None else 0.0
    return row


def _offdetector(matrix: np.ndarray, points: np.ndarray, options: GenerateOptions) -> float:
    """Fraction of a muscle's voxels whose centre projects off the detector."""
    if len(points) == 0:
        return 0.0
    geometry = options.preset.geometry
    uv, _ = project_points(matrix, points)
    off = (
        (uv[:, 0] < -0.5)
        | (uv[:, 0] > geometry.cols - 0.5)
        | (uv[:, 1] < -0.5)
        | (uv[:, 1] > geometry.rows - 0.5)
    )
    return float(off.mean())


def _arrays(
    views: Any, b: int, muscles: list[str], present: dict[str, int], *, adipose: bool = False
) -> dict[str, np.ndarray]:
    proj = views.projections
    h, w = views.images.shape[1:]
    maps = np.zeros((len(muscles), h, w), np.float32)
    mass = np.zeros_like(maps)
    for k, m in enumerate(muscles):
        if m in present:
            maps[k] = proj.maps[b, present[m]]
            mass[k] = proj.mass_maps[b, present[m]]
    arrays = {
        "image": views.images[b].astype(np.float32),
        "maps": maps,
        "mass_maps": mass,
        "materials": proj.materials[b].astype(np.float32),
        "projection": views.matrices[b],
    }
    if adipose:
        arrays["adipose"] = proj.adipose[b].astype(np.float32)
    return arrays


def sample_preview(arrays: dict[str, np.ndarray], muscles: list[str], row: dict[str, Any]) -> np.ndarray:
    """The image, the muscle maps in colour over it, and the maps alone."""
    image = arrays["image"]
    inside = image > 0.05 * float(image.max())  # window on the patient, not the empty background
    lo, hi = np.percentile(image[inside] if inside.any() else image, [1, 99.5])
    grey = window(image, float(lo), float(hi))
    maps = arrays["maps"]
    scaled = [m / max(float(m.max()), 1e-6) for m in maps]
    pose = ", ".join(f"{k[5:]} {row[k]:+.1f}" for k in ("pose_rx", "pose_ry", "pose_rz"))
    panels = [
        titled(grey, f"{row['sample_id']}"),
        titled(overlay_masks(grey, scaled, alpha=0.6), "muscle maps over the image"),
        titled(colour_maps(maps), f"maps ({pose} deg)"),
    ]
    return montage(panels, columns=3)


def _worker_init(threads: int) -> None:
    import cv2
    import torch

    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)


def _worker_case(case: CaseInput, out: Path, options: GenerateOptions) -> dict[str, Any]:
    return render_case(case, out, options, lambda n: None)


def _prepare_out(out: Path, options: GenerateOptions) -> dict[str, Any]:
    """Check that the dataset folder (made by the run lock) is new or was made with the same settings."""
    info_path = out / "dataset.json"
    settings = options.settings()
    if not info_path.is_file():
        if not is_empty(out):
            raise InputError("folder is not empty and holds no DRR dataset; use a new --out", out)
        info = {
            "format": FORMAT,
            "version": VERSION,
            "code_version": __version__,
            **settings,
            "source_cases": [],
        }
        write_text_atomic(info_path, json.dumps(info, indent=1))
        return info
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise InputError("dataset.json is not valid JSON; use a new --out", info_path) from None
    changed = sorted(k for k in settings if json.dumps(info.get(k)) != json.dumps(settings[k]))
    if changed:
        raise InputError(
            f"holds a dataset made with other settings ({', '.join(changed)}); use a new --out", out
        )
    for folder in (out / "samples", out / "cases", out / "previews"):
        # Temporary files of a run killed mid-write are never part of the dataset.
        for stale in folder.glob(".*.tmp*") if folder.is_dir() else []:
            stale.unlink(missing_ok=True)
    return dict(info)


@locks_output("out")
def generate_drr(
    cases: list[CaseInput],
    out: Path,
    options: GenerateOptions,
    *,
    progress: bool = True,
    ray: bool = False,
    ray_address: str | None = None,
) -> GenerateSummary:
    """Render every case into the dataset at ``out``; bad cases are reported, the rest rendered.

    With ``ray`` (a local Ray instance) or ``ray_address`` (an existing cluster), each case is a
    Ray task; the output folder must then be on storage every node sees.
    """
    if options.views < 1:
        raise InputError(f"--views must be at least 1, not {options.views}")
    if options.workers < 1:
        raise InputError(f"--workers must be at least 1, not {options.workers}")
    out = Path(out)
    info = _prepare_out(out, options)
    summary = GenerateSummary()
    records: dict[str, dict[str, Any]] = {}
    todo: list[CaseInput] = []
    for case in cases:
        done = out / "cases" / f"{case.case_id}.json"
        if done.is_file():
            record = json.loads(done.read_text(encoding="utf-8"))
            if (
                all((out / r["file"]).is_file() for r in record["rows"])
                and len(record["rows"]) == options.views
            ):
                records[case.case_id] = record
                summary.skipped += options.views
                continue
        todo.append(case)
    bar = tqdm(total=len(todo) * options.views, desc="rendering", unit="view", disable=not progress)

    def finish(case: CaseInput, record: dict[str, Any] | None, error: str | None) -> None:
        if error is not None:
            summary.failed.append(f"{case.case_id}: {error}")
            bar.write(f"error: case {case.case_id}: {error}")
            return
        assert record is not None
        records[case.case_id] = record
        summary.cases_done += 1
        for note in record["notes"]:
            bar.write(f"note: {note}")
        summary.notes += record["notes"]

    def on_view(n: int) -> None:
        bar.update(1)
        summary.rendered += n
        summary.skipped += 1 - n

    def finish_case(case: CaseInput, record: dict[str, Any] | None, error: str | None) -> None:
        finish(case, record, error)
        if record is not None:
            summary.rendered += record["rendered"]
            summary.skipped += options.views - record["rendered"]
        bar.update(options.views)

    try:
        if (ray or ray_address) and todo:
            from xraymuscle.ray_runner import render_cases

            render_cases(todo, out, options, address=ray_address, finish=finish_case)
        elif options.workers == 1 or len(todo) <= 1:
            for case in todo:
                try:
                    finish(case, render_case(case, out, options, on_view), None)
                except DiskFullError:
                    raise
                except InputError as exc:
                    finish(case, None, str(exc))
                    bar.update(options.views)
        else:
            threads = max(1, (os.cpu_count() or 1) // options.workers)
            context = multiprocessing.get_context("spawn")
            with futures.ProcessPoolExecutor(
                options.workers, mp_context=context, initializer=_worker_init, initargs=(threads,)
            ) as pool:
                jobs = {pool.submit(_worker_case, case, out, options): case for case in todo}
                for job in futures.as_completed(jobs):
                    case = jobs[job]
                    try:
                        record = job.result()
                    except DiskFullError:
                        raise
                    except InputError as exc:
                        finish_case(case, None, str(exc))
                    else:
                        finish_case(case, record, None)
    finally:
        bar.close()
        _write_index(out, info, options, records)
    return summary


def _write_index(out: Path, info: dict[str, Any], options: GenerateOptions, records: dict[str, Any]) -> None:
    """Rebuild ``manifest.csv`` and ``dataset.json``'s case list from every finished case record."""
    for path in sorted((out / "cases").glob("*.json")) if (out / "cases").is_dir() else []:
        record = json.loads(path.read_text(encoding="utf-8"))
        records.setdefault(record["case_id"], record)
    rows = [row for record in records.values() for row in record["rows"]]
    write_manifest(out, list(options.catalog.muscles), rows)
    info = dict(info)
    info["source_cases"] = [
        {k: r[k] for k in ("case_id", "ct", "labels", "label_source")}
        for r in sorted(records.values(), key=lambda r: r["case_id"])
    ]
    write_text_atomic(out / "dataset.json", json.dumps(info, indent=1))
