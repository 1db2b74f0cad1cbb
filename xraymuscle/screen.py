"""``screen``: a whole study through the model, one row per input, resumable, with a report.

Inputs are decoded in worker processes (reading, resampling to the model's grid, hashing the
content for duplicates, the DICOM study metadata) while the main process runs Monte Carlo
inference on batches of images. Every finished row goes to ``journal.jsonl`` at once (synced),
so a run killed at any moment, even by ``kill -9``, loses at most the batch in flight; started
again on the same output folder, it skips what the journal holds and finishes the rest, but for
the inputs its study list now gives other values (:mod:`xraymuscle.study_list`) and, with
``retry_errors``, those recorded as ``error``: these are screened again, their rows replaced. The
tables ``results.csv`` and ``results.parquet`` (the predictions contract, plus study columns) are
rewritten from the journal as the run goes and at its end, in the study's stable order.

Statuses are those of :mod:`xraymuscle.predict`. Every input gets a row, whatever happens to it;
the run stops only when it cannot go on at all (no model, an output folder it cannot write).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.decoding import Decoded, DecodeSettings, decoded_stream
from xraymuscle.errors import InputError
from xraymuscle.inference import check_mc_samples, mc_predict
from xraymuscle.journal import Journal
from xraymuscle.model import LoadedModel, load_model
from xraymuscle.paths import default_model_dir, shown
from xraymuscle.predict import (
    STATUSES,
    GridTarget,
    format_cell,
    numeric_columns,
    prediction_row,
    predictions_columns,
    write_pictures,
)
from xraymuscle.prepare import check_spacing_options
from xraymuscle.run_lock import is_empty, locks_output
from xraymuscle.spacing_error import attach_spacing_sds, check_spacing_sd
from xraymuscle.study import (
    METADATA_COLUMNS,
    StudyInput,
    find_inputs,
    left_out_line,
    load_or_make_salt,
)
from xraymuscle.study_list import Listed, check_listed

JOURNAL = "journal.jsonl"
RUN_FILE = "screen.json"
FORMAT = "xraymuscle-screen"
VERSION = 1
OVERLAYS = ("flagged", "all", "none")
TABLE_EVERY_S = 20.0
NUMERIC_STUDY_COLUMNS = frozenset({"age_years"})
# settings that change the numbers: a resumed run must use the same ones
RUN_KEYS = (
    "model",
    "mc_samples",
    "pixel_spacing",
    "magnification",
    "hip_height_mm",
    "marker_mm",
    "spacing_sd_percent",
    "keep_identifiers",
)


class Inference:
    """Monte Carlo inference on batches of decoded inputs, giving finished table rows."""

    def __init__(
        self,
        model: LoadedModel,
        *,
        samples: int,
        device: str,
        out: Path,
        overlays: str,
        batch: int,
    ) -> None:
        self.model, self.samples, self.device = model, samples, device
        self.out, self.overlays, self.batch = out, overlays, batch

    def rows(self, decoded: Sequence[Decoded]) -> list[dict[str, Any]]:
        ready = [d for d in decoded if d.prepared.image is not None]
        results: dict[int, Any] = {}
        if ready:
            images = torch.from_numpy(np.stack([d.prepared.image for d in ready]))[:, None]  # type: ignore[misc]
            mc = mc_predict(
                self.model.network,
                images,
                samples=self.samples,
                pixel_area_mm2=self.model.pixel_spacing_mm**2,
                map_scale_mm=float(self.model.meta["map_scale_mm"]),
                batch=self.batch,
                device=self.device,
                keep_maps=self.overlays != "none",
                twins=self.model.twins,
            )
            prepared = [d.prepared for d in ready]
            attach_spacing_sds(mc, self.model, images, prepared, batch=self.batch, device=self.device)
            scores = self.model.ood.score(mc.features)
            results = {d.index: (mc, i, float(scores[i])) for i, d in enumerate(ready)}
        rows = []
        for d in decoded:
            result = results.get(d.index)
            row = prediction_row(d.prepared, self.model, result)
            row.update(d.study)
            row["index"] = d.index
            row["listed"] = d.listed.as_list()  # a rerun with other values screens it again
            row["overlay"] = ""
            if result is not None and self._wants_picture(row):
                mc_, i, _ = result
                name = f"{d.index:06d}_{Path(d.prepared.path).stem[:60]}.png"
                picture = write_pictures(self.out, name, d.prepared, mc_.maps[i], mc_.map_sd[i], row)
                row["overlay"] = str(picture.relative_to(self.out))
            rows.append(_clean(row))
        return rows

    def _wants_picture(self, row: dict[str, Any]) -> bool:
        return self.overlays == "all" or (self.overlays == "flagged" and row["status"] != "ok")


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    """Plain JSON values: NumPy scalars as numbers, NaN as missing."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and not math.isfinite(value):
            value = None
        out[key] = value
    return out


