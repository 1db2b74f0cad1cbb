"""``compare``: a table of predictions against reference volumes, with ``evaluate``'s figures.

A study that has, for some of its radiographs, the muscles' volumes from another source (most
often a CT of the same person, its labelled muscles cut to the radiograph's field of view) can
measure how the model does on its own films: ``predict`` or ``screen`` gives the table, a
hand-made CSV gives the reference, and ``compare`` joins them and writes what ``evaluate``
writes for a DRR dataset: ``metrics.json`` and ``metrics.csv`` (Pearson r, ICC(2,1), MAE,
MAPE, bias, Spearman(sd, |error|) and 95 % coverage per muscle and their mean, each with a
bootstrap interval over cases), the three plots, ``mass_metrics.json`` where both tables hold
masses, ``group_metrics.json`` for the muscle groups the predictions report (the reference's
value of a group is the sum of its muscles'), and ``matched.csv``, the joined rows.

The reference CSV has a column naming the radiograph (``image``: matched by file name, or by
the path as the predictions table writes it with ``--match path``), ``volume_ml__<muscle>``
columns for any of the model's muscles (and ``mass_g__<muscle>``), and, optionally, ``case_id``
naming the person, so that several radiographs of one person are resampled together. An empty
cell is a muscle without a reference. A predicted volume is that of the muscle within the
radiograph's field of view (README): a reference for the whole muscle of a film that cuts it
off is not comparable.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from xraymuscle.agreement import agreement_figures, paired_csv, write_agreement, write_json
from xraymuscle.atomic import write_text_atomic
from xraymuscle.csv_table import read_csv_rows
from xraymuscle.errors import InputError
from xraymuscle.muscle_groups import model_groups
from xraymuscle.run_lock import locks_output

MATCHES = ("name", "path")
MEASURED = ("ok", "uncertain")


@locks_output("out")
def compare_tables(
    predictions: Path,
    truth: Path,
    out: Path,
    *,
    key: str = "image",
    match: str = "name",
    statuses: Sequence[str] = MEASURED,
    plots: bool = True,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Join ``predictions`` (a ``predictions.csv`` or ``results.csv``) with the reference volumes
    of ``truth`` and write the agreement under ``out`` (see the module's note); return the metrics."""
    if match not in MATCHES:
        raise InputError(f"--match must be one of {', '.join(MATCHES)}, not {match!r}")
    unknown = sorted(set(statuses) - {"ok", "uncertain", "rejected"})
    if not statuses or unknown:
        raise InputError(f"--statuses takes ok, uncertain and rejected (rows with volumes), not {unknown}")
    for given in (predictions, truth):
        if os.path.realpath(out) == os.path.realpath(given):
            raise InputError("--out must be a folder, not one of the tables", out)
    predicted = _predictions(Path(predictions))
    reference, case_of = _reference(Path(truth), key, match)
    muscles = [m for m in predicted.muscles if any(f"volume_ml__{m}" in row for row in reference.values())]
    if not muscles:
        raise InputError(
            "no volume_ml__<muscle> column with values for any of the predicted muscles "
            f"({', '.join(predicted.muscles)})",
            truth,
        )
    keys = [_base_name(r["image"]) if match == "name" else r["image"] for r in predicted.rows]
    _refuse_repeats(keys, Path(predictions), match)
    by_key = dict(zip(keys, predicted.rows, strict=True))
    matched = [(k, by_key[k]) for k in reference if k in by_key]
    if not matched:
        raise InputError(
            f"none of its {len(reference)} radiographs is in {predictions} (matched by {match}); "
            "check the key column and --match",
            truth,
        )
    kept = [(k, row) for k, row in matched if row["status"] in statuses]
    excluded = len(matched) - len(kept)
    if not kept:
        raise InputError(f"no matched radiograph has the status {', '.join(statuses)}", predictions)
    if not any(f"volume_ml__{m}" in reference[k] for k, _ in kept for m in muscles):
        raise InputError("no volume_ml__<muscle> value for any matched radiograph", truth)
    out = Path(out)
    cases = [case_of[k] for k, _ in kept]
    matching = {
        "predictions": str(predictions),
        "truth": str(truth),
        "match": match,
        "statuses": list(statuses),
        "compared": len(kept),
        "excluded_by_status": excluded,
        "only_in_predictions": len(predicted.rows) - len(matched),
        "only_in_truth": len(reference) - len(matched),
    }
    pred, sd, true, valid = _arrays(
        kept, reference, [f"volume_ml__{m}" for m in muscles], [f"volume_sd_ml__{m}" for m in muscles],
        [[f"volume_ml__{m}"] for m in muscles],
    )  # fmt: skip
    metrics = write_agreement(
        out, pred, true, valid, sd, muscles, cases, plots=plots, extra={"matching": matching}
    )
    leads = [[row["image"], case_of[name], row["status"]] for name, row in kept]
    matched_rows = paired_csv(["image", "case_id", "status"], leads, muscles, pred, sd, true, valid)
    write_text_atomic(out / "matched.csv", matched_rows)
    weighed = [m for m in muscles if f"mass_g__{m}" in predicted.columns]
    if any(f"mass_g__{m}" in reference[k] for k, _ in kept for m in weighed):
        masses = [f"mass_g__{m}" for m in weighed]
        pred, sd, true, valid = _arrays(
            kept, reference, masses, [f"mass_sd_g__{m}" for m in weighed], [[c] for c in masses]
        )
        write_json(out / "mass_metrics.json", agreement_figures(pred, true, valid, sd, weighed, cases))
    # the muscle groups the predictions report and the reference holds every muscle of somewhere
    muscles_of = model_groups(predicted.muscles)
    named = {g: [predicted.muscles[j] for j in members] for g, members in muscles_of.items()}
    groups = {
        g: members
        for g, members in named.items()
        if f"group_volume_ml__{g}" in predicted.columns
        and any(all(f"volume_ml__{m}" in reference[k] for m in members) for k, _ in kept)
    }
    if groups:
        pred, sd, true, valid = _arrays(
            kept, reference,
            [f"group_volume_ml__{g}" for g in groups], [f"group_volume_sd_ml__{g}" for g in groups],
            [[f"volume_ml__{m}" for m in members] for members in groups.values()],
        )  # fmt: skip
        summed = agreement_figures(pred, true, valid, sd, list(groups), cases) | {"groups": groups}
        write_json(out / "group_metrics.json", summed)
    left_out = [m for m in predicted.muscles if m not in muscles]
    echo(
        f"{len(kept)} radiographs compared ({len(set(cases))} cases), {excluded} left out by status, "
        f"{len(predicted.rows) - len(matched)} only in the predictions, "
        f"{len(reference) - len(matched)} only in the reference"
        + (f"; no reference for {', '.join(left_out)}" if left_out else "")
    )
    return metrics


