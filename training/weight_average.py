"""Weight averaging over the last epochs of a run (stochastic weight averaging).

The network's weights at the end of each of a run's last ``average_epochs`` epochs are averaged
(:class:`torch.optim.swa_utils.AveragedModel`, parameters only). Batch-normalisation statistics
of a mean of weights are not the mean of the statistics, so they are measured again on the
training images (:func:`torch.optim.swa_utils.update_bn`) as the epochs saw them: augmented, in
training mode, dropout on. (Measured on unaugmented images, they shifted the volumes of a 600 x 2
phantom run's average by -5 ml on average (bias -9.2 against -4.3 ml), and its held-out MAPE
from 8.10 to 8.37 %.) The trainer validates the average like an epoch and keeps it only
when it beats the best epoch. The average travels in the checkpoint (safetensors, with the epoch it
started from in ``state.json``), so a resumed run goes on averaging.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, update_bn

# the name of the average's tensors in the trainer's checkpoint
CHECKPOINT_NAME = "average"


class WeightAverage:
    """The running mean of a network's parameters from epoch ``first`` (1-based) on."""

    def __init__(self, network: torch.nn.Module, first: int) -> None:
        self.first = first
        self.averaged = AveragedModel(network, use_buffers=False)

    @property
    def count(self) -> int:
        """How many epochs' weights are in the mean."""
        return int(self.averaged.n_averaged.item())

    @property
    def last(self) -> int:
        """The last epoch in the mean (every epoch from ``first`` on is in it)."""
        return self.first + self.count - 1

    def update(self, network: torch.nn.Module) -> None:
        self.averaged.update_parameters(network)

    def module(self) -> torch.nn.Module:
        """The averaged network itself (what the checkpoint saves and restores)."""
        return self.averaged

    def info(self) -> dict[str, Any]:
        return {"first_epoch": self.first, "count": self.count}

    def network_with_batch_norm(self, batches: Iterable[torch.Tensor], device: str) -> torch.nn.Module:
        """The averaged network, its batch-normalisation statistics measured on ``batches``."""
        network: torch.nn.Module = self.averaged.module
        update_bn(batches, network, device=torch.device(device))
        return network


def window_start(epochs: int, average_epochs: int) -> int:
    """The first epoch (1-based) whose weights a run of ``epochs`` averages."""
    return max(1, epochs - average_epochs + 1)
