"""A study list: the CSV file that names a study's radiographs, and what it may say of each.

One path per row, in a ``path`` (or ``image``, ``file``) column or in the list's only column;
relative paths are read from the list's folder. As a spreadsheet exports it, with a byte-order
mark, ``;`` or tab between the columns, and a decimal comma (:mod:`xraymuscle.csv_table`).

Optional columns give single files what a run's options give all of them, and win over them:

* ``pixel_spacing_mm``: the file's pixel spacing at the hip (for exports that lost it, or films
  whose spacing the study measured itself); it overrides the file's own;
* ``spacing_sd_percent``: how far that spacing can be trusted (:mod:`xraymuscle.spacing_error`);
* ``hip_height_mm``: the hip's height above the detector (half the patient's AP thickness and the
  table's gap, say), for a file whose spacing is at the detector (see
  :meth:`xraymuscle.prepare.GridTarget.magnification_for`);
* ``marker_mm``: the diameter of the calibration ball in this film, whose shadow then gives its
  spacing (:mod:`xraymuscle.calibration_marker`): for a study where only some films show one.

An empty cell leaves the file's own value or the run's option. A cell that is not such a number,
a row that gives more than one of a spacing at the hip, a hip height and a marker (each sets the
spacing its own way), and a file listed twice with different values make that file an ``error``
row saying which line and why; the others go on.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path
from typing import Any

from xraymuscle.csv_table import read_csv_rows
from xraymuscle.errors import InputError
from xraymuscle.paths import shown
from xraymuscle.prepare import HIP_HEIGHT_RANGE_MM, MARKER_MM_RANGE
from xraymuscle.spacing_error import MAX_SPACING_SD_PERCENT

PATH_COLUMNS = ("path", "image", "file")
SPACING_COLUMN = "pixel_spacing_mm"
SPACING_SD_COLUMN = "spacing_sd_percent"
HIP_HEIGHT_COLUMN = "hip_height_mm"
MARKER_COLUMN = "marker_mm"
# column, lowest (excluded when 0) and highest value, unit
VALUE_COLUMNS = (
    (SPACING_COLUMN, 0.0, math.inf, "mm"),
    (SPACING_SD_COLUMN, 0.0, MAX_SPACING_SD_PERCENT, "%"),
    (HIP_HEIGHT_COLUMN, *HIP_HEIGHT_RANGE_MM, "mm"),
    (MARKER_COLUMN, *MARKER_MM_RANGE, "mm"),
)


@dataclass(frozen=True)
class Listed:
    """What a study list gives one file (``None``: nothing; the run's option or the file's own)."""

    pixel_spacing: float | None = None
    spacing_sd_percent: float | None = None
    hip_height_mm: float | None = None
    marker_mm: float | None = None

    def spacing_columns(self) -> list[str]:
        """The columns given of those that each set the spacing their own way: a spacing at the
        hip, a hip height (with the file's detector spacing), a calibration marker."""
        given = ((SPACING_COLUMN, self.pixel_spacing), (HIP_HEIGHT_COLUMN, self.hip_height_mm))
        return [column for column, value in (*given, (MARKER_COLUMN, self.marker_mm)) if value is not None]

    def as_list(self) -> list[float | None]:
        """The values in :data:`VALUE_COLUMNS` order, as a journal row keeps them."""
        return list(astuple(self))

    @classmethod
    def from_list(cls, values: Sequence[float | None] | None) -> Listed:
        """The inverse of :meth:`as_list` (``None``, or a shorter list, for a run before a column)."""
        return cls(*(values or ()))


def read_study_list(path: Path) -> tuple[dict[str, Listed], dict[str, str]]:
    """The listed files (absolute paths, in the list's order) with what the list gives each, and
    the problems of those whose cells cannot be used (see the module doc).

    Raises
    ------
    InputError
        When the list cannot be read, is empty, or has no path column.
    """
    rows = read_csv_rows(path, PATH_COLUMNS)
    if not rows:
        raise InputError("the list is empty", path)
    header = [h.strip().lower() for h in rows[0]]
    column = next((header.index(c) for c in PATH_COLUMNS if c in header), None)
    if column is None:
        if len(header) != 1:
            raise InputError(f"no column named one of {', '.join(PATH_COLUMNS)}", path)
        column, body, first_line = 0, rows, 1  # a bare list of paths, no header
    else:
        body, first_line = rows[1:], 2
    at = [header.index(c) if c in header else None for c, *_ in VALUE_COLUMNS]
    listed: dict[str, Listed] = {}
    lines: dict[str, int] = {}
    problems: dict[str, str] = {}
    for line, row in enumerate(body, start=first_line):
        if len(row) <= column or not row[column].strip():
            continue
        p = Path(row[column].strip())
        name = os.path.abspath(p if p.is_absolute() else path.parent / p)
        cells = [_number(row, i, *spec) for i, spec in zip(at, VALUE_COLUMNS, strict=True)]
        values = Listed(*(value for value, _ in cells))
        problem = next((problem for _, problem in cells if problem), "")
        ways = values.spacing_columns()
        if not problem and len(ways) > 1:
            problem = f"gives {' and '.join(ways)}, which each set the spacing; leave all but one empty"
        if problem:
            problems.setdefault(name, f"{path.name} line {line}: {problem}")
        elif name in listed and listed[name] != values:
            problems.setdefault(name, f"{path.name} lines {lines[name]} and {line} give it different values")
        listed.setdefault(name, values)
        lines.setdefault(name, line)
    return listed, problems


def study_list_summary(path: Path) -> dict[str, Any]:
    """What a study list holds, for ``inspect``: how many files, how many of them exist, how many
    are given each per-file value (and the values' range), and the problems found, file by file."""
    listed, problems = read_study_list(path)
    names = sorted(set(listed) | set(problems))
    values: dict[str, Any] = {}
    for field, (column, *_) in zip(fields(Listed), VALUE_COLUMNS, strict=True):
        given = [getattr(v, field.name) for n, v in listed.items() if n not in problems]
        given = [g for g in given if g is not None]
        values[column] = {"files": len(given), "range": [min(given), max(given)] if given else None}
    return {
        "kind": "study_list",
        "path": str(path),
        "files": len(names),
        "missing": sum(1 for n in names if not os.path.exists(n)),
        "values": values,
        "problems": {shown(n): problems[n] for n in names if n in problems},
    }


def _number(
    row: list[str], at: int | None, column: str, low: float, high: float, unit: str
) -> tuple[float | None, str]:
    """One cell's number, within ``low`` (excluded when 0) and ``high`` (a decimal comma, as a
    spreadsheet writes it in many languages, is read as a point); ``None`` for an empty cell or
    no such column; or the problem with the cell."""
    cell = row[at].strip() if at is not None and at < len(row) else ""
    if not cell:
        return None, ""
    try:
        value = float(cell.replace(",", ".") if cell.count(",") == 1 and "." not in cell else cell)
    except ValueError:
        value = math.nan
    within = (value > low if low == 0 else value >= low) and value <= high
    if not (math.isfinite(value) and within):
        bound = "more than 0" if low == 0 else f"at least {low:g}"
        bound += f" and at most {high:g}" if math.isfinite(high) else ""
        return None, f"{column} {cell!r} is not a number {bound} ({unit})"
    return value, ""


def check_listed(listed: Sequence[Listed], *, marker_mm: float | None, magnification: float | None) -> None:
    """Refuse run options that would overrule what a study list gives its files: ``--marker-mm``
    (the spacing from the marker) beside listed spacings or hip heights, ``--magnification``
    beside listed hip heights. (A listed marker is the film's own and wins over the options.)"""
    spacing = any(v.pixel_spacing is not None for v in listed)
    height = any(v.hip_height_mm is not None for v in listed)
    for option, value, overruled in (
        (
            "--marker-mm",
            marker_mm,
            [c for c, given in ((SPACING_COLUMN, spacing), (HIP_HEIGHT_COLUMN, height)) if given],
        ),
        ("--magnification", magnification, [HIP_HEIGHT_COLUMN] if height else []),
    ):
        if value is not None and overruled:
            raise InputError(
                f"the study list gives {' and '.join(overruled)}, which {option} would overrule; "
                "leave out one of them"
            )
