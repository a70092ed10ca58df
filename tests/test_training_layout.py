"""How the training package is put together: scorers of exported ONNX files run without torch, no import
cycles, smoke runs leave their arguments alone."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
TORCH_FREE = sorted(f"training.{p.stem}" for p in (REPO / "training").glob("evaluate_*.py")) + [
    "training.fit_expression_prior", "training.expression_data", "training.occlusion_data", "training.common",
    "training.fuse_expression", "training.fuse_au", "training.ablation_transfer", "app.manifest"]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_onnx_scorers_import_without_torch(module):
    """``sys.modules['torch'] = None`` makes any ``import torch`` fail: the module must not need it."""
    code = f"import sys; sys.modules['torch'] = None; import {module}"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]


def test_no_import_cycle_between_expression_trainer_and_exporter():
    """The trainer uses the exporter (smoke runs export); the exporter, the ablation and the evaluator take
    the shared data/inference helpers from training.expression_data / expression_model, not the trainer."""
    import ast

    for name in ("export_expression", "ablation_expression", "ablation_transfer", "evaluate_expression",
                 "fit_expression_prior"):
        tree = ast.parse((REPO / "training" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "training.train_expression" not in imported, name


@pytest.mark.parametrize("module", ["train_expression", "train_occlusion", "train_au"])
def test_smoke_config_is_derived_not_written_into_args(module):
    pytest.importorskip("torch")
    import importlib

    trainer = importlib.import_module(f"training.{module}")
    argv = ["--smoke", "--out", "/tmp/unused"] + (["--epochs", "7"])
    args = trainer.parse_args(argv)
    before = dict(vars(args))
    cfg = trainer.run_config(args)
    assert vars(args) == before and cfg.epochs == 1 and args.epochs == 7


def test_missing_cache_is_an_exception_for_callers_and_exit_status_2_for_the_cli(tmp_path):
    from training.common import MissingDataError
    from training.evaluate_occlusion import load

    with pytest.raises(MissingDataError, match="prepare_faces"):
        load("ckplus", tmp_path)
    code = "from training.evaluate_au import main; from training.common import run_cli; import sys; " \
           f"sys.exit(run_cli(main, ['--cv-dir', {str(tmp_path)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


def test_roc_auc_counts_pairs_and_ties():
    from training.evaluate_activation import roc_auc

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 60).astype(float)  # many ties
    positive = rng.random(60) < 0.4
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[positive] for n in scores[~positive]]
    assert abs(roc_auc(scores, positive) - np.mean(pairs)) < 1e-12
    assert roc_auc(np.array([0.1, 0.9]), np.array([False, True])) == 1.0
