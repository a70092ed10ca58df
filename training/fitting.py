"""Small convex fits by scipy's solvers, each checked for convergence (no hand-written descent loops, no torch).

* ``fit_logistic``: binary logistic regression, mean cross-entropy + ``l2``/2 |w|^2 (bias not penalised);
* ``fit_softmax``: multinomial logistic regression, the same objective, optionally class-balanced;
* ``fit_temperature``: the temperature T minimising the NLL of softmax(logits / T).

The two regressions minimise with L-BFGS (``scipy.optimize.minimize``, analytic gradient) and then check the
result: the solver must report success and the largest gradient component must be below ``GRADIENT_TOL``;
otherwise ``NotConverged`` (a ``TrainingError``: the CLI prints it, exit status 2). tests/test_metrics.py compares
them with scikit-learn's ``LogisticRegression`` on the same objective.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.optimize import OptimizeResult, minimize, minimize_scalar
from scipy.special import expit, log_expit, log_softmax

from training.common import TrainingError

GRADIENT_TOL = 1e-6  # largest |d objective / d weight| accepted at the solution (the objective is a mean)
MAX_ITERATIONS = 20_000


class NotConverged(TrainingError):
    """A solver stopped before the fit's optimum; the message says which fit and why."""


Objective = Callable[[np.ndarray], tuple[float, np.ndarray]]


def _minimise(objective: Objective, start: np.ndarray, what: str) -> OptimizeResult:
    result = minimize(objective, start, jac=True, method="L-BFGS-B",
                      options={"maxiter": MAX_ITERATIONS, "ftol": 1e-15, "gtol": GRADIENT_TOL / 10})
    gradient = float(np.abs(objective(result.x)[1]).max())
    if gradient > GRADIENT_TOL:
        raise NotConverged(f"{what}: L-BFGS stopped after {result.nit} iterations ({result.message}) with the largest "
                           f"gradient {gradient:.1e} > {GRADIENT_TOL:.0e}")
    return result


def with_bias(x: np.ndarray) -> np.ndarray:
    return np.hstack([x, np.ones((len(x), 1))])


# ------------------------------------------------------------------------------------------------ binary


def logistic_objective(w: np.ndarray, x: np.ndarray, y: np.ndarray, l2: float,
                       sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """(mean weighted cross-entropy + l2/2 |w[:-1]|^2, its gradient) for weights ``w`` (d + 1: the last is the
    bias) on features ``x`` (N, d) and 0/1 targets ``y``."""
    xb = with_bias(x)
    s = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, np.float64)
    z = xb @ w
    loss = -(s * (y * log_expit(z) + (1 - y) * log_expit(-z))).sum() / s.sum()
    penalty = np.append(w[:-1], 0.0)
    gradient = xb.T @ (s * (expit(z) - y)) / s.sum() + l2 * penalty
    return float(loss + 0.5 * l2 * penalty @ penalty), gradient


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, sample_weight: np.ndarray | None = None
                 ) -> np.ndarray:
    """Weights (d + 1,), the last one the bias, minimising ``logistic_objective``; raises NotConverged."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    result = _minimise(lambda w: logistic_objective(w, x, y, l2, sample_weight), np.zeros(x.shape[1] + 1),
                       "logistic regression")
    return np.asarray(result.x)


def apply_logistic(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Probabilities of the positive class for features ``x`` (N, d)."""
    return expit(with_bias(np.asarray(x, np.float64)) @ w)


# ------------------------------------------------------------------------------------------------ multinomial


def softmax_objective(flat: np.ndarray, x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                      sample_weight: np.ndarray) -> tuple[float, np.ndarray]:
    """(mean weighted NLL + l2/2 |W[:-1]|^2, its gradient) for weights W = ``flat`` as (d + 1, n_classes)."""
    xb = with_bias(x)
    w = flat.reshape(xb.shape[1], n_classes)
    log_p = log_softmax(xb @ w, axis=1)
    s = sample_weight / sample_weight.sum()
    loss = -(s * log_p[np.arange(len(y)), y]).sum()
    residual = np.exp(log_p)
    residual[np.arange(len(y)), y] -= 1.0
    penalty = np.vstack([w[:-1], np.zeros((1, n_classes))])
    gradient = xb.T @ (residual * s[:, None]) + l2 * penalty
    return float(loss + 0.5 * l2 * (penalty * penalty).sum()), gradient.ravel()


def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float = 1e-2, balanced: bool = True
                ) -> np.ndarray:
    """Weights (d + 1, n_classes), the last row the biases, minimising ``softmax_objective``; with ``balanced``
    each face weighs 1 / (its class's count), so every class counts alike (a uniform prior). Every class must have
    a face (an absent class has no finite optimum: its unpenalised bias runs to -inf). Raises NotConverged."""
    x, y = np.asarray(x, np.float64), np.asarray(y)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"classes {np.flatnonzero(counts == 0).tolist()} have no face: fit over the others")
    weights = 1.0 / counts[y] if balanced else np.ones(len(y))
    result = _minimise(lambda f: softmax_objective(f, x, y, n_classes, l2, weights),
                       np.zeros((x.shape[1] + 1) * n_classes), "multinomial logistic regression")
    return np.asarray(result.x).reshape(x.shape[1] + 1, n_classes)


def predict_softmax(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Class index of the largest score for features ``x`` (N, d)."""
    return (with_bias(np.asarray(x, np.float64)) @ w).argmax(1)


# ------------------------------------------------------------------------------------------------ temperature


def nll(logits: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of the labels ``y`` under softmax(logits / temperature)."""
    log_p = log_softmax(np.asarray(logits, np.float64) / temperature, axis=1)
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray, low: float = 0.2, high: float = 10.0) -> float:
    """The temperature in [low, high] minimising ``nll`` (bounded Brent search on log T); raises NotConverged."""
    result = minimize_scalar(lambda log_t: nll(logits, y, float(np.exp(log_t))), bounds=(np.log(low), np.log(high)),
                             method="bounded", options={"xatol": 1e-6})
    if not result.success:
        raise NotConverged(f"temperature: {result.message}")
    return float(np.exp(result.x))
