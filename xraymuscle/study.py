"""A study's inputs, and the DICOM metadata a screening table carries about each.

A study is a folder (searched recursively) or a CSV list of paths. Every input found keeps one
place in a stable order (sorted paths), so a table, a resumed run and a rerun agree row for row.
Folders that cannot be read become inputs of their own, so that they get a row saying so. A
list may also give single files a pixel spacing, a spacing sd or a hip height
(:mod:`xraymuscle.study_list`).
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xraymuscle.atomic import write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.paths import shown
from xraymuscle.run_lock import LOCK_FILE
from xraymuscle.study_list import Listed, read_study_list

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg", ".tif", ".tiff")
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
    what its study list gives it."""

    index: int
    path: str
    problem: str = ""
    listed: Listed = Listed()

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
    leaves beside each file). A CSV is a study list (:mod:`xraymuscle.study_list`); listed paths
    that do not exist stay inputs (their row will say so).
    """
    source = Path(source)
    if not source.exists():
        raise InputError("no such file or folder", source)
    if source.is_dir():
        skip_path = None if skip is None else os.path.realpath(skip)
        paths, problems = _walk(source, skip_path, on_output_folder or (lambda folder: None))
        listed: dict[str, Listed] = {}
    elif source.suffix.lower() == ".csv":
        listed, problems = read_study_list(source)
        paths = list(listed)
    else:
        raise InputError("a study is a folder or a .csv list of paths", source)
    names = sorted(set(paths) | set(problems))
    if not names:
        raise InputError("no radiographs found (DICOM, PNG, JPEG, TIFF)", source)
    return [
        StudyInput(i, name, problems.get(name, ""), listed.get(name, Listed()))
        for i, name in enumerate(names)
    ]


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
