"""A study's inputs, and the DICOM metadata a screening table carries about each.

A study is a folder (searched recursively) or a CSV list of paths. Every input found keeps one
place in a stable order (sorted paths), so a table, a resumed run and a rerun agree row for row.
Folders that cannot be read become inputs of their own, so that they get a row saying so.

A list may also give each file's pixel spacing at the hip (``pixel_spacing_mm``: for exports
that lost it, or films whose spacing a study measured itself) and how far it can be trusted
(``spacing_sd_percent``, see :mod:`xraymuscle.spacing_error`); an empty cell leaves the file's
own, or the run's option. A cell that is not such a number makes its file an ``error`` row that
says which line and why, as a file listed twice with different values does.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xraymuscle.atomic import write_text_atomic
from xraymuscle.csv_table import read_csv_rows
from xraymuscle.errors import InputError
from xraymuscle.paths import shown
from xraymuscle.run_lock import LOCK_FILE
from xraymuscle.spacing_error import MAX_SPACING_SD_PERCENT

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
PATH_COLUMNS = ("path", "image", "file")
# per-file values a study list may give: its spacing at the hip (mm) and that spacing's sd (%)
SPACING_COLUMN, SPACING_SD_COLUMN = "pixel_spacing_mm", "spacing_sd_percent"
SALT_FILE = "pseudonym_salt.txt"
METADATA_COLUMNS = (
    "patient_pseudonym",
    "age_years",
    "sex",
    "study_date",
    "view_position",
    "laterality",
    "manufacturer",
    "content_sha256",
    "duplicate_of",
)


@dataclass(frozen=True)
class StudyInput:
    """One input of a study: its place in the order, its path, a problem found while listing, and
    the pixel spacing (mm, at the hip) and spacing sd (%) its study list gives, if any."""

    index: int
    path: str
    problem: str = ""
    pixel_spacing: float | None = None
    spacing_sd_percent: float | None = None

    @property
    def listed(self) -> list[float | None]:
        """The values the study list gives (``[pixel_spacing, spacing_sd_percent]``), as a
        journal row keeps them: a resumed run must be given the same."""
        return [self.pixel_spacing, self.spacing_sd_percent]

    @property
    def name(self) -> str:
        """The path as tables and the journal show it (:func:`shown`); ``path`` is what is read."""
        return shown(self.path)


def find_inputs(
    source: str | os.PathLike[str],
    *,
    skip: str | os.PathLike[str] | None = None,
    on_output_folder: Callable[[str], None] | None = None,
) -> list[StudyInput]:
    """The study's inputs from a folder (recursive) or a CSV list, in a stable order.

    A folder yields every file with an image suffix (``.dcm``, ``.png``, ``.jpg``, ``.tif`` …)
    and every suffix-less file that starts like DICOM (``DICM`` at byte 128), but none in the
    folder ``skip`` (the run's own output, which may lie inside the study), none in a subfolder
    written by an earlier run (one holding its run lock, ``.xraymuscle.lock``: its overlays and
    previews are pictures, not radiographs; ``on_output_folder`` is told each such folder), no
    ``DICOMDIR`` (a medium's index) and no ``._`` file (the stub a copy from another file system
    leaves beside each file). A CSV names one path per row in a ``path`` (or ``image``, ``file``)
    column, or in its only column; relative paths are read from the CSV's folder, and optional
    ``pixel_spacing_mm`` and ``spacing_sd_percent`` columns give per-file values (see the module
    doc). Listed paths that do not exist stay inputs (their row will say so).
    """
    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    if source.is_dir():
        skip_path = None if skip is None else os.path.realpath(skip)
        paths, problems = _walk(source, skip_path, on_output_folder or (lambda folder: None))
        listed: dict[str, tuple[float | None, float | None]] = {}
    elif source.suffix.lower() == ".csv":
        listed, problems = _from_csv(source)
        paths = list(listed)
    else:
        raise InputError("a study is a folder or a .csv list of paths", source)
    names = sorted(set(paths) | set(problems))
    if not names:
        raise InputError("no radiographs found (DICOM, PNG, JPEG, TIFF)", source)
    return [
        StudyInput(i, name, problems.get(name, ""), *listed.get(name, (None, None)))
        for i, name in enumerate(names)
    ]


def check_listed_spacings(inputs: Sequence[StudyInput], marker_mm: float | None) -> None:
    """Refuse pixel spacings from a study list beside ``--marker-mm``, which would overrule them."""
    listed = next((i for i in inputs if i.pixel_spacing is not None), None)
    if marker_mm is not None and listed is not None:
        raise InputError(
            f"a study list gives {shown(listed.path)} a pixel spacing ({SPACING_COLUMN}), which "
            "--marker-mm would overrule; leave out one of them"
        )


def left_out_line(folder: str) -> str:
    """What a run says of an earlier run's output folder it did not search."""
    return f"left out {shown(folder)}: written by an earlier run (its pictures are not radiographs)"


def _walk(
    root: Path, skip: str | None, on_output_folder: Callable[[str], None]
) -> tuple[list[str], dict[str, str]]:
    paths: list[str] = []
    problems: dict[str, str] = {}

    def unreadable(exc: OSError) -> None:
        problems[os.path.abspath(exc.filename or root)] = f"folder cannot be read ({exc.strerror})"

    def searched(folder: str) -> bool:
        if skip is not None and os.path.realpath(folder) == skip:
            return False  # the run's own output holds no inputs
        if os.path.isfile(os.path.join(folder, LOCK_FILE)):
            on_output_folder(os.path.abspath(folder))  # an earlier run's: its pictures are no inputs
            return False
        return True

    for folder, dirs, files in os.walk(root, onerror=unreadable):
        dirs[:] = sorted(d for d in dirs if searched(os.path.join(folder, d)))
        for name in files:
            if name.startswith("._") or name.upper() == "DICOMDIR":
                continue  # a copy's resource-fork stub, or a medium's index: never an image
            path = os.path.abspath(os.path.join(folder, name))
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES or (not suffix and _starts_like_dicom(path)):
                paths.append(path)
    return paths, problems


def _starts_like_dicom(path: str) -> bool:
    if not os.path.isfile(path):  # a pipe would block the read, a device never end it
        return False
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _from_csv(path: Path) -> tuple[dict[str, tuple[float | None, float | None]], dict[str, str]]:
    """The listed paths with their per-file spacing and spacing sd, and the problems of those
    whose cells are not such numbers or that are listed twice with different ones."""
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
    spacing_at = header.index(SPACING_COLUMN) if SPACING_COLUMN in header else None
    sd_at = header.index(SPACING_SD_COLUMN) if SPACING_SD_COLUMN in header else None
    listed: dict[str, tuple[float | None, float | None]] = {}
    lines: dict[str, int] = {}
    problems: dict[str, str] = {}
    for line, row in enumerate(body, start=first_line):
        if len(row) <= column or not row[column].strip():
            continue
        p = Path(row[column].strip())
        name = os.path.abspath(p if p.is_absolute() else path.parent / p)
        spacing, spacing_problem = _listed_number(row, spacing_at, SPACING_COLUMN, math.inf, "mm")
        sd, sd_problem = _listed_number(row, sd_at, SPACING_SD_COLUMN, MAX_SPACING_SD_PERCENT, "%")
        problem = spacing_problem or sd_problem
        if problem:
            problems.setdefault(name, f"{path.name} line {line}: {problem}")
        elif name in listed and listed[name] != (spacing, sd):
            problems.setdefault(
                name,
                f"{path.name} lines {lines[name]} and {line} give it different "
                f"{SPACING_COLUMN} or {SPACING_SD_COLUMN}",
            )
        listed.setdefault(name, (spacing, sd))
        lines.setdefault(name, line)
    return listed, problems


def _listed_number(
    row: list[str], at: int | None, column: str, most: float, unit: str
) -> tuple[float | None, str]:
    """A study list's per-file number: more than 0 and at most ``most`` (a decimal comma, as a
    spreadsheet writes it in many languages, is read as a point); ``None`` for an empty cell or
    no such column; or the problem with the cell."""
    cell = row[at].strip() if at is not None and at < len(row) else ""
    if not cell:
        return None, ""
    try:
        value = float(cell.replace(",", ".") if cell.count(",") == 1 and "." not in cell else cell)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= most):
        bound = f" and at most {most:g}" if math.isfinite(most) else ""
        return None, f"{column} {cell!r} is not a number more than 0{bound} ({unit})"
    return value, ""


