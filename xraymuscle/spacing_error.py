"""How far a volume moves with the pixel spacing: the part of its uncertainty that the spacing adds.

A volume is only as right as the spacing at the hip (docs/accuracy.md, *What an error in the pixel
spacing costs*), and the network's spread knows nothing of it: the model was calibrated on images
whose spacing was exact. Where a study's spacing is known only to some relative sd ``σ`` (a
detector spacing divided by an estimated magnification, a calibration ball placed at about the
hip's height), ``predict`` and ``screen --spacing-sd-percent`` add it, or, film by film, a study
list's ``spacing_sd_percent`` column (:mod:`xraymuscle.study_list`).

How much a spacing error moves a volume is measured on each image with the network itself, not
assumed: the image is also brought to the grid as if its spacing were ``1 ± δ`` times what it is
(:data:`SPACING_STEP`, the *probes*), the network reads the image and both probes without dropout
(and, for a model trained with horizontal flips, their mirrors too, so that a mirrored radiograph
keeps its sds with the sides exchanged), and the volume's sd from the spacing is

    sd = σ / δ · sqrt(((V₊ − V₀)² + (V₋ − V₀)²) / 2).

For a volume that follows the spacing as ``V₀ + a e + b e²`` (``e`` the relative error), this is
``σ · sqrt(a² + b² δ²)``: the slope, and the bend that a central difference would miss (the
volumes follow a spacing too small more steeply than one too large: ``k`` of about 3 against
1.7 in docs/accuracy.md). It adds in quadrature to the calibrated sd. A perfect reader would give
``3 σ V`` (a body drawn ``1 + e`` times larger has muscles ``(1 + e)³`` larger); the network's
response is what its errors follow, and on 20 phantoms it was 1.4 to 4.1 σ V (5th to 95th
percentile over muscles and images).

The probes cost three more network passes per image (six with mirrored reading), without the
dropout draws: ``predict`` took about 1.5 times as long (``benchmarks/spacing_sensitivity.py``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from xraymuscle.errors import InputError

if TYPE_CHECKING:  # the probes are made in decoding workers, which need no PyTorch
    import torch

    from training.unet import BayesianUNet
    from xraymuscle.inference import McResult
    from xraymuscle.model import LoadedModel
    from xraymuscle.prepare import Prepared

SPACING_STEP = 0.05  # the probes' spacing is 1 ± this times the image's
PROBE_FACTORS = (1.0 + SPACING_STEP, 1.0 - SPACING_STEP)
MAX_SPACING_SD_PERCENT = 20.0  # beyond it the volumes mean little, and the slope no longer holds


def check_spacing_sd(percent: float | None) -> None:
    """Refuse a ``--spacing-sd-percent`` that is not more than 0 and at most
    :data:`MAX_SPACING_SD_PERCENT`; ``None`` leaves the spacing out of the sd."""
    if percent is not None and not (math.isfinite(percent) and 0 < percent <= MAX_SPACING_SD_PERCENT):
        raise InputError(
            f"--spacing-sd-percent must be more than 0 and at most {MAX_SPACING_SD_PERCENT:g} "
            f"(the pixel spacing's relative sd, in %), not {percent:g}"
        )


def mirror_order(out_channels: int, twins: Sequence[int], mass_head: bool) -> list[int]:
    """The channel order that puts a mirrored image's volume (and mass) maps back in place."""
    pairs = list(twins)
    return pairs + ([t + out_channels for t in pairs] if mass_head else [])


