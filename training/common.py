"""What every training and evaluation script shares, without torch: the logger, errors, small numerics.

Torch helpers (seed, ONNX export, MACs) are in training/torch_utils.py, so that the scripts that only
score exported ONNX files (``training.evaluate_*``) import no torch.
"""
from __future__ import annotations

import itertools
import logging
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.manifest import ModelError

log = logging.getLogger("microfacs.training")


class TrainingError(RuntimeError):
    """A training or evaluation run cannot go on (missing cache, no fold models...): the CLI prints it and
    exits with status 2; library callers get the exception."""


class MissingDataError(TrainingError, FileNotFoundError):
    """An input file (face cache, fold model) is not there; the message says which command makes it."""


def require_file(path: Path, how: str) -> Path:
    if not Path(path).is_file():
        raise MissingDataError(f"{path} is missing: run `{how}` first")
    return Path(path)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a line is logged (pytest swaps it between tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(path: Path | None = None) -> None:
    """Log INFO lines to stdout and, when given, to ``path`` (replaces earlier handlers: tests call main()
    several times). Only the training logger: the caller's own logging is left alone."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [_CurrentStdout(sys.stdout)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def ensure_logging() -> None:
    """Library entry points (``train``) log to stdout when the caller set nothing up."""
    if not log.handlers:
        setup_logging()


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` as a command: 0 on success, 2 with a one-line message (no traceback) when a
    library call raises TrainingError or a manifest/model error."""
    try:
        main(argv)
    except (TrainingError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ---------------------------------------------------------------------------------------------- numerics
def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


def ece(probs: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, bins: int = 15) -> float:
    """Expected calibration error of the top class over ``bins`` equal-width confidence bins; with
    ``weights``, each face counts that much (e.g. 1 / class frequency for a class-balanced ECE)."""
    conf, correct = probs.max(1), (probs.argmax(1) == y).astype(np.float64)
    total, edges = 0.0, np.linspace(0, 1, bins + 1)
    for lo, hi in itertools.pairwise(edges):
        m = (conf > lo) & (conf <= hi)
        if not m.any():
            continue
        if weights is None:
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
        else:
            w = np.asarray(weights, np.float64)[m]
            share = w.sum() / np.sum(weights)
            total += share * abs((w * correct[m]).sum() / w.sum() - (w * conf[m]).sum() / w.sum())
    return float(total)