@dataclass
class ScreenSummary:
    """What a finished study holds."""

    inputs: int
    rows: int
    counts: dict[str, int]
    duplicates: int
    out: Path
    seconds: float
    processed: int  # inputs done by this run (the rest came from an earlier, stopped run)

    def line(self) -> str:
        counts = ", ".join(f"{self.counts.get(s, 0)} {s}" for s in STATUSES)
        rate = self.processed / self.seconds if self.seconds > 0 else 0.0
        return (
            f"{self.inputs} inputs, {self.rows} rows: {counts}; {self.duplicates} duplicate files; "
            f"{self.processed} screened by this run ({rate:.1f}/s); table: {self.out / 'results.csv'}"
        )


def table_columns(model: LoadedModel, *, keep_identifiers: bool) -> list[str]:
    """Column order of ``results.csv`` / ``results.parquet``: the predictions contract, then study columns."""
    columns = predictions_columns(model)
    study = list(METADATA_COLUMNS)
    if keep_identifiers:
        study.insert(1, "patient_id")
    return [*columns, *study, "overlay"]


@locks_output("out")
def screen_study(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model_dir: Path | None = None,
    device: str = "cpu",
    batch: int = 32,
    workers: int | None = None,
    mc_samples: int | None = None,
    pixel_spacing: float | None = None,
    magnification: float | None = None,
    hip_height_mm: float | None = None,
    marker_mm: float | None = None,
    spacing_sd_percent: float | None = None,
    keep_identifiers: bool = False,
    overlays: str = "flagged",
    report: bool = True,
    retry_errors: bool = False,
    ray: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> ScreenSummary:
    """Screen every radiograph of a study (a folder or a CSV list) into ``out``; see the module doc.

    ``retry_errors``: the inputs an earlier run into ``out`` recorded as ``error`` (a file that
    could not be read then: a mount gone, a permission since granted, a file since exported
    again) are screened again, their rows replaced."""
    start = time.perf_counter()
    if overlays not in OVERLAYS:
        raise InputError(f"--overlays must be one of {', '.join(OVERLAYS)}, not {overlays!r}")
    if batch < 1:
        raise InputError(f"--batch must be at least 1, not {batch}")
    if workers is not None and workers < 0:
        raise InputError(f"--workers must be 0 (decode here) or more, not {workers}")
    check_mc_samples(mc_samples)
    check_spacing_options(pixel_spacing, magnification, hip_height_mm, marker_mm)
    check_spacing_sd(spacing_sd_percent)
    out = Path(out)
    if os.path.realpath(out) == os.path.realpath(source):
        raise InputError("--out must be a folder of its own, not the study's", out)
    inputs = find_inputs(source, skip=out, on_output_folder=lambda f: echo(left_out_line(f)))
    check_listed([i.listed for i in inputs], marker_mm=marker_mm, magnification=magnification)
    listed_sd = any(i.listed.spacing_sd_percent is not None for i in inputs)
    on_ray = ray or ray_address is not None
    model = load_model(model_dir or default_model_dir(), device="cpu" if on_ray else device)
    samples = mc_samples or int(model.meta["mc_samples"])
    settings_run = {
        "format": FORMAT,
        "version": VERSION,
        "source": shown(os.path.abspath(source)),
        "model": str(model.path.resolve()),
        "mc_samples": samples,
        "pixel_spacing": pixel_spacing,
        "magnification": magnification,
        "hip_height_mm": hip_height_mm,
        "marker_mm": marker_mm,
        "spacing_sd_percent": spacing_sd_percent,
        "keep_identifiers": keep_identifiers,
        "notice": model.notice,
    }
    _check_same_run(out, settings_run)
    write_text_atomic(out / RUN_FILE, json.dumps(settings_run, indent=2) + "\n")
    journal = Journal(out / JOURNAL, "image")
    changed = changed_listing(inputs, journal)
    if changed:
        echo(f"screening again {len(changed)} file(s) that the study list now gives other values")
    if retry_errors:
        errors = {
            i.name for i in inputs if i.name in journal and journal.rows[i.name].get("status") == "error"
        }
        echo(f"screening again {len(errors)} file(s) recorded as error")
        changed |= errors
    todo = [item for item in inputs if item.name not in journal or item.name in changed]
    salt = load_or_make_salt(out)
    settings = DecodeSettings(
        GridTarget.of(
            model,
            magnification=magnification,
            marker_mm=marker_mm,
            hip_height_mm=hip_height_mm,
            spacing_probes=spacing_sd_percent is not None or listed_sd,  # (Ray's batches carry them)
        ),
        pixel_spacing,
        salt,
        keep_identifiers,
        spacing_sd_percent,
    )
    columns = table_columns(model, keep_identifiers=keep_identifiers)
    numeric = numeric_columns(model) | NUMERIC_STUDY_COLUMNS
    paths = [item.name for item in inputs]
    bar = tqdm(
        total=len(inputs),
        initial=len(inputs) - len(todo),
        desc="screening",
        unit="image",
        disable=not progress,
        smoothing=0.1,
    )
    last_table = time.perf_counter()
    if on_ray:
        from xraymuscle.ray_runner import screen_row_batches

        batches = screen_row_batches(
            todo, settings, model_dir=model.path, device=device, samples=samples,
            out=out, overlays=overlays, batch=batch, address=ray_address,
        )  # fmt: skip
    else:
        inference = Inference(model, samples=samples, device=device, out=out, overlays=overlays, batch=batch)
        n_workers = _default_workers() if workers is None else workers
        batches = _local_row_batches(todo, settings, inference, workers=n_workers, batch=batch)
    for rows in batches:
        journal.append(rows)
        bar.update(len(rows))
        if time.perf_counter() - last_table > TABLE_EVERY_S:
            write_tables(out, paths, journal, columns, numeric)
            last_table = time.perf_counter()
    bar.close()
    rows = write_tables(out, paths, journal, columns, numeric)
    if report:
        from xraymuscle.report import write_report

        write_report(out / "report.html", rows, model, title=f"Screening of {Path(source).name}")
    counts = Counter(r["status"] for r in rows)
    summary = ScreenSummary(
        inputs=len(inputs),
        rows=len(rows),
        counts=dict(counts),
        duplicates=sum(1 for r in rows if r.get("duplicate_of")),
        out=out,
        seconds=time.perf_counter() - start,
        processed=len(todo),
    )
    echo(summary.line())
    return summary


def _default_workers() -> int:
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _local_row_batches(
    todo: Sequence[StudyInput], settings: DecodeSettings, inference: Inference, *, workers: int, batch: int
) -> Iterator[list[dict[str, Any]]]:
    chunk: list[Decoded] = []
    for decoded in decoded_stream(todo, settings, workers=workers):
        chunk.append(decoded)
        if len(chunk) >= batch:
            yield inference.rows(chunk)
            chunk = []
    if chunk:
        yield inference.rows(chunk)


def _check_same_run(out: Path, settings: dict[str, Any]) -> None:
    path = out / RUN_FILE
    if not path.is_file():  # a run writes it before anything else
        if not is_empty(out):
            raise InputError("folder is not empty and holds no screening run; use a new --out", out)
        return
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        raise InputError("not a screening run's settings file; use another --out", path) from None
    changed = [k for k in RUN_KEYS if earlier.get(k) != settings.get(k)]
    if changed:
        raise InputError(
            f"this folder holds a study screened with other {', '.join(changed)}; "
            "resume with the same settings or use another --out",
            out,
        )


def changed_listing(inputs: Sequence[StudyInput], journal: Journal) -> set[str]:
    """The inputs already screened whose study list now gives them other values (a pixel spacing,
    spacing sd or hip height) than the run that screened them: their rows are made again."""
    return {
        i.name
        for i in inputs
        if i.name in journal and Listed.from_list(journal.rows[i.name].get("listed")) != i.listed
    }


def write_tables(
    out: Path,
    paths: Sequence[str],
    journal: Journal,
    columns: list[str],
    numeric: frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Rewrite ``results.csv`` and ``results.parquet`` from the journal, in the study's order.

    Only the study's inputs are written, each once; the Parquet columns named in ``numeric`` are
    floats (missing values null), the others strings; ``duplicate_of`` names the first input (in
    that order) whose file has the same content.
    """
    rows = [journal.rows[p] for p in paths if p in journal]
    first: dict[str, str] = {}
    for row in rows:
        digest = row.get("content_sha256") or ""
        row["duplicate_of"] = first.setdefault(digest, row["image"]) if digest else ""
        if row["duplicate_of"] == row["image"]:
            row["duplicate_of"] = ""
    _write_csv(out / "results.csv", rows, columns)
    _write_parquet(out / "results.parquet", rows, columns, numeric)
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: format_cell(row.get(k)) for k in columns})
    write_text_atomic(path, buf.getvalue())


def _write_parquet(
    path: Path, rows: list[dict[str, Any]], columns: list[str], numeric: frozenset[str]
) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for column in columns:
        values = [row.get(column) for row in rows]
        if column in numeric:
            arrays[column] = pa.array(
                [None if v is None or v == "" else float(v) for v in values], pa.float64()
            )
        else:
            arrays[column] = pa.array(["" if v is None else str(v) for v in values], pa.string())
    table = pa.table(arrays)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
