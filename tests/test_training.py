"""Decomposition training: data and augmentation keep volumes, the network's shapes and MC draws,
training writes a model folder that loads without pickle and resumes, and recipes are checked."""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import TINY_RECIPE as TINY
from training.config import AugmentConfig, DecompositionConfig
from training.data import MATERIAL_SCALE_G_CM2, DrrTrainingSet, GridSpec, fit_to_grid, normalise, twin_order
from training.decomposition import split_by_case, train_decomposition
from training.unet import BayesianUNet
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.errors import InputError
from xraymuscle.model import load_model, metadata_text
from xraymuscle.model_grid import resample


@pytest.fixture()
def drr(tiny_drr: Path) -> Path:
    return tiny_drr


def test_twins_and_flip_keep_volumes(drr: Path) -> None:
    data = DrrDataset.load(drr)
    twins = twin_order(data.muscles)
    assert data.muscles[twins[0]] == "gluteus_maximus_right" and twins[twins[0]] == 0
    grid = GridSpec(128, float(data.info["pixel_spacing_mm"]))
    plain = DrrTrainingSet(data, [0], grid, map_scale_mm=50.0, mass=True)
    flipping = DrrTrainingSet(
        data, [0], grid, map_scale_mm=50.0, mass=True,
        augment=AugmentConfig(flip=1.0, rotate_deg=0, shift=0, gamma=(1, 1), brightness=0, contrast=0,
                              noise_sd=0, blur=0, clahe=0),
    )  # fmt: skip
    a, b = plain[0], flipping[0]
    np.testing.assert_allclose(b["volume"].numpy(), a["volume"].numpy()[twins], rtol=1e-5)
    np.testing.assert_allclose(b["target"][0].numpy(), a["target"][1].numpy()[:, ::-1], atol=1e-6)


def test_geometric_augmentation_keeps_volumes(drr: Path) -> None:
    data = DrrDataset.load(drr)
    grid = GridSpec(128, float(data.info["pixel_spacing_mm"]))
    plain = DrrTrainingSet(data, [1], grid, map_scale_mm=50.0, mass=False)[0]
    moved = DrrTrainingSet(
        data, [1], grid, map_scale_mm=50.0, mass=False,
        augment=AugmentConfig(flip=0.0, rotate_deg=5.0, shift=0.02), seed=4,
    )  # fmt: skip
    maps = plain["target"][: len(plain["volume"])]
    border = maps.clone()
    border[:, 9:-9, 9:-9] = 0  # 5° about the centre and a 2 % shift move an edge pixel by up to ~9
    inside = (plain["volume"] > 20) & (border.sum(dim=(1, 2)) < 1e-3 * maps.sum(dim=(1, 2)))
    assert inside.sum() >= 2  # muscles well inside the field
    for _ in range(3):
        item = moved[0]
        np.testing.assert_allclose(item["volume"][inside].numpy(), plain["volume"][inside].numpy(), rtol=0.05)
    assert not torch.equal(item["image"], plain["image"])


def test_resampling_keeps_volume() -> None:
    rng = np.random.default_rng(0)
    maps = np.zeros((1, 100, 100), np.float32)
    maps[0, 30:70, 20:80] = rng.uniform(10, 20, (40, 60))
    area = 1.0
    for scale in (0.5, 0.8, 1.25):
        out = fit_to_grid(maps, scale, 128)
        assert out.sum() * area / scale**2 == pytest.approx(maps.sum() * area, rel=0.02)
    assert normalise(np.arange(100.0).reshape(10, 10)).max() == 1.0
    # pixels that are not square: an axis that shrinks is area-averaged (one bright column in four
    # becomes an even quarter), also when the other axis keeps its size or grows
    stripes = np.zeros((1, 40, 40), np.float32)
    stripes[0, :, ::4] = 1.0
    for scale in ((1.0, 0.25), (2.0, 0.25), (0.5, 0.25)):
        out = resample(stripes, scale)
        assert out.shape == (1, round(40 * scale[0]), 10)
        np.testing.assert_allclose(out, 0.25, atol=1e-6)


@pytest.mark.parametrize(
    ("settings", "size", "channels"),
    [
        ({"depth": 3, "base_channels": 4, "mass_head": False}, 32, 5),
        ({"depth": 4, "base_channels": 8}, 64, 10),
    ],
)
def test_network_shapes_and_mc(settings: dict[str, object], size: int, channels: int) -> None:
    torch.manual_seed(0)
    net = BayesianUNet(5, dropout=0.3, **settings)  # type: ignore[arg-type]
    out = net(torch.rand(2, 1, size, size))
    assert out.shape == (2, channels, size, size) and bool((out >= 0).all())
    calls = []
    net.encoder[0].register_forward_hook(lambda *_: calls.append(1))
    draws = net.mc_forward(torch.rand(2, 1, size, size), samples=6)
    assert draws.shape == (6, 2, channels, size, size)
    assert len(calls) == 1  # the encoder ran once for all draws
    assert draws.std(dim=0).mean() > 0  # dropout makes the draws differ
    with pytest.raises(ValueError, match="must divide"):
        net(torch.rand(1, 1, size + 2, size + 2))


