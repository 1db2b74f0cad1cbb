"""An upper bound for one AP projection: a DRR dataset whose images are the summed muscle maps.

    python benchmarks/ideal_view.py SRC OUT
    xraymuscle train --data OUT_TRAIN --out MODEL && xraymuscle evaluate --model MODEL --data OUT_TEST ...

The copy keeps everything of ``SRC`` (maps, mass maps, manifest) but replaces each image by the sum of
all muscles' thickness maps: what a radiograph would show if muscle were perfectly told apart from
fat and bone, without noise. A network trained on it can only be limited by the projection itself
(muscles lying on top of one another) and by the number of bodies, which makes the gap between it
and the same recipe on the DRRs the part owed to the radiograph. ``dataset.json`` gains an
``ideal_view`` entry saying so. Measured figures: docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xraymuscle.drr_dataset import DrrDataset, derive_dataset  # noqa: E402


def ideal_copy(src: Path, out: Path) -> int:
    """Write the copy (resumable, as every derived dataset); returns the number of samples."""
    data = DrrDataset.load(src)
    files = {row["sample_id"]: data.root / row["file"] for row in data.rows}

    def summed_maps(image: np.ndarray, sample_id: str) -> np.ndarray:
        maps = np.load(files[sample_id], allow_pickle=False)["maps"]
        return maps.astype(np.float32).sum(axis=0)

    provenance = {"source": str(Path(src).resolve()), "image": "sum of the muscle maps, mm"}
    _, samples = derive_dataset(data, out, summed_maps, "ideal_view", provenance, desc="samples")
    return samples


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
