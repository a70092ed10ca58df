"""The AU detection network of patent CN109344744, in its own terms, and its YOLOv3 loss.

    input (N, 1, S, S) grey aligned crop in [0, 1]    (S = 64 by default; any multiple of 16 works)
    per-image standardisation                           (brightness/contrast invariance, inside the graph)
    convolutional layers: conv 3x3 + BatchNorm + LeakyReLU(0.1), stride 2 to go down
    shortcut layers: x + conv1x1(c -> c/2) -> conv3x3(c/2 -> c)    (Darknet residual blocks)
    stride 16 features, upsampled and concatenated with the stride-8 ones (YOLOv3's route/upsample)
    action-unit detection layer: a 1x1 conv giving, per grid cell (S/8 x S/8) and anchor,
        tx, ty, tw, th, objectness, and one sigmoid score per AU (AUs co-occur: no softmax)
    output "raw": (N, G*G*A, 5 + C) logits, row-major over (cell y, cell x, anchor)

Decoding (in numpy, app/model_zoo/au_detector.py):
    cx = (col + sigmoid(tx)) / G, cy = (row + sigmoid(ty)) / G, w = anchor_w * exp(tw), h = anchor_h * exp(th)
    score(AU c) = sigmoid(objectness) * sigmoid(class c)       (all in crop fractions)
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ConvBN(nn.Sequential):
    """The patent's convolutional layer: convolution, batch normalisation, leaky ReLU."""

    def __init__(self, c_in: int, c_out: int, k: int = 3, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, k, stride, padding=k // 2, bias=False),
            nn.BatchNorm2d(c_out),
            nn.LeakyReLU(0.1, inplace=True),
        )


class Shortcut(nn.Module):
    """The patent's shortcut layer: a Darknet residual block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.body = nn.Sequential(ConvBN(c, c // 2, 1), ConvBN(c // 2, c, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Per-image standardisation inside the graph (brightness/contrast invariance)."""
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) / ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True).add(1e-4).sqrt()


def stage(c_in: int, c_out: int, blocks: int) -> nn.Sequential:
    return nn.Sequential(ConvBN(c_in, c_out, 3, stride=2), *[Shortcut(c_out) for _ in range(blocks)])


