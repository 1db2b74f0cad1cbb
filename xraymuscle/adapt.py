"""``adapt``: a DRR dataset whose images are translated into the real radiographs' style.

Every sample's image goes through the CycleGAN's DRR → real generator (whole image, at the
dataset's own pixel spacing); the maps, mass maps and every other array, and ``manifest.csv``,
are copied unchanged, so the volumes stay true. The translated image is stored in [0, 1].
``dataset.json`` keeps the source dataset's settings and adds ``adapted`` (the CycleGAN folder,
its generator's checksum and recipe, the source dataset). The result is a DRR dataset like any
other: ``train``, ``evaluate`` and ``adapt`` itself read it.

Resumable: samples are written atomically; a stopped run, started again with the same
arguments, translates only what is missing. ``dataset.json`` is written last, so a folder that
has it is complete.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from training.cyclegan import GENERATORS, load_generator, translate
from training.unpaired import to_unit
from xraymuscle.drr_dataset import DrrDataset, derive_dataset
from xraymuscle.errors import InputError


def _checksum(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def adapt_dataset(
    cyclegan: Path,
    data_dir: Path,
    out: Path,
    *,
    device: str = "cpu",
    direction: str = "drr_to_real",
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Path:
    """Translate the images of the DRR dataset ``data_dir`` into ``out``; return ``out``.

    ``direction`` ``real_to_drr`` runs the other generator: a dataset whose images look real
    (for instance clinical-style ones) is brought back to the DRR style, so that a model trained
    on plain DRRs can read it (translation at test time).
    """
    if direction not in GENERATORS:
        known = ", ".join(d.replace("_", "-") for d in sorted(GENERATORS))  # as the option spells them
        raise InputError(f"--direction must be one of {known}, not {direction.replace('_', '-')!r}")
    generator, meta = load_generator(Path(cyclegan), direction, device=device)
    data = DrrDataset.load(data_dir)
    provenance = {
        "cyclegan": str(Path(cyclegan).resolve()),
        "generator": GENERATORS[direction],
        "generator_sha256": _checksum(Path(cyclegan) / GENERATORS[direction]),
        "cyclegan_config": meta.get("config"),
        "source_dataset": str(Path(data_dir).resolve()),
        "image_range": "translated image in [0, 1]; maps unchanged",
    }

    def transform(image: np.ndarray, sample_id: str) -> np.ndarray:
        translated = translate(generator, to_unit(image), device)
        return ((np.clip(translated, -1, 1) + 1) / 2).astype(np.float32)

    done, total = derive_dataset(
        data, Path(out), transform, "adapted", provenance, progress=progress, desc="adapting"
    )
    echo(f"{done} images translated, {total - done} already there; dataset: {out}")
    return Path(out)
