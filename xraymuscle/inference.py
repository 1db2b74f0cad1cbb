"""Monte Carlo inference: volumes (and masses) with their spread, from images on the model's grid.

Each image's maps are drawn ``T`` times with dropout on; a volume is a map's integral, and its
mean over the draws is the estimate. Its raw uncertainty is the spread over the draws (what the
model does not know) combined, for a network with an aleatoric head, with the per-image variance
that head predicts (what the image cannot show): ``sd² = sd_draws² + mean_t(σ²_rel,t) · volume²``.
The calibration stored in the model scales it later.

With ``twins`` (each channel's left/right twin, from a model trained with horizontal flips), half
the draws run on the mirrored image and have their maps mirrored back and their left and right
channels swapped: the mean is then the average of two readings of the same anatomy, and their
disagreement is part of the spread. For the same number of draws this costs one more encoder pass
per image, and it lowers the held-out error (see ``configs/train/decomposition.yaml``). The
out-of-distribution features come from the same encoder passes (averaged over both images).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from training.unet import BayesianUNet


@dataclass
class McResult:
    """Per image and muscle: volume (ml) and mass (g), mean and sd over the draws; mean maps.

    ``maps`` is ``(N, K, S, S)`` in mm (mean over draws) and ``map_sd`` its spread, also in mm.
    ``features`` are the pooled features used by the out-of-distribution score
    (with ``twins``, averaged with the mirrored image's: see :func:`image_features`).
    ``volume_sd_draws`` is the spread over the dropout draws alone (equal to ``volume_sd``
    without an aleatoric head).
    """

    volume: np.ndarray
    volume_sd: np.ndarray
    mass: np.ndarray | None
    mass_sd: np.ndarray | None
    maps: np.ndarray
    map_sd: np.ndarray
    features: np.ndarray
    volume_sd_draws: np.ndarray


def mc_predict(
    network: BayesianUNet,
    images: torch.Tensor,
    *,
    samples: int,
    pixel_area_mm2: float,
    map_scale_mm: float,
    batch: int = 8,
    device: str = "cpu",
    keep_maps: bool = True,
    seed: int = 0,
    twins: Sequence[int] | None = None,
) -> McResult:
    """Run ``samples`` dropout draws for every image ``(N, 1, S, S)`` (already normalised).

    The draws are seeded per image, from ``seed`` and the image's content: an image gets the same
    numbers run after run, whatever batch or position it comes in (a resumed screening run, or
    two copies of one file, agree exactly). With ``twins``, ``samples // 2`` of the draws are
    made on the mirrored image (see the module's note); for an even ``samples`` a mirrored
    radiograph then gets exactly the volumes of the original with left and right swapped.
    """
    if twins is not None and sorted(twins) != list(range(network.out_channels)):
        raise ValueError(f"twins must order the {network.out_channels} channels, not {list(twins)}")
    if twins is not None and samples < 2:
        raise ValueError(f"mirrored draws need at least 2 samples, not {samples}")
    out: dict[str, list[np.ndarray]] = {
        "v": [], "vs": [], "vd": [], "m": [], "ms": [], "maps": [], "sd": [], "f": []
    }  # fmt: skip
    network = network.to(device)
    _draw(network, images, samples, pixel_area_mm2, map_scale_mm, batch, device, keep_maps, seed, twins, out)
    empty = np.zeros((0,))
    return McResult(
        volume=np.concatenate(out["v"]),
        volume_sd=np.concatenate(out["vs"]),
        mass=np.concatenate(out["m"]) if out["m"] else None,
        mass_sd=np.concatenate(out["ms"]) if out["ms"] else None,
        maps=np.concatenate(out["maps"]) if out["maps"] else empty,
        map_sd=np.concatenate(out["sd"]) if out["sd"] else empty,
        features=np.concatenate(out["f"]),
        volume_sd_draws=np.concatenate(out["vd"]),
    )


def _draw(
    network: BayesianUNet,
    images: torch.Tensor,
    samples: int,
    pixel_area_mm2: float,
    map_scale_mm: float,
    batch: int,
    device: str,
    keep_maps: bool,
    seed: int,
    twins: Sequence[int] | None,
    out: dict[str, list[np.ndarray]],
) -> None:
    k = network.out_channels
    pairs = list(twins or [])
    mirrored = samples // 2 if pairs else 0
    # the channel order that puts the mirrored image's maps back in place
    order = pairs + ([t + k for t in pairs] if network.mass_head else [])
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = chunk.to(device)
        seeds = [image_seed(img, seed) for img in chunk]
        draws, log_variance, features = network.mc_draws(x, samples - mirrored, seeds)
        if mirrored:
            seeds = [image_seed(img, seed) for img in torch.flip(chunk, dims=[-1])]
            back, back_variance, back_features = network.mc_draws(torch.flip(x, dims=[-1]), mirrored, seeds)
            draws = torch.cat([draws, torch.flip(back[:, :, order], dims=[-1])])
            log_variance = torch.cat([log_variance, back_variance[:, :, pairs]])
            features = (features + back_features) / 2  # as image_features(mirrored=True)
        draws = draws.float() * map_scale_mm  # (T, B, C, S, S) in mm
        sums = draws.sum(dim=(-1, -2)) * pixel_area_mm2 / 1000.0  # (T, B, C): ml (or g)
        # the predicted relative variance (zero without an aleatoric head), averaged over draws
        relative = torch.exp(log_variance.float()).mean(0) * float(network.aleatoric)
        parts = [("v", "vs", sums[:, :, :k])] + ([("m", "ms", sums[:, :, k:])] if network.mass_head else [])
        for key, spread, part in parts:
            mean, var = part.mean(0), part.var(0)
            out[key].append(mean.cpu().numpy())
            out[spread].append((var + relative * mean.square()).sqrt().cpu().numpy())
            if key == "v":
                out["vd"].append(var.sqrt().cpu().numpy())
        if keep_maps:
            out["maps"].append(draws[:, :, :k].mean(0).cpu().numpy())
            out["sd"].append(draws[:, :, :k].std(0).cpu().numpy())
        out["f"].append(features.float().cpu().numpy())


def image_features(network: BayesianUNet, x: torch.Tensor, *, mirrored: bool = False) -> torch.Tensor:
    """Pooled features for the out-of-distribution score; ``mirrored`` averages them
    with the mirrored image's, so that an image and its mirror score alike."""
    features = network.features(x)
    if mirrored:
        features = (features + network.features(torch.flip(x, dims=[-1]))) / 2
    return features


def image_seed(image: torch.Tensor, seed: int = 0) -> int:
    """A seed from an image's content (CRC-32 of its values) and a base seed."""
    data = image.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return (zlib.crc32(data) ^ (seed * 0x9E3779B1)) & 0x7FFFFFFF


def sd_scales(mean: np.ndarray, sd: np.ndarray, truth: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Per-muscle factor on the raw spread so that ``mean ± 1.96·factor·sd`` covers 95 % of cases.

    The factor is the 95th percentile of ``|error| / sd`` over the validation cases, over 1.96.
    """
    k = mean.shape[1]
    scales = np.ones(k)
    for j in range(k):
        ok = valid[:, j] & (sd[:, j] > 0)
        if ok.sum() >= 5:
            z = np.abs(mean[ok, j] - truth[ok, j]) / sd[ok, j]
            scales[j] = max(float(np.quantile(z, 0.95)) / 1.96, 1e-3)
    return scales
