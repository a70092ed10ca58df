"""The One-Euro filter (Casiez, Roussel & Vogel, CHI 2012): an adaptive low-pass filter that smooths jitter
when a signal is still and follows it with little lag when it moves. Works on numpy arrays of any shape
(one filter per element), with timestamps, so a clip sampled every n-th frame is filtered correctly."""
from __future__ import annotations

import math

import numpy as np


def _alpha(cutoff_hz: float | np.ndarray, dt: float) -> float | np.ndarray:
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """``min_cutoff`` (Hz): smoothing of a still signal (lower = smoother); ``beta``: how fast the cutoff
    rises with speed (higher = less lag); ``d_cutoff`` (Hz): smoothing of the speed estimate. ``scale``
    divides the signal before the speed is measured (e.g. the face size, so that one setting fits faces
    of every size)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x: np.ndarray | None = None
        self.dx: np.ndarray | None = None
        self.t: float | None = None

    def reset(self) -> None:
        self.x = self.dx = self.t = None

    def __call__(self, x: np.ndarray, t: float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or self.t is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        dx = (x - self.x) / dt / max(scale, 1e-9)
        self.dx = self.dx + _alpha(self.d_cutoff, dt) * (dx - self.dx)
        cutoff = self.min_cutoff + self.beta * np.abs(self.dx)
        self.x = self.x + _alpha(cutoff, dt) * (x - self.x)
        self.t = t
        return self.x.copy()
