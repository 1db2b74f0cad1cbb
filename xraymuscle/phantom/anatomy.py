"""A synthetic adult pelvis-and-thigh CT with muscle labels, drawn from random parameters.

The region runs from above the iliac crest to mid-thigh. Anatomy is built in a canonical LPS
frame (mm; x to the patient's left, y posterior, z superior; origin midway between the femoral
head centres), then the whole body is tilted and rotated by a few degrees, as a patient lies
on a CT table. Every size, fat fraction and position is drawn per case (:func:`sample_params`);
building is deterministic given the parameters (:func:`build_phantom`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial

import cv2
import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from xraymuscle.phantom.shapes import (
    Field,
    Grid,
    Keyframe,
    arc_plate,
    capsule,
    ellipsoid,
    spherical_shell,
    swept_ellipse,
)
from xraymuscle.volume import Volume

# Label values written by the phantom (the catalogue's `phantom` source refers to 1..14).
MUSCLE_LABELS = {
    "gluteus_maximus": (1, 2),
    "gluteus_medius": (3, 4),
    "gluteus_minimus": (5, 6),
    "iliopsoas": (7, 8),
    "quadriceps": (9, 10),
    "hamstrings": (11, 12),
    "adductors": (13, 14),
}
OTHER_LABELS = {
    "femur_left": 20,
    "femur_right": 21,
    "hip_left": 22,
    "hip_right": 23,
    "sacrum": 24,
    "vertebrae_lumbar": 25,
    "urinary_bladder": 26,
    "bowel": 27,
    "bowel_gas": 28,
    "other_muscle": 30,
    "subcutaneous_fat": 31,
    "skin": 32,
    "intermuscular_fat": 33,
}
# Ways of sharing the space where two muscles' solids overlap (``build_phantom(layering=...)``).
MUSCLE_LAYERINGS = ("carve", "additive")
# The default: muscle volumes add up as in a body (README, A phantom cohort).
DEFAULT_LAYERING = "additive"
# Deep muscles claim their voxels first where two solids meet.
MUSCLE_PRIORITY = (
    "iliopsoas",
    "gluteus_minimus",
    "gluteus_medius",
    "adductors",
    "hamstrings",
    "quadriceps",
    "gluteus_maximus",
)


def label_names() -> dict[int, str]:
    """Every label value the phantom writes, with its name (left before right)."""
    names = {}
    for muscle, (left, right) in MUSCLE_LABELS.items():
        names[left] = f"{muscle}_left"
        names[right] = f"{muscle}_right"
    names.update({v: k for k, v in OTHER_LABELS.items()})
    return dict(sorted(names.items()))


@dataclass
class PhantomParams:
    """Everything drawn for one case. Lengths in mm, angles in degrees, HU for CT values."""

    body_scale: float  # transverse size of the skeleton and muscles
    height_scale: float  # craniocaudal size
    fat_mm: float  # subcutaneous fat thickness
    muscle_hu: float  # mean muscle HU (lower = more intramuscular fat)
    fat_hu: float
    cortical_hu: float
    cancellous_hu: float
    noise_sd_hu: float
    tilt_deg: float  # pelvic tilt: rotation about the left-right axis
    rotation_deg: float  # axial rotation: about the craniocaudal axis
    obliquity_deg: float  # about the antero-posterior axis
    muscle_scale: dict[str, float] = field(default_factory=dict)  # per muscle and side, volume factor
    muscle_hu_offset: dict[str, float] = field(default_factory=dict)
    jitter: dict[str, list[float]] = field(default_factory=dict)  # per muscle and side, (dx, dy) mm
    wobble_seed: int = 0
    gas_pockets: int = 6

    def flat(self) -> dict[str, float]:
        """Scalar parameters, flattened for a table (``param__name``)."""
        out: dict[str, float] = {}
        for key, value in asdict(self).items():
            if isinstance(value, dict):
                for sub, v in value.items():
                    if isinstance(v, list):
                        for i, vi in enumerate(v):
                            out[f"{key}__{sub}__{i}"] = round(float(vi), 4)
                    else:
                        out[f"{key}__{sub}"] = round(float(v), 4)
            else:
                out[key] = round(float(value), 4)
        return out


def sample_params(rng: np.random.Generator) -> PhantomParams:
    """Draw one case's parameters: sizes, fat, HU, asymmetry and pose.

    Muscle sizes follow a population model: one muscularity factor for the whole person
    (log-normal, sd 0.2, about 0.6-1.6 across a cohort), times a factor per muscle (sd 0.1) and a
    left-right asymmetry of up to ±6 %. The muscles of one person scale together, as they do in
    people; the part of each muscle that does not is what the image alone must tell.
    """
    scales: dict[str, float] = {}
    offsets: dict[str, float] = {}
    jitter: dict[str, list[float]] = {}
    muscularity = float(np.exp(np.clip(rng.normal(0.0, 0.2), -0.5, 0.5)))
    for muscle in MUSCLE_LABELS:
        base = muscularity * float(np.exp(np.clip(rng.normal(0.0, 0.1), -0.25, 0.25)))
        asym = float(rng.uniform(-0.12, 0.12))
        for side, sign in (("left", 1), ("right", -1)):
            key = f"{muscle}_{side}"
            scales[key] = base * (1 + sign * asym / 2)
            offsets[key] = float(rng.normal(0, 4))
            jitter[key] = [float(v) for v in rng.uniform(-5, 5, size=2)]
    return PhantomParams(
        body_scale=float(rng.uniform(0.9, 1.1)),
        height_scale=float(rng.uniform(0.93, 1.07)),
        fat_mm=float(rng.uniform(8, 45)),
        muscle_hu=float(rng.uniform(15, 55)),
        fat_hu=float(rng.uniform(-120, -85)),
        cortical_hu=float(rng.uniform(1100, 1700)),
        cancellous_hu=float(rng.uniform(150, 350)),
        noise_sd_hu=float(rng.uniform(8, 25)),
        tilt_deg=float(rng.uniform(-6, 6)),
        rotation_deg=float(rng.uniform(-4, 4)),
        obliquity_deg=float(rng.uniform(-3, 3)),
        muscle_scale=scales,
        muscle_hu_offset=offsets,
        jitter=jitter,
        wobble_seed=int(rng.integers(2**31)),
        gas_pockets=int(rng.integers(3, 10)),
    )


# Muscle keyframes for the LEFT side (x > 0) at body_scale 1: z, cx, cy, ax, ay, angle.
_MUSCLE_FRAMES: dict[str, list[list[tuple[float, ...]]]] = {
    "gluteus_medius": [
        [
            (125, 100, 30, 22, 12, -50),
            (95, 112, 26, 40, 17, -50),
            (55, 128, 22, 34, 18, -42),
            (15, 142, 16, 22, 15, -30),
            (-25, 150, 12, 10, 8, -20),
        ]
    ],
    "gluteus_minimus": [
        [
            (92, 104, 14, 24, 7, -50),
            (55, 118, 8, 26, 9, -45),
            (15, 130, 2, 17, 9, -35),
            (-22, 142, 2, 7, 5, -20),
        ]
    ],
    "gluteus_maximus": [
        [
            (100, 52, 92, 20, 14, 25),
            (65, 72, 100, 46, 26, 20),
            (20, 88, 102, 56, 32, 15),
            (-20, 100, 92, 56, 32, 25),
            (-60, 116, 70, 40, 22, 45),
            (-105, 132, 45, 16, 10, 60),
        ]
    ],
    "iliopsoas": [
        [  # psoas
            (175, 34, 22, 17, 15, 0),
            (115, 44, 10, 21, 18, 10),
            (55, 56, -14, 19, 17, 20),
            (5, 72, -40, 17, 14, 0),
            (-40, 96, -22, 13, 11, 0),
            (-75, 112, 4, 7, 7, 0),
        ],
        [  # iliacus
            (120, 82, 2, 26, 7, -50),
            (80, 82, -6, 30, 11, -50),
            (40, 76, -26, 22, 12, -40),
            (8, 76, -40, 15, 10, -20),
        ],
    ],
    "quadriceps": [
        [
            (25, 100, -52, 8, 7, 0),
            (-40, 124, -36, 36, 27, 20),
            (-100, 118, -20, 47, 37, 10),
            (-235, 100, -16, 47, 37, 0),
        ]
    ],
    "hamstrings": [
        [
            (-62, 66, 28, 13, 10, 0),
            (-120, 92, 40, 30, 22, 10),
            (-235, 96, 40, 34, 24, 10),
        ]
    ],
    "adductors": [
        [
            (-35, 34, -20, 17, 17, 0),
            (-90, 60, 0, 30, 30, 0),
            (-160, 76, 10, 25, 25, 0),
            (-235, 86, 16, 15, 15, 0),
        ]
    ],
}


# Semi-axis multipliers, fitted with the carved layering to bring each muscle's mean volume (at
# muscle scale 1) near an adult mean within this field of view: gluteus maximus ~700 ml, medius
# ~250, minimus ~90, iliopsoas ~300, quadriceps ~900, hamstrings ~330, adductors ~450. Means over
# the 600 phantoms of `phantom --n 600 --seed 101 --spacing 3`, additive layering (the default; carved in
# brackets where it differs): 680, 270 (218), 74, 290, 970 (850), 375 (295), 390 ml. The cohorts
# the shipped model learnt from were made with these values; changing them changes the cohorts.
_AXIS_SIZE = {
    "gluteus_maximus": 0.95,
    "gluteus_medius": 1.22,
    "gluteus_minimus": 1.45,
    "iliopsoas": 1.05,
    "quadriceps": 1.0,
    "hamstrings": 1.07,
    "adductors": 1.12,
}


@dataclass
class _Canvas:
    grid: Grid
    labels: np.ndarray
    hu: np.ndarray

    def claim(self, fld: Field | None, label: int, hu: float | np.ndarray, *, override: bool = False) -> None:
        """Write a label and HU where the field is inside (and, unless ``override``, unclaimed)."""
        if fld is None:
            return
        inside = fld.depth > 0
        if not override:
            inside &= self.labels[fld.box] == 0
        self.labels[fld.box][inside] = label
        region = self.hu[fld.box]
        region[inside] = hu if np.isscalar(hu) else np.asarray(hu)[inside]


def _bone_depth(grid: Grid, p: PhantomParams, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Depth fields of one side's femur and hip bone (full grid arrays, -inf outside)."""
    b, h = p.body_scale, p.height_scale

    def P(x: float, y: float, z: float) -> tuple[float, float, float]:
        return (side * x * b, y * b, z * h)

    femur = np.full(grid.shape, -np.inf, np.float32)
    hip = np.full(grid.shape, -np.inf, np.float32)
    head_r = 24 * b
    for f in (
        ellipsoid(grid, P(92, 0, 0), (head_r, head_r, head_r)),
        capsule(grid, P(92, 0, 0), P(132, 6, -36), 15 * b, 16 * b),  # neck
        ellipsoid(grid, P(145, 12, -32), (15 * b, 19 * b, 26 * h)),  # greater trochanter
        ellipsoid(grid, P(116, 16, -74), (9 * b, 9 * b, 11 * h)),  # lesser trochanter
        capsule(grid, P(134, 4, -45), P(122, 2, -120), 19 * b, 15 * b),  # metaphysis
        capsule(grid, P(122, 2, -120), P(100, -4, -250), 15 * b, 14 * b),  # shaft
    ):
        if f is not None:
            f.paint(femur)
    wing_start = [np.array([side * 46 * b, 56 * b]), np.array([side * 40 * b, 70 * b])]
    wing_end = [np.array([side * 108 * b, -28 * b]), np.array([side * 128 * b, -40 * b])]
    for f in (
        arc_plate(grid, (40 * h, 128 * h), wing_start, wing_end, side * -18 * b, (11 * b, 14 * b)),
        capsule(grid, P(64, 40, 30), P(100, 0, 38), 22 * b, 20 * b),  # ilium body above acetabulum
        capsule(grid, P(52, 52, 40), P(60, 40, 110), 14 * b, 12 * b),  # sacroiliac part
        spherical_shell(grid, P(92, 0, 0), head_r + 2, head_r + 15 * b, (-side * 0.55, 0.1, 0.83), 0.05),
        capsule(grid, P(78, -12, -8), P(12, -58, -26), 10 * b, 9 * b),  # superior pubic ramus
        capsule(grid, P(10, -58, -22), P(10, -50, -52), 10 * b),  # symphyseal body
        capsule(grid, P(12, -50, -52), P(58, 16, -66), 8 * b, 11 * b),  # inferior ramus
        capsule(grid, P(88, 26, -6), P(60, 22, -66), 15 * b, 14 * b),  # ischium
    ):
        if f is not None:
            f.paint(hip)
    return femur, hip


