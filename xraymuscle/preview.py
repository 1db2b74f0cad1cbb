"""Pictures for people: windowed slices, label overlays and montages, written as PNG."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from xraymuscle.atomic import atomic_path
from xraymuscle.typing import PathLikeStr

# A fixed palette (RGB): left/right twins share a hue, the right one lighter.
_PALETTE = (
    np.array(
        [
            (214, 39, 40),
            (255, 152, 150),  # gluteus maximus
            (31, 119, 180),
            (174, 199, 232),  # gluteus medius
            (44, 160, 44),
            (152, 223, 138),  # gluteus minimus
            (255, 127, 14),
            (255, 187, 120),  # iliopsoas
            (148, 103, 189),
            (197, 176, 213),  # quadriceps
            (140, 86, 75),
            (196, 156, 148),  # hamstrings
            (227, 119, 194),
            (247, 182, 210),  # adductors
            (188, 189, 34),
            (219, 219, 141),
            (23, 190, 207),
            (158, 218, 229),
        ],
        dtype=np.float32,
    )
    / 255.0
)


def colour(index: int) -> np.ndarray:
    """RGB (0..1) of channel ``index``."""
    return _PALETTE[index % len(_PALETTE)]


def window(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``[lo, hi]`` linearly to ``[0, 1]``, clipped."""
    return np.clip((np.asarray(image, np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)


def overlay_masks(grey: np.ndarray, masks: Sequence[np.ndarray], *, alpha: float = 0.45) -> np.ndarray:
    """Colour masks (or soft maps in 0..1) over a grey image; returns RGB float (H, W, 3)."""
    rgb = np.repeat(np.clip(grey, 0, 1)[..., None], 3, axis=-1).astype(np.float32)
    for i, m in enumerate(masks):
        w = (alpha * np.clip(np.asarray(m, np.float32), 0, 1))[..., None]
        rgb = rgb * (1 - w) + colour(i) * w
    return rgb


def colour_maps(maps: np.ndarray) -> np.ndarray:
    """Per-channel thickness maps (K, H, W) as one RGB picture, each scaled to its own maximum."""
    out = np.zeros((*maps.shape[1:], 3), np.float32)
    for i, m in enumerate(maps):
        peak = float(m.max())
        if peak > 0:
            out += colour(i) * (m / peak)[..., None] * 0.6
    return np.clip(out, 0, 1)


def titled(rgb: np.ndarray, title: str, *, height: int = 256) -> np.ndarray:
    """Resize to a common height (aspect kept) and write a title in the top-left corner."""
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    scale = height / rgb.shape[0]
    width = max(1, int(round(rgb.shape[1] * scale)))
    img = cv2.resize(rgb.astype(np.float32), (width, height), interpolation=cv2.INTER_AREA)
    img8 = np.ascontiguousarray((np.clip(img, 0, 1) * 255).astype(np.uint8))
    cv2.putText(img8, title, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 80), 1, cv2.LINE_AA)
    return img8.astype(np.float32) / 255.0


def side_marks(rgb: np.ndarray) -> np.ndarray:
    """Mark the patient's sides on a picture shown as radiographs are read: ``R`` at the bottom
    left, ``L`` at the bottom right."""
    img8 = np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8))
    h, w = img8.shape[:2]
    for text, x in (("R", 4), ("L", w - 14)):
        cv2.putText(img8, text, (x, h - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 80), 1, cv2.LINE_AA)
    return img8.astype(np.float32) / 255.0


def legend(lines: Sequence[str], *, height: int = 256, width: int = 230) -> np.ndarray:
    """A panel that names each channel's colour: a swatch of ``colour(i)`` and ``lines[i]``."""
    img8 = np.zeros((height, width, 3), np.uint8)
    step = max(1, min(18, (height - 4) // max(len(lines), 1)))
    for i, text in enumerate(lines):
        top = 4 + i * step
        rgb = tuple(int(v) for v in np.round(colour(i) * 255))
        cv2.rectangle(img8, (4, top), (4 + step - 4, top + step - 4), rgb, thickness=-1)
        baseline = top + step - 6
        cv2.putText(
            img8, text, (step + 4, baseline), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (235, 235, 235), 1, cv2.LINE_AA
        )
    return img8.astype(np.float32) / 255.0


def montage(panels: Sequence[np.ndarray], *, columns: int = 3, pad: int = 4) -> np.ndarray:
    """Tile RGB panels (same height) in rows, left to right."""
    rows = [list(panels[i : i + columns]) for i in range(0, len(panels), columns)]
    lines = []
    width = max(sum(p.shape[1] for p in row) + pad * (len(row) - 1) for row in rows)
    for row in rows:
        parts = []
        for i, p in enumerate(row):
            parts.append(p)
            if i < len(row) - 1:
                parts.append(np.zeros((p.shape[0], pad, 3), np.float32))
        line = np.concatenate(parts, axis=1)
        line = np.pad(line, ((0, 0), (0, width - line.shape[1]), (0, 0)))
        lines.append(line)
        lines.append(np.zeros((pad, width, 3), np.float32))
    return np.concatenate(lines[:-1], axis=0)


def write_png(path: PathLikeStr, rgb: np.ndarray) -> None:
    """Write an RGB float image (0..1) or grey image as an 8-bit PNG, atomically."""
    img = np.clip(np.asarray(rgb, np.float32), 0, 1)
    img8 = (img * 255 + 0.5).astype(np.uint8)
    if img8.ndim == 3:
        img8 = np.ascontiguousarray(img8[..., ::-1])  # RGB -> BGR
    ok, png = cv2.imencode(".png", img8)  # encoded here: the library cannot open every path
    if not ok:
        raise OSError(f"{path}: could not encode PNG")
    with atomic_path(path) as tmp:
        tmp.write_bytes(png.tobytes())
