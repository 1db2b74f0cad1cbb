"""How well a calibration ball's shadow is measured: the diameter error, in per cent, over ball
sizes, edge blur (the focal spot's penumbra, the detector's spread), clipping at white (a
processed film), and noise; and the time one search takes beside the time reading the film does.

    python benchmarks/marker_accuracy.py [--films 12]

Films are drawn as in ``tests/test_calibration_marker.py`` (a soft-tissue slope and two bone bars)
with a ball's shadow, each pixel the share the disc covers, at a random place off the pixel grid.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from xraymuscle.calibration_marker import find_marker  # noqa: E402


def _film(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.mgrid[: shape[0], : shape[1]]
    image = 0.3 + 0.2 * np.sin(cols / shape[1] * np.pi)
    image[:, shape[1] // 3 : shape[1] // 3 + shape[1] // 12] += 0.4
    image[shape[0] // 4 : shape[0] // 4 + shape[0] // 16, :] += 0.3
    return image.astype(np.float32)


def _disc(shape: tuple[int, int], row: float, col: float, diameter: float) -> np.ndarray:
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    reach = int(diameter / 2) + 3
    r0, c0 = int(row) - reach, int(col) - reach
    rr = np.arange(r0, r0 + 2 * reach + 1)[:, None, None, None] + sub[None, None, :, None]
    cc = np.arange(c0, c0 + 2 * reach + 1)[None, :, None, None] + sub[None, None, None, :]
    out = np.zeros(shape, np.float32)
    out[r0 : r0 + 2 * reach + 1, c0 : c0 + 2 * reach + 1] = (
        (rr - row) ** 2 + (cc - col) ** 2 < (diameter / 2) ** 2
    ).mean(axis=(2, 3))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--films", type=int, default=12, help="films per setting")
    args = parser.parse_args()
    rng = np.random.default_rng(2026)
    settings = {
        "sharp": dict(blur=0.0, clip=None, noise=0.005),
        "blur 1 px": dict(blur=1.0, clip=None, noise=0.005),
        "blur 2 px": dict(blur=2.0, clip=None, noise=0.005),
        "blur 1 px, clipped at 60 %": dict(blur=1.0, clip=0.6, noise=0.005),
        "sharp, noise 5 %": dict(blur=0.0, clip=None, noise=0.05),
    }
    print(
        f"{'setting':30s} {'diameter px':>12s} {'found':>6s} {'error % mean':>13s} {'sd':>6s} {'worst':>7s}"
    )
    for name, setting in settings.items():
        for diameter in (40.0, 100.0, 190.0):
            errors, found = [], 0
            for _ in range(args.films):
                shape = (int(diameter * 8), int(diameter * 7))
                image = _film(rng, shape)
                row = rng.uniform(0.6, 0.8) * shape[0]
                col = rng.uniform(0.6, 0.8) * shape[1]
                shadow = _disc(shape, row, col, diameter) * 1.5
                if setting["blur"]:
                    shadow = cv2.GaussianBlur(shadow, (0, 0), setting["blur"])
                image = image + shadow
                if setting["clip"] is not None:  # white from this share of the ball's level on
                    image = np.minimum(image, float(np.median(image)) + setting["clip"] * 1.5)
                image = image + rng.normal(0, setting["noise"], image.shape).astype(np.float32)
                marker = find_marker(image, 25.0, spacing_mm=25.0 * 1.15 / diameter)
                if marker is not None:
                    found += 1
                    errors.append(100 * (marker.diameter_px / diameter - 1))
            e = np.array(errors) if errors else np.array([np.nan])
            worst = e[np.argmax(np.abs(e))]
            share = f"{found:3d}/{args.films:<2d}"
            print(f"{name:30s} {diameter:12.0f} {share} {e.mean():13.2f} {e.std():6.2f} {worst:7.2f}")
    # time: a search against reading the film itself (a 3000 x 2500 film, 16-bit PNG)
    shape = (3000, 2500)
    image = _film(rng, shape) + 1.5 * _disc(shape, 2400.3, 1900.6, 190.0)
    path = Path("/tmp") / "marker_bench_film.png"
    cv2.imwrite(str(path), np.clip(image / image.max() * 65535, 0, 65535).astype(np.uint16))
    t0 = time.perf_counter()
    read = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32)
    t1 = time.perf_counter()
    find_marker(read, 25.0, spacing_mm=0.15)
    t2 = time.perf_counter()
    find_marker(read, 25.0)
    t3 = time.perf_counter()
    path.unlink()
    print(
        f"3000 x 2500 film: reading it {t1 - t0:.2f} s; the search {t2 - t1:.2f} s with the file's "
        f"spacing ({(t2 - t1) / (t1 - t0):.1f} x the reading), {t3 - t2:.2f} s without "
        f"({(t3 - t2) / (t1 - t0):.1f} x)"
    )


if __name__ == "__main__":
    main()