def build_phantom(
    params: PhantomParams, spacing: float = 2.0, layering: str = DEFAULT_LAYERING
) -> tuple[Volume, Volume]:
    """Render one case as a CT (HU, float32) and a label map (uint16) on an isotropic grid.

    Parameters
    ----------
    params
        The drawn case (:func:`sample_params`).
    spacing
        Voxel size in mm.
    layering
        How muscles that overlap as drawn share the space (:data:`MUSCLE_LAYERINGS`). ``carve``: a
        deeper muscle keeps the overlap, so a superficial muscle loses whatever its deeper neighbour
        grows into, and the two muscles' sum hides part of that growth. ``additive``: every muscle
        keeps the volume it would have beside the skeleton alone; where a deeper muscle already
        lies, its outline is enlarged until it has that volume (it is pushed outwards), so muscle
        volumes add up, as they do in a body.
    """
    if not spacing > 0:
        raise ValueError(f"spacing must be positive, not {spacing}")
    if layering not in MUSCLE_LAYERINGS:
        raise ValueError(f"layering must be one of {MUSCLE_LAYERINGS}, not {layering!r}")
    p, b, h = params, params.body_scale, params.height_scale
    margin = p.fat_mm + 25
    grid = Grid.covering(
        (-185 * b - margin, -130 * b - margin, -240 * h),
        (185 * b + margin, 150 * b + margin, 180 * h),
        spacing,
    )
    canvas = _Canvas(grid, np.zeros(grid.shape, np.uint16), np.full(grid.shape, -1000.0, np.float32))
    wobble_rng = np.random.default_rng(p.wobble_seed)

    # --- skeleton: cortical shell and cancellous interior from the depth fields
    cortex_mm = 2.5
    for side, tag in ((1, "left"), (-1, "right")):
        femur, hip = _bone_depth(grid, p, side)
        for depth, label in (
            (femur, OTHER_LABELS[f"femur_{tag}"]),
            (hip, OTHER_LABELS[f"hip_{tag}"]),
        ):
            inside = depth > 0
            hu = np.where(depth < cortex_mm, p.cortical_hu, p.cancellous_hu).astype(np.float32)
            if label == OTHER_LABELS[f"femur_{tag}"]:
                # fatty marrow in the shaft's medullary canal
                canal = (depth > 7 * b) & (grid.z[:, None, None] < -90 * h)
                hu = np.where(canal, -40.0, hu)
            mask = inside & (canvas.labels == 0)
            canvas.labels[mask] = label
            canvas.hu[mask] = hu[mask]
    spine = np.full(grid.shape, -np.inf, np.float32)
    for f in (
        swept_ellipse(
            grid,
            [
                Keyframe(110 * h, 0, 62 * b, 48 * b, 22 * b, 0),
                Keyframe(40 * h, 0, 72 * b, 30 * b, 16 * b, 0),
                Keyframe(20 * h, 0, 80 * b, 12 * b, 10 * b, 0),
            ],
        ),
    ):
        if f is not None:
            f.paint(spine)
    inside = (spine > 0) & (canvas.labels == 0)
    canvas.labels[inside] = OTHER_LABELS["sacrum"]
    canvas.hu[inside] = np.where(spine[inside] < cortex_mm, p.cortical_hu * 0.9, p.cancellous_hu)
    vert = np.full(grid.shape, -np.inf, np.float32)
    for f in (
        capsule(grid, (0, 30 * b, 112 * h), (0, 30 * b, 200 * h), 24 * b),  # vertebral bodies
        capsule(grid, (0, 62 * b, 112 * h), (0, 92 * b, 200 * h), 8 * b),  # posterior elements
    ):
        if f is not None:
            f.paint(vert)
    inside = (vert > 0) & (canvas.labels == 0)
    canvas.labels[inside] = OTHER_LABELS["vertebrae_lumbar"]
    canvas.hu[inside] = np.where(vert[inside] < cortex_mm, p.cortical_hu * 0.85, p.cancellous_hu)

    # --- muscles, deep ones first
    free_of_muscle = canvas.labels == 0 if layering == "additive" else None  # the skeleton's gaps
    for muscle in MUSCLE_PRIORITY:
        for side, tag, label in (
            (1, "left", MUSCLE_LABELS[muscle][0]),
            (-1, "right", MUSCLE_LABELS[muscle][1]),
        ):
            key = f"{muscle}_{tag}"
            area = _AXIS_SIZE[muscle] * np.sqrt(p.muscle_scale[key])  # semi-axes by sqrt: area by the factor
            jx, jy = p.jitter[key]
            wobbles = [
                np.c_[
                    wobble_rng.uniform(0, 0.07, 3),
                    wobble_rng.uniform(0, 2 * np.pi, 3),
                    wobble_rng.uniform(-1, 1, 3),
                ]
                for _ in _MUSCLE_FRAMES[muscle]
            ]

            solids = partial(_muscle_solids, grid, muscle, side, area, (jx, jy), (b, h), wobbles)
            fields = solids(1.0)
            if free_of_muscle is not None:
                fields = _displace(canvas, solids, fields, int((_union(grid, fields) & free_of_muscle).sum()))
            for fld in fields:
                canvas.claim(fld, label, p.muscle_hu + p.muscle_hu_offset[key])
    for side in (
        1,
        -1,
    ):  # erector spinae and the lower abdominal wall: muscle, not labelled as such
        other = OTHER_LABELS["other_muscle"]
        canvas.claim(
            swept_ellipse(
                grid,
                [
                    Keyframe(180 * h, side * 36 * b, 86 * b, 24 * b, 22 * b),
                    Keyframe(60 * h, side * 30 * b, 96 * b, 16 * b, 12 * b),
                ],
            ),
            other,
            p.muscle_hu,
        )
        canvas.claim(
            swept_ellipse(
                grid,
                [
                    Keyframe(180 * h, side * 50 * b, -92 * b, 45 * b, 7 * b, side * -10),
                    Keyframe(20 * h, side * 30 * b, -82 * b, 30 * b, 6 * b, 0),
                ],
            ),
            other,
            p.muscle_hu,
        )

    _fat_planes(canvas, p.fat_hu)

    # --- pelvic and abdominal contents: bladder, bowel with mesenteric fat, gas pockets
    bladder_r = np.array([40, 30, 30]) * b * float(wobble_rng.uniform(0.6, 1.1))
    canvas.claim(ellipsoid(grid, (0, -42 * b, -2 * h), bladder_r), OTHER_LABELS["urinary_bladder"], 10.0)
    cavity = swept_ellipse(
        grid,
        [
            Keyframe(180 * h, 0, -10 * b, 120 * b, 70 * b),
            Keyframe(60 * h, 0, -10 * b, 110 * b, 68 * b),
            Keyframe(0, 0, -30 * b, 55 * b, 42 * b),
        ],
    )
    if cavity is not None:
        rough = ndimage.zoom(
            wobble_rng.normal(size=(8, 8, 8)).astype(np.float32),
            np.array(cavity.depth.shape) / 8,
            order=1,
        )
        rough = rough[: cavity.depth.shape[0], : cavity.depth.shape[1], : cavity.depth.shape[2]]
        bowel_hu = np.where(rough > 0.3, p.fat_hu, 35.0).astype(np.float32)
        canvas.claim(cavity, OTHER_LABELS["bowel"], np.broadcast_to(bowel_hu, cavity.depth.shape))
    for _ in range(p.gas_pockets):
        c = (
            wobble_rng.uniform(-90, 90) * b,
            wobble_rng.uniform(-60, 20) * b,
            wobble_rng.uniform(20, 170) * h,
        )
        r = wobble_rng.uniform(8, 28, size=3) * b
        gas = ellipsoid(grid, c, r)
        if gas is not None:
            gas.depth = np.where(canvas.labels[gas.box] == OTHER_LABELS["bowel"], gas.depth, -1.0)
            canvas.claim(gas, OTHER_LABELS["bowel_gas"], -950.0, override=True)

    # --- body outline: everything inside, wrapped in subcutaneous fat and skin (slice by slice)
    px = spacing
    fat_px = p.fat_mm / px
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (int(2 * (30 / px)) | 1,) * 2)
    for k in range(grid.shape[0]):
        inner = (canvas.labels[k] > 0).astype(np.uint8)
        if not inner.any():
            continue
        inner = cv2.morphologyEx(inner, cv2.MORPH_CLOSE, kernel)
        dist = cv2.distanceTransform(1 - inner, cv2.DIST_L2, 5)
        body = dist <= fat_px
        skin = body & (dist > fat_px - 2.0 / px)
        fat = body & ~skin & (canvas.labels[k] == 0)
        canvas.labels[k][fat] = OTHER_LABELS["subcutaneous_fat"]
        canvas.hu[k][fat] = p.fat_hu
        canvas.labels[k][skin] = OTHER_LABELS["skin"]
        canvas.hu[k][skin] = 40.0
    # gaps inside the body between solids are fat
    body3d = canvas.labels > 0
    holes = ndimage.binary_fill_holes(body3d, structure=np.ones((1, 3, 3), bool)) & ~body3d
    canvas.hu[holes] = p.fat_hu

    ct = Volume(canvas.hu, (px, px, px), (float(grid.x[0]), float(grid.y[0]), float(grid.z[0])))
    labels = Volume(canvas.labels, ct.spacing, ct.origin)
    ct, labels = _crop_to_body(*_pose(ct, labels, p), margin_mm=8.0)
    ct.array = _ct_texture(ct.array, p.noise_sd_hu, wobble_rng)
    return ct, labels