def test_recipe_is_checked(tmp_path: Path) -> None:
    recipe = DecompositionConfig.load(
        Path(__file__).resolve().parents[1] / "configs/train/decomposition.yaml"
    )
    assert recipe.mc_samples >= 2 and recipe.augment.flip > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 3\nlearning_rat: 0.1\n")
    with pytest.raises(ValueError, match="unknown setting"):
        DecompositionConfig.load(bad)
    with pytest.raises(ValueError, match="invalid setting"):
        DecompositionConfig(dropout=1.5)
    with pytest.raises(ValueError, match="cache_mb"):
        DecompositionConfig(cache_mb=-1)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("epochs: [1, 2]\n", "epochs must be a whole number, not [1, 2]"),
        ("epochs: 2.5\n", "epochs must be a whole number, not 2.5"),
        ("mass_head: 1\n", "mass_head must be true or false, not 1"),
        ("dropout: fast\n", "dropout must be a number, not 'fast'"),
        ("seed: -3\n", "invalid setting(s) ['seed']"),
        ("augment: 3\n", "augment must be a mapping of settings, not 3"),
        ("augment:\n  flip: 2\n", "invalid setting(s) ['flip']"),
        ("augment:\n  gamma: [1.5, 0.7]\n", "invalid setting(s) ['gamma']"),
        ("augment:\n  gamma: 0.7\n", "gamma must be two numbers [low, high], not 0.7"),
        ("epochs: [1,\n", "not valid YAML at line 2"),
        ("- 1\n- 2\n", "must be a YAML mapping"),
    ],
)
def test_a_recipe_of_the_wrong_kinds_is_refused_by_name(tmp_path: Path, text: str, problem: str) -> None:
    """Each setting has the type its field declares; a wrong one is named, not met later as an
    error deep in training (or, for YAML that does not parse, a traceback)."""
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as caught:
        DecompositionConfig.load(path)
    assert problem in str(caught.value)


def test_a_recipe_takes_numbers_as_yaml_writes_them(tmp_path: Path) -> None:
    """YAML 1.1 reads ``1e-3`` (no dot) as text: it is still the number meant; ints are floats."""
    path = tmp_path / "recipe.yaml"
    path.write_text("learning_rate: 1e-3\nmap_scale_mm: 40\naugment:\n  gamma: [1, 2]\n")
    recipe = DecompositionConfig.load(path)
    assert recipe.learning_rate == 0.001 and isinstance(recipe.map_scale_mm, float)
    assert recipe.augment.gamma == (1.0, 2.0)
    assert DecompositionConfig.from_dict(recipe.to_dict()) == recipe  # as model.json stores it


def test_train_writes_a_model_that_loads_and_resumes(drr: Path, tmp_path: Path) -> None:
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 2})
    out = tmp_path / "model"
    data = DrrDataset.load(drr)
    train, val = split_by_case(data, 0.25, 0)
    assert {data.rows[i]["case_id"] for i in train}.isdisjoint({data.rows[i]["case_id"] for i in val})
    summary = train_decomposition(drr, out, recipe, epochs=1, progress=False, echo=lambda s: None)
    assert summary.epochs_run == 1
    model = load_model(out)
    assert model.muscles == data.muscles and model.input_size == 64
    assert "phantoms only" in model.notice
    assert set(model.meta["calibration"]) >= {"sd_scale", "cv_threshold", "ood"}
    assert model.meta["mc_mirror"] and model.twins == twin_order(data.muscles)
    # Weights and checkpoint are safetensors + JSON: nothing to unpickle.
    assert load_file(str(out / "model.safetensors"))
    assert json.loads((out / "checkpoint" / "state.json").read_text())["epoch"] == 1
    with pytest.raises(InputError, match="--resume"):
        train_decomposition(drr, out, recipe, epochs=2, progress=False, echo=lambda s: None)
    # the whole run is in the folder (the best epoch's weights too): it resumes where it is moved
    assert (out / "checkpoint" / "best.safetensors").is_file() and not list(tmp_path.glob(".*"))
    moved = tmp_path / "moved" / "model"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    out = moved
    # how the finished network draws its samples may change on resuming (and is recorded)
    unmirrored = DecompositionConfig.from_dict({**TINY, "epochs": 2, "mc_mirror": False})
    resumed = train_decomposition(
        drr, out, unmirrored, epochs=2, resume=True, progress=False, echo=lambda s: None
    )
    assert resumed.epochs_run == 1 and len(resumed.history) == 2
    assert load_model(out).twins is None
    other = DecompositionConfig.from_dict({**TINY, "epochs": 2, "dropout": 0.3})
    with pytest.raises(InputError, match="another recipe"):
        train_decomposition(drr, out, other, epochs=3, resume=True, progress=False, echo=lambda s: None)


def test_training_leaves_what_else_its_folder_holds(drr: Path, tmp_path: Path) -> None:
    """The model is written file by file: a user's own file in --out, and the run's lock, stay (the
    folder was once replaced whole, and ``train --out DATA`` deleted the dataset it had read)."""
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 2})
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    run = {"progress": False, "echo": lambda s: None}
    train_decomposition(drr, out, recipe, epochs=1, **run)
    assert (out / "notes.txt").read_text() == "mine" and (out / ".xraymuscle.lock").is_file()
    meta = json.loads((out / "model.json").read_text())
    assert meta["weights_sha256"] == hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()
    train_decomposition(drr, out, recipe, epochs=2, resume=True, **run)
    assert (out / "notes.txt").read_text() == "mine" and load_model(out).meta["weights_sha256"] != meta[
        "weights_sha256"
    ]
    copy = tmp_path / "data"
    shutil.copytree(drr, copy)
    for val in (None, copy):
        with pytest.raises(InputError, match="--out must be a folder of its own"):
            train_decomposition(drr if val else copy, copy, recipe, val_dir=val, epochs=1, **run)
    assert DrrDataset.load(copy).rows == DrrDataset.load(drr).rows and not (copy / "model.json").exists()


