"""Muscle groups: the sd of a summed volume from its muscles' sds and how they vary together."""

from __future__ import annotations

import numpy as np
import pytest

from xraymuscle.inference import draw_correlations
from xraymuscle.muscle_groups import group_table, group_truth, group_volumes, model_groups


def testdraw_correlations_are_those_of_each_images_draws() -> None:
    rng = np.random.default_rng(0)
    draws = rng.normal(size=(12, 3, 4))
    draws[:, 1, 2] = 5.0  # a volume that does not vary
    draws[:, 2, 1] = -draws[:, 2, 0] * 2 + 1  # two that move against each other
    corr = draw_correlations(draws)
    assert corr.shape == (3, 4, 4)
    np.testing.assert_allclose(corr[0], np.corrcoef(draws[:, 0].T), atol=1e-12)
    assert corr[1, 2, 2] == 1 and np.all(corr[1, 2, [0, 1, 3]] == 0)
    assert corr[2, 0, 1] == pytest.approx(-1.0)


def test_a_groups_sd_lies_between_independent_and_moving_together() -> None:
    volume = np.array([500.0, 200.0, 80.0, 900.0])
    sd = np.array([30.0, 20.0, 10.0, 40.0])
    members = [0, 1, 2]
    total, independent = group_volumes(volume, sd, None, members)
    assert total == 780.0 and independent == pytest.approx(np.sqrt(30**2 + 20**2 + 10**2))
    _, together = group_volumes(volume, sd, np.ones((4, 4)), members)
    assert together == pytest.approx(60.0)
    against = np.eye(4)
    against[0, 1] = against[1, 0] = -0.8  # two muscles that trade volume along a shared border
    _, traded = group_volumes(volume, sd, against, members)
    assert traded == pytest.approx(np.sqrt(30**2 + 20**2 + 10**2 - 2 * 0.8 * 30 * 20))
    assert traded < independent < together


def test_the_table_of_every_image_and_group_and_their_truths() -> None:
    groups = {"ab_left": [0, 1], "ab_right": [2, 3]}
    volume = np.array([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]])
    sd = np.full((2, 4), 3.0)
    correlation = np.stack([np.eye(4), np.ones((4, 4))])
    sums, sds = group_table(volume, sd, correlation, groups)
    np.testing.assert_allclose(sums, [[3.0, 7.0], [11.0, 15.0]])
    np.testing.assert_allclose(sds, [[np.sqrt(18.0)] * 2, [6.0, 6.0]])
    valid = np.array([[True, True, True, False], [True, True, True, True]])
    truth_sums, known = group_truth(volume * 2, valid, groups)
    np.testing.assert_allclose(truth_sums, [[6.0, 14.0], [22.0, 30.0]])
    assert known.tolist() == [[True, False], [True, True]]
    muscles = ["gluteus_maximus_left", "gluteus_medius_left", "gluteus_minimus_left", "quadriceps_left"]
    assert model_groups(muscles) == {"gluteal_left": [0, 1, 2]}  # the thigh lacks two of its muscles
