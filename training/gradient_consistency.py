"""The gradient-consistency measure between an image and its translation.

GC(A, B) = ½ [NCC(∂x A, ∂x B) + NCC(∂y A, ∂y B)], with NCC the normalised cross-correlation over
each image. It is 1 when B's intensity gradients are a positive multiple of A's (plus a
constant), so ``1 − GC(x, G(x))`` asks a translation to keep the anatomy's edges where they
were while it changes the look.
"""

from __future__ import annotations

import torch


def _ncc(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-image normalised cross-correlation of ``(B, C, H, W)`` tensors: ``(B,)``."""
    a = a.flatten(1).float()
    b = b.flatten(1).float()
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    num = (a * b).mean(dim=1)
    den = a.pow(2).mean(dim=1).sqrt() * b.pow(2).mean(dim=1).sqrt()
    return num / den.clamp_min(eps)  # a flat image has no edges to agree with: 0


def gradient_consistency(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """GC of each pair of images ``(B, C, H, W)``: ``(B,)`` values in [−1, 1]."""
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    ax, bx = a[..., :, 1:] - a[..., :, :-1], b[..., :, 1:] - b[..., :, :-1]
    ay, by = a[..., 1:, :] - a[..., :-1, :], b[..., 1:, :] - b[..., :-1, :]
    return 0.5 * (_ncc(ax, bx) + _ncc(ay, by))


def gradient_consistency_loss(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 − GC(a, b)``, averaged over the batch (0 when the edges agree exactly)."""
    return (1.0 - gradient_consistency(a, b)).mean()
