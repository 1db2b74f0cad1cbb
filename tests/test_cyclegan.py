"""Domain adaptation: gradient consistency, the CycleGAN's parts, train-cyclegan, adapt, clinical style."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from cli import app
from training.cyclegan import ImagePool, PatchDiscriminator, ResnetGenerator, load_generator, translate
from training.gradient_consistency import gradient_consistency, gradient_consistency_loss
from training.unpaired import real_images
from xraymuscle.clinical_style import clinical_style
from xraymuscle.dicom_writer import write_dx
from xraymuscle.drr_dataset import DrrDataset
from xraymuscle.study import left_out_line

runner = CliRunner()
TINY_GAN = """crop_size: 32
base_channels: 4
residual_blocks: 1
disc_channels: 4
disc_layers: 2
batch_size: 2
epochs: 1
iterations_per_epoch: 2
pool_size: 3
"""


def _edges(shift: int = 0) -> torch.Tensor:
    img = torch.zeros(1, 1, 48, 48)
    img[..., 10 + shift : 30 + shift, 12:36] = 1.0
    img[..., 20:26, 5 + shift : 40] += 0.5
    return img


def test_gradient_consistency_against_exact_cases() -> None:
    a = _edges()
    assert float(gradient_consistency(a, a)) == pytest.approx(1.0, abs=1e-6)
    assert float(gradient_consistency(a, 3 * a + 7)) == pytest.approx(1.0, abs=1e-5)  # contrast, offset
    assert float(gradient_consistency(a, -a)) == pytest.approx(-1.0, abs=1e-6)  # inverted edges
    assert float(gradient_consistency_loss(a, a)) == pytest.approx(0.0, abs=1e-6)
    moved = float(gradient_consistency(a, _edges(shift=3)))
    assert moved < 0.6  # the same shapes 3 pixels away: edges no longer coincide
    noise = torch.randn(1, 1, 48, 48, generator=torch.Generator().manual_seed(0))
    assert abs(float(gradient_consistency(a, noise))) < 0.15
    with pytest.raises(ValueError):
        gradient_consistency(a, a[..., :40])


def test_generator_and_discriminator_shapes() -> None:
    g = ResnetGenerator(4, 1)
    x = torch.rand(2, 1, 64, 48) * 2 - 1
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0
    d = PatchDiscriminator(4, 3)
    with torch.no_grad():
        assert d(x).shape == (2, 1, 6, 4)  # one score per overlapping patch
    odd = np.random.default_rng(0).uniform(-1, 1, (37, 51)).astype(np.float32)
    assert translate(g, odd).shape == (37, 51)


def test_skip_generator_passes_the_anatomy_through_and_learns_a_correction() -> None:
    torch.manual_seed(0)
    x = _edges() * 0.8 - 0.3
    skip = ResnetGenerator(4, 1, global_skip=True, upsample="resize")
    classic = ResnetGenerator(4, 1)
    with torch.no_grad():  # untrained: the skip keeps the input's edges, the classic one has none
        assert float(gradient_consistency(x, skip(x))) > 0.3
        assert abs(float(gradient_consistency(x, classic(x)))) < 0.1
    target = torch.tanh(torch.atanh(x) + 0.4)  # a brighter exposure: the correction must learn it
    opt = torch.optim.Adam(skip.parameters(), lr=1e-2)
    with torch.no_grad():
        first = float(torch.nn.functional.l1_loss(skip(x), target))
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.l1_loss(skip(x), target)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    with torch.no_grad():
        assert float(gradient_consistency(x, skip(x))) > 0.9  # the edges are where they were
    with pytest.raises(ValueError, match="upsample"):
        ResnetGenerator(4, 1, upsample="bilinear")


def test_cyclegan_folder_without_the_newer_architecture_keys_loads(gan_run: Path, tmp_path: Path) -> None:
    """Run folders written before global_skip/upsample existed hold a plain transposed-conv generator."""
    from training.checkpoint import module_state

    old = tmp_path / "old_run"
    old.mkdir()
    meta = json.loads((gan_run / "cyclegan.json").read_text())
    arch = meta["architecture"]
    assert arch["global_skip"] is True and arch["upsample"] == "resize"  # the recipe's defaults
    del arch["global_skip"], arch["upsample"], meta["generator_sha256"]  # none of them then
    (old / "cyclegan.json").write_text(json.dumps(meta))
    plain = ResnetGenerator(int(arch["base_channels"]), int(arch["residual_blocks"]))
    save_file(module_state(plain), str(old / "generator_drr_to_real.safetensors"))
    generator, _ = load_generator(old)
    assert isinstance(generator, ResnetGenerator) and not generator.global_skip
    x = torch.rand(1, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(generator(x), plain.eval()(x))


def test_image_pool_mixes_old_and_new() -> None:
    pool = ImagePool(2, np.random.default_rng(0))
    first = pool.query(torch.zeros(2, 1, 4, 4))
    assert torch.equal(first, torch.zeros(2, 1, 4, 4))  # filling: the batch itself
    seen = torch.cat([pool.query(torch.full((2, 1, 4, 4), float(k))) for k in range(1, 20)])
    values = {float(v) for v in seen[:, 0, 0, 0]}
    assert 0.0 in values or len(values) > 2  # some images come back from the pool


@pytest.fixture(scope="module")
def real_domain(tmp_path_factory: pytest.TempPathFactory, tiny_drr: Path) -> Path:
    """Real-style radiographs of mixed kinds: 8- and 16-bit PNGs of other sizes, a DICOM with spacing."""
    data = DrrDataset.load(tiny_drr)
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(1)
    for i in range(3):
        styled = clinical_style(data.sample(i)["image"], float(data.info["pixel_spacing_mm"]), rng)
        cv2.imwrite(
            str(folder / f"film_{i}.png"), cv2.resize((styled * 255).astype(np.uint8), (150 + 20 * i, 140))
        )
    styled = clinical_style(data.sample(3)["image"], float(data.info["pixel_spacing_mm"]), rng)
    cv2.imwrite(str(folder / "film16.png"), (styled * 65535).astype(np.uint16))
    write_dx(
        folder / "dx.dcm",
        cv2.resize(styled, (256, 256)),
        pixel_spacing_mm=float(data.info["pixel_spacing_mm"]) / 2,
    )
    return folder


@pytest.fixture(scope="module")
def gan_run(tiny_drr: Path, real_domain: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gan")
    recipe = root / "tiny.yaml"
    recipe.write_text(TINY_GAN)
    out = root / "run"
    args = ["train-cyclegan", "--drr", str(tiny_drr), "--xray", str(real_domain), "--out", str(out)]
    result = runner.invoke(app, [*args, "--config", str(recipe), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    return out


def test_train_cyclegan_writes_a_run_and_resumes(gan_run: Path, tiny_drr: Path, real_domain: Path) -> None:
    meta = json.loads((gan_run / "cyclegan.json").read_text())
    assert meta["format"] == "xraymuscle-cyclegan" and meta["real_domain"]["images"] == 5
    assert meta["epochs"] == 1 and set(meta["history"][0]) >= {"cycle", "gc", "identity", "discriminator"}
    assert cv2.imread(str(gan_run / "samples" / "epoch_001.png")) is not None
    generator, _ = load_generator(gan_run)
    assert isinstance(generator, ResnetGenerator)
    recipe = gan_run.parent / "tiny.yaml"
    args = ["train-cyclegan", "--drr", str(tiny_drr), "--xray", str(real_domain), "--out", str(gan_run)]
    result = runner.invoke(app, [*args, "--config", str(recipe), "--device", "cpu"])
    assert result.exit_code == 2 and "--resume" in result.output  # never overwrites a run silently
    result = runner.invoke(
        app, [*args, "--config", str(recipe), "--device", "cpu", "--epochs", "2", "--resume"]
    )
    assert result.exit_code == 0, result.output
    assert "resuming after epoch 1" in result.output
    meta = json.loads((gan_run / "cyclegan.json").read_text())
    assert [h["epoch"] for h in meta["history"]] == [1, 2]
    assert (gan_run / "samples" / "epoch_002.png").is_file()


def test_train_cyclegan_bad_input(tiny_drr: Path, real_domain: Path, tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    one = tmp_path / "one"
    one.mkdir()
    (one / "a.png").write_bytes((real_domain / "film_0.png").read_bytes())
    (one / "broken.png").write_bytes(b"\x89PNG not really")
    for xray, message in ((empty, "no radiographs found"), (one, "at least 2 readable radiographs")):
        result = runner.invoke(
            app, ["train-cyclegan", "--drr", str(tiny_drr), "--xray", str(xray), "--out", str(tmp_path / "o")]
        )
        assert result.exit_code == 2 and message in result.output, result.output
    result = runner.invoke(
        app,
        [
            "train-cyclegan",
            "--drr",
            str(real_domain),
            "--xray",
            str(real_domain),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code == 2 and "dataset" in result.output
    assert not (tmp_path / "o").exists()


def test_real_domain_names_that_are_not_utf8(real_domain: Path, tmp_path: Path) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    films = sorted(real_domain.glob("*.png"))[:2]
    for i, film in enumerate(films):
        shutil.copyfile(film, os.fsdecode(os.fsencode(folder) + f"/r\xf6ntgen{i}.png".encode("latin-1")))
    colour = np.random.default_rng(0).integers(0, 255, (64, 64, 3)).astype(np.uint8)
    Path(os.fsdecode(os.fsencode(folder) + b"/f\xe4rg.png")).write_bytes(
        cv2.imencode(".png", colour)[1].tobytes()
    )
    earlier = folder / "predictions"  # an earlier run's output inside the films' folder
    earlier.mkdir()
    shutil.copyfile(films[0], earlier / "0000_overlay.png")
    (earlier / ".xraymuscle.lock").touch()
    domain = real_images(folder, 2.0, 1.15, 64)
    assert domain.paths == [f"{folder}/r\\xf6ntgen0.png", f"{folder}/r\\xf6ntgen1.png"]
    assert domain.skipped == [f"{folder}/f\\xe4rg.png: a colour image, not a radiograph"]
    assert domain.left_out == [left_out_line(str(earlier))]


def test_real_films_with_a_calibration_marker(tmp_path: Path) -> None:
    """With --marker-mm, a real film's spacing comes from its ball (its file has none here) and
    the ball is painted out, as the DRRs hold none; a film without a ball is skipped."""
    folder = tmp_path / "films"
    folder.mkdir()
    rows, cols = np.mgrid[:400, :500]
    film = 0.3 + 0.2 * np.sin(cols / 500 * np.pi)
    film[:, 150:190] += 0.4  # a femur
    ball_px = 25.0 * 1.2 / 0.6  # a 25 mm ball magnified 1.2 times, at 0.6 mm pixels: 50 px
    ball = (rows - 300.3) ** 2 + (cols - 380.6) ** 2 < (ball_px / 2) ** 2
    for i in range(2):
        cv2.imwrite(
            str(folder / f"ball_{i}.png"),
            np.clip((film + 1.5 * ball) / 2.5 * 65535, 0, 65535).astype(np.uint16),
        )
    cv2.imwrite(str(folder / "plain.png"), (film / 2.5 * 65535).astype(np.uint16))
    spacing_mm = 2.0  # the DRRs' grid
    domain = real_images(folder, spacing_mm, 1.15, 64, marker_mm=25.0)
    assert [Path(p).name for p in domain.paths] == ["ball_0.png", "ball_1.png"]
    assert domain.skipped == [f"{folder}/plain.png: no calibration marker of 25 mm found"]
    # the ball's spacing (25 / 50 mm at the hip) brings the film's 400 x 500 px to 100 x 125
    image = domain.images[0]
    assert image.shape == (round(400 * 25 / ball_px / spacing_mm), round(500 * 25 / ball_px / spacing_mm))
    # the ball painted out: where it lay is darker than the femur (at a quarter of the size)
    assert image[75, 95] < image[75, 42] - 0.2
    plain = real_images(folder, spacing_mm, 1.15, 64)  # without the option: the ball stays
    assert plain.skipped == [] and plain.images[0][48, 61] > plain.images[0][48, 27] + 0.2


def test_adapt_translates_images_and_keeps_maps(gan_run: Path, tiny_drr: Path, tmp_path: Path) -> None:
    out = tmp_path / "adapted"
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(gan_run), "--data", str(tiny_drr), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    source, adapted = DrrDataset.load(tiny_drr), DrrDataset.load(out)
    assert adapted.info["adapted"]["source_dataset"] == str(tiny_drr.resolve())
    assert (out / "manifest.csv").read_text() == (tiny_drr / "manifest.csv").read_text()
    for i in range(len(source)):
        a, b = source.sample(i), adapted.sample(i)
        np.testing.assert_array_equal(a["maps"], b["maps"])
        assert b["image"].shape == a["image"].shape and 0 <= b["image"].min() and b["image"].max() <= 1
        assert not np.allclose(b["image"], a["image"])
    # a stopped run resumes: only the missing sample is translated
    (out / "dataset.json").unlink()
    (out / adapted.rows[0]["file"]).unlink()
    (out / ".derive.json").write_text(
        json.dumps({"adapted": {k: v for k, v in adapted.info["adapted"].items() if k != "date"}})
    )
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(gan_run), "--data", str(tiny_drr), "--out", str(out)]
    )
    assert result.exit_code == 0 and "1 images translated" in result.output, result.output


def test_adapt_refuses_a_broken_cyclegan_folder(gan_run: Path, tiny_drr: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cyclegan.json").write_text((gan_run / "cyclegan.json").read_text())
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(broken), "--data", str(tiny_drr), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "missing the generator" in result.output
    generator = gan_run / "generator_drr_to_real.safetensors"
    (broken / generator.name).write_bytes(generator.read_bytes()[:-100])
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(broken), "--data", str(tiny_drr), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and f"{broken / generator.name}: not a readable safetensors" in result.output
    # a generator that reads and fits, but not the one cyclegan.json was written with
    other = {k: v * 1.01 if v.is_floating_point() else v for k, v in load_file(str(generator)).items()}
    save_file(other, str(broken / generator.name))
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(broken), "--data", str(tiny_drr), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not the generator cyclegan.json describes (SHA-256" in result.output
    result = runner.invoke(
        app, ["adapt", "--cyclegan", str(tmp_path), "--data", str(tiny_drr), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 2 and "not a CycleGAN folder" in result.output
    args = ["adapt", "--cyclegan", str(gan_run), "--data", str(tiny_drr), "--out", str(tmp_path / "o")]
    result = runner.invoke(app, [*args, "--direction", "sideways"])
    assert result.exit_code == 2 and "--direction" in result.output


def test_adapt_back_to_drr_style(gan_run: Path, tiny_drr: Path, tmp_path: Path) -> None:
    out = tmp_path / "back"
    args = ["adapt", "--cyclegan", str(gan_run), "--data", str(tiny_drr), "--out", str(out)]
    result = runner.invoke(app, [*args, "--direction", "real-to-drr"])
    assert result.exit_code == 0, result.output
    assert DrrDataset.load(out).info["adapted"]["generator"] == "generator_real_to_drr.safetensors"


def test_clinical_style_is_a_known_processed_look(tiny_drr: Path) -> None:
    data = DrrDataset.load(tiny_drr)
    drr = data.sample(0)["image"]
    spacing = float(data.info["pixel_spacing_mm"])
    a = clinical_style(drr, spacing, np.random.default_rng(5))
    b = clinical_style(drr, spacing, np.random.default_rng(5))
    c = clinical_style(drr, spacing, np.random.default_rng(6))
    np.testing.assert_array_equal(a, b)  # seeded
    assert not np.array_equal(a, c)
    assert a.shape == drr.shape and 0 <= a.min() and a.max() <= 1
    assert np.allclose(a * 4095, np.round(a * 4095), atol=1e-3)  # 12-bit steps
    # the anatomy's edges stay where they were (bone bright), even though the look has changed
    inner = (slice(20, -20), slice(20, -20))
    gc = float(
        gradient_consistency(torch.from_numpy(drr[inner])[None, None], torch.from_numpy(a[inner])[None, None])
    )
    assert 0.2 < gc < 0.98


def test_clinical_style_dataset_keeps_maps(tiny_drr: Path, tmp_path: Path) -> None:
    out = tmp_path / "clinical"
    result = runner.invoke(app, ["clinical-style", "--data", str(tiny_drr), "--out", str(out), "--seed", "3"])
    assert result.exit_code == 0, result.output
    styled = DrrDataset.load(out)
    assert styled.info["clinical_style"]["seed"] == 3
    source = DrrDataset.load(tiny_drr)
    np.testing.assert_array_equal(source.sample(1)["maps"], styled.sample(1)["maps"])