class AuNet(nn.Module):
    def __init__(self, num_classes: int, anchors: np.ndarray, width: int = 16, dropout: float = 0.1) -> None:
        super().__init__()
        w = width
        self.num_classes = num_classes
        self.anchors: torch.Tensor  # (A, 2) w, h
        self.register_buffer("anchors", torch.as_tensor(np.asarray(anchors), dtype=torch.float32))
        self.num_anchors = len(anchors)
        self.stem = ConvBN(1, w, 3)
        self.s2 = stage(w, 2 * w, 1)  # stride 2
        self.s4 = stage(2 * w, 4 * w, 1)  # stride 4
        self.s8 = stage(4 * w, 8 * w, 2)  # stride 8
        self.s16 = stage(8 * w, 16 * w, 2)  # stride 16: sees the whole face
        self.lateral = ConvBN(16 * w, 4 * w, 1)
        self.neck = nn.Sequential(ConvBN(12 * w, 6 * w, 1), ConvBN(6 * w, 8 * w, 3), ConvBN(8 * w, 8 * w, 1))
        self.dropout = nn.Dropout2d(dropout)
        self.head = nn.Conv2d(8 * w, self.num_anchors * (5 + num_classes), 1)  # the AU detection layer
        self._init_head()

    def _init_head(self) -> None:
        assert self.head.bias is not None
        bias = self.head.bias.detach().view(self.num_anchors, 5 + self.num_classes)
        bias[:, 4] = -4.0  # few cells hold boxes: start with a low objectness
        bias[:, 5:] = -2.0
        self.head.bias = nn.Parameter(bias.view(-1).clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = standardise(x)
        f8 = self.s8(self.s4(self.s2(self.stem(x))))
        f16 = self.s16(f8)
        up = F.interpolate(self.lateral(f16), scale_factor=2.0, mode="nearest")
        y = self.head(self.dropout(self.neck(torch.cat([up, f8], dim=1))))
        n, _, g, _ = y.shape
        # (N, A*(5+C), G, G) -> (N, G, G, A, 5+C) -> (N, G*G*A, 5+C)
        y = y.view(n, self.num_anchors, 5 + self.num_classes, g, g).permute(0, 3, 4, 1, 2)
        return y.reshape(n, g * g * self.num_anchors, 5 + self.num_classes)


# ---------------------------------------------------------------------------------------------- anchors


def wh_iou(wh1: np.ndarray, wh2: np.ndarray) -> np.ndarray:
    """IoU of boxes sharing a centre: (N, 2) x (K, 2) -> (N, K)."""
    inter = np.minimum(wh1[:, None, 0], wh2[None, :, 0]) * np.minimum(wh1[:, None, 1], wh2[None, :, 1])
    return inter / (wh1[:, None].prod(-1) + wh2[None].prod(-1) - inter)


def kmeans_anchors(wh: np.ndarray, k: int, seed: int = 0, iterations: int = 100) -> np.ndarray:
    """YOLOv2's k-means with distance 1 - IoU; anchors sorted by area."""
    rng = np.random.default_rng(seed)
    centres = wh[rng.choice(len(wh), k, replace=False)]
    for _ in range(iterations):
        assign = wh_iou(wh, centres).argmax(1)
        new = np.array([np.median(wh[assign == j], 0) if (assign == j).any() else centres[j] for j in range(k)])
        if np.allclose(new, centres):
            break
        centres = new
    return centres[np.argsort(centres.prod(1))]


# ---------------------------------------------------------------------------------------------- loss


def box_iou_cxcywh(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(P, 4) x (T, 4) centre-size boxes -> (P, T) IoU."""
    a0, a1 = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b0, b1 = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    inter = (torch.minimum(a1, b1) - torch.maximum(a0, b0)).clamp(min=0).prod(-1)
    return inter / (a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter + 1e-9)


def decode_torch(raw: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """(N, G*G*A, 5+C) logits -> (N, G*G*A, 4) boxes cx, cy, w, h in crop fractions."""
    m = raw.shape[1]
    a = anchors.shape[0]
    g = round((m / a) ** 0.5)
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")
    cell = torch.stack([cols, rows], -1).float().view(g, g, 1, 2).expand(g, g, a, 2).reshape(1, m, 2)
    wh_anchor = anchors.view(1, 1, a, 2).expand(g, g, a, 2).reshape(1, m, 2)
    xy = (cell + torch.sigmoid(raw[..., :2])) / g
    wh = wh_anchor * torch.exp(raw[..., 2:4].clamp(max=4.0))
    return torch.cat([xy, wh], -1)


def yolo_loss(raw: torch.Tensor, targets: list[np.ndarray], anchors: torch.Tensor, ignore_iou: float = 0.5,
              weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> tuple[torch.Tensor, dict[str, float]]:
    """YOLOv3 loss. ``targets[i]``: (T, 5) rows of class index, cx, cy, w, h (crop fractions) of image i.
    A row of class -1 is a region whose AUs are unknown: nothing is assigned to it, and predictions in its cell
    or overlapping it by more than ``ignore_iou`` are left out of the no-object loss.

    Each target goes to the anchor of best shape IoU in the cell of its centre; targets landing on the same
    cell and anchor (AUs sharing a region, e.g. AU23/24/25 on the lips) share it, and its class target is
    the union of their AUs. Unassigned predictions overlapping a target by more than ``ignore_iou`` are left
    out of the no-object loss."""
    n, m, d = raw.shape
    a = anchors.shape[0]
    g = round((m / a) ** 0.5)
    anchors_np = anchors.cpu().numpy()
    obj_t = np.zeros((n, m), np.float32)
    cls_t = np.zeros((n, m, d - 5), np.float32)
    box_t = np.zeros((n, m, 4), np.float32)
    box_w = np.zeros((n, m), np.float32)
    ignore = torch.zeros(n, m, dtype=torch.bool)
    with torch.no_grad():
        boxes = decode_torch(raw.detach(), anchors)
    for i, t in enumerate(targets):
        unknown, t = t[t[:, 0] < 0], t[t[:, 0] >= 0]
        if len(unknown):
            ious = box_iou_cxcywh(boxes[i], torch.as_tensor(unknown[:, 1:5], dtype=torch.float32))
            ignore[i] |= ious.max(1).values > ignore_iou
            cols = np.clip((unknown[:, 1] * g).astype(int), 0, g - 1)
            rows = np.clip((unknown[:, 2] * g).astype(int), 0, g - 1)
            for r, c in zip(rows, cols):
                ignore[i, (r * g + c) * a:(r * g + c + 1) * a] = True
        if len(t) == 0:
            continue
        best = wh_iou(t[:, 3:5], anchors_np).argmax(1)
        col = np.clip((t[:, 1] * g).astype(int), 0, g - 1)
        row = np.clip((t[:, 2] * g).astype(int), 0, g - 1)
        slot = (row * g + col) * a + best
        obj_t[i, slot] = 1.0
        cls_t[i, slot, t[:, 0].astype(int)] = 1.0  # repeated slots: the union of their AUs
        box_t[i, slot] = np.stack([t[:, 1] * g - col, t[:, 2] * g - row,
                                   np.log(t[:, 3] / anchors_np[best, 0]), np.log(t[:, 4] / anchors_np[best, 1])], 1)
        box_w[i, slot] = 2.0 - t[:, 3] * t[:, 4]
        ious = box_iou_cxcywh(boxes[i], torch.as_tensor(t[:, 1:5], dtype=torch.float32))
        ignore[i] |= ious.max(1).values > ignore_iou
    obj, cls, box, box_weight = (torch.from_numpy(x) for x in (obj_t, cls_t, box_t, box_w))
    pos = obj > 0
    noobj = ~pos & ~ignore
    xy_loss = ((torch.sigmoid(raw[..., :2]) - box[..., :2]) ** 2).sum(-1)
    wh_loss = ((raw[..., 2:4] - box[..., 2:4]) ** 2).sum(-1)
    box_loss = ((xy_loss + wh_loss) * box_weight)[pos].sum()
    obj_bce = F.binary_cross_entropy_with_logits(raw[..., 4], obj, reduction="none")
    obj_loss = obj_bce[pos].sum() + obj_bce[noobj].sum()
    cls_loss = F.binary_cross_entropy_with_logits(raw[..., 5:][pos], cls[pos], reduction="sum")
    wb, wo, wc = weights
    total = (wb * box_loss + wo * obj_loss + wc * cls_loss) / n
    return total, {"box": box_loss.item() / n, "obj": obj_loss.item() / n, "cls": cls_loss.item() / n}


def au_scores_torch(raw: torch.Tensor) -> torch.Tensor:
    """Per-image AU probability: the max over all boxes of objectness x class score. (N, C)."""
    return (torch.sigmoid(raw[..., 4:5]) * torch.sigmoid(raw[..., 5:])).amax(1)
