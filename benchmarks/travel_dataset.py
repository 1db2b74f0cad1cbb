"""A compact copy of a DRR dataset, small enough to travel to a GPU machine.

    python benchmarks/travel_dataset.py SRC OUT [--cases N] [--views V]

The copy keeps the DRR dataset contract (``dataset.json``, ``manifest.csv``, ``samples/``) for the
first ``N`` cases and their first ``V`` views, with only what training and evaluation read: the
image, the maps and the mass maps (with ``--materials``, also the ``materials`` a recipe with a
materials head learns, and the ``adipose`` fat map where the source has one), stored as float16 (a
relative rounding of at most 2^-11 per pixel; the manifest's volumes and masses are copied
unchanged). ``dataset.json`` gains a ``travel`` entry saying so. About 110 kB a sample at 128 x 128
pixels (175 kB with the materials), against 370 kB for the source. ``benchmarks/gpu_check.sh``
trains the GPU recipe on such copies when they are carried.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraymuscle.atomic import write_text_atomic  # noqa: E402
from xraymuscle.drr_dataset import DrrDataset, read_sample, write_manifest, write_sample  # noqa: E402

KEYS = ("image", "maps", "mass_maps")


def travel_copy(src: Path, out: Path, cases: int | None, views: int | None, materials: bool = False) -> int:
    """Write the compact copy; returns the number of samples."""
    data = DrrDataset.load(src)
    adipose = materials and bool(data.info.get("adipose"))
    keys = (*KEYS, "materials", *(("adipose",) if adipose else ())) if materials else KEYS
    if (out / "dataset.json").exists():
        raise SystemExit(f"{out}: holds a dataset already; use a new folder")
    keep_cases = sorted({r["case_id"] for r in data.rows})[:cases]
    rows = [r for r in data.rows if r["case_id"] in keep_cases and (views is None or int(r["view"]) < views)]
    for row in rows:
        arrays = read_sample(data.root / row["file"], keys=(*keys, "meta"))
        meta = arrays.pop("meta")
        write_sample(out, row["sample_id"], {k: arrays[k].astype(np.float16) for k in keys}, meta)
    write_manifest(out, data.muscles, rows)
    info = dict(data.info)
    if not adipose:
        info.pop("adipose", None)  # the copy holds no fat map
    info["travel"] = {
        "source": str(Path(src).resolve()),
        "cases": len(keep_cases),
        "views_per_case": views,
        "arrays": list(keys),
        "dtype": "float16",
    }
    write_text_atomic(out / "dataset.json", json.dumps(info, indent=1))
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--cases", type=int, help="the first N cases (default: all)")
    parser.add_argument("--views", type=int, help="the first V views of each case (default: all)")
    parser.add_argument("--materials", action="store_true", help="also the material maps (and the fat map)")
    args = parser.parse_args()
    n = travel_copy(args.src, args.out, args.cases, args.views, args.materials)
    size = sum(p.stat().st_size for p in args.out.rglob("*") if p.is_file())
    print(f"{n} samples, {size / 2**20:.1f} MiB: {args.out}")


if __name__ == "__main__":
    main()
