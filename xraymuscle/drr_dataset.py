"""The DRR dataset contract: ``dataset.json``, ``manifest.csv`` and ``samples/<sample_id>.npz``.

Written by ``generate-drr`` (and ``adapt``), read by ``train``, ``adapt`` and ``evaluate``.

``samples/<sample_id>.npz`` holds

* ``image``      float32 (H, W): the synthetic radiograph, ``−ln(I/I0)`` (bone bright);
* ``maps``       float32 (K, H, W): per-muscle volume-preserving thickness at the isocentre, mm,
  channels in ``dataset.json``'s muscle order; ``maps[k].sum() * pixel_area_mm2 / 1000`` is the
  muscle's volume in ml;
* ``mass_maps``  float32 (K, H, W): the same weighted by density (g/cm³); the same sum gives g;
* ``materials``  float32 (3, H, W): line integrals of density, g/cm², for air, soft tissue, bone;
* ``projection`` float64 (3, 4): the view's matrix, patient LPS mm of the source CT → pixel;
* ``meta``       a JSON string: the sample's manifest row.

``pixel_area_mm2`` is the area of a pixel at the isocentre plane (the detector pixel scaled by
``sod/sid``). Muscles the CT's labels lack have NaN volumes and masses and zero maps.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.typing import PathLikeStr

FORMAT = "xraymuscle-drr"
VERSION = 1
BASE_COLUMNS = ("sample_id", "case_id", "view", "file", "height", "width", "pixel_area_mm2")
POSE_COLUMNS = ("pose_rx", "pose_ry", "pose_rz", "pose_tx", "pose_ty", "pose_tz")
ISOCENTRE_COLUMNS = ("isocentre_x", "isocentre_y", "isocentre_z")


def manifest_columns(muscles: list[str] | tuple[str, ...]) -> list[str]:
    """Column order of ``manifest.csv`` for these muscles."""
    return [
        *BASE_COLUMNS,
        *(f"volume_ml__{m}" for m in muscles),
        *(f"mass_g__{m}" for m in muscles),
        *(f"offdetector__{m}" for m in muscles),
        *POSE_COLUMNS,
        *ISOCENTRE_COLUMNS,
    ]


def sample_file(sample_id: str) -> str:
    """Relative path of a sample inside the dataset folder."""
    return f"samples/{sample_id}.npz"


class DiskFullError(InputError):
    """The disk filled up while writing; the run cannot go on."""


def write_sample(root: Path, sample_id: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write one sample atomically; a full disk gives an :class:`InputError`, never half a file."""
    path = Path(root) / sample_file(sample_id)
    try:
        with atomic_path(path) as tmp:
            with tmp.open("wb") as fh:
                np.savez_compressed(fh, **arrays, meta=np.array(json.dumps(meta)))  # type: ignore[arg-type]
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError("no space left on the device; nothing half-written was kept", path) from None
        raise
    return path


def read_sample(path: PathLikeStr, *, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Arrays of one sample (all, or only ``keys``); ``meta`` comes back as a dict."""
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data.files if keys is None else keys
            out: dict[str, Any] = {k: data[k] for k in names}
    except FileNotFoundError:
        raise InputError("sample file is missing", path) from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"not a readable sample ({exc})", path) from None
    if "meta" in out:
        out["meta"] = json.loads(str(out["meta"]))
    return out


def write_manifest(root: Path, muscles: list[str], rows: list[dict[str, Any]]) -> Path:
    """Write ``manifest.csv`` (sorted by sample id) atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=manifest_columns(muscles), lineterminator="\n", extrasaction="ignore"
    )
    writer.writeheader()
    for row in sorted(rows, key=lambda r: r["sample_id"]):
        writer.writerow({k: _cell(v) for k, v in row.items()})
    path = Path(root) / "manifest.csv"
    write_text_atomic(path, buf.getvalue())
    return path


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(round(value, 6))
    return value


@dataclass
class DrrDataset:
    """A DRR dataset on disk, validated against the contract.

    Attributes
    ----------
    root
        The dataset folder.
    info
        ``dataset.json``.
    rows
        ``manifest.csv`` rows, numbers parsed (empty cells are NaN).
    """

    root: Path
    info: dict[str, Any]
    rows: list[dict[str, Any]]

    @property
    def muscles(self) -> list[str]:
        """Muscle names in channel order."""
        return list(self.info["muscles"])

    def __len__(self) -> int:
        return len(self.rows)

    def sample(self, index: int, *, keys: tuple[str, ...] = ("image", "maps")) -> dict[str, Any]:
        """Arrays of row ``index``."""
        return read_sample(self.root / self.rows[index]["file"], keys=keys)

    def volumes_ml(self) -> np.ndarray:
        """``(n, K)`` true volumes in ml (NaN where a muscle is missing)."""
        return np.array([[r[f"volume_ml__{m}"] for m in self.muscles] for r in self.rows], dtype=np.float64)

    @classmethod
    def load(cls, root: PathLikeStr) -> DrrDataset:
        """Open and check a dataset folder.

        Raises
        ------
        InputError
            When the folder is not a DRR dataset or its files disagree with the contract.
        """
        root = Path(root)
        if not root.is_dir():
            raise InputError("no such folder", root)
        info_path = root / "dataset.json"
        if not info_path.is_file():
            raise InputError("not a DRR dataset (no dataset.json)", root)
        try:
            info = json.loads(info_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise InputError(f"dataset.json is not valid JSON ({exc})", info_path) from None
        if info.get("format") != FORMAT or not isinstance(info.get("muscles"), list):
            raise InputError(f"dataset.json does not describe a {FORMAT} dataset", info_path)
        manifest = root / "manifest.csv"
        if not manifest.is_file():
            raise InputError("not a DRR dataset (no manifest.csv)", root)
        with manifest.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            needed = [*BASE_COLUMNS, *(f"volume_ml__{m}" for m in info["muscles"])]
            missing = [c for c in needed if c not in header]
            if missing:
                raise InputError(f"manifest lacks column(s) {missing}", manifest)
            rows = [_parse_row(r) for r in reader]
        return cls(root, info, rows)


def _parse_row(row: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("sample_id", "case_id", "file"):
            out[key] = value
        elif key in ("view", "height", "width"):
            out[key] = int(value)
        else:
            try:
                out[key] = float(value) if value != "" else math.nan
            except ValueError:
                out[key] = value
    return out
