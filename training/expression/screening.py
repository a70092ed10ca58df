"""Statistical screening of metric-learning tuples (patent CN110532880).

Embeddings are L2-normalised and scaled to norm ``s`` in ``d`` dimensions. If two embeddings point in
independent, uniformly random directions, their cosine ``c`` has mean 0 and variance ``1/d``, and their
Euclidean distance is ``D = s * sqrt(2 - 2c) ≈ sqrt(2)*s*(1 - c/2)``, hence

    mu    ≈ sqrt(2) * s
    sigma ≈ sqrt(2) * s / (2 * sqrt(d)) = s / sqrt(2 d)

(``sphere_stats``). That is the distance two *unrelated* faces should have. A tuple is kept only if

    D(a, p) <= mu + z(1 - alpha_p) * sigma    (the positive is not farther than unrelated faces are)
    D(a, n) >= mu - z(1 - alpha_n) * sigma    (the negative is not abnormally close to the anchor)

for quadruplets both negative distances must pass the second test. ``z`` is the standard-normal quantile.
A tuple survives when each of its distances passes its own test (``keep_positive``, ``keep_negative``);
the trainer's ``metric_loss`` applies them to the whole distance matrix of a batch.
Tuples failing a test are most often label noise (FER+ labels come from 10 crowd votes) or faces whose
expression is genuinely ambiguous; training on them pulls the classes together.

Which mu, sigma: the sphere formula holds only while directions are roughly uniform, i.e. near
initialisation. Once training clusters the classes, unrelated (cross-class) pairs are no longer uniform
(8 class clusters on the sphere sit at their own mutual distances), so the trainer defaults to the
fallback ``batch_stats``: the mean and standard deviation of all cross-class distances in the current
batch, detached from the graph. ``--mu-sigma sphere`` selects the analytic values. Both are logged.

Everything here is pure (numpy or torch tensors in, booleans out) so the tests can build distances by hand.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist


def z_quantile(alpha: float) -> float:
    """z(1 - alpha) of the standard normal, e.g. 1.645 for alpha = 0.05."""
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    return NormalDist().inv_cdf(1.0 - alpha)


def sphere_stats(s: float, d: int) -> tuple[float, float]:
    """(mu, sigma) of the distance between two uniformly random points on the sphere of radius s in R^d."""
    if s <= 0 or d < 1:
        raise ValueError("s must be > 0 and d >= 1")
    return math.sqrt(2.0) * s, s / math.sqrt(2.0 * d)


def batch_stats(distances, same_class) -> tuple[float, float]:
    """(mu, sigma) estimated from the cross-class pairs of a batch (upper triangle of the matrix).

    ``distances`` (B, B) and ``same_class`` (B, B) bool, numpy arrays or torch tensors.
    """
    try:  # torch
        import torch

        if isinstance(distances, torch.Tensor):
            d = distances.detach()
            b = d.shape[0]
            upper = torch.triu(torch.ones(b, b, dtype=torch.bool, device=d.device), diagonal=1)
            values = d[upper & ~same_class]
            if values.numel() < 2:
                raise ValueError("fewer than 2 cross-class pairs in the batch")
            return float(values.mean()), float(values.std())
    except ImportError:  # pragma: no cover - training always has torch
        pass
    import numpy as np

    dist = np.asarray(distances, dtype=np.float64)
    above = np.triu(np.ones(dist.shape, dtype=bool), k=1)
    vals = dist[above & ~np.asarray(same_class, dtype=bool)]
    if vals.size < 2:
        raise ValueError("fewer than 2 cross-class pairs in the batch")
    return float(vals.mean()), float(vals.std(ddof=1))


@dataclass(frozen=True)
class ScreeningBounds:
    """Cut-offs on distances: positives above ``upper`` and negatives below ``lower`` are screened out."""

    mu: float
    sigma: float
    alpha_p: float
    alpha_n: float

    @property
    def upper(self) -> float:
        return self.mu + z_quantile(self.alpha_p) * self.sigma

    @property
    def lower(self) -> float:
        return self.mu - z_quantile(self.alpha_n) * self.sigma


def keep_positive(d_ap, bounds: ScreeningBounds):
    """Element-wise: an anchor-positive distance passes (works on floats, numpy, torch)."""
    return d_ap <= bounds.upper


def keep_negative(d_an, bounds: ScreeningBounds):
    """Element-wise: a distance to a negative passes (d(a, n); for quadruplets also d(a, n2), d(n1, n2))."""
    return d_an >= bounds.lower
