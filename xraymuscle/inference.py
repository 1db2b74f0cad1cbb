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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from training.unet import BayesianUNet
from xraymuscle.errors import InputError
from xraymuscle.spacing_error import mirror_order

# image-draws decoded in one pass (about 4.5 MB each on the 128-pixel grid): bounds the memory a
# batch takes, whatever the number of draws; the defaults (10 draws, half mirrored, of `predict`'s 8
# or `screen`'s 32 radiographs) fit in one pass
DRAWS_PER_PASS = 256
# the most draws an image may be given: far past where more change the mean (10 → 40 draws move
# the held-out MAPE by 0.04 points), and a typo's 100 000 would take hours per image
MAX_MC_SAMPLES = 1000


def check_mc_samples(value: int | None) -> None:
    """Refuse a ``--mc-samples`` that is not a whole number from 2 (a spread needs two draws, the
    mirrored ones one of each side) to :data:`MAX_MC_SAMPLES`; ``None`` is the model's default."""
    if value is not None and not 2 <= value <= MAX_MC_SAMPLES:
        raise InputError(f"--mc-samples must be from 2 to {MAX_MC_SAMPLES}, not {value}")


@dataclass
class McResult:
    """Per image and muscle: volume (ml) and mass (g), mean and sd over the draws; mean maps.

    ``maps`` is ``(N, K, S, S)`` in mm (mean over draws) and ``map_sd`` its spread, also in mm.
    ``features`` are the pooled features used by the out-of-distribution score
    (with ``twins``, averaged with the mirrored image's: see :func:`image_features`).
    ``volume_sd_draws`` is the spread over the dropout draws alone (equal to ``volume_sd``
    without an aleatoric head). ``spacing_volume_sd`` and ``spacing_mass_sd``, set by
    :func:`xraymuscle.spacing_error.attach_spacing_sds` when some image carries a spacing sd
    (``spacing_sd_percent``, per image: NaN for none), are what it adds to each volume's (and
    mass's) sd (0 for an image without one). ``volume_correlation``
    ``(N, K, K)`` is how the muscles' volumes vary together over the draws, ``mass_correlation``
    their masses' (for the sd of a sum of muscles: :mod:`xraymuscle.muscle_groups`).
    """

    volume: np.ndarray
    volume_sd: np.ndarray
    mass: np.ndarray | None
    mass_sd: np.ndarray | None
    maps: np.ndarray
    map_sd: np.ndarray
    features: np.ndarray
    volume_sd_draws: np.ndarray
    volume_correlation: np.ndarray | None = None
    mass_correlation: np.ndarray | None = None
    spacing_volume_sd: np.ndarray | None = None
    spacing_mass_sd: np.ndarray | None = None
    spacing_sd_percent: np.ndarray | None = None


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
    progress: str | None = None,
) -> McResult:
    """Run ``samples`` dropout draws for every image ``(N, 1, S, S)`` (already normalised);
    ``progress`` names a progress bar over the images (none by default).

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
        "v": [], "vs": [], "vd": [], "m": [], "ms": [], "maps": [], "sd": [], "f": [], "vc": [], "mc": []
    }  # fmt: skip
    network = network.to(device)
    with tqdm(total=len(images), desc=progress, unit="image", disable=progress is None) as bar:
        _draw(
            network, images, samples, pixel_area_mm2, map_scale_mm, batch, device, keep_maps, seed, twins,
            out, bar.update,
        )  # fmt: skip
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
        volume_correlation=np.concatenate(out["vc"]),
        mass_correlation=np.concatenate(out["mc"]) if out["mc"] else None,
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
    done: Callable[[int], object],
) -> None:
    k = network.out_channels
    pairs = list(twins or [])
    mirrored = samples // 2 if pairs else 0
    order = mirror_order(k, pairs, network.mass_head)
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        x = chunk.to(device)
        draws = _Draws(k, keep_maps)
        seeds = [image_seed(img, seed) for img in chunk]
        features, passes = network.mc_passes(x, samples - mirrored, seeds, per_pass=DRAWS_PER_PASS)
        for maps, log_variance in passes:
            draws.add(maps, log_variance, map_scale_mm, pixel_area_mm2)
        if mirrored:
            seeds = [image_seed(img, seed) for img in torch.flip(chunk, dims=[-1])]
            flipped = torch.flip(x, dims=[-1])
            back_features, passes = network.mc_passes(flipped, mirrored, seeds, per_pass=DRAWS_PER_PASS)
            for maps, log_variance in passes:
                draws.add(
                    torch.flip(maps[:, :, order], dims=[-1]),
                    log_variance[:, :, pairs],
                    map_scale_mm,
                    pixel_area_mm2,
                )
            features = (features + back_features) / 2  # as image_features(mirrored=True)
        sums = torch.cat(draws.sums)  # (T, B, C): ml (or g)
        # the predicted relative variance (zero without an aleatoric head), averaged over draws
        relative = torch.exp(torch.cat(draws.log_variance).float()).mean(0) * float(network.aleatoric)
        parts = [("v", "vs", sums[:, :, :k])] + ([("m", "ms", sums[:, :, k:])] if network.mass_head else [])
        for key, spread, part in parts:
            mean, var = part.mean(0), part.var(0)
            out[key].append(mean.cpu().numpy())
            out[spread].append((var + relative * mean.square()).sqrt().cpu().numpy())
            out[f"{key}c"].append(draw_correlations(part.double().cpu().numpy()))
            if key == "v":
                out["vd"].append(var.sqrt().cpu().numpy())
        if keep_maps:
            map_mean, map_sd = draws.map_moments()
            out["maps"].append(map_mean)
            out["sd"].append(map_sd)
        out["f"].append(features.float().cpu().numpy())
        done(len(chunk))


def draw_correlations(draws: np.ndarray) -> np.ndarray:
    """Per image, the correlation over the draws ``(T, B, K)`` of its K volumes, ``(B, K, K)``; a
    volume that does not vary is taken as uncorrelated with the others."""
    centred = draws - draws.mean(axis=0)
    cov = np.einsum("tbi,tbj->bij", centred, centred)
    sd = np.sqrt(np.einsum("bii->bi", cov))
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / (sd[:, :, None] * sd[:, None, :])
    corr = np.where(np.isfinite(corr), corr, 0.0)
    corr[:, np.arange(corr.shape[1]), np.arange(corr.shape[1])] = 1.0
    return corr


class _Draws:
    """What a batch's draws leave, pass by pass: each draw's integrals and log-variances, and
    (``keep_maps``) the running sum and sum of squares of the volume maps, in float64."""

    def __init__(self, k: int, keep_maps: bool) -> None:
        self.k, self.keep_maps = k, keep_maps
        self.sums: list[torch.Tensor] = []
        self.log_variance: list[torch.Tensor] = []
        self.count = 0
        self.total: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, maps: torch.Tensor, log_variance: torch.Tensor, scale_mm: float, area_mm2: float) -> None:
        maps = maps.float() * scale_mm  # (t, B, C, S, S) in mm
        self.sums.append(maps.sum(dim=(-1, -2)) * area_mm2 / 1000.0)
        self.log_variance.append(log_variance)
        if self.keep_maps:
            volume = maps[:, :, : self.k].double()
            total, squares = volume.sum(0), volume.square().sum(0)
            self.total = total if self.total is None else self.total + total
            self.squares = squares if self.squares is None else self.squares + squares
        self.count += maps.shape[0]

    def map_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """The maps' mean over the draws and their spread (sample sd, ``n − 1``), float32."""
        assert self.total is not None and self.squares is not None
        mean = self.total / self.count
        var = (self.squares - self.count * mean.square()).clamp(min=0) / max(1, self.count - 1)
        return mean.float().cpu().numpy(), var.sqrt().float().cpu().numpy()


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