def test_with_mirrored_draws_a_left_right_pair_shares_its_calibration(drr: Path, tmp_path: Path) -> None:
    # validated on all eight samples, enough for per-muscle scales (fewer than five leave them 1)
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 1})
    with pytest.raises(InputError, match="--val is the training dataset itself"):
        train_decomposition(drr, tmp_path / "m", recipe, val_dir=drr, progress=False, echo=lambda s: None)
    # a copy of the same cases is let through, with a warning
    same = shutil.copytree(drr, tmp_path / "copy")
    cases = len({row["case_id"] for row in DrrDataset.load(drr).rows})
    with pytest.warns(
        UserWarning, match=f"copy: {cases} of its cases come from the same CT files as training"
    ):
        train_decomposition(drr, tmp_path / "m", recipe, val_dir=same, progress=False, echo=lambda s: None)
    model = load_model(tmp_path / "m")
    assert model.twins is not None and model.twins != list(range(len(model.muscles)))
    for key in ("sd_scale", "mass_sd_scale", "cv_threshold"):
        values = model.meta["calibration"][key]
        assert len(set(values)) > 1 and values == [values[t] for t in model.twins]


def test_model_folder_errors(drr: Path, tmp_path: Path) -> None:
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 1})
    out = tmp_path / "model"
    train_decomposition(drr, out, recipe, progress=False, echo=lambda s: None)
    meta = json.loads((out / "model.json").read_text())
    # a folder from before mirrored draws existed was calibrated without them, and is used so
    (out / "model.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "mc_mirror"}))
    assert load_model(out).twins is None
    # the out-of-distribution statistics cover every encoder level and the bottleneck; a folder
    # from before the levels has the bottleneck's alone (the features' last columns), used so
    model = load_model(out)
    widths = model.network.widths
    assert model.ood.features == "levels" and len(model.ood.mean) == sum(widths)
    features = model.network.features(torch.rand(5, 1, 64, 64)).numpy()
    bottleneck = features[:, -widths[-1] :]
    old = {"mean": bottleneck.mean(0).tolist(), "std": (bottleneck.std(0) + 1e-3).tolist(), "threshold": 2.0}
    (out / "model.json").write_text(json.dumps({**meta, "calibration": {**meta["calibration"], "ood": old}}))
    scored = load_model(out).ood.score(features)
    z = (bottleneck - bottleneck.mean(0)) / np.asarray(old["std"])
    np.testing.assert_allclose(scored, np.sqrt((z**2).mean(1)), rtol=1e-5)
    (out / "model.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(InputError, match="model version 99"):
        load_model(out)
    (out / "model.json").write_text(json.dumps({**meta, "muscles": meta["muscles"][:3]}))
    with pytest.raises(InputError, match="calibration.sd_scale must hold 3 positive numbers"):
        load_model(out)
    wider = {**meta["architecture"], "base_channels": 2 * meta["architecture"]["base_channels"]}
    (out / "model.json").write_text(json.dumps({**meta, "architecture": wider}))
    with pytest.raises(
        InputError, match="model.json: calibration.ood describes 28 features; the network gives 56"
    ):
        load_model(out)
    other = {**meta["architecture"], "mass_head": not meta["architecture"]["mass_head"]}
    (out / "model.json").write_text(json.dumps({**meta, "architecture": other}))
    with pytest.raises(InputError, match="model.safetensors: weights do not fit"):
        load_model(out)
    (out / "model.safetensors").unlink()
    with pytest.raises(InputError, match="lacks model.safetensors"):
        load_model(out)
    with pytest.raises(InputError, match="no such model folder"):
        load_model(tmp_path / "nowhere")


def test_dataset_problems_are_reported(drr: Path, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not a DRR dataset"):
        DrrDataset.load(tmp_path)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(drr, broken)
    first = DrrDataset.load(broken).rows[0]["file"]
    (broken / first).unlink()
    data = DrrDataset.load(broken)
    with pytest.raises(InputError, match="sample file is missing"):
        DrrTrainingSet(data, [0], GridSpec(64, 5.36), map_scale_mm=50.0, mass=False)[0]
    sample = dict(np.load(drr / DrrDataset.load(drr).rows[1]["file"]))
    sample["maps"] = sample["maps"][:3]
    np.savez(broken / DrrDataset.load(drr).rows[1]["file"], **sample)
    with pytest.raises(InputError, match="expected 14 channels"):
        DrrTrainingSet(data, [1], GridSpec(64, 5.36), map_scale_mm=50.0, mass=False)[0]


def _tiny_recipe_file(folder: Path) -> Path:
    """The tiny recipe, one epoch, as a YAML file for the ``train`` command."""
    recipe = folder / "tiny.yaml"
    recipe.write_text("\n".join(f"{k}: {v}" for k, v in {**TINY, "epochs": 1}.items()) + "\n")
    return recipe


@pytest.mark.slow
def test_distributed_training_on_two_processes(drr: Path, tmp_path: Path) -> None:
    import os
    import shutil
    import subprocess
    import sys

    recipe = _tiny_recipe_file(tmp_path)
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "ddp"
    done = subprocess.run(
        [torchrun, "--nproc_per_node", "2", "--master_port", "29571", "-m", "cli", "train",
         "--data", str(drr), "--out", str(out), "--config", str(recipe), "--device", "cpu"],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert load_model(out).muscles == DrrDataset.load(drr).muscles


def test_train_command_takes_run_settings_and_refuses_bad_ones(drr: Path, tmp_path: Path) -> None:
    """``train --cache-mb`` overrides the recipe's and is recorded; a negative one is refused
    with the recipe's name, exit code 2, and no model folder."""
    from typer.testing import CliRunner

    from cli import app

    recipe = _tiny_recipe_file(tmp_path)
    runner = CliRunner()
    base = ["train", "--data", str(drr), "--config", str(recipe), "--device", "cpu"]
    done = runner.invoke(app, [*base, "--out", str(tmp_path / "m"), "--cache-mb", "0"])
    assert done.exit_code == 0, done.output
    assert json.loads((tmp_path / "m" / "model.json").read_text())["recipe"]["cache_mb"] == 0
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "bad"), "--cache-mb", "-5"])
    # the value came from the option, not the file: the error names the option
    assert refused.exit_code == 2 and "--cache-mb: invalid setting(s) ['cache_mb']" in refused.output
    assert "tiny.yaml" not in refused.output
    assert not (tmp_path / "bad").exists()


def test_mc_prediction_is_reproducible() -> None:
    from xraymuscle.inference import mc_predict

    torch.manual_seed(0)
    net = BayesianUNet(3, base_channels=4, depth=3, dropout=0.3)
    images = torch.rand(3, 1, 32, 32)
    a = mc_predict(net, images, samples=5, pixel_area_mm2=1.0, map_scale_mm=10.0)
    b = mc_predict(net, images, samples=5, pixel_area_mm2=1.0, map_scale_mm=10.0)
    np.testing.assert_array_equal(a.volume, b.volume)
    assert (a.volume_sd > 0).all()


def test_draws_decoded_in_small_passes_give_the_same_figures(monkeypatch: pytest.MonkeyPatch) -> None:
    """However many draws are asked for, a pass decodes a bounded number (the memory stays bounded
    where 100 000 draws of one image once asked for 26 GB at once), and the figures do not change:
    the same seeded dropout masks, the maps' mean and spread accumulated pass by pass."""
    from xraymuscle import inference

    torch.manual_seed(4)
    twins = twin_order(["a_left", "a_right", "spine"])
    net = BayesianUNet(3, base_channels=4, depth=3, dropout=0.3, mass_head=True, aleatoric=True)
    x = torch.rand(3, 1, 32, 32)
    kw = {"samples": 9, "pixel_area_mm2": 4.0, "map_scale_mm": 50.0, "twins": twins}
    whole = inference.mc_predict(net, x, **kw)
    sizes: list[int] = []
    decode = net.decode

    def counted(feats: list[torch.Tensor], *args: object, **kwargs: object) -> object:
        sizes.append(feats[0].shape[0])
        return decode(feats, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(net, "decode", counted)
    monkeypatch.setattr(inference, "DRAWS_PER_PASS", 7)  # at most 2 draws of the 3 images per pass
    parts = inference.mc_predict(net, x, **kw)
    assert sizes == [6, 6, 3, 6, 6] and max(sizes) <= 7  # 5 plain draws (2, 2, 1), then 4 mirrored
    sizes.clear()
    monkeypatch.setattr(inference, "DRAWS_PER_PASS", 12)
    evened = inference.mc_predict(net, x, **kw)
    assert sizes == [9, 6, 12]  # the 5 plain draws as 3 + 2 (not 4 + 1), the 4 mirrored at once
    np.testing.assert_allclose(evened.volume, whole.volume, rtol=1e-5)
    for key in ("volume", "volume_sd", "volume_sd_draws", "mass", "mass_sd", "features"):
        np.testing.assert_allclose(
            getattr(parts, key), getattr(whole, key), rtol=1e-5, atol=1e-6, err_msg=key
        )
    np.testing.assert_allclose(parts.maps, whole.maps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(parts.map_sd, whole.map_sd, rtol=1e-4, atol=1e-5)
    # the maps' moments, against all draws of one pass taken at once
    plain = inference.mc_predict(net, x, **{**kw, "twins": None})
    draws, _, _ = net.mc_draws(x, 9, [inference.image_seed(img) for img in x])
    np.testing.assert_allclose(plain.maps, 50.0 * draws[:, :, :3].mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(plain.map_sd, 50.0 * draws[:, :, :3].std(0).numpy(), rtol=1e-4, atol=1e-5)
    assert (plain.map_sd > 0).any()


def test_mirrored_draws_read_the_mirrored_radiograph_with_left_and_right_swapped() -> None:
    from xraymuscle.inference import image_features, mc_predict

    torch.manual_seed(2)
    twins = twin_order(["a_left", "a_right", "spine", "b_right", "b_left"])
    net = BayesianUNet(5, base_channels=4, depth=3, dropout=0.3, mass_head=True, aleatoric=True)
    x = torch.rand(2, 1, 32, 32)
    mirror = torch.flip(x, dims=[-1])
    kw = {"pixel_area_mm2": 4.0, "map_scale_mm": 50.0}
    both = mc_predict(net, x, samples=6, twins=twins, **kw)
    # half the draws are the plain ones, half those of the mirrored image put back in place
    plain = mc_predict(net, x, samples=3, **kw)
    back = mc_predict(net, mirror, samples=3, **kw)
    np.testing.assert_allclose(both.volume, (plain.volume + back.volume[:, twins]) / 2, rtol=1e-5)
    np.testing.assert_allclose(
        both.maps, (plain.maps + np.flip(back.maps[:, twins], -1)) / 2, rtol=1e-4, atol=1e-6
    )
    assert both.mass is not None and plain.mass is not None and back.mass is not None
    np.testing.assert_allclose(both.mass, (plain.mass + back.mass[:, twins]) / 2, rtol=1e-5)
    # so a mirrored radiograph gets exactly the original's numbers, left and right swapped
    flipped = mc_predict(net, mirror, samples=6, twins=twins, **kw)
    np.testing.assert_allclose(flipped.volume[:, twins], both.volume, rtol=1e-5)
    np.testing.assert_allclose(flipped.volume_sd[:, twins], both.volume_sd, rtol=1e-4)
    np.testing.assert_allclose(flipped.features, both.features, rtol=1e-5, atol=1e-7)  # OOD score
    assert not np.allclose(plain.features, back.features, rtol=1e-3)
    # the features come from the draws' own encoder pass, as calibration computes them apart
    np.testing.assert_allclose(plain.features, net.features(x).numpy(), rtol=1e-5, atol=1e-7)
    mirrored_features = image_features(net, x, mirrored=True).numpy()
    np.testing.assert_allclose(both.features, mirrored_features, rtol=1e-5, atol=1e-7)
    unmirrored = mc_predict(net, mirror, samples=6, **kw)
    assert not np.allclose(unmirrored.volume[:, twins], both.volume, rtol=1e-3)
    with pytest.raises(ValueError, match="twins"):
        mc_predict(net, x, samples=6, twins=[0, 1, 2], **kw)
    with pytest.raises(ValueError, match="at least 2 samples"):
        mc_predict(net, x, samples=1, twins=twins, **kw)


def test_variance_head_and_bounded_gain() -> None:
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    net = BayesianUNet(3, base_channels=4, depth=3, mass_head=False, aleatoric=True, gain_bound=3.0).eval()
    maps, log_variance = net(x, with_variance=True)
    assert maps.shape == (2, 3, 32, 32) and log_variance.shape == (2, 3)
    np.testing.assert_allclose(log_variance.detach().numpy(), 2 * np.log(0.15), rtol=1e-6)  # its start
    plain = BayesianUNet(3, base_channels=4, depth=3, mass_head=False).eval()
    assert not plain.aleatoric and not plain(x, with_variance=True)[1].any()
    draws, draw_variance = net.mc_forward(x, samples=3, with_variance=True)
    assert draws.shape == (3, 2, 3, 32, 32) and draw_variance.shape == (3, 2, 3)
    # a huge log-gain is held at the bound: the maps grow by e^3 at most
    assert net.gain is not None
    with torch.no_grad():
        net.gain.bias.fill_(100.0)
        ratio = net(x) / maps
    np.testing.assert_allclose(ratio.numpy(), np.exp(3.0), rtol=1e-4)


def test_variance_term_learns_the_error_size_and_leaves_the_maps_alone() -> None:
    from training.decomposition import _loss

    k, area = 2, 4.0
    recipe = DecompositionConfig.from_dict({**TINY, "aleatoric_weight": 1.0})
    target = torch.rand(3, k, 8, 8) + 0.5
    batch = {"target": target, "valid": torch.ones(3, k)}
    pred = (target * 1.2).requires_grad_(True)  # every volume 20 % too large
    log_variance = torch.zeros(3, k, requires_grad=True)
    (grad_plain,) = torch.autograd.grad(_loss(pred, batch, k, recipe, area), pred)
    (grad_with,) = torch.autograd.grad(_loss(pred, batch, k, recipe, area, log_variance), pred)
    assert torch.equal(grad_plain, grad_with)  # the likelihood never pulls the volumes
    optimiser = torch.optim.Adam([log_variance], lr=0.05)
    for _ in range(400):
        optimiser.zero_grad()
        _loss(pred.detach(), batch, k, recipe, area, log_variance).backward()
        optimiser.step()
    # the Gaussian likelihood's optimum: the variance equals the squared relative error
    np.testing.assert_allclose(torch.exp(log_variance).detach().numpy(), 0.2**2, rtol=0.02)


def test_mc_spread_adds_the_predicted_variance() -> None:
    from xraymuscle.inference import mc_predict

    torch.manual_seed(1)
    net = BayesianUNet(3, base_channels=4, depth=3, mass_head=True, dropout=0.3, aleatoric=True)
    assert net.log_variance is not None
    with torch.no_grad():
        net.log_variance[-1].bias.fill_(2 * np.log(0.1))  # 10 % sd on every volume, weights zero
    images = torch.rand(3, 1, 32, 32)
    mc = mc_predict(net, images, samples=5, pixel_area_mm2=4.0, map_scale_mm=50.0, keep_maps=False)
    assert mc.mass is not None and mc.mass_sd is not None
    np.testing.assert_allclose(mc.volume_sd**2, mc.volume_sd_draws**2 + 0.01 * mc.volume**2, rtol=1e-4)
    assert (mc.volume_sd_draws > 0).all() and (mc.mass_sd >= 0.1 * mc.mass * 0.999).all()


def test_sd_scale_makes_the_95_percent_interval_cover_95_percent() -> None:
    from xraymuscle.inference import sd_scales

    rng = np.random.default_rng(3)
    n = 4000
    truth = rng.uniform(50.0, 900.0, (n, 3))
    sd = 0.05 * truth  # the raw spread
    # errors twice the raw spread in the first muscle, half of it in the second
    mean = truth + sd * rng.normal(0.0, 1.0, (n, 3)) * np.array([2.0, 0.5, 1.0])
    valid = np.ones((n, 3), bool)
    valid[4:, 2] = False  # too few cases for the third: left unscaled
    scales = sd_scales(mean, sd, truth, valid)
    np.testing.assert_allclose(scales[:2], [2.0, 0.5], rtol=0.06)
    assert scales[2] == 1.0
    covered = np.abs(mean - truth) <= 1.96 * sd * scales
    np.testing.assert_allclose(covered[:, :2].mean(axis=0), 0.95, atol=0.002)
    # new cases drawn alike are covered as often
    fresh = truth + sd * rng.normal(0.0, 1.0, (n, 3)) * np.array([2.0, 0.5, 1.0])
    fresh_covered = np.abs(fresh - truth) <= 1.96 * sd * scales
    np.testing.assert_allclose(fresh_covered[:, :2].mean(axis=0), 0.95, atol=0.01)


def test_training_set_keeps_read_samples_in_memory(drr: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "drr"
    shutil.copytree(drr, copy)
    data = DrrDataset.load(copy)
    grid = GridSpec(64, 5.36)
    cached = DrrTrainingSet(data, [0], grid, map_scale_mm=50.0, mass=True)
    uncached = DrrTrainingSet(data, [0], grid, map_scale_mm=50.0, mass=True, cache_mb=0)
    first = cached[0]
    uncached[0]
    (copy / data.rows[0]["file"]).unlink()
    again = cached[0]  # from memory: the file is gone
    assert all(torch.equal(first[key], again[key]) for key in first)
    with pytest.raises(InputError, match="missing"):
        uncached[0]


def test_uncertain_threshold_flags_the_intended_share_of_images() -> None:
    from training.calibration import cv_thresholds

    rng = np.random.default_rng(0)
    k = 14
    typical = rng.uniform(0.05, 0.3, k)  # each muscle its own typical CV
    draw = lambda n: typical * np.exp(rng.normal(0.0, 0.3, (n, k)))  # noqa: E731
    thresholds = np.array(cv_thresholds(draw(4000), np.ones((4000, k), bool), rate=0.02))
    flagged = (draw(40000) > thresholds).any(axis=1).mean()
    assert 0.015 < flagged < 0.025  # about 2 % of images, not about K × 1 %
    few = cv_thresholds(draw(3), np.ones((3, k), bool))
    assert few == [0.5] * k  # too few validation images: a fixed, lenient threshold

    # heavier tails than a log-normal's, and CVs that rise together in one image: still about 2 %
    def heavy(n: int) -> np.ndarray:
        return typical * np.exp(0.2 * rng.standard_t(3, (n, k)) + 0.2 * rng.standard_t(3, (n, 1)))

    thresholds = np.array(cv_thresholds(heavy(1000), np.ones((1000, k), bool), rate=0.02))
    flagged = (heavy(40000) > thresholds).any(axis=1).mean()
    assert 0.012 < flagged < 0.03

    # 100 validation images, calibrated again and again: on average at most 2 % of new images are
    # flagged (the rank's promise), where the plain 98th percentile of in-sample scores flags more
    ours, plain = [], []
    for _ in range(300):
        cv, new = heavy(100), heavy(3000)
        ours.append((new > np.array(cv_thresholds(cv, np.ones(cv.shape, bool)))).any(axis=1).mean())
        logs = np.log(cv)
        centre, spread = logs.mean(axis=0), logs.std(axis=0, ddof=1)
        level = np.quantile(((logs - centre) / spread).max(axis=1), 0.98)
        plain.append((new > np.exp(centre + level * spread)).any(axis=1).mean())
    assert 0.012 < np.mean(ours) < 0.0215 and np.mean(plain) > 0.03

    # 150 images and their mirrors (sides exchanged) are 300 rows, ranked as 150 images: an image
    # and its mirror lie beyond the level together, and ceil(151 × 0.98) = 148 leaves about 2
    cv = heavy(150)
    twins = np.arange(k).reshape(-1, 2)[:, ::-1].ravel()
    mirrored = np.concatenate([cv, cv[:, twins]])
    thresholds = np.array(cv_thresholds(mirrored, np.ones(mirrored.shape, bool), images=150))
    np.testing.assert_allclose(thresholds, thresholds[twins], rtol=1e-12)
    beyond = (mirrored > thresholds * (1 + 1e-9)).any(axis=1)
    assert np.array_equal(beyond[:150], beyond[150:]) and 1 <= beyond[:150].sum() <= 4
    with pytest.raises(ValueError, match="whole copies"):
        cv_thresholds(mirrored, np.ones(mirrored.shape, bool), images=149)

    # fewer images than 1 / rate - 1: the level is the largest, which no validation image passes
    cv = heavy(20)
    thresholds = np.array(cv_thresholds(cv, np.ones(cv.shape, bool)))
    assert not (cv > thresholds).any()


def test_loader_processes_draw_their_own_augmentations(drr: Path) -> None:
    """Forked loader processes start from copies of one random state; ``worker_init`` reseeds each."""
    from torch.utils.data import DataLoader

    from training.data import worker_init

    data = DrrDataset.load(drr)
    augment = AugmentConfig(flip=0.5, rotate_deg=10.0, shift=0.1, gamma=(1.0, 1.0), brightness=0.0,
                            contrast=0.0, noise_sd=0.0, blur=0.0, clahe=0.0)  # fmt: skip
    same = DrrTrainingSet(data, [0] * 8, GridSpec(64, 5.36), map_scale_mm=50.0, mass=False, augment=augment)
    same.preload()

    def images(init: Callable[[int], None] | None) -> list[torch.Tensor]:
        loader = DataLoader(same, batch_size=1, num_workers=2, worker_init_fn=init,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
        return [batch["image"][0] for batch in loader]

    plain = images(None)  # items 0, 2, ... from one process, 1, 3, ... from the other
    assert all(torch.equal(plain[i], plain[i + 1]) for i in range(0, 8, 2))
    seeded = images(worker_init)
    assert not all(torch.equal(seeded[i], seeded[i + 1]) for i in range(0, 8, 2))  # streams differ
    assert all(torch.equal(a, b) for a, b in zip(seeded, images(worker_init), strict=True))  # reproducible


def test_training_with_loader_processes_and_a_time_limit(drr: Path, tmp_path: Path) -> None:
    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 3, "loader_workers": 2})
    out = tmp_path / "model"
    lines: list[str] = []
    summary = train_decomposition(drr, out, recipe, max_minutes=1e-6, progress=False, echo=lines.append)
    assert summary.epochs_run == 1 and any("--max-minutes" in line for line in lines)
    assert load_model(out).meta["calibration"]["sd_scale"]
    state = json.loads((out / "checkpoint" / "state.json").read_text())
    assert state["epoch"] == 1  # the checkpoint is the last epoch, so a resumed run goes on from it
    tensors = out / "checkpoint" / "last.safetensors"
    whole = tensors.read_bytes()
    tensors.write_bytes(whole[:1000])  # a checkpoint damaged outside the run: refused by name
    with pytest.raises(InputError, match="last.safetensors: not a readable safetensors file"):
        train_decomposition(drr, out, recipe, resume=True, progress=False, echo=lambda s: None)
    tensors.write_bytes(whole)
    resumed = train_decomposition(drr, out, recipe, resume=True, progress=False, echo=lambda s: None)
    assert resumed.epochs_run == 2 and len(resumed.history) == 3
    with pytest.raises(InputError, match="max-minutes"):
        train_decomposition(drr, tmp_path / "other", recipe, max_minutes=0, progress=False, echo=print)


def test_travel_copy_keeps_the_contract_and_the_volumes(drr: Path, tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "travel_dataset", Path(__file__).resolve().parents[1] / "benchmarks" / "travel_dataset.py"
    )
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    source = DrrDataset.load(drr)
    n = module.travel_copy(drr, tmp_path / "copy", cases=2, views=1, materials=True)
    copy = DrrDataset.load(tmp_path / "copy")
    assert n == len(copy) == 2 and copy.info["travel"]["dtype"] == "float16"
    assert source.info["adipose"] and copy.info["adipose"]  # the fat map travels with the materials
    where = {r["sample_id"]: i for i, r in enumerate(source.rows)}
    for index, row in enumerate(copy.rows):
        original = source.sample(where[row["sample_id"]], keys=("maps", "materials", "adipose"))
        small = copy.sample(index, keys=("maps", "materials", "adipose"))
        assert small["maps"].dtype == np.float16 and small["maps"].shape == original["maps"].shape
        np.testing.assert_allclose(small["materials"], original["materials"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(small["adipose"], original["adipose"], rtol=1e-3, atol=1e-3)
        np.testing.assert_allclose(
            small["maps"].astype(np.float64).sum(axis=(1, 2)), original["maps"].sum(axis=(1, 2)), rtol=1e-3
        )
    # without the materials the copy holds no fat map, and its dataset.json does not claim one
    module.travel_copy(drr, tmp_path / "plain", cases=1, views=1)
    assert "adipose" not in DrrDataset.load(tmp_path / "plain").info


def test_resume_with_other_loader_processes_and_from_a_checkpoint_without_the_setting(
    drr: Path, tmp_path: Path
) -> None:
    """``loader_workers`` and ``cache_mb`` say how a run is carried out, not what it learns: resuming
    may change them, and a checkpoint written before the settings existed still resumes."""
    out = tmp_path / "model"
    train_decomposition(drr, out, DecompositionConfig.from_dict({**TINY, "epochs": 3}), epochs=1,
                        progress=False, echo=lambda s: None)  # fmt: skip
    state = out / "checkpoint" / "state.json"
    info = json.loads(state.read_text())
    del info["config"]["loader_workers"]  # as an earlier version wrote it
    del info["config"]["cache_mb"]
    del info["config"]["materials_weight"]  # a setting added later: its default is taken
    state.write_text(json.dumps(info))
    more = DecompositionConfig.from_dict({**TINY, "epochs": 3, "loader_workers": 2, "cache_mb": 0})
    resumed = train_decomposition(drr, out, more, epochs=2, resume=True, progress=False, echo=lambda s: None)
    assert resumed.epochs_run == 1 and len(resumed.history) == 2


def test_materials_head_learns_soft_tissue_and_bone(drr: Path, tmp_path: Path) -> None:
    """The training-only materials head: its targets are the DRR's soft-tissue and bone line
    integrals on the grid (mirrored by a flip, never swapped), it learns them, and the model
    folder records it and loads."""
    data = DrrDataset.load(drr)
    grid = GridSpec(64, 5.36)
    plain = DrrTrainingSet(data, [0], grid, map_scale_mm=50.0, mass=True, materials=True)
    sample = data.sample(0, keys=("materials",))["materials"]
    expected = fit_to_grid(sample[[1, 2]].astype(np.float32), plain.scale, 64) / MATERIAL_SCALE_G_CM2
    item = plain[0]
    assert item["target"].shape[0] == 2 * len(data.muscles)
    np.testing.assert_allclose(item["materials"].numpy(), expected, rtol=1e-5, atol=1e-6)
    assert float(item["materials"][1].max()) > 0.1  # bone is there
    flipping = DrrTrainingSet(
        data, [0], grid, map_scale_mm=50.0, mass=True, materials=True,
        augment=AugmentConfig(flip=1.0, rotate_deg=0, shift=0, gamma=(1, 1), brightness=0, contrast=0,
                              noise_sd=0, blur=0, clahe=0),
    )  # fmt: skip
    np.testing.assert_allclose(flipping[0]["materials"].numpy(), expected[:, :, ::-1], rtol=1e-5, atol=1e-6)

    def materials_error(network: BayesianUNet) -> float:
        network.eval()
        with torch.no_grad():
            _, _, found = network(item["image"][None], with_materials=True)
        return float((found[0] - item["materials"]).abs().mean())

    recipe = DecompositionConfig.from_dict({**TINY, "epochs": 30, "materials_weight": 1.0})
    torch.manual_seed(recipe.seed)
    untrained = BayesianUNet(len(data.muscles), base_channels=4, depth=3, materials=2)
    out = tmp_path / "model"
    train_decomposition(drr, out, recipe, progress=False, echo=lambda s: None)
    model = load_model(out)
    assert model.meta["architecture"]["materials"] == 2
    # unwired, the head would keep its initial weights (weight decay alone moves them by ~1e-4)
    assert materials_error(model.network) < 0.8 * materials_error(untrained)
    assert model.network(item["image"][None]).shape[1] == 2 * len(data.muscles)  # muscles only
    without = BayesianUNet(len(data.muscles), base_channels=4, depth=3)
    with pytest.raises(ValueError, match="no materials head"):
        without(item["image"][None], with_materials=True)


def test_materials_recipe_refuses_samples_without_materials(drr: Path, tmp_path: Path) -> None:
    copy = tmp_path / "drr"
    shutil.copytree(drr, copy)
    data = DrrDataset.load(copy)
    path = copy / data.rows[0]["file"]
    arrays = dict(np.load(path, allow_pickle=False))
    materials = arrays.pop("materials")
    np.savez(path, **arrays)
    with pytest.raises(InputError, match="materials") as caught:
        DrrTrainingSet(data, [0], GridSpec(64, 5.36), map_scale_mm=50.0, mass=False, materials=True)[0]
    assert path.name in str(caught.value)
    np.savez(path, **arrays, materials=materials[:2])  # air and soft tissue, no bone
    with pytest.raises(InputError, match=r"expected \(3, H, W\)") as caught:
        DrrTrainingSet(data, [0], GridSpec(64, 5.36), map_scale_mm=50.0, mass=False, materials=True)[0]
    assert path.name in str(caught.value)


def test_materials_head_can_learn_the_fat_map(drr: Path, tmp_path: Path) -> None:
    """With ``materials_adipose`` the head's third map is the DRR's fat line integral (a part of soft
    tissue); the model folder records three maps and loads; a dataset without the map is refused."""
    data = DrrDataset.load(drr)
    grid = GridSpec(64, 5.36)
    both = DrrTrainingSet(data, [0], grid, map_scale_mm=50.0, mass=True, materials=True, adipose=True)
    sample = data.sample(0, keys=("materials", "adipose"))
    assert 0 < sample["adipose"].max() and np.all(sample["adipose"] <= sample["materials"][1] + 1e-5)
    stack = np.concatenate([sample["materials"][[1, 2]], sample["adipose"][None]]).astype(np.float32)
    expected = fit_to_grid(stack, both.scale, 64) / MATERIAL_SCALE_G_CM2
    np.testing.assert_allclose(both[0]["materials"].numpy(), expected, rtol=1e-5, atol=1e-6)
    recipe = DecompositionConfig.from_dict(
        {**TINY, "epochs": 1, "materials_weight": 1.0, "materials_adipose": True}
    )
    train_decomposition(drr, tmp_path / "model", recipe, progress=False, echo=lambda s: None)
    assert load_model(tmp_path / "model").meta["architecture"]["materials"] == 3

    copy = tmp_path / "drr"
    shutil.copytree(drr, copy)
    path = copy / data.rows[0]["file"]
    arrays = dict(np.load(path, allow_pickle=False))
    del arrays["adipose"]  # a dataset written before the map was
    np.savez(path, **arrays)
    older = DrrDataset.load(copy)
    DrrTrainingSet(older, [0], grid, map_scale_mm=50.0, mass=False, materials=True)[0]  # not needed
    with pytest.raises(InputError, match="holds no adipose array") as caught:
        DrrTrainingSet(older, [0], grid, map_scale_mm=50.0, mass=False, materials=True, adipose=True)[0]
    assert path.name in str(caught.value)


def test_model_json_keeps_number_lists_on_one_line() -> None:
    meta = {
        "rows": [[1.0], [-2.5e-07, 3], [4, 5, 6]],
        "names": ["a", "b [1,2]", 'c": [3,4]'],
        "mixed": [1, "x", 2.0],
        "note": "values [0.5, 99.5] in text",
        "empty": [],
        "nested": {"mean": [0.1, -0.2, 1e10]},
    }
    text = metadata_text(meta)
    assert json.loads(text) == meta
    assert '"mean": [0.1, -0.2, 10000000000.0]' in text and "[-2.5e-07, 3]" in text
    assert '"note": "values [0.5, 99.5] in text"' in text
    assert '  "a",\n' in text and "b [1,2]" in text  # lists of strings: an item a line, as written
    plain = {"nested": {"deep": [{"x": 1, "y": [True, None]}]}, "flag": False}
    assert metadata_text(plain) == json.dumps(plain, indent=1) + "\n"  # otherwise what json writes
