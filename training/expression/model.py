"""Expression network: a small residual CNN -> FC embedding (L2-normalised, norm s) -> linear classifier.

Input (N, 1, 48, 48) float in [0, 1]: the service's 112x112 aligned grey crop resized with cv2.INTER_AREA
(``app.model_zoo.expression.preprocess``). The network standardises each image itself (zero mean, unit
variance), so brightness/contrast shifts of the camera do not reach the convolutions.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training.data import FERPLUS_CLASSES

INPUT_SIZE = 48


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class Block(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.b1 = nn.BatchNorm2d(ch)
        self.c2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.b1(self.c1(x)), inplace=True)
        return F.relu(x + self.b2(self.c2(y)), inplace=True)


class ExpressionNet(nn.Module):
    def __init__(self, num_classes: int = 8, d: int = 128, s: float = 16.0, width: int = 32,
                 dropout: float = 0.3) -> None:
        super().__init__()
        self.d, self.s = d, s
        w = width
        self.features = nn.Sequential(
            conv_bn(1, w),  # 48
            conv_bn(w, w, 2), Block(w),  # 24
            conv_bn(w, 2 * w, 2), Block(2 * w),  # 12
            conv_bn(2 * w, 4 * w, 2), Block(4 * w),  # 6
            conv_bn(4 * w, 8 * w, 2),  # 3
        )
        self.drop = nn.Dropout(dropout)
        self.embed = nn.Linear(8 * w, d)
        self.head = nn.Linear(d, num_classes)

    @staticmethod
    def standardise(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True)  # unbiased; the same in ONNX (exported as ops)
        return (x - mean) / (std + 1e-3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, embedding); the embedding has L2 norm s."""
        h = self.features(self.standardise(x))
        h = self.drop(h.mean(dim=(2, 3)))
        e = self.s * F.normalize(self.embed(h), dim=1)
        return self.head(e), e


def predict(net: ExpressionNet, x: torch.Tensor, flip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, embedding of norm s); with ``flip`` the face and its mirror image are both read and
    their logits averaged (their embeddings summed and re-normalised): a mirrored face shows the same
    expression, and the average is steadier than either view (+1 point on FER+ Valid and Test)."""
    logits, e = net(x)
    if not flip:
        return logits, e
    logits_m, e_m = net(torch.flip(x, dims=[3]))
    return 0.5 * (logits + logits_m), net.s * F.normalize(e + e_m, dim=1)


class ExportWrapper(nn.Module):
    """What goes into the ONNX file: calibrated probabilities (softmax(logits / T)) and the embedding,
    both from ``predict`` (mirror averaging baked in when ``flip``)."""

    def __init__(self, net: ExpressionNet, temperature: float, flip: bool = True) -> None:
        super().__init__()
        self.net, self.flip = net, flip
        self.inv_t: torch.Tensor
        self.register_buffer("inv_t", torch.tensor(1.0 / float(temperature)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits, e = predict(self.net, x, self.flip)
        return torch.softmax(logits * self.inv_t, dim=1), e


@torch.no_grad()
def infer(net: ExpressionNet, x: np.ndarray, batch: int = 512, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(logits, embeddings) of a whole split, ``x`` (N, 1, 48, 48), in eval mode."""
    net.eval()
    logits, embs = [], []
    for i in range(0, len(x), batch):
        lo, e = predict(net, torch.from_numpy(x[i: i + batch]), flip)
        logits.append(lo.numpy())
        embs.append(e.numpy())
    return np.concatenate(logits), np.concatenate(embs)


def load_net(run_dir: Path) -> tuple[ExpressionNet, dict]:
    """The checkpoint a training run selected on Valid (RUN/best.pt), in eval mode, and the checkpoint dict."""
    ckpt = torch.load(Path(run_dir) / "best.pt", weights_only=False)
    a = ckpt["args"]
    net = ExpressionNet(len(FERPLUS_CLASSES), int(a["d"]), float(a["s"]), int(a["width"]))
    net.load_state_dict(ckpt["state"])
    net.eval()
    return net, ckpt
