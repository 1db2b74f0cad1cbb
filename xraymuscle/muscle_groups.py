"""Muscle groups: sums of muscles reported beside them, with an sd of their own.

The catalogue's ``groups`` (``configs/muscles/hip.yaml``: the gluteal and the thigh muscles of each
side) name muscles that overlap in an AP view, whose sum the network reads better than each part
(docs/accuracy.md, *Muscle groups*). A group's sd is not the sum of its muscles' sds nor their
root sum of squares: where the network cannot tell how much of a shared shadow is one muscle and
how much the other, their errors partly cancel in the sum. It is

    sd = sqrt(Σᵢ Σⱼ ρᵢⱼ sdᵢ sdⱼ)

with each muscle's calibrated sd and ``ρ`` the correlation of their volumes over the image's
dropout draws, times the group's own scale where the model's calibration set one on its
validation images (``calibration.group_sd_scale``; 1 for a model calibrated before).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def model_groups(muscles: Sequence[str]) -> dict[str, list[int]]:
    """The default catalogue's groups whose every muscle is in ``muscles``, as their channels."""
    from xraymuscle.catalog import MuscleCatalog

    channels = {m: j for j, m in enumerate(muscles)}
    return {
        group: [channels[m] for m in members]
        for group, members in MuscleCatalog.load().groups.items()
        if all(m in channels for m in members)
    }


def group_volumes(
    volume: np.ndarray, sd: np.ndarray, correlation: np.ndarray | None, members: Sequence[int]
) -> tuple[float, float]:
    """One image's group volume (the sum of its muscles') and its sd, from the muscles' sds and
    how their volumes vary together over the draws: ``sqrt(Σᵢ Σⱼ ρᵢⱼ sdᵢ sdⱼ)``; taken as
    independent (``ρ`` the identity) without ``correlation``."""
    idx = np.asarray(members)
    s = sd[idx]
    rho = np.eye(len(idx)) if correlation is None else correlation[np.ix_(idx, idx)]
    return float(volume[idx].sum()), float(np.sqrt(max(float(s @ rho @ s), 0.0)))


def group_table(
    volume: np.ndarray, sd: np.ndarray, correlation: np.ndarray | None, groups: dict[str, list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`group_volumes` for every image ``(N, K)`` and group: sums and sds, ``(N, G)``."""
    n = len(volume)
    sums, sds = np.zeros((n, len(groups))), np.zeros((n, len(groups)))
    for i in range(n):
        rho = None if correlation is None else correlation[i]
        for g, members in enumerate(groups.values()):
            sums[i, g], sds[i, g] = group_volumes(volume[i], sd[i], rho, members)
    return sums, sds


def group_truth(
    truth: np.ndarray, valid: np.ndarray, groups: dict[str, list[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """The groups' true volumes ``(N, G)``, and where every muscle of a group has a truth."""
    sums = np.stack([truth[:, members].sum(axis=1) for members in groups.values()], axis=1)
    known = np.stack([valid[:, members].all(axis=1) for members in groups.values()], axis=1)
    return sums, known
