"""The DRR dataset contract: ``dataset.json``, ``manifest.csv`` and ``samples/<sample_id>.npz``.

Written by ``generate-drr`` (and ``adapt``), read by ``train``, ``adapt`` and ``evaluate``.

``samples/<sample_id>.npz`` holds

* ``image``      float32 (H, W): the synthetic radiograph, ``−ln(I/I0)`` (bone bright);
* ``maps``       float32 (K, H, W): per-muscle volume-preserving thickness at the isocentre, mm,
  channels in ``dataset.json``'s muscle order; ``maps[k].sum() * pixel_area_mm2 / 1000`` is the
  muscle's volume in ml;
* ``mass_maps``  float32 (K, H, W): the same weighted by density (g/cm³); the same sum gives g;
* ``materials``  float32 (3, H, W): line integrals of density, g/cm², for air, soft tissue, bone;
* ``adipose``    float32 (H, W), only with ``generate-drr --adipose``: the line integral of density
  of the soft tissue at or below −30 HU (fat), g/cm², a part of ``materials[1]`` (only a recipe
  that learns it needs it);
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from xraymuscle.atomic import atomic_path, write_text_atomic
from xraymuscle.errors import InputError
from xraymuscle.run_lock import is_empty, locks_output
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


def dataset_summary(data: DrrDataset) -> dict[str, Any]:
    """What ``inspect`` says of a DRR dataset folder: its size, grid and provenance in brief."""
    info = data.info
    geometry = info.get("geometry") or {}
    derived = [k for k in ("adapted", "clinical_style", "ideal_view") if k in info]
    return {
        "kind": "drr_dataset",
        "path": str(data.root),
        "format": info.get("format"),
        "version": info.get("version"),
        "code_version": info.get("code_version"),
        "muscles": data.muscles,
        "samples": len(data),
        "cases": len({row["case_id"] for row in data.rows}),
        "views_per_case": info.get("views_per_case"),
        "image_size": [geometry.get("rows"), geometry.get("cols")],
        "pixel_spacing_mm": info.get("pixel_spacing_mm"),
        "label_sources": sorted({str(c.get("label_source")) for c in info.get("source_cases", [])}),
        "derived_by": derived,
    }


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
    missing: list[str] = []
    try:
        with np.load(path, allow_pickle=False) as data:
            names = data.files if keys is None else keys
            missing = [k for k in names if k not in data.files]
            out: dict[str, Any] = {k: data[k] for k in names if k in data.files}
    except FileNotFoundError:
        raise InputError("sample file is missing", path) from None
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"not a readable sample ({exc})", path) from None
    if missing:
        raise InputError(f"the sample holds no {', '.join(missing)} array", path)
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
            problem = "a file, not a DRR dataset's folder" if root.exists() else "no such folder"
            raise InputError(problem, root)
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


DERIVING = ".derive.json"


@locks_output("out")
def derive_dataset(
    data: DrrDataset,
    out: Path,
    transform: Callable[[np.ndarray, str], np.ndarray],
    key: str,
    provenance: dict[str, Any],
    *,
    progress: bool = True,
    desc: str = "images",
) -> tuple[int, int]:
    """A new dataset at ``out`` whose images are ``transform(image, sample_id)``, all else copied.

    Maps, mass maps, the other arrays and ``manifest.csv`` are copied unchanged; ``dataset.json``
    is the source's plus ``{key: provenance}`` (with the date). Samples are written atomically
    and ``dataset.json`` last, so a stopped run resumes (same ``provenance``) and a folder with
    ``dataset.json`` is complete. Returns (images transformed now, samples in all).
    """
    out = Path(out)
    if out.resolve() == Path(data.root).resolve():
        raise InputError("--out must be a new folder, not the source dataset", out)
    stamp = json.loads(json.dumps(provenance))
    if (out / "dataset.json").is_file():
        done = json.loads((out / "dataset.json").read_text(encoding="utf-8")).get(key, {})
        if {k: v for k, v in done.items() if k != "date"} != stamp:
            raise InputError(f"holds another dataset ({key} otherwise); use a new --out", out)
        return 0, len(data.rows)
    if not is_empty(out):
        marker = out / DERIVING
        if not marker.is_file() or json.loads(marker.read_text(encoding="utf-8")) != {key: stamp}:
            raise InputError(
                "folder is not empty and holds no unfinished run of this kind; use a new --out", out
            )
    write_text_atomic(out / DERIVING, json.dumps({key: stamp}))
    for stale in (out / "samples").glob(".*.tmp*") if (out / "samples").is_dir() else []:
        stale.unlink(missing_ok=True)
    made = 0
    for row in tqdm(data.rows, desc=desc, unit="image", disable=not progress):
        if (out / sample_file(row["sample_id"])).is_file():
            continue
        arrays = read_sample(data.root / row["file"])
        meta = arrays.pop("meta", {})
        arrays["image"] = np.asarray(transform(arrays["image"], row["sample_id"]), np.float32)
        write_sample(out, row["sample_id"], arrays, meta)
        made += 1
    write_text_atomic(out / "manifest.csv", (data.root / "manifest.csv").read_text(encoding="utf-8"))
    info = dict(data.info)
    info[key] = {**stamp, "date": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_text_atomic(out / "dataset.json", json.dumps(info, indent=1))
    (out / DERIVING).unlink(missing_ok=True)
    return made, len(data.rows)