def spacing_sds(
    network: BayesianUNet,
    images: torch.Tensor,
    probes: torch.Tensor,
    *,
    percent: float | np.ndarray,
    pixel_area_mm2: float,
    map_scale_mm: float,
    twins: Sequence[int] | None = None,
    batch: int = 8,
    device: str = "cpu",
) -> tuple[np.ndarray, np.ndarray | None]:
    """Per image and muscle, the sd (ml, and g for a mass head) that a relative spacing sd of
    ``percent`` % (one for all, or ``(N,)``, one per image) adds, from the ``images``
    ``(N, 1, S, S)`` on the grid and their ``probes`` ``(N, 2, S, S)``: each image normalised on
    the grid as if its spacing were :data:`PROBE_FACTORS` times its own."""
    import torch

    if images.shape[0] != probes.shape[0] or probes.shape[1] != len(PROBE_FACTORS):
        raise ValueError(f"images {tuple(images.shape)} and probes {tuple(probes.shape)} do not match")
    views = torch.cat([images, probes], dim=1)  # (N, 3, S, S): the image, then its probes
    integrals = []
    with torch.no_grad():
        for start in range(0, len(views), batch):
            x = views[start : start + batch].to(device).reshape(-1, 1, *views.shape[-2:])
            integrals.append(_integrals(network, x, twins, pixel_area_mm2, map_scale_mm))
    sums = torch.cat(integrals).reshape(len(views), 3, -1).double()
    steps = sums[:, 1:] - sums[:, :1]  # V± − V₀
    per_step = (steps.square().mean(dim=1).sqrt() / SPACING_STEP).cpu().numpy()
    sd = per_step * np.broadcast_to(np.asarray(percent, np.float64), (len(views),))[:, None] / 100.0
    k = network.out_channels
    return sd[:, :k], (sd[:, k:] if network.mass_head else None)


def attach_spacing_sds(
    mc: McResult,
    model: LoadedModel,
    images: torch.Tensor,
    prepared: Sequence[Prepared],
    *,
    batch: int = 8,
    device: str = "cpu",
) -> None:
    """Set ``mc``'s spacing sds for the ``images`` (``(N, 1, S, S)``, the grid images of
    ``prepared``, in order) whose :attr:`Prepared.spacing_sd_percent` is set: each its own
    percent, from its probes; the other images keep their sds as they are (a spacing sd of 0,
    and NaN for its percent). Nothing is set when no image carries one."""
    import torch

    percent = np.array(
        [
            np.nan if p.spacing_sd_percent is None or p.probes is None else p.spacing_sd_percent
            for p in prepared
        ]
    )
    chosen = np.flatnonzero(np.isfinite(percent))
    if not len(chosen):
        return
    volume_sd, mass_sd = spacing_sds(
        model.network,
        images[torch.from_numpy(chosen)],
        torch.from_numpy(np.stack([prepared[int(i)].probes for i in chosen])),  # type: ignore[misc]
        percent=percent[chosen],
        pixel_area_mm2=model.pixel_spacing_mm**2,
        map_scale_mm=float(model.meta["map_scale_mm"]),
        twins=model.twins,
        batch=batch,
        device=device,
    )
    mc.spacing_volume_sd = np.zeros((len(prepared), volume_sd.shape[1]))
    mc.spacing_volume_sd[chosen] = volume_sd
    if mass_sd is not None:
        mc.spacing_mass_sd = np.zeros((len(prepared), mass_sd.shape[1]))
        mc.spacing_mass_sd[chosen] = mass_sd
    mc.spacing_sd_percent = percent


def _integrals(
    network: BayesianUNet,
    x: torch.Tensor,
    twins: Sequence[int] | None,
    pixel_area_mm2: float,
    map_scale_mm: float,
) -> torch.Tensor:
    """The maps' integrals ``(B, C)`` (ml, g) without dropout, averaged with the mirrored
    image's (its maps mirrored back, left and right exchanged) when ``twins`` is given."""
    import torch

    was_training = network.training
    network.eval()
    try:
        maps = network(x).float()
        if twins is not None:
            order = mirror_order(network.out_channels, twins, network.mass_head)
            mirrored = network(torch.flip(x, dims=[-1])).float()
            maps = (maps + torch.flip(mirrored[:, order], dims=[-1])) / 2
    finally:
        network.train(was_training)
    return maps.sum(dim=(-1, -2)) * map_scale_mm * pixel_area_mm2 / 1000.0