def _muscle_solids(
    grid: Grid,
    muscle: str,
    side: int,
    area: float,
    jitter: tuple[float, float],
    scales: tuple[float, float],
    wobbles: list[np.ndarray],
    inflate: float,
) -> list[Field | None]:
    """One side's muscle as solids (a chain each), semi-axes ``area * inflate`` times the keyframes'."""
    (jx, jy), (b, h), axes = jitter, scales, area * inflate
    return [
        swept_ellipse(
            grid,
            [
                Keyframe(z * h, side * (cx * b + jx), cy * b + jy, ax * b * axes, ay * b * axes, side * ang)
                for z, cx, cy, ax, ay, ang in chain
            ],
            wobble=wob,
        )
        for chain, wob in zip(_MUSCLE_FRAMES[muscle], wobbles, strict=True)
    ]


def _union(grid: Grid, fields: list[Field | None]) -> np.ndarray:
    """The full-grid mask inside any of ``fields``."""
    inside = np.zeros(grid.shape, bool)
    for fld in fields:
        if fld is not None:
            inside[fld.box] |= fld.depth > 0
    return inside


def _displace(
    canvas: _Canvas,
    solids: Callable[[float], list[Field | None]],
    fields: list[Field | None],
    target: int,
) -> list[Field | None]:
    """Enlarge a muscle's cross-sections until it claims ``target`` free voxels (within 0.2 %).

    ``solids(f)`` draws the muscle with its semi-axes multiplied by ``f``; ``fields`` is ``solids(1)``.
    The claimed volume grows about as ``f²``, a little faster where the enlargement spills past the
    muscles it wraps, so the steps by ``√(target / claimed)`` settle in a few draws.
    """
    free = canvas.labels == 0

    def claimed(flds: list[Field | None]) -> int:
        return int((_union(canvas.grid, flds) & free).sum())

    inflate, count = 1.0, claimed(fields)
    best, best_gap = fields, abs(count - target)
    for _ in range(8):
        if best_gap <= max(1, target // 500) or count == 0:
            break
        inflate *= float(np.clip(np.sqrt(target / count), 0.8, 1.25))
        fields = solids(inflate)
        count = claimed(fields)
        if abs(count - target) < best_gap:
            best, best_gap = fields, abs(count - target)
    return best


def _fat_planes(canvas: _Canvas, fat_hu: float) -> None:
    """Put a fascial fat plane, one voxel thick, wherever two different muscles touch.

    Of the two voxels facing each other across the contact, the one with the larger label gives
    way and becomes ``intermuscular_fat``. These planes are what outlines one muscle against its
    neighbour in a projection, faintly, where a ray runs along them.
    """
    muscle_values = [v for pair in MUSCLE_LABELS.values() for v in pair] + [OTHER_LABELS["other_muscle"]]
    lab = canvas.labels
    is_muscle = np.isin(lab, muscle_values)
    plane = np.zeros(lab.shape, bool)
    for axis in range(3):
        for shift in (1, -1):
            neighbour = np.roll(lab, shift, axis)  # wraps at the edges, which are air
            plane |= is_muscle & (neighbour != lab) & np.isin(neighbour, muscle_values) & (neighbour < lab)
    lab[plane] = OTHER_LABELS["intermuscular_fat"]
    canvas.hu[plane] = fat_hu


def _pose(ct: Volume, labels: Volume, p: PhantomParams) -> tuple[Volume, Volume]:
    """Tilt and rotate the body about the hip centre (origin), as it lay on the table."""
    transform = sitk.Euler3DTransform()
    transform.SetCenter((0.0, 0.0, 0.0))
    # Resample maps output points through the transform into the input: use the inverse pose.
    transform.SetRotation(*(-np.deg2rad([p.tilt_deg, p.obliquity_deg, p.rotation_deg])).tolist())
    ref = ct.to_sitk()
    hu = sitk.Resample(ref, ref, transform, sitk.sitkLinear, -1000.0, sitk.sitkFloat32)
    lab = sitk.Resample(labels.to_sitk(), ref, transform, sitk.sitkNearestNeighbor, 0)
    return Volume.from_sitk(hu), Volume.from_sitk(lab)


def _crop_to_body(ct: Volume, labels: Volume, *, margin_mm: float) -> tuple[Volume, Volume]:
    """Drop the air around the body (keeping a margin): smaller files, same anatomy."""
    inside = np.argwhere(labels.array > 0)
    pad = int(np.ceil(margin_mm / min(ct.spacing)))
    lo = np.maximum(inside.min(0) - pad, 0)
    hi = np.minimum(inside.max(0) + pad + 1, labels.array.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    origin = tuple((ct.index_to_world @ np.r_[lo[::-1], 1.0])[:3])
    return (
        Volume(np.ascontiguousarray(ct.array[box]), ct.spacing, origin, ct.direction),
        Volume(np.ascontiguousarray(labels.array[box]), ct.spacing, origin, ct.direction),
    )


def _ct_texture(hu: np.ndarray, noise_sd: float, rng: np.random.Generator) -> np.ndarray:
    """The scanner's blur and correlated quantum noise, rounded to integer HU like a real CT."""
    out = ndimage.gaussian_filter(hu, 0.5)
    noise = ndimage.gaussian_filter(rng.standard_normal(hu.shape, dtype=np.float32), 0.8)
    noise *= noise_sd / max(float(noise.std()), 1e-6)
    out += noise
    np.clip(out, -1024, 3071, out=out)
    return np.round(out).astype(np.float32)