def file_sha256(path: str, *, chunk: int = 1 << 20) -> str:
    """The content hash of a file (hex), read in chunks; empty string when it cannot be read or is
    not a regular file (a pipe would block the read, a device such as ``/dev/zero`` never end it)."""
    if not os.path.isfile(path):
        return ""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
    except OSError:
        return ""
    return digest.hexdigest()


def load_or_make_salt(out: Path) -> str:
    """The study's pseudonymisation salt: read from the output folder, or made once and kept there."""
    path = out / SALT_FILE
    if path.is_file():
        salt = path.read_text(encoding="utf-8").strip()
        if salt:
            return salt
    salt = secrets.token_hex(16)
    write_text_atomic(path, salt + "\n")
    return salt


def pseudonym(identifier: str | None, salt: str) -> str:
    """A salted hash of a patient identifier (16 hex digits); empty when there is none."""
    if not identifier:
        return ""
    return hashlib.sha256(f"{salt}:{identifier}".encode()).hexdigest()[:16]


_AGE = re.compile(r"^\s*(\d{1,3})\s*([DWMY]?)\s*$", re.IGNORECASE)
_AGE_UNIT_YEARS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0, "": 1.0}


def age_years(value: str | None) -> float | None:
    """A DICOM age string (``045Y``, ``006M``, ``012W``, ``003D``) in years; ``None`` if absent or odd."""
    if not value:
        return None
    match = _AGE.match(value)
    if not match:
        return None
    return round(int(match.group(1)) * _AGE_UNIT_YEARS[match.group(2).upper()], 2)


def study_metadata(meta: dict[str, Any], salt: str, *, keep_identifiers: bool) -> dict[str, Any]:
    """The table's study columns from a radiograph's metadata. Names are never read or written."""
    sex = (meta.get("patient_sex") or "").strip().upper()
    row: dict[str, Any] = {
        "patient_pseudonym": pseudonym(meta.get("patient_id"), salt),
        "age_years": age_years(meta.get("patient_age")),
        "sex": sex if sex in ("F", "M", "O") else "",
        "study_date": meta.get("study_date") or "",
        "view_position": meta.get("view_position") or "",
        "laterality": meta.get("laterality") or "",
        "manufacturer": meta.get("manufacturer") or "",
    }
    if keep_identifiers:
        row["patient_id"] = meta.get("patient_id") or ""
    return row
