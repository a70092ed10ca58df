"""Torch helpers every trainer shares: the seed, multiply-accumulates, the ONNX export with its check."""
from __future__ import annotations

import random
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.common import log

OPSET = 17


def seed_everything(seed: int) -> None:
    """Python's, numpy's global and torch's generators (the trainers' own generators are seeded apart)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def count_macs(net: nn.Module, size: int) -> int:
    """Multiply-accumulates of convolutions and linear layers for one (1, 1, size, size) grey input."""
    total = 0

    def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() // output.shape[0] * per_output
        elif isinstance(module, nn.Linear):
            total += module.in_features * module.out_features

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = net.training
    net.eval()
    with torch.no_grad():
        net(torch.zeros(1, 1, size, size))
    net.train(was_training)
    for handle in handles:
        handle.remove()
    return total


def export_onnx(model: nn.Module, path: Path, dummy: torch.Tensor, output_names: Sequence[str],
                checks: Mapping[str, torch.Tensor]) -> float:
    """Export ``model`` (input "input", dynamic batch, opset 17, TorchScript exporter) and run each of
    ``checks`` through torch and onnxruntime; returns the largest |torch - onnx| over all outputs."""
    from app.model_zoo.base import OnnxFile

    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    axes = {name: {0: "batch"} for name in ("input", *output_names)}
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated but needs no onnxscript
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=OPSET, input_names=["input"],
                          output_names=list(output_names), dynamic_axes=axes)
    exported = OnnxFile(path)
    worst = 0.0
    for name, x in checks.items():
        with torch.no_grad():
            expected = model(x)
        expected = expected if isinstance(expected, (tuple, list)) else (expected,)
        got = exported.run(x.numpy())
        diff = max(float(np.abs(e.numpy() - g).max()) for e, g in zip(expected, got))
        log.info(f"onnx check {path.name} ({name} input {tuple(x.shape)}): max |torch - onnx| = {diff:.2e}")
        worst = max(worst, diff)
    return worst