class _Predictions:
    """A predictions table: its rows, columns and the muscles it measures."""

    def __init__(self, rows: list[dict[str, str]], columns: list[str]) -> None:
        self.rows, self.columns = rows, columns
        self.muscles = [c[len("volume_ml__") :] for c in columns if c.startswith("volume_ml__")]


def _predictions(path: Path) -> _Predictions:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise InputError("no such file", path) from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(f"cannot be read as a CSV table ({exc})", path) from None
    missing = [c for c in ("image", "status") if c not in columns]
    table = _Predictions(rows, columns)
    if missing or not table.muscles:
        raise InputError(
            "not a predictions table (from predict or screen): it has no "
            + (", ".join(missing) if missing else "volume_ml__<muscle>")
            + " column",
            path,
        )
    return table


def _reference(path: Path, key: str, match: str) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """The reference values by radiograph (``{column: value}``, the columns named as in the
    predictions table), and each radiograph's case; radiographs are named by their file name
    (``match`` ``name``: a path in the key column stands for its last part) or as written."""
    if not path.is_file():
        raise InputError("no such file", path)
    rows = read_csv_rows(path, [key])
    if not rows:
        raise InputError("the reference table is empty", path)
    columns = [c.strip() for c in rows[0]]
    header = [c.lower() for c in columns]  # a spreadsheet's "Image" or "Volume_ml__..." as well
    if key.lower() not in header:
        raise InputError(
            f"no {key!r} column naming the radiographs (its columns: {', '.join(columns)})", path
        )
    at = header.index(key.lower())
    case_at = header.index("case_id") if "case_id" in header else None
    values = [(i, c) for i, c in enumerate(header) if c.startswith(("volume_ml__", "mass_g__")) and i != at]
    reference: dict[str, dict[str, float]] = {}
    case_of: dict[str, str] = {}
    first_line: dict[str, tuple[int, str]] = {}  # each radiograph's line and name as written
    for line, cells in enumerate(rows[1:], start=2):
        if not any(c.strip() for c in cells):
            continue
        cells = cells + [""] * (len(header) - len(cells))
        name = cells[at].strip()
        if not name:
            raise InputError(f"line {line}: no {key}", path)
        written, name = name, (_base_name(name) if match == "name" else name)
        if name in first_line:
            earlier_line, earlier = first_line[name]
            if earlier != written:
                raise InputError(
                    f"line {line}: {written} has the file name of {earlier} on line {earlier_line}; "
                    "match them by path (--match path)",
                    path,
                )
            raise InputError(f"line {line}: {name} is already on line {earlier_line}", path)
        first_line[name] = (line, written)
        entry: dict[str, float] = {}
        for i, column in values:
            text = cells[i].strip()
            if not text or text.lower() in ("nan", "na"):
                continue
            try:
                value = float(text)
            except ValueError:
                raise InputError(f"line {line}, {column}: {text!r} is not a number", path) from None
            if not math.isfinite(value) or value < 0:
                raise InputError(f"line {line}, {column}: {text} is not a volume or mass", path)
            entry[column] = value
        reference[name] = entry
        case_of[name] = cells[case_at].strip() if case_at is not None and cells[case_at].strip() else name
    return reference, case_of


