"""The Bayesian U-Net: radiograph → one non-negative map per muscle, with Monte Carlo dropout.

Dropout sits in the bottleneck and every decoder level but the full-resolution one, so sampling it
gives a distribution of maps. The encoder has none: :meth:`BayesianUNet.mc_draws` runs it once
and the decoder ``T`` times in one batched pass.

Dropout's spread is the model's own (epistemic) uncertainty. What the image itself leaves open (a
muscle's edge hidden behind another, fat and muscle of similar density) is a second, per-image
uncertainty: with ``aleatoric=True`` a small head on the pooled bottleneck predicts, per muscle, the
log-variance of the relative volume error. A volume's sd then combines both (see
``xraymuscle.inference``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Literal, overload

import torch
from torch import nn
from torch.nn import functional as F


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class BayesianUNet(nn.Module):
    """U-Net with dropout in the bottleneck and decoder and softplus outputs.

    Parameters
    ----------
    out_channels
        Number of muscles K.
    base_channels
        Width of the first level; doubles at every level down.
    depth
        Number of levels (``depth − 1`` poolings); the input size must divide by ``2**(depth−1)``.
    dropout
        Dropout probability (channel-wise) in the bottleneck and the decoder's lower levels.
    mass_head
        Also predict K mass maps from the same decoder.
    global_gain
        Multiply each output map by a gain computed from the pooled bottleneck features.
    gain_bound
        Softly bound the gain's logarithm to ``±gain_bound`` (``b·tanh(z/b)``), so that an early
        step at a high learning rate cannot blow the maps up; ``None``: unbounded.
    coordinates
        Give the encoder each pixel's position (two coordinate channels) beside the image.
    aleatoric
        Also predict, per muscle, the log-variance of the relative volume error.
    materials
        Number of material maps a training-only head predicts beside the muscles (the DRR's
        soft-tissue and bone density line integrals): teaching the network to take the whole
        radiograph apart, bone included, rather than the muscles alone. 0: no such head.

    Forward returns ``(B, K, H, W)`` maps, or ``(B, 2K, H, W)`` (volume maps then mass maps) with a
    mass head; all non-negative. With ``with_variance=True`` it returns ``(maps, log_variance)``,
    the second ``(B, K)`` (zeros without an aleatoric head: no variance of its own). With
    ``with_materials=True`` (training) it returns ``(maps, log_variance, materials)``, the last
    ``(B, materials, H, W)``, non-negative.
    """

    def __init__(
        self,
        out_channels: int,
        *,
        base_channels: int = 16,
        depth: int = 4,
        dropout: float = 0.2,
        mass_head: bool = True,
        global_gain: bool = True,
        coordinates: bool = True,
        aleatoric: bool = False,
        gain_bound: float | None = None,
        materials: int = 0,
    ) -> None:
        super().__init__()
        if out_channels < 1 or depth < 2 or base_channels < 1 or not 0 <= dropout < 1 or materials < 0:
            raise ValueError(
                f"invalid network settings: out_channels={out_channels}, depth={depth}, "
                f"base_channels={base_channels}, dropout={dropout}, materials={materials}"
            )
        widths = [base_channels * 2**level for level in range(depth)]
        self.depth = depth
        self.widths = widths
        self.out_channels = out_channels
        self.mass_head = mass_head
        self.gain_bound = gain_bound
        self.coordinates = coordinates
        first = 3 if coordinates else 1
        self.encoder = nn.ModuleList(
            [_block(first if i == 0 else widths[i - 1], w) for i, w in enumerate(widths[:-1])]
        )
        self.bottleneck = _block(widths[-2], widths[-1])
        self.dropout = nn.Dropout2d(dropout)
        self.up = nn.ModuleList(
            [nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2) for i in reversed(range(depth - 1))]
        )
        self.decoder = nn.ModuleList([_block(2 * widths[i], widths[i]) for i in reversed(range(depth - 1))])
        self.head = nn.Conv2d(widths[0], out_channels * (2 if mass_head else 1), 1)
        self.materials_head = nn.Conv2d(widths[0], materials, 1) if materials else None
        # A global path: pooled bottleneck features set a per-channel gain on the maps, so the
        # network can express "this muscle is larger" without moving every boundary pixel.
        self.gain = nn.Linear(widths[-1], out_channels * (2 if mass_head else 1)) if global_gain else None
        if self.gain is not None:
            nn.init.zeros_(self.gain.weight)
            nn.init.zeros_(self.gain.bias)
        # A small MLP, not a linear map: how wrong a volume is tends to grow with how far the image
        # lies from the typical one in either direction, which no linear function of features gives.
        self.log_variance = (
            nn.Sequential(nn.Linear(widths[-1], 32), nn.ReLU(inplace=True), nn.Linear(32, out_channels))
            if aleatoric
            else None
        )
        if self.log_variance is not None:
            last = self.log_variance[-1]
            assert isinstance(last, nn.Linear)
            nn.init.zeros_(last.weight)
            nn.init.constant_(last.bias, 2 * math.log(0.15))  # start at 15 % sd
        assert self.head.bias is not None
        nn.init.constant_(self.head.bias, -3.0)  # start near empty maps (softplus(-3) ≈ 0.05)
        if self.materials_head is not None:
            assert self.materials_head.bias is not None
            nn.init.constant_(self.materials_head.bias, -1.0)  # softplus(-1) ≈ 0.3: thin tissue

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Skip features of every level and the bottleneck input (no dropout here)."""
        if self.coordinates:
            # Where a pixel lies in the field: muscles sit at typical places in a hip radiograph.
            b, _, h, w = x.shape
            ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)[:, None].expand(h, w)
            xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)[None, :].expand(h, w)
            x = torch.cat([x, torch.stack([ys, xs]).expand(b, 2, h, w)], dim=1)
        feats = []
        for block in self.encoder:
            x = block(x)
            feats.append(x)
            x = F.max_pool2d(x, 2)
        feats.append(x)
        return feats

    def dropout_channels(self) -> list[int]:
        """Channels at each place dropout acts, in order: the bottleneck, then the decoder levels."""
        return [self.widths[-1], *(self.widths[-2 - level] for level in range(len(self.decoder) - 1))]

    def _drop(self, x: torch.Tensor, masks: list[torch.Tensor] | None, site: int) -> torch.Tensor:
        if masks is None:
            return self.dropout(x)
        return x * masks[site].to(device=x.device, dtype=x.dtype)

    @property
    def aleatoric(self) -> bool:
        return self.log_variance is not None

    def decode(
        self,
        feats: list[torch.Tensor],
        masks: list[torch.Tensor] | None = None,
        *,
        with_variance: bool = False,
        with_materials: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Maps from encoder features (dropout active in training mode or when sampling).

        ``masks`` (one ``(B, C, 1, 1)`` tensor per dropout site, see :meth:`dropout_channels`)
        replace the random channel dropout with given draws. ``with_variance`` also returns the
        ``(B, K)`` log-variance of each relative volume error (zeros without an aleatoric head);
        ``with_materials`` returns the variance and then the material maps.
        """
        if with_materials and self.materials_head is None:
            raise ValueError("this network has no materials head")
        x = self._drop(self.bottleneck(feats[-1]), masks, 0)
        pooled = x.mean(dim=(2, 3))
        gain = None
        if self.gain is not None:
            log_gain = self.gain(pooled)
            if self.gain_bound is not None:
                log_gain = self.gain_bound * torch.tanh(log_gain / self.gain_bound)
            gain = torch.exp(log_gain)[:, :, None, None]
        last = len(self.decoder) - 1
        levels = zip(self.up, self.decoder, reversed(feats[:-1]), strict=True)
        for level, (up, block, skip) in enumerate(levels):
            x = block(torch.cat([up(x), skip], dim=1))
            # Not after the full-resolution level: its few channels feed the head directly, and
            # dropping them would blur every map rather than express uncertainty about it.
            if level < last:
                x = self._drop(x, masks, level + 1)
        maps = F.softplus(self.head(x))
        maps = maps if gain is None else maps * gain
        if not (with_variance or with_materials):
            return maps
        if self.log_variance is None:
            log_variance = pooled.new_zeros(pooled.shape[0], self.out_channels)
        else:
            log_variance = self.log_variance(pooled).clamp(-12.0, 4.0)
        if self.materials_head is None or not with_materials:
            return maps, log_variance
        return maps, log_variance, F.softplus(self.materials_head(x))

    @overload
    def forward(self, x: torch.Tensor, *, with_variance: Literal[False] = ...) -> torch.Tensor: ...
    @overload
    def forward(
        self, x: torch.Tensor, *, with_variance: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    @overload
    def forward(
        self, x: torch.Tensor, *, with_variance: bool = ..., with_materials: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...
    def forward(
        self, x: torch.Tensor, *, with_variance: bool = False, with_materials: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"input must be (B, 1, H, W), not {tuple(x.shape)}")
        step = 2 ** (self.depth - 1)
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"input height and width must divide by {step}, not {tuple(x.shape[-2:])}")
        return self.decode(self.encode(x), with_variance=with_variance, with_materials=with_materials)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, F)`` (deterministic), for the out-of-distribution score.

        The channel means of every encoder level's output, then of the bottleneck's (its last
        ``widths[-1]`` columns): fine levels see texture and noise, the bottleneck the anatomy.
        """
        was_training = self.training
        self.eval()  # normalisation from running statistics, never updated here
        with torch.no_grad():
            pooled = self._pooled(self.encode(x))
        self.train(was_training)
        return pooled

    def feature_count(self, kind: str = "levels") -> int:
        """How many features :meth:`features` gives (``"levels"``), or how many of them, the last,
        are the bottleneck's (``"bottleneck"``)."""
        return sum(self.widths) if kind == "levels" else self.widths[-1]

    def _pooled(self, feats: list[torch.Tensor]) -> torch.Tensor:
        levels = [f.mean(dim=(2, 3)) for f in feats[:-1]]
        return torch.cat([*levels, self.bottleneck(feats[-1]).mean(dim=(2, 3))], dim=1)

    def dropout_masks(self, seeds: list[int], samples: int) -> list[torch.Tensor]:
        """Channel-dropout masks for ``samples`` draws of each image, each image's from its own seed.

        Returned in the layout of :meth:`mc_forward`'s repeated batch (draw-major: ``t * B + i``),
        so an image's draws depend on its seed alone, not on the batch it shares.
        """
        p = float(self.dropout.p)
        channels = self.dropout_channels()
        per_image = []
        for seed in seeds:
            g = torch.Generator().manual_seed(int(seed))
            per_image.append([torch.rand(samples, c, generator=g) >= p for c in channels])
        masks = []
        for site, c in enumerate(channels):
            keep = torch.stack([m[site] for m in per_image], dim=1)  # (T, B, C)
            masks.append((keep.float() / (1.0 - p)).reshape(samples * len(seeds), c, 1, 1))
        return masks

    @torch.no_grad()
    def mc_draws(
        self, x: torch.Tensor, samples: int, seeds: list[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``samples`` dropout draws of every image; the encoder runs once.

        Returns the ``(T, B, C, H, W)`` maps, the ``(T, B, K)`` log-variances of the draws, and
        the pooled features ``(B, F)`` of :meth:`features`, from the same encoder pass.
        With ``seeds`` (one per image), each image's draws come from its own seed
        (:meth:`dropout_masks`); without, from the global random state.
        """
        pooled, passes = self.mc_passes(x, samples, seeds)
        parts = list(passes)
        return torch.cat([m for m, _ in parts]), torch.cat([v for _, v in parts]), pooled

    def mc_passes(
        self, x: torch.Tensor, samples: int, seeds: list[int] | None = None, *, per_pass: int | None = None
    ) -> tuple[torch.Tensor, Iterator[tuple[torch.Tensor, torch.Tensor]]]:
        """The draws of :meth:`mc_draws`, decoded in the fewest passes of at most ``per_pass``
        image-draws (draws × images), the draws spread evenly over them.

        Returns the pooled features and an iterator over consecutive groups of draws, each the
        ``(t, B, C, H, W)`` maps and ``(t, B, K)`` log-variances. The memory a pass takes grows
        with its draws times the batch; bounding it lets any number of draws run. With ``seeds``
        the numbers are those of :meth:`mc_draws` whatever ``per_pass`` is.
        """
        was_training = self.training
        self.eval()  # normalisation from running statistics, never updated here
        with torch.no_grad():
            feats = self.encode(x)
            pooled = self._pooled(feats)  # as features(): no dropout yet
        self.train(was_training)
        batch = x.shape[0]
        masks = None if seeds is None else self.dropout_masks(seeds, samples)
        passes_needed = 1 if per_pass is None else -(-samples * batch // max(1, per_pass))
        step = -(-samples // passes_needed)  # the draws spread evenly over the fewest passes

        def passes() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            for first in range(0, samples, step):
                t = min(step, samples - first)
                part = None if masks is None else [m[first * batch : (first + t) * batch] for m in masks]
                yield self._decode_draws(feats, t, part)

        return pooled, passes()

    @torch.no_grad()
    def _decode_draws(
        self, feats: list[torch.Tensor], samples: int, masks: list[torch.Tensor] | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        was_training = self.training
        self.eval()
        self.dropout.train()  # only dropout is stochastic; normalisation stays in inference mode
        try:
            repeated = [f.repeat(samples, *([1] * (f.ndim - 1))) for f in feats]
            out = self.decode(repeated, masks, with_variance=True)
        finally:
            self.train(was_training)
        batch = feats[0].shape[0]
        return out[0].reshape(samples, batch, *out[0].shape[1:]), out[1].reshape(samples, batch, -1)

    @overload
    def mc_forward(
        self,
        x: torch.Tensor,
        samples: int,
        seeds: list[int] | None = ...,
        *,
        with_variance: Literal[False] = ...,
    ) -> torch.Tensor: ...
    @overload
    def mc_forward(
        self, x: torch.Tensor, samples: int, seeds: list[int] | None = ..., *, with_variance: Literal[True]
    ) -> tuple[torch.Tensor, torch.Tensor]: ...
    def mc_forward(
        self, x: torch.Tensor, samples: int, seeds: list[int] | None = None, *, with_variance: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The maps of :meth:`mc_draws` (and, ``with_variance``, their log-variances)."""
        maps, log_variance, _ = self.mc_draws(x, samples, seeds)
        return (maps, log_variance) if with_variance else maps
