"""The CSV lists people write by hand or export from a spreadsheet: a cohort, a study's paths.

They come with a byte-order mark (a spreadsheet's "UTF-8 CSV"), and, where the decimal separator
is a comma, with columns separated by semicolons; tab-separated lists are common too. The tables
this project writes itself are plain comma-separated UTF-8 and are read with :mod:`csv` directly.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

from xraymuscle.errors import InputError

DELIMITERS = ",;\t"


def read_csv_rows(path: Path, columns: Sequence[str]) -> list[list[str]]:
    """The rows of a hand-made CSV file, the header (if any) first.

    The separator is the one of ``,``, ``;`` and tab under which the first line names one of
    ``columns`` (compared without case or surrounding spaces); a comma where none does (a list
    without a header, whose paths may hold any of them).

    Raises
    ------
    InputError
        When the file cannot be read or is not UTF-8 text.
    """
    try:
        text = Path(path).read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError("not a UTF-8 CSV file", path) from None
    except OSError as exc:
        raise InputError(f"cannot read the list ({exc.strerror})", path) from None
    first = text.split("\n", 1)[0].rstrip("\r")
    wanted = {c.lower() for c in columns}
    delimiter = next(
        (d for d in DELIMITERS if wanted & {cell.strip().lower() for cell in first.split(d)}), ","
    )
    return list(csv.reader(io.StringIO(text, newline=""), delimiter=delimiter))
