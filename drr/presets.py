"""Render presets: a geometry, the pose ranges for augmentation and the physics, from one YAML file."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from drr.geometry import Geometry
from drr.imaging import XrayPhysics
from drr.poses import PoseRanges

# a side of the rendered image at most: 4096 × 4096 views are already 64 MB each in float32
MAX_IMAGE_SIZE = 4096
_KEYS = {"name", "sid", "sod", "detector_mm", "image_size", "pixel_spacing", "pose_ranges", "physics"}


@dataclass(frozen=True)
class RenderPreset:
    """Everything that fixes how a view is rendered, apart from the CT and the pose itself."""

    geometry: Geometry
    pose_ranges: PoseRanges
    physics: XrayPhysics

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {
            "geometry": self.geometry.to_dict(),
            "pose_ranges": self.pose_ranges.to_dict(),
            "physics": self.physics.to_dict(),
        }


def load_preset(
    path: str | Path,
    *,
    image_size: int | None = None,
    pixel_spacing: float | None = None,
    sid: float | None = None,
) -> RenderPreset:
    """Read a preset YAML, applying overrides.

    The pixel spacing (at the detector) is ``detector_mm / image_size`` unless the file or the
    override gives it, so changing only the image size keeps the field of view. Overriding
    ``sid`` keeps the object-to-detector distance ``sid − sod``.

    Raises
    ------
    ValueError
        For unknown keys or impossible values (the message names the setting).
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        at = "" if line is None else f" at line {line + 1}"
        raise ValueError(f"not valid YAML{at} ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError("a geometry preset must be a YAML mapping")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; known: {sorted(_KEYS)}")
    missing = sorted({"sid", "sod", "image_size"} - set(data))
    if missing:
        raise ValueError(f"missing setting(s) {missing}")
    size = int(image_size if image_size is not None else data["image_size"])
    if size <= 0 or size > MAX_IMAGE_SIZE:
        raise ValueError(f"image size must be 1 to {MAX_IMAGE_SIZE} pixels a side, not {size}")
    spacing = pixel_spacing if pixel_spacing is not None else data.get("pixel_spacing")
    if spacing is None:
        if "detector_mm" not in data:
            raise ValueError("give either pixel_spacing or detector_mm")
        spacing = float(data["detector_mm"]) / size
    base_sid, base_sod = float(data["sid"]), float(data["sod"])
    new_sid = float(sid) if sid is not None else base_sid
    if not math.isfinite(new_sid):
        raise ValueError(f"sid must be a finite number of mm, not {new_sid}")
    if sid is not None and not new_sid > base_sid - base_sod:
        raise ValueError(
            f"sid {new_sid:g} mm leaves no room for the patient: this preset keeps the isocentre "
            f"{base_sid - base_sod:g} mm from the detector, so sid must be more than that"
        )
    geometry = Geometry(
        sid=new_sid,
        sod=new_sid - (base_sid - base_sod),
        rows=size,
        cols=size,
        pixel_spacing=float(spacing),
        name=str(data.get("name", Path(path).stem)),
    )
    return RenderPreset(
        geometry=geometry,
        pose_ranges=PoseRanges.from_dict(data.get("pose_ranges")),
        physics=XrayPhysics.from_dict(data.get("physics")),
    )
