"""The out-of-distribution score: how far an image's features lie from the training images'.

The features are the network's pooled activations (:meth:`BayesianUNet.features`): the channel
means of every encoder level and of the bottleneck, averaged over the image and its mirror for a
model with mirrored draws. Each is standardised by its mean and sd over training images, then
the vector is whitened by the inverse of the features' correlation matrix, estimated with
Ledoit–Wolf shrinkage towards the identity (a few hundred images for a few hundred features: the
plain estimate would be singular). The score is the root-mean-square of the whitened vector, a
Mahalanobis distance divided by the square root of the number of features, about 1 for training
images. An image is ``rejected`` above ``threshold``: 1.5 × the 99th percentile of the
validation images' scores.

Each feature alone barely moves for an image of the wrong kind; what gives such images away is
that the features stop moving together as they do in radiographs. On the shipped model's 400
held-out phantom radiographs and 400 processed clinical-style versions of them (whose volumes it
misses by 42 %), the diagonal score of the bottleneck alone let through all the former and 85 %
of the latter, and smoothed noise too; this one lets through all the former and none of the
latter, nor any of the noise (the README has the numbers).

Model folders made before the whitening have no ``precision_cholesky`` (the score is then the
root-mean-square z-score, a diagonal model), and those made before the encoder levels have no
``features`` (their statistics describe the bottleneck's features alone, the last columns).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MARGIN = 1.5  # threshold: this times the 99th percentile of the validation images' scores
STD_FLOOR = 0.01  # no feature's sd below this share of the median feature's (see OodModel.fit)


def ledoit_wolf(z: np.ndarray) -> tuple[np.ndarray, float]:
    """Shrunk covariance of the rows of ``z`` (``(n, p)``) and the shrinkage, in [0, 1].

    The estimate is ``(1 - δ) S + δ μ I`` with ``S`` the sample covariance, ``μ`` its mean
    eigenvalue and ``δ`` the Ledoit–Wolf estimate of the weight that minimises the
    expected squared Frobenius error.
    """
    x = z - z.mean(axis=0)
    n, p = x.shape
    s = x.T @ x / n
    mu = float(np.trace(s)) / p
    d2 = float(((s - mu * np.eye(p)) ** 2).sum())
    # b² = (1/n²) Σ_k ‖x_k x_kᵀ − S‖²_F, expanded so that no (p, p) matrix per row is made
    sq = (x**2).sum(axis=1)
    b2 = float((sq**2 - 2 * np.einsum("ij,jk,ik->i", x, s, x) + (s**2).sum()).sum()) / n**2
    delta = 1.0 if d2 <= 0 else min(b2, d2) / d2
    return (1 - delta) * s + delta * mu * np.eye(p), delta


@dataclass
class OodModel:
    """Feature statistics of the training images, the whitening, and the score threshold.

    ``features``: ``"levels"`` (all of :meth:`BayesianUNet.features`) or ``"bottleneck"`` (its
    last ``len(mean)`` columns). ``precision_cholesky``: lower-triangular ``L`` with ``L Lᵀ`` the
    inverse of the shrunk correlation matrix (None: no whitening, a diagonal model).
    """

    mean: np.ndarray
    std: np.ndarray
    threshold: float
    features: str = "levels"
    precision_cholesky: np.ndarray | None = None
    shrinkage: float | None = None

    def score(self, features: np.ndarray) -> np.ndarray:
        """Root-mean-square of each image's whitened features (large: unlike the training data)."""
        used = features[:, -len(self.mean) :] if self.features == "bottleneck" else features
        if used.shape[1] != len(self.mean):
            raise ValueError(f"{used.shape[1]} features, but statistics for {len(self.mean)}")
        z = (used - self.mean) / self.std
        if self.precision_cholesky is not None:
            z = z @ self.precision_cholesky  # ‖Lᵀz‖² = zᵀ P z
        return np.sqrt(np.mean(z**2, axis=1))

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "threshold": self.threshold,
            "features": self.features,
        }
        if self.precision_cholesky is not None:
            # row i holds its first i + 1 entries (the rest are zero); 7 significant digits
            rows = [self.precision_cholesky[i, : i + 1] for i in range(len(self.precision_cholesky))]
            out["precision_cholesky"] = [[float(f"{v:.7g}") for v in row] for row in rows]
            out["shrinkage"] = self.shrinkage
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OodModel:
        mean, std = np.asarray(data["mean"], dtype=float), np.asarray(data["std"], dtype=float)
        chol = None
        if data.get("precision_cholesky") is not None:
            chol = np.zeros((len(mean), len(mean)))
            for i, row in enumerate(data["precision_cholesky"]):
                chol[i, : len(row)] = row
        shrinkage = data.get("shrinkage")
        features = str(data.get("features", "bottleneck"))
        return cls(
            mean,
            std,
            float(data["threshold"]),
            features,
            chol,
            None if shrinkage is None else float(shrinkage),
        )

    @classmethod
    def fit(cls, train_features: np.ndarray, val_features: np.ndarray, *, margin: float = MARGIN) -> OodModel:
        """Statistics and whitening from training features; threshold from validation features."""
        mean = train_features.mean(axis=0)
        spread = train_features.std(axis=0)
        # a channel that (nearly) never varies in training, a ReLU that stays off, would turn the
        # least activation on a new image, or rounding on another device, into a huge z-score:
        # no feature's sd is taken below 1 % of the median one's
        std = np.maximum(spread, STD_FLOOR * float(np.median(spread))) + 1e-6
        correlation, shrinkage = ledoit_wolf((train_features - mean) / std)
        ridge = 1e-6 * np.eye(len(mean))  # a feature that never varies must not make it singular
        chol = np.linalg.cholesky(np.linalg.inv(correlation + ridge))
        model = cls(mean, std, 0.0, "levels", chol, shrinkage)
        model.threshold = float(margin * np.quantile(model.score(val_features), 0.99))
        return model
