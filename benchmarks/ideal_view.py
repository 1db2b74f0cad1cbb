"""An upper bound for one AP projection: a DRR dataset whose images are the summed muscle maps.

    python benchmarks/ideal_view.py SRC OUT
    xraymuscle train --data OUT_TRAIN --out MODEL && xraymuscle evaluate --model MODEL --data OUT_TEST ...

The copy keeps everything of ``SRC`` (maps, mass maps, manifest) but replaces each image by the sum of
all muscles' thickness maps: what a radiograph would show if muscle were perfectly told apart from
fat and bone, without noise. A network trained on it can only be limited by the projection itself
(muscles lying on top of one another) and by the number of bodies, which makes the gap between it
and the same recipe on the DRRs the part owed to the radiograph. ``dataset.json`` gains an
``ideal_view`` entry saying so. Measured figures: README, accuracy section.
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


def ideal_copy(src: Path, out: Path) -> int:
    """Write the copy; returns the number of samples."""
    data = DrrDataset.load(src)
    if (out / "dataset.json").exists():
        raise SystemExit(f"{out}: holds a dataset already; use a new folder")
    for row in data.rows:
        arrays = read_sample(data.root / row["file"])
        meta = arrays.pop("meta")
        arrays["image"] = arrays["maps"].astype(np.float32).sum(axis=0)
        write_sample(out, row["sample_id"], arrays, meta)
    write_manifest(out, data.muscles, data.rows)
    info = dict(data.info)
    info["ideal_view"] = {"source": str(Path(src).resolve()), "image": "sum of the muscle maps, mm"}
    write_text_atomic(out / "dataset.json", json.dumps(info, indent=1))
    return len(data.rows)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("src", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(f"{ideal_copy(args.src, args.out)} samples: {args.out}")


if __name__ == "__main__":
    main()
