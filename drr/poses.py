"""The patient's pose relative to the nominal view, and a sampler of poses for augmentation.

A pose is a rigid motion of the patient about the isocentre, in patient (LPS) axes:
``x ↦ R (x − c) + c + t`` with ``R = Rz(rz) · Ry(ry) · Rx(rx)``:

* ``rx``: about the left–right axis (pelvic tilt, flexion); positive turns +y (posterior) towards +z;
* ``ry``: about the antero-posterior axis (in-plane rotation of the image); positive turns +z towards +x;
* ``rz``: about the cranio-caudal axis (axial rotation of the pelvis); positive turns +x towards +y;
* ``tx, ty, tz``: translation in mm along L, P, S.

Angles are in degrees. Drawing (:func:`sample_pose`) and rendering (``render(pose)``) are separate
so that what was drawn is recorded with every view.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np


def _rot(axis: int, degrees: float) -> np.ndarray:
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    a, b = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[a, a], r[a, b], r[b, a], r[b, b] = c, -s, s, c
    return r


@dataclass(frozen=True)
class _SixValues:
    """Three rotation values (r*, degrees) and three translation values (t*, mm)."""

    rx: float = 0.0
    ry: float = 0.0
    rz: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    tz: float = 0.0

    def _check(self, what: str, allow_negative: bool) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not math.isfinite(float(value)) or (not allow_negative and value < 0):
                need = "finite" if allow_negative else "a non-negative number"
                raise ValueError(f"{what} {f.name} must be {need}, not {value!r}")

    def to_dict(self) -> dict[str, float]:
        """``{"rx": ..., ..., "tz": ...}`` as plain floats."""
        return {k: float(v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Pose(_SixValues):
    """Three rotations (degrees) and three translations (mm) of the patient; see the module doc."""

    def __post_init__(self) -> None:
        self._check("pose", allow_negative=True)

    def rotation(self) -> np.ndarray:
        """3 × 3 rotation ``Rz · Ry · Rx``."""
        return _rot(2, self.rz) @ _rot(1, self.ry) @ _rot(0, self.rx)

    def matrix(self, centre: np.ndarray) -> np.ndarray:
        """4 × 4 transform moving the patient: rotate about ``centre`` (LPS mm), then translate."""
        r = self.rotation()
        c = np.asarray(centre, dtype=np.float64)
        m = np.eye(4)
        m[:3, :3] = r
        m[:3, 3] = c - r @ c + np.array([self.tx, self.ty, self.tz])
        return m


@dataclass(frozen=True)
class PoseRanges(_SixValues):
    """Half-widths of the uniform ranges a pose is drawn from: degrees for r*, mm for t*."""

    def __post_init__(self) -> None:
        self._check("pose range", allow_negative=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PoseRanges:
        """From a mapping such as a preset's ``pose_ranges`` block; unknown keys are refused."""
        data = dict(data or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown pose range(s) {unknown}; known: {sorted(known)}")
        return cls(**{k: float(v) for k, v in data.items()})


def sample_pose(rng: np.random.Generator, ranges: PoseRanges) -> Pose:
    """Draw every parameter uniformly in ``[-range, +range]``."""
    half = np.array([getattr(ranges, f.name) for f in fields(ranges)])
    values = rng.uniform(-1.0, 1.0, size=half.size) * half
    return Pose(*(float(v) for v in values))
