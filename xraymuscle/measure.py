"""Ground truth from CT voxels: each muscle's volume (voxel count × voxel volume) and mass."""

from __future__ import annotations

import numpy as np

from drr.materials import density_from_hu
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.volume import Volume


def muscle_volumes(
    ct: Volume, labels: Volume, catalog: MuscleCatalog, source: str
) -> dict[str, dict[str, float]]:
    """Volume (ml) and mass (g) of every muscle the label source provides.

    Mass is the sum of the voxels' densities (from HU) times the voxel volume.

    Returns
    -------
    dict
        ``{muscle: {"volume_ml": v, "mass_g": m}}`` in catalogue order.
    """
    if not ct.same_grid(labels):
        raise ValueError("CT and labels must share a grid; read them with read_ct_and_labels")
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    lut = catalog.lookup(source, int(labels.array.max()))
    channel = lut[labels.array]
    inside = channel > 0
    density = density_from_hu(ct.array[inside]).astype(np.float64)
    ch = channel[inside].astype(np.int64)
    n = len(catalog.muscles) + 1
    counts = np.bincount(ch, minlength=n)
    mass = np.bincount(ch, weights=density, minlength=n)
    table = catalog.check_source(source)
    return {
        m: {"volume_ml": float(counts[i + 1] * voxel_ml), "mass_g": float(mass[i + 1] * voxel_ml)}
        for i, m in enumerate(catalog.muscles)
        if m in table
    }
