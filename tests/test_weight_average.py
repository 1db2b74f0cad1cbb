"""Weight averaging: the mean of the epochs' weights, batch-normalisation statistics measured
again, carried through a resumed run, and kept only when it beats the best epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_RECIPE as TINY
from training.config import DecompositionConfig
from training.decomposition import train_decomposition
from training.weight_average import WeightAverage, window_start


def _network() -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3, padding=1), torch.nn.BatchNorm2d(3), torch.nn.ReLU(), torch.nn.Dropout(0.2)
    )


def test_average_is_the_mean_of_the_epochs_with_batch_norm_measured_again() -> None:
    torch.manual_seed(0)
    network = _network()
    average = WeightAverage(network, first=4)
    states = []
    for _ in range(3):  # three "epochs": new weights each time
        with torch.no_grad():
            for p in network.parameters():
                p.add_(torch.randn_like(p))
        states.append({k: v.clone() for k, v in network.named_parameters()})
        average.update(network)
    assert average.count == 3 and average.info() == {"first_epoch": 4, "count": 3}
    batches = [torch.randn(5, 1, 8, 8) for _ in range(4)]
    averaged = average.network_with_batch_norm(batches, "cpu")
    for name, value in averaged.named_parameters():
        expected = sum(s[name] for s in states) / 3
        torch.testing.assert_close(value, expected)
    # the first normalisation's mean: the mean of the averaged convolution's output over the
    # batches (equal sizes, so the mean of the batch means is the mean of all)
    conv = averaged[0]
    with torch.no_grad():
        outputs = torch.cat([conv(b) for b in batches])
    torch.testing.assert_close(averaged[1].running_mean, outputs.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(averaged[1].running_mean, torch.zeros(3))


def test_window_of_the_last_epochs() -> None:
    assert window_start(40, 8) == 33
    assert window_start(3, 5) == 1


def test_training_averages_resumes_the_average_and_keeps_the_better(tiny_drr: Path, tmp_path: Path) -> None:
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 3, "average_epochs": 3})
    out = tmp_path / "model"
    lines: list[str] = []
    # stopped after its first epoch: the average holds one epoch, and the checkpoint keeps it
    train_decomposition(tiny_drr, out, recipe, max_minutes=1e-6, progress=False, echo=lines.append)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["average"] == {"first_epoch": 1, "count": 1}
    lines.clear()
    train_decomposition(tiny_drr, out, recipe, resume=True, progress=False, echo=lines.append)
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["average"] == {"first_epoch": 1, "count": 3}  # went on averaging after the resume
    meta = json.loads((out / "model.json").read_text())
    summary = meta["training"]["weight_average"]
    assert (summary["first_epoch"], summary["last_epoch"]) == (1, 3)
    assert any(line.startswith("weight average of epochs 1-3") for line in lines)
    # the model is the average where it validated better, else the best epoch
    weights = load_file(str(out / "model.safetensors"))
    saved = load_file(str(out / "checkpoint" / "last.safetensors"))
    average = {k[len("average.module.") :]: v for k, v in saved.items() if k.startswith("average.module.")}
    best = meta["training"]["best_validation_mape"]
    assert summary["kept"] == (summary["validation_mape"] < best)
    same_as_average = all(torch.equal(weights[k], average[k]) for k in weights)
    assert same_as_average == summary["kept"]
    # resumed to a longer total, the window moves on: a new average of the new last epochs
    longer = DecompositionConfig.from_dict({**TINY, "epochs": 3, "average_epochs": 2})
    train_decomposition(tiny_drr, out, longer, epochs=5, resume=True, progress=False, echo=lambda s: None)
    meta = json.loads((out / "model.json").read_text())
    assert meta["training"]["weight_average"]["first_epoch"] == 4
    assert json.loads((out / "checkpoint" / "state.json").read_text())["average"]["count"] == 2


def test_recipe_refuses_a_negative_average() -> None:
    with pytest.raises(ValueError, match="average_epochs"):
        DecompositionConfig(average_epochs=-1)
