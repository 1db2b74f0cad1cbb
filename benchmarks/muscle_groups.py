"""How well the muscle groups' summed volumes are measured, against their muscles'.

    python benchmarks/muscle_groups.py --work DIR [--n 100] [--seed 910] [--model MODEL]

New phantoms (``phantom --seed SEED --spacing 3``, not the shipped model's cohorts) are rendered as
its held-out ones were (``hip_ap``, 128 pixels, one view), written as DICOM and measured with
``predict``. For every group of the muscle catalogue (``group_volume_ml__<group>``) and for each
of its muscles, the table gives Pearson r, MAPE and the 95 % intervals' coverage against the
volumes in the field of view, and the mean sd over the volume; then the group's sd as ``predict``
gives it (the muscles' calibrated sds combined with how their volumes vary together over the
dropout draws) beside the two sds it lies between, were the muscles' errors independent
(``sqrt(Σ sd²)``) or moving together (``Σ sd``).
The phantoms, their DRRs and DICOM files are made once under DIR and kept; the predictions run
again each time.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from new_phantoms import new_phantom_radiographs

from xraymuscle.catalog import MuscleCatalog
from xraymuscle.compare import cell_number
from xraymuscle.predict import predict_images


def _figures(pred: np.ndarray, true: np.ndarray, sd: np.ndarray) -> str:
    r = float(np.corrcoef(pred, true)[0, 1])
    mape = float(np.mean(np.abs(pred - true) / true)) * 100
    coverage = float(np.mean(np.abs(pred - true) <= 1.96 * sd))
    return f"r {r:.3f}  MAPE {mape:5.2f} %  coverage {coverage:4.0%}  sd {np.mean(sd / pred) * 100:4.1f} %"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--n", type=int, default=100, help="phantoms (one radiograph each)")
    parser.add_argument("--seed", type=int, default=910)
    parser.add_argument("--model", type=Path, default=None, help="a model folder (default: the shipped one)")
    args = parser.parse_args()

    data, images, in_field = new_phantom_radiographs(args.work, args.n, args.seed)
    rows = predict_images(
        images, args.work / "predict", model_dir=args.model, pictures=False, progress=False,
        echo=lambda _: None,
    )  # fmt: skip
    kept = np.array([r["status"] in ("ok", "uncertain") for r in rows])
    muscles = data.muscles
    volume = np.array([[cell_number(r.get(f"volume_ml__{m}")) for m in muscles] for r in rows])[kept]
    sd = np.array([[cell_number(r.get(f"volume_sd_ml__{m}")) for m in muscles] for r in rows])[kept]
    truth = in_field[kept]
    print(f"{int(kept.sum())} of {len(rows)} phantom radiographs ok or uncertain, {len(muscles)} muscles")
    for group, members in MuscleCatalog.load().groups.items():
        if f"group_volume_ml__{group}" not in rows[0]:
            continue
        idx = [muscles.index(m) for m in members]
        g_pred = np.array([cell_number(r[f"group_volume_ml__{group}"]) for r in rows])[kept]
        g_sd = np.array([cell_number(r[f"group_volume_sd_ml__{group}"]) for r in rows])[kept]
        g_true = truth[:, idx].sum(axis=1)
        print(f"{group:30s} {_figures(g_pred, g_true, g_sd)}")
        for j, m in zip(idx, members, strict=True):
            print(f"  {m:28s} {_figures(volume[:, j], truth[:, j], sd[:, j])}")
        independent = np.sqrt((sd[:, idx] ** 2).sum(axis=1))
        together = sd[:, idx].sum(axis=1)
        print(
            f"  the group's sd, over its volume: {np.mean(g_sd / g_pred) * 100:.1f} %, against "
            f"{np.mean(independent / g_pred) * 100:.1f} % (independent; coverage "
            f"{np.mean(np.abs(g_pred - g_true) <= 1.96 * independent):.0%}) and "
            f"{np.mean(together / g_pred) * 100:.1f} % (together; coverage "
            f"{np.mean(np.abs(g_pred - g_true) <= 1.96 * together):.0%})"
        )


if __name__ == "__main__":
    main()
