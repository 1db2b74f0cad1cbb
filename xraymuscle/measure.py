"""Ground truth from CT voxels: each muscle's volume (voxel count × voxel volume) and mass, and
whether the voxels labelled as a muscle read as muscle."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from drr.materials import density_from_hu
from xraymuscle.catalog import MuscleCatalog
from xraymuscle.volume import Volume

# Mean density (g/ml, from HU) of the voxels of one muscle label that still reads as muscle: about
# -70 to 200 HU. Muscle reads 1.03-1.06 (0 to 50 HU, fatty to lean), fat 0.93 (-100 HU), air 0; the
# shared CT's muscles read 1.03-1.06, 60 phantoms' 1.02-1.11 (the gluteus minimus, beside bone,
# 1.05-1.11). A label that averages outside lies largely on fat, air or bone.
MUSCLE_DENSITY_RANGE = (0.96, 1.15)


def muscle_channels(labels: Volume, catalog: MuscleCatalog, source: str) -> np.ndarray:
    """Each voxel's muscle, as its catalogue index + 1 (0: none), by the label source's values."""
    return catalog.lookup(source, int(labels.array.max()))[labels.array]


def muscle_volumes(
    ct: Volume,
    labels: Volume,
    catalog: MuscleCatalog,
    source: str,
    *,
    channel: np.ndarray | None = None,
) -> dict[str, dict[str, float]]:
    """Volume (ml) and mass (g) of every muscle the label source provides.

    Mass is the sum of the voxels' densities (from HU) times the voxel volume. ``channel``:
    :func:`muscle_channels`, when already made.

    Returns
    -------
    dict
        ``{muscle: {"volume_ml": v, "mass_g": m}}`` in catalogue order.
    """
    if not ct.same_grid(labels):
        raise ValueError("CT and labels must share a grid; read them with read_ct_and_labels")
    voxel_ml = ct.voxel_volume_mm3 / 1000.0
    if channel is None:
        channel = muscle_channels(labels, catalog, source)
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


def unlike_muscle(measures: Iterable[tuple[str, float, float]]) -> list[str]:
    """What is wrong with each ``(muscle, volume_ml, mass_g)`` whose mean density is not that of
    muscle (:data:`MUSCLE_DENSITY_RANGE`): labels that lie on fat, air or bone, as those of another
    scan, or of this one flipped or shifted, do. Empty muscles are passed over."""
    low, high = MUSCLE_DENSITY_RANGE
    found = []
    for name, volume_ml, mass_g in measures:
        if volume_ml > 0 and not low <= mass_g / volume_ml <= high:
            found.append(f"{name} {mass_g / volume_ml:.2f} g/ml")
    return found


def unlike_muscle_note(found: list[str]) -> str:
    """One line on the muscles :func:`unlike_muscle` found."""
    low, high = MUSCLE_DENSITY_RANGE
    return (
        f"the voxels labelled {', '.join(found)} on average, where muscle reads {low:g}-{high:g}: "
        "do the labels lie on this CT's muscles (the same scan, the same orientation)?"
    )


def muscle_centroids(
    labels: Volume, catalog: MuscleCatalog, source: str, *, channel: np.ndarray | None = None
) -> dict[str, np.ndarray]:
    """LPS centre (mm) of the voxels of every muscle the label map holds, in catalogue order
    (``channel``: :func:`muscle_channels`, when already made)."""
    if channel is None:
        channel = muscle_channels(labels, catalog, source)
    k, j, i = np.nonzero(channel)
    ch = channel[k, j, i].astype(np.int64)
    n = len(catalog.muscles) + 1
    counts = np.bincount(ch, minlength=n)
    means = [np.bincount(ch, weights=axis, minlength=n) / np.maximum(counts, 1) for axis in (i, j, k)]
    ijk = np.c_[means[0], means[1], means[2], np.ones(n)]
    lps = (ijk @ labels.index_to_world.T)[:, :3]
    return {m: lps[c + 1] for c, m in enumerate(catalog.muscles) if counts[c + 1]}


def sides_exchanged(centroids: Mapping[str, np.ndarray]) -> list[str]:
    """The ``*_left`` muscles whose centre lies on the patient's right of their ``*_right`` twin's
    (a smaller LPS x): the sides of the labels, or of the CT's orientation, are exchanged."""
    found = []
    for name, centre in centroids.items():
        twin = name[: -len("_left")] + "_right"
        if name.endswith("_left") and twin in centroids and centre[0] < centroids[twin][0]:
            found.append(name)
    return found


# Relations between muscles that every hip holds, whatever the build and the pose: (a muscle, one
# that lies beyond it, the LPS axis, the sense in which, and what is exchanged where it does not).
# Margins measured: gluteus maximus behind the iliopsoas by 79-123 mm in 60 phantoms (80 in the
# shared CT), gluteus medius above the gluteus maximus by 47-67 mm (40 in the shared CT).
ANATOMY = (
    ("iliopsoas", "gluteus_maximus", 1, "behind", "front and back"),
    ("gluteus_maximus", "gluteus_medius", 2, "above", "head and feet"),
)


def orientation_notes(centroids: Mapping[str, np.ndarray]) -> list[str]:
    """One line for each anatomical axis along which the labels' muscles lie the wrong way round
    (see :func:`sides_exchanged` and ``ANATOMY``): the CT's orientation or its labels' is exchanged
    along it (a header lost or rewritten in a conversion, labels of a mirrored image), and the
    DRRs would show the muscles where no radiograph does."""
    notes = []
    exchanged = sides_exchanged(centroids)
    if exchanged:
        notes.append(
            f"{', '.join(exchanged)} lie on the patient's right of their right twins: the labels' sides, "
            "or the CT's orientation, are exchanged (a header lost in a conversion, labels of a mirrored "
            "image), and the DRRs would show each muscle on the other side"
        )
    for first, beyond, axis, where, what in ANATOMY:
        pairs = [
            (centroids[f"{first}_{side}"], centroids[f"{beyond}_{side}"])
            for side in ("left", "right")
            if f"{first}_{side}" in centroids and f"{beyond}_{side}" in centroids
        ]
        if pairs and all(b[axis] < a[axis] for a, b in pairs):
            notes.append(
                f"the {beyond.replace('_', ' ')} does not lie {where} the {first.replace('_', ' ')}: "
                f"{what} are exchanged in the CT's orientation or its labels' (a header lost or "
                "rewritten in a conversion), and the DRRs would not be AP views of this body"
            )
    return notes