def _arrays(
    kept: list[tuple[str, dict[str, str]]],
    reference: dict[str, dict[str, float]],
    values: list[str],
    sds: list[str],
    truths: list[list[str]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Predicted values (the predictions' ``values`` columns), their sds (``sds``), reference
    values (for column ``j``, the sum of the reference's ``truths[j]``: one muscle's, or a
    group's muscles') and where all three are there, each ``(n, len(values))``."""
    n, k = len(kept), len(values)
    pred, sd, true = (np.full((n, k), np.nan) for _ in range(3))
    for i, (name, row) in enumerate(kept):
        for j in range(k):
            pred[i, j] = cell_number(row.get(values[j]))
            sd[i, j] = cell_number(row.get(sds[j]))
            true[i, j] = sum(reference[name].get(c, np.nan) for c in truths[j])  # NaN where one is missing
    valid = np.isfinite(pred) & np.isfinite(sd) & np.isfinite(true)
    return np.nan_to_num(pred), np.nan_to_num(sd), np.nan_to_num(true), valid


def cell_number(value: object) -> float:
    """A predictions table's cell (text, or a number as ``predict`` returns its rows) as a number:
    NaN when empty or not a number."""
    if value is None or value == "" or not isinstance(value, int | float | str):
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan


def _base_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _refuse_repeats(keys: list[str], path: Path, match: str) -> None:
    """Refuse a predictions table in which two rows have one key: a reference could not tell
    them apart."""
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            if match == "name":
                raise InputError(
                    f"two radiographs share the file name {key}; match them by path (--match path)", path
                )
            raise InputError(f"two rows are of the same radiograph {key}", path)
        seen.add(key)
