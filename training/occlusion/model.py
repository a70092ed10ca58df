"""The occlusion network (torch): 64x64 grey (0..255) -> 4 logits, and its export with a sigmoid to ONNX."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from training.occlusion.data import INPUT_SIZE
from training.occlusion.occluders import REGIONS
from training.torch_utils import export_onnx


def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OcclusionNet(nn.Module):
    """64x64 grey (0..255) -> 4 logits. Spatial features are flattened, not pooled: each output must know *where*
    in the aligned crop the evidence is."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
        w = width
        self.width = width
        self.features = nn.Sequential(
            conv_bn(1, w, 2),            # 32x32
            conv_bn(w, 2 * w, 2),        # 16x16
            conv_bn(2 * w, 2 * w, 1),
            conv_bn(2 * w, 4 * w, 2),    # 8x8
            conv_bn(4 * w, 4 * w, 1),
            conv_bn(4 * w, 64, 2),       # 4x4
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64 * 16, 64), nn.ReLU(inplace=True),
                                  nn.Linear(64, len(REGIONS)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features((x - 127.5) / 64.0))


class WithSigmoid(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


@torch.no_grad()
def predict(net: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    """(N, 4) probabilities of network inputs ``x`` (N, 1, 64, 64), in eval mode."""
    net.eval()
    out = [torch.sigmoid(net(torch.from_numpy(x[i:i + batch]))).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)


def export_occlusion_onnx(net: nn.Module, path: Path) -> float:
    """Network + sigmoid to ONNX (output ``probabilities``); max |torch - onnx| on random 0..255 input."""
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    check = torch.rand(8, 1, INPUT_SIZE, INPUT_SIZE) * 255
    return export_onnx(WithSigmoid(net).eval(), path, dummy, ["probabilities"], {"random": check})
