"""The muscle catalogue: fixed order, label sources, and errors that name what exists."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from xraymuscle.catalog import MuscleCatalog
from xraymuscle.errors import InputError


def test_default_catalogue() -> None:
    cat = MuscleCatalog.load()
    assert cat.muscles[:2] == ("gluteus_maximus_left", "gluteus_maximus_right")
    assert len(cat.muscles) == 14
    ts = cat.check_source("totalsegmentator_v2")
    assert ts["gluteus_medius_left"] == (82,) and ts["iliopsoas_right"] == (89,)
    assert "quadriceps_left" not in ts  # absent for that source
    assert cat.muscles_of("totalsegmentator_v2")[-1] == "iliopsoas_right"
    assert len(cat.muscles_of("phantom")) == 14


def test_masks_and_lookup() -> None:
    cat = MuscleCatalog.load()
    labels = np.array([[0, 80, 81], [89, 5, 0]])
    masks = cat.masks(labels, "totalsegmentator_v2")
    assert masks["gluteus_maximus_left"].sum() == 1 and masks["iliopsoas_right"][1, 0]
    lut = cat.lookup("totalsegmentator_v2", int(labels.max()))
    assert lut[80] == 1 and lut[89] == cat.muscles.index("iliopsoas_right") + 1 and lut[5] == 0


def test_unknown_source_lists_known() -> None:
    with pytest.raises(
        InputError,
        match=r"label source 'phantm' .*known sources: \['phantom', 'totalsegmentator_v2'\]"
        r".*did you mean 'phantom'",
    ):
        MuscleCatalog.load().check_source("phantm")


def test_unknown_muscle_lists_known() -> None:
    with pytest.raises(
        InputError,
        match=r"muscle 'gluteus_medius' is not in catalogue 'hip'.*did you mean.*known muscles",
    ):
        MuscleCatalog.load().check_muscles(["gluteus_medius"])


def test_users_own_source(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("muscles: [a_left, a_right]\nsources:\n  site: {a_left: [3, 4], a_right: 5}\n")
    cat = MuscleCatalog.load(path)
    assert cat.check_source("site") == {"a_left": (3, 4), "a_right": (5,)}
    assert cat.name == "site"


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("muscles: [a]\nsources: {s: {b: [1]}}\n", "names muscle 'b', which is not in"),
        ("muscles: [a]\nsources: {s: {a: [0]}}\n", "label values must be positive integers"),
        ("muscles: [a, a]\n", "lists a muscle twice"),
        ("sources: {}\n", "needs a 'muscles' list"),
        ("muscles: [a\n", "not valid YAML"),
        ("muscles: [a, b]\ngroups: {ab: [a, c]}\n", "group 'ab' names 'c', which is not in"),
        ("muscles: [a, b]\ngroups: {a: [a, b]}\n", "group 'a' has the name of a muscle"),
        ("muscles: [a, b]\ngroups: {ab: [a]}\n", "group 'ab' needs two or more different muscles"),
        ("muscles: [a, b]\ngroups: {ab: [a, a]}\n", "group 'ab' needs two or more different muscles"),
        ("muscles: [a, b]\ngroups: [a, b]\n", "'groups' must map group names to lists of muscles"),
    ],
)
def test_bad_catalogue(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match=f"bad.yaml: .*{problem}"):
        MuscleCatalog.load(path)


def test_the_default_groups_are_one_sides_muscles() -> None:
    catalog = MuscleCatalog.load()
    assert set(catalog.groups) == {"gluteal_left", "gluteal_right", "thigh_left", "thigh_right"}
    for group, members in catalog.groups.items():
        side = group.rsplit("_", 1)[1]
        assert all(m.endswith(f"_{side}") for m in members) and len(members) == 3


def test_unknown_preset() -> None:
    with pytest.raises(InputError, match=r"unknown muscles preset 'knee'; known presets: \['hip'\]"):
        MuscleCatalog.load("knee")
