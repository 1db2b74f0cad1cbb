"""An append-only record of finished work that survives ``kill -9``: one JSON object per line.

Each append is flushed and synced before it returns, so a row is either whole on disk or not
there. A run killed in the middle of a write leaves at most one torn last line; opening the
journal drops it (that work is simply done again). Rows are keyed; a key seen twice keeps its
last row, so nothing is ever counted twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class Journal:
    """The rows finished so far, keyed by ``key_field``, backed by a JSON-lines file."""

    def __init__(self, path: Path, key_field: str) -> None:
        self.path = Path(path)
        self.key_field = key_field
        self.rows: dict[str, dict[str, Any]] = {}
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        good = data.rfind(b"\n") + 1  # everything after the last newline is a torn write
        for line in data[:good].splitlines():
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn line followed by later appends: that work is redone
            if isinstance(row, dict) and self.key_field in row:
                self.rows[str(row[self.key_field])] = row
        if good < len(data):
            with self.path.open("r+b") as fh:
                fh.truncate(good)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def append(self, rows: Iterable[dict[str, Any]]) -> None:
        """Add rows durably (written, flushed and synced before returning)."""
        rows = list(rows)
        if not rows:
            return
        text = "".join(
            json.dumps(r, ensure_ascii=False, allow_nan=False, default=_plain) + "\n" for r in rows
        )
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        for r in rows:
            self.rows[str(r[self.key_field])] = r


def _plain(value: Any) -> Any:
    """NumPy scalars and other number-likes as plain JSON numbers."""
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"cannot record {type(value).__name__} in the journal")
