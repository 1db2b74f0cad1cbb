"""The out-of-distribution score: Ledoit–Wolf shrinkage against its definition, the whitened
score against a direct Mahalanobis distance, and what whitening catches that a diagonal misses."""

from __future__ import annotations

import numpy as np

from xraymuscle.ood import OodModel, ledoit_wolf


def _slow_ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """The estimator as its definition reads: one (p, p) matrix per sample."""
    x = z - z.mean(axis=0)
    n, p = x.shape
    s = x.T @ x / n
    mu = np.trace(s) / p
    d2 = np.sum((s - mu * np.eye(p)) ** 2)
    b2 = sum(np.sum((np.outer(row, row) - s) ** 2) for row in x) / n**2
    delta = min(b2, d2) / d2
    return (1 - delta) * s + delta * mu * np.eye(p), delta


def test_ledoit_wolf_matches_its_definition() -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 12)) @ rng.normal(size=(12, 12))
    fast, delta = ledoit_wolf(z)
    slow, slow_delta = _slow_ledoit_wolf(z)
    assert 0 < delta < 1
    np.testing.assert_allclose(delta, slow_delta, rtol=1e-10)
    np.testing.assert_allclose(fast, slow, rtol=1e-10, atol=1e-12)


def test_ledoit_wolf_shrinks_as_far_as_the_data_warrant() -> None:
    rng = np.random.default_rng(1)
    # isotropic features: the identity target is right, so the estimate goes most of the way there
    _, delta = ledoit_wolf(rng.normal(size=(200, 50)))
    assert delta > 0.8
    # strongly correlated features, many samples: the sample covariance is trusted
    p = 10
    true = 0.9 ** np.abs(np.subtract.outer(np.arange(p), np.arange(p)))
    z = rng.multivariate_normal(np.zeros(p), true, size=20000)
    estimate, delta = ledoit_wolf(z)
    assert delta < 0.01
    np.testing.assert_allclose(estimate, true, atol=0.05)
    # fewer samples than features: the sample covariance is singular, the shrunk one is not
    estimate, _ = ledoit_wolf(rng.normal(size=(20, 40)) @ rng.normal(size=(40, 40)))
    assert np.linalg.eigvalsh(estimate).min() > 0


LOADINGS = np.random.default_rng(99).normal(size=(3, 30))


def _correlated(n: int, rng: np.random.Generator) -> np.ndarray:
    """Features that move together, as a network's pooled activations do: 3 factors, 30 features."""
    return rng.normal(size=(n, 3)) @ LOADINGS + 0.1 * rng.normal(size=(n, 30))


def test_whitened_score_is_the_mahalanobis_distance_and_survives_json() -> None:
    rng = np.random.default_rng(2)
    train, val, new = _correlated(500, rng), _correlated(200, rng), _correlated(5, rng)
    model = OodModel.fit(train, val)
    mean, std = train.mean(0), train.std(0) + 1e-6
    correlation, _ = ledoit_wolf((train - mean) / std)
    z = (new - mean) / std
    direct = np.einsum("ij,jk,ik->i", z, np.linalg.inv(correlation + 1e-6 * np.eye(30)), z)
    np.testing.assert_allclose(model.score(new), np.sqrt(direct / 30), rtol=1e-6)
    assert 0.99 * 1.5 < model.threshold / np.quantile(model.score(val), 0.99) < 1.01 * 1.5
    again = OodModel.from_dict(model.to_dict())  # 7 significant digits in JSON
    np.testing.assert_allclose(again.score(new), model.score(new), rtol=1e-5)
    assert again.threshold == model.threshold and again.features == "levels"


def test_whitening_catches_features_that_stop_moving_together() -> None:
    """An image whose features each lie in their usual range but no longer move together is what
    the diagonal score misses (smoothed noise, processed radiographs): the whitened one rejects it."""
    rng = np.random.default_rng(3)
    train, val = _correlated(1000, rng), _correlated(300, rng)
    whitened = OodModel.fit(train, val)
    mean, std = train.mean(0), train.std(0) + 1e-6
    diagonal = OodModel(mean, std, 0.0, "levels")
    diagonal.threshold = 1.5 * float(np.quantile(diagonal.score(val), 0.99))
    # each feature drawn from its own training distribution, independently of the others
    shuffled = np.stack([rng.permutation(train[:, j])[:50] for j in range(30)], axis=1)
    assert np.mean(diagonal.score(shuffled) > diagonal.threshold) < 0.1
    assert np.all(whitened.score(shuffled) > whitened.threshold)
    fresh = _correlated(1000, rng)
    assert np.mean(whitened.score(fresh) > whitened.threshold) < 0.01


def test_a_feature_that_never_varies_does_not_make_rounding_an_outlier() -> None:
    rng = np.random.default_rng(4)
    train, val = _correlated(500, rng), _correlated(200, rng)
    train[:, 0] = val[:, 0] = 0.0  # a channel that stays off on every training image
    model = OodModel.fit(train, val)
    assert model.std[0] >= 0.01 * np.median(train.std(0))
    new = _correlated(20, rng)
    new[:, 0] = 1e-4  # switched on by a hair (another device's rounding): still the same images
    assert np.all(model.score(new) < model.threshold)
    new[:, 0] = 5 * np.median(train[:, 1:].std(0))  # switched on for real: unlike the training images
    assert np.all(model.score(new) > model.threshold)
