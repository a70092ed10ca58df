"""Train the per-region occlusion classifier (eyes, nose, mouth, brows) and export it to ONNX.

Data: FER+ Train aligned crops from runs/cache (made by training/prepare_faces.py with the service's
own landmark + alignment code); part of each batch gets 1-3 synthetic occluders from
training/occluders.py, drawn on the fly. Validation: FER+ Valid, every face once clean and once with a
fixed, seeded occluder draw, plus the CK+ held-out subjects (clean).

v2 (issue 10) levers, on by default:
* hard negatives (``training_pool``): FER+ faces whose majority vote is happiness, surprise, disgust or fear,
  or whose mesh shows a wide-open mouth, and the CK+ faces of the training subjects (every 5th sorted subject
  id is held out), are shown clean more often (``--hard-clean-fraction``) than other faces
  (``--clean-fraction``), so that teeth, open jaws and pressed lips are learnt as visible;
* FER+ "clean" faces that are really occluded (hands, sunglasses, text: label noise) are dropped when the
  installed model scores them >= ``--drop-clean-above`` in any region (train pool and the Valid clean set);
* v2 occluder families (fingers, clear glasses, hair, phone, cup, half-region covers).

Off by default:
* ``--real-positives``: those screened-out real occlusions come back pseudo-labelled by the previous model
  (used by 2.0.0's fine-tuning step);
* ``--band-limit 48``, a fixed in-graph low-pass (resize to 48x48 and back), and ``--degrade``, composites
  taken to 36-56 px and back, so that sharpness is no occluder cue (fewer false flags on sharp photos, but
  real hands are missed: models/OCCLUSION.md, variants B-E);
* ``--teacher ENSEMBLE.onnx --distill A``: targets A x the teacher's probabilities + (1 - A) x the labels (one
  network trained to answer like a seed ensemble, models/OCCLUSION.md);
* ``--sharpen-clean`` / ``--sharpen-faces`` / ``--sharpen-all``: crisp faces (CLAHE + strong unsharp mask) shown
  clean, drawn on whether covered or not, or crisp finished composites whatever their labels (fewer false flags on
  sharp photos, but real hands are missed: rows H*, S*).

2.0.0 = this default run (10 epochs) + a fine-tuning step (``--init``), commands in models/OCCLUSION.md.

    python -m training.train_occlusion                       # full run (~12 min on 1 CPU thread + 1 worker)
    python -m training.train_occlusion --smoke --out /tmp/occ # plumbing check, < 60 s

Writes <out>/occlusion.onnx (and, unless --smoke or --no-install, models/occlusion.onnx plus its
manifest entry with per-region thresholds), <out>/train.log lines on stdout, <out>/best.pt.

Thresholds: per region, the smallest t >= ``--min-threshold`` (0.5) for which at most ``--max-false-occlusion``
(1%) of the screened clean FER+ Valid faces, and at most twice that of each expressive FER+ Valid class and of
the CK+ held-out subjects, score >= t. taiwanese_dev plays no part in any of it (validation only).
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from app.align import grey_input
from app.manifest import Manifest, replace_entry, sha256_of
from training.common import ensure_logging, log, require_file, run_cli, setup_logging
from training.data import REPO_ROOT, RUNS_DIR
from training.occluders import (
    HELDOUT_IMAGES,
    REGIONS,
    TRAIN_FAMILIES,
    TRAIN_IMAGES,
    TRAIN_WEIGHTS,
    V1_FAMILIES,
    V1_WEIGHTS,
    load_images,
    occlude,
)
from training.occlusion_data import (
    EXPRESSIVE,
    FERPLUS_VOTES,
    MOUTH_OPEN,
    ckplus_heldout,
    expressive_mask,
    majority_class,
    mouth_open_ratio,
)
from training.torch_utils import count_macs, export_onnx, seed_everything

INPUT_SIZE = 64
SEED = 20240611
MAX_FALSE_OCCLUSION = 0.01  # v2: on the screened FER+ Valid clean faces; 2x that per expressive class and on CK+
MIN_THRESHOLD = 0.5
DROP_CLEAN_ABOVE = 0.9  # the previous model's score that marks a FER+ "clean" face as really occluded
SMOKE_BATCHES = 3
MIN_CLASS_FACES = 50  # an expressive FER+ Valid class joins the threshold rule from this many screened faces


# ------------------------------------------------------------------------------------------ model
def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def band_limit_matrix(size: int = INPUT_SIZE, via: int = 48) -> np.ndarray:
    """(size, size) matrix A with A @ x @ A.T == resizing x to via x via (cv2.INTER_AREA) and back (INTER_LINEAR):
    a fixed low-pass that caps every input at the resolution of the 48x48 FER+ / CK+ training faces."""
    eye = np.eye(size, dtype=np.float32)
    down = cv2.resize(eye, (via, size), interpolation=cv2.INTER_AREA).T  # (via, size)
    up = cv2.resize(np.eye(via, dtype=np.float32), (size, via), interpolation=cv2.INTER_LINEAR).T  # (size, via)
    return (up @ down).astype(np.float32)


class OcclusionNet(nn.Module):
    """64x64 grey (0..255) -> 4 logits. Spatial features are flattened, not pooled: each output must
    know *where* in the aligned crop the evidence is. With ``band_limit`` (e.g. 48) the input first goes through
    a fixed, exported low-pass (``band_limit_matrix``): sharp service photos then look like the 48x48 training
    faces, and an occluder cannot be told by its sharpness alone."""

    def __init__(self, width: int = 12, band_limit: int = 0) -> None:
        super().__init__()
        self.band_limit = band_limit
        if band_limit:
            self.register_buffer("lowpass", torch.from_numpy(band_limit_matrix(INPUT_SIZE, band_limit)))
        w = width
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
        if self.band_limit:
            x = torch.matmul(torch.matmul(self.lowpass, x), self.lowpass.t())
        return self.head(self.features((x - 127.5) / 64.0))


class WithSigmoid(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(x))


# ------------------------------------------------------------------------------------------- data
def to_input(crop: np.ndarray) -> np.ndarray:
    """112x112 grey uint8 -> 64x64 float32 0..255 (exactly what the serving class does)."""
    return grey_input(crop, INPUT_SIZE).astype(np.float32)


def degrade(image: np.ndarray, rng: np.random.Generator, lo: int = 36, hi: int = 56) -> np.ndarray:
    """The whole composite (face + occluders) down to lo..hi pixels and back: occluders drawn at 112 px get the
    resolution of the 48x48 faces they sit on, so sharpness is no cue for occlusion."""
    size = image.shape[0]
    side = int(rng.integers(lo, hi + 1))
    small = cv2.resize(image, (side, side), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def crisp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean 48x48-sourced crop made to look like a sharp photo: local contrast (CLAHE) and a strong unsharp mask,
    so crisp teeth, lip lines and wrinkles are also seen on faces labelled clean (``--sharpen-clean``), not only
    on the occluders drawn at 112 px."""
    img = image
    if rng.random() < 0.5:
        clahe = cv2.createCLAHE(clipLimit=float(rng.uniform(1.5, 3.0)), tileGridSize=(4, 4))
        img = clahe.apply(img)
    img = img.astype(np.float32)
    blur = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.0, 2.5))
    img = img + rng.uniform(1.0, 3.0) * (img - blur)
    return np.clip(img, 0, 255).astype(np.uint8)


def photometric(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Small geometric jitter (alignment error), contrast/brightness/gamma, blur or sharpening, noise."""
    img = image.astype(np.float32)
    size = img.shape[0]
    if rng.random() < 0.7:
        angle, scale = rng.normal(0, 4), rng.uniform(0.94, 1.06)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        m[:, 2] += rng.normal(0, 2.0, 2)
        img = cv2.warpAffine(img, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if rng.random() < 0.5:
        img = img[:, ::-1]  # every region is left/right symmetric, labels unchanged
    if rng.random() < 0.8:
        img = (img - img.mean()) * rng.uniform(0.6, 1.4) + img.mean() + rng.uniform(-35, 35)
    if rng.random() < 0.3:
        img = 255 * (np.clip(img, 0, 255) / 255) ** rng.uniform(0.6, 1.6)
    r = rng.random()
    if r < 0.2:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    elif r < 0.5:
        blur = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0))
        img = img + rng.uniform(0.3, 1.5) * (img - blur)
    if rng.random() < 0.4:
        img = img + rng.normal(0, rng.uniform(1, 8), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_cache(name: str, cache_dir: Path = RUNS_DIR / "cache") -> dict[str, np.ndarray]:
    """Crops and landmarks of one face cache, plus its ``votes`` (FER+), ``subjects`` and ``emotions`` (CK+)."""
    data = np.load(require_file(cache_dir / f"{name}.npz", "python -m training.prepare_faces"))
    out = {"crops": data["crops"], "landmarks": data["landmarks"].astype(np.float32)}
    for key in ("votes", "subjects", "emotions"):
        if key in data.files:
            out[key] = data[key]
    return out


class OccludedTrainSet(torch.utils.data.Dataset):
    """Each face shown clean with its own probability (``clean_fraction``: one number or one per face), else
    with 1-3 occluders of ``families``; faces with ``fixed_labels`` (real occlusions, pseudo-labelled) are shown
    as they are with those labels."""

    def __init__(self, crops: np.ndarray, landmarks: np.ndarray, seed: int, clean_fraction: float | np.ndarray = 0.5,
                 families: tuple[str, ...] = TRAIN_FAMILIES, weights: tuple[float, ...] = TRAIN_WEIGHTS,
                 degrade_p: float = 0.0, fixed_labels: np.ndarray | None = None, sharpen_clean_p: float = 0.0,
                 sharpen_faces_p: float = 0.0, sharpen_all_p: float = 0.0) -> None:
        self.crops, self.landmarks, self.seed, self.degrade_p = crops, landmarks, seed, degrade_p
        self.sharpen_clean_p, self.sharpen_faces_p, self.sharpen_all_p = sharpen_clean_p, sharpen_faces_p, sharpen_all_p
        self.fixed = fixed_labels  # (N, 4): NaN = ordinary face; else shown as is with these labels (-1: ignored)
        self.clean_fraction = np.broadcast_to(np.asarray(clean_fraction, np.float32), (len(crops),))
        self.families, self.weights = families, weights
        self.epoch = 0
        self.ctx: dict | None = None

    def __len__(self) -> int:
        return len(self.crops)

    def _context(self) -> dict:
        if self.ctx is None:
            crops = self.crops
            self.ctx = {"images": load_images(TRAIN_IMAGES), "other_crop": lambda r: crops[r.integers(len(crops))]}
        return self.ctx

    def __getitem__(self, i: int):
        rng = np.random.default_rng([self.seed, self.epoch, i])
        crop = self.crops[i]
        if self.sharpen_faces_p and rng.random() < self.sharpen_faces_p:
            crop = crisp(crop, rng)  # before any occluder: crisp faces are as often covered as clean
        if self.fixed is not None and not np.isnan(self.fixed[i, 0]):
            fixed = self.fixed[i]
            image, labels, weights = crop, np.clip(fixed, 0, 1), (fixed >= 0).astype(np.float32)
        elif rng.random() < self.clean_fraction[i]:
            image, labels, weights = crop, np.zeros(len(REGIONS), np.float32), np.ones(len(REGIONS), np.float32)
            if self.sharpen_clean_p and rng.random() < self.sharpen_clean_p:
                image = crisp(image, rng)
        else:
            try:
                occ = occlude(crop, self.landmarks[i], rng, self._context(), self.families, self.weights)
                image, labels, weights = occ.image, occ.labels, occ.weights
            except (ValueError, cv2.error) as exc:  # degenerate landmarks: keep the face clean
                log.warning(f"occluder failed on train face {i}: {exc}")
                image, labels, weights = crop, np.zeros(len(REGIONS), np.float32), np.ones(len(REGIONS), np.float32)
        if self.sharpen_all_p and rng.random() < self.sharpen_all_p:
            image = crisp(image, rng)  # the finished composite, whatever its labels: crisp skin of face and hand alike
        if self.degrade_p and rng.random() < self.degrade_p:
            image = degrade(image, rng)
        x = to_input(photometric(image, rng))[None]
        return torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(weights)


def fixed_occluded_set(crops: np.ndarray, landmarks: np.ndarray, seed: int, images_names=TRAIN_IMAGES,
                       families=None, other_pool: np.ndarray | None = None, heldout: bool = False,
                       weights: tuple[float, ...] | None = None):
    """Every face once with a seeded occluder draw (1-3 occluders). Returns inputs, labels, fractions.
    ``families`` None: the v2 training families with their weights; else ``families`` with ``weights``."""
    pool = crops if other_pool is None else other_pool
    ctx = {"images": load_images(images_names), "other_crop": lambda r: pool[r.integers(len(pool))]}
    if heldout:
        ctx["heldout_images"] = load_images(HELDOUT_IMAGES)
    fams = families or TRAIN_FAMILIES
    w = TRAIN_WEIGHTS if families is None else weights
    xs, labels, fractions = [], [], []
    for i in range(len(crops)):
        rng = np.random.default_rng([seed, i])
        occ = occlude(crops[i], landmarks[i], rng, ctx, families=fams, weights=w)
        xs.append(to_input(occ.image))
        labels.append(occ.labels)
        fractions.append(occ.fractions)
    return np.stack(xs)[:, None], np.stack(labels), np.stack(fractions)


# ----------------------------------------------------------------------------------------- metrics
def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels > 0.5], scores[labels < 0.5]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    ranks[order] = np.arange(1, len(order) + 1)
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def choose_thresholds(clean_probs: np.ndarray, max_rate: float = MAX_FALSE_OCCLUSION,
                      extra: list[tuple[np.ndarray, float]] | None = None,
                      floor: float = MIN_THRESHOLD) -> dict[str, float]:
    """Per region, the smallest t >= ``floor`` with at most ``max_rate`` of ``clean_probs`` at or above t and
    at most each ``extra`` set's own rate of its faces (CK+ held-out subjects, FER+ expressive classes)."""
    out = {}
    for k, name in enumerate(REGIONS):
        t = floor
        for probs, rate in [(clean_probs, max_rate), *(extra or [])]:
            if len(probs):
                t = max(t, float(np.quantile(probs[:, k], 1 - rate, method="higher")) + 1e-4)
        out[name] = round(min(t, 0.99), 4)
    return out


@torch.no_grad()
def predict(net: nn.Module, x: np.ndarray, batch: int = 512) -> np.ndarray:
    net.eval()
    out = [torch.sigmoid(net(torch.from_numpy(x[i:i + batch]))).numpy() for i in range(0, len(x), batch)]
    return np.concatenate(out)


def describe(clean_p: np.ndarray, occ_p: np.ndarray, occ_y: np.ndarray, thresholds: dict[str, float]) -> list[str]:
    lines = [f"{'region':6s} {'thr':>5s} {'FOR_clean':>9s} {'recall':>7s} {'precis':>7s} {'AUC':>6s} {'n_pos':>6s}"]
    for k, name in enumerate(REGIONS):
        t = thresholds[name]
        pred, y = occ_p[:, k] >= t, occ_y[:, k] > 0.5
        tp = (pred & y).sum()
        scores = np.concatenate([clean_p[:, k], occ_p[:, k]])
        labels = np.concatenate([np.zeros(len(clean_p)), occ_y[:, k]])
        lines.append(f"{name:6s} {t:5.2f} {np.mean(clean_p[:, k] >= t):9.3%} {tp / max(y.sum(), 1):7.3f} "
                     f"{tp / max(pred.sum(), 1):7.3f} {auc(scores, labels):6.3f} {int(y.sum()):6d}")
    return lines


def region_flags(probs: np.ndarray, thresholds: dict[str, float]) -> np.ndarray:
    """(N, 4) scores -> (N,) True where any region is at or above its threshold."""
    return np.stack([probs[:, k] >= thresholds[r] for k, r in enumerate(REGIONS)], 1).any(1)


# ------------------------------------------------------------------------------------------ export
def export_occlusion_onnx(net: nn.Module, path: Path) -> float:
    """Network + sigmoid to ONNX; max |torch - onnx| on random 0..255 input."""
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    check = torch.rand(8, 1, INPUT_SIZE, INPUT_SIZE) * 255
    return export_onnx(WithSigmoid(net).eval(), path, dummy, ["probabilities"], {"random": check})


def manifest_entry(thresholds: dict[str, float], metrics: dict, macs: int, diff: float, version: str,
                   cfg: argparse.Namespace | None = None) -> dict:
    floor = cfg.min_threshold if cfg else MIN_THRESHOLD
    rate = cfg.max_false_occlusion if cfg else MAX_FALSE_OCCLUSION
    band = cfg.band_limit if cfg else 0
    real_positives = cfg.real_positives if cfg else 0.0
    return {
        "version": version,
        "file": "occlusion.onnx",
        "sha256": "",
        "task": "per-region occlusion of an aligned face crop (eyes, nose, mouth, brows/forehead)",
        "input": {"name": "input", "shape": ["batch", 1, INPUT_SIZE, INPUT_SIZE], "layout": "NCHW", "color": "grey",
                  "range": [0.0, 255.0],
                  "resize": "the 112x112 aligned crop (app/align.py) to 64x64 with cv2.INTER_AREA; BGR->grey with "
                            "cv2.COLOR_BGR2GRAY; normalisation is inside the graph"},
        "outputs": {"probabilities": "[batch, 4]: sigmoid probability that each region is occluded, order = classes"},
        "classes": list(REGIONS),
        "thresholds": thresholds,
        "threshold_rule": f"per region, the smallest t >= {floor} with <= {rate:.1%} of the clean FER+ Valid faces "
                          "(less those the previous model scores >= --drop-clean-above) at or above t, and <= "
                          f"{2 * rate:.1%} of each expressive FER+ Valid class (happiness, surprise, disgust, fear) "
                          "and of the CK+ held-out subjects (every 5th sorted id)",
        "label_rule": ">= 30% of the region's landmark mask covered by occluders (alpha > 0.5); 15-30% ignored "
                      "in training",
        "architecture": (f"fixed low-pass (resize to {band}x{band} and back, as two constant MatMuls), " if band
                         else "") + f"6 conv3x3-BN-ReLU (4 stride 2) + 2 linear, {macs / 1e6:.2f} M MACs "
                        f"({2 * macs / 1e6:.1f} MFLOPs)",
        "export_check": f"max |torch - onnx| = {diff:.1e} on random input (training/train_occlusion.py)",
        "metrics": metrics,
        "training_data": "FER+ Train aligned crops (runs/cache/ferplus_train.npz) + synthetic occluders "
                         "(training/occluders.py: hands, bars, scarves, sunglasses, masks, textures, real image "
                         "patches; v2 adds fingers, clear glasses, hair, phones, cups, half-region covers); "
                         "v2 also: CK+ training subjects and expressive / open-mouth FER+ faces shown clean more "
                         "often (hard negatives), FER+ faces the previous model scores >= 0.9 dropped"
                         + (f", then back as real occlusions pseudo-labelled by it (>= {real_positives})"
                            if real_positives else ""),
        "licence": "research use only (trained on FER2013 pixels)",
        "model_card": "OCCLUSION.md",
        "bytes": 0,
    }


def install(onnx_path: Path, entry: dict, models: Path = REPO_ROOT / "models") -> None:
    """Copy the ONNX file into ``models`` and write its manifest entry, keeping the test-set numbers
    evaluate_occlusion.py stored in the old entry's metrics (the new Valid numbers win)."""
    target = models / "occlusion.onnx"
    target.write_bytes(onnx_path.read_bytes())
    old = Manifest.load(models).models.get("occlusion", {})
    entry = dict(entry)
    if "metrics" in old:
        entry["metrics"] = {**old["metrics"], **entry["metrics"]}
    entry["sha256"] = sha256_of(target)
    entry["bytes"] = target.stat().st_size
    replace_entry(models, "occlusion", entry)
    log.info(f"installed {target} and its manifest entry (sha256 {entry['sha256'][:16]}...)")


# ----------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--width", type=int, default=12)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "occlusion")
    parser.add_argument("--smoke", action="store_true", help="a few batches on CK+ crops, no install (CI)")
    parser.add_argument("--cache", type=Path, default=RUNS_DIR / "cache", help="folder of training.prepare_faces")
    parser.add_argument("--no-install", action="store_true", help="do not copy into models/ nor edit the manifest")
    parser.add_argument("--version", default="1.0.0")
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this best.pt; with --epochs 0 only re-pick thresholds, export, install")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--families", choices=["v1", "v2"], default="v2", help="occluder families (v1: 1.x models)")
    parser.add_argument("--clean-fraction", type=float, default=0.45, help="share of ordinary faces shown clean")
    parser.add_argument("--hard-clean-fraction", type=float, default=0.7,
                        help="share shown clean of the hard negatives: expressive FER+ faces (majority happiness, "
                             "surprise, disgust, fear), mesh-open mouths, CK+ training subjects")
    parser.add_argument("--boost", default="",
                        help="multiply families' sampling weights, e.g. fingers=3,half_cover=1.5 (fine-tuning)")
    parser.add_argument("--hard-classes", default=",".join(EXPRESSIVE),
                        help="FER+ majority classes whose clean faces are hard negatives (comma-separated)")
    parser.add_argument("--band-limit", type=int, default=0,
                        help="fixed in-graph low-pass: input resized to this side and back, e.g. 48 (0: none; "
                             "2.0.0 has none, see models/OCCLUSION.md variants B-E)")
    parser.add_argument("--sharpen-clean", type=float, default=0.0,
                        help="share of the faces shown clean that are first made crisp (CLAHE + strong unsharp mask), "
                             "so that sharp detail is no occluder cue (0: off)")
    parser.add_argument("--sharpen-faces", type=float, default=0.0,
                        help="share of all faces made crisp before any occluder is drawn (clean or covered alike; "
                             "0: off)")
    parser.add_argument("--sharpen-all", type=float, default=0.0,
                        help="share of finished composites (face and occluders, clean or covered alike) made crisp; "
                             "0: off")
    parser.add_argument("--teacher", type=Path, default=None,
                        help="an occlusion ONNX file (e.g. training.ensemble_occlusion's) to distil into this network")
    parser.add_argument("--distill", type=float, default=0.7,
                        help="with --teacher: weight of the teacher's probabilities in the targets (rest: labels)")
    parser.add_argument("--degrade", type=float, default=0.0,
                        help="share of training composites (face + occluders) taken down to 36-56 px and back")
    parser.add_argument("--ckplus-repeat", type=int, default=4,
                        help="times each CK+ training-subject face joins the pool (0: no CK+); every 5th subject "
                             "is held out for evaluation and threshold choice")
    parser.add_argument("--drop-clean-above", type=float, default=DROP_CLEAN_ABOVE,
                        help="drop FER+ Train faces that the installed model (--screen-models-dir) scores >= this "
                             "in any region (natural occlusions trained as clean); also screens the Valid clean "
                             "faces used for thresholds; 0: off")
    parser.add_argument("--real-positives", type=float, default=0.0,
                        help="FER+ Train faces the previous model scores >= this in some region join as real "
                             "occlusions, pseudo-labelled (>= this: occluded, < 0.2: clean, else ignored); 0: off")
    parser.add_argument("--real-repeat", type=int, default=4,
                        help="times each pseudo-labelled real occlusion joins the pool (with --real-positives)")
    parser.add_argument("--screen-models-dir", type=Path, default=REPO_ROOT / "models",
                        help="models folder of the previous occlusion model (screening and pseudo-labels)")
    parser.add_argument("--min-threshold", type=float, default=MIN_THRESHOLD,
                        help="no region's threshold below this (the model's own decision point by default)")
    parser.add_argument("--max-false-occlusion", type=float, default=MAX_FALSE_OCCLUSION,
                        help="threshold rule: per region at most this share of the (screened) clean FER+ Valid faces "
                             "flagged, and at most twice this on each expressive FER+ Valid class and on the CK+ "
                             "held-out subjects")
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace) -> argparse.Namespace:
    """What ``args`` implies, as a new namespace (``args`` is left as given): ``--smoke`` is one epoch of
    3 batches in the main process, and never installs."""
    cfg = argparse.Namespace(**vars(args))
    cfg.max_batches = 0
    if args.smoke:
        cfg.epochs, cfg.workers, cfg.max_batches, cfg.no_install = 1, 0, SMOKE_BATCHES, True
    return cfg


def occluder_families(cfg: argparse.Namespace) -> tuple[tuple[str, ...], tuple[float, ...], tuple[float, ...]]:
    """(families, their weights, the training weights after ``--boost``): validation draws use the plain
    weights, training the boosted ones."""
    families, weights = (TRAIN_FAMILIES, TRAIN_WEIGHTS) if cfg.families == "v2" else (V1_FAMILIES, V1_WEIGHTS)
    boost = {k: float(v) for k, v in (item.split("=") for item in cfg.boost.split(",") if item)}
    return families, weights, tuple(w * boost.get(f, 1.0) for f, w in zip(families, weights))


# ------------------------------------------------------------------------------------------------- data
@dataclass
class OcclusionData:
    """The training pool and the threshold / validation sets of one run.

    ``pool``: crops, landmarks, ``clean_p`` (per-face probability of being shown clean) and ``fixed`` (labels of
    pseudo-labelled real occlusions, NaN rows for ordinary faces; absent in smoke runs). ``valid_keep``: the
    FER+ Valid faces left in the clean set after screening; ``valid_major``: their majority class (0 without
    votes); ``ck_heldout``: network inputs of the CK+ held-out subjects (None in smoke runs)."""

    pool: dict[str, np.ndarray]
    info: dict
    valid: dict[str, np.ndarray]
    valid_keep: np.ndarray
    valid_major: np.ndarray
    ck_heldout: np.ndarray | None = None


def previous_model_scores(crops: np.ndarray, models_dir: Path) -> np.ndarray:
    """(N, 4) scores of the (previous) installed occlusion model."""
    from app.model_zoo.occlusion import OcclusionClassifier
    from training.evaluate_occlusion import score

    return score(OcclusionClassifier(models_dir), crops)


def screen_natural_occlusions(crops: np.ndarray, models_dir: Path, threshold: float) -> np.ndarray:
    """True where the (previous) installed occlusion model scores any region >= ``threshold``: FER+ "clean"
    faces that are really occluded (hands, sunglasses, text...). They leave the clean pool."""
    return (previous_model_scores(crops, models_dir) >= threshold).any(1)


def training_pool(train: dict[str, np.ndarray], ckplus: dict[str, np.ndarray] | None, cfg: argparse.Namespace
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """FER+ Train (minus screened natural occlusions) + CK+ training subjects (repeated), with a per-face
    probability of being shown clean: higher for expressive FER+ faces, open mouths and CK+ peaks, so that
    teeth, open jaws and pressed lips are learnt as *not* occluded. With ``--real-positives``, the real
    occlusions come back (``--real-repeat`` times) with the previous model's pseudo-labels."""
    n = len(train["crops"])
    keep = np.ones(n, bool)
    info: dict = {"ferplus_train": n}
    prev = None
    if cfg.drop_clean_above > 0 or cfg.real_positives > 0:
        prev = previous_model_scores(train["crops"], cfg.screen_models_dir)
    if prev is not None and cfg.drop_clean_above > 0:
        keep = ~(prev >= cfg.drop_clean_above).any(1)
        info["ferplus_dropped_natural_occlusion"] = int((~keep).sum())
    clean_p = np.full(n, cfg.clean_fraction, np.float32)
    hard = np.zeros(n, bool)
    if "votes" in train:
        hard |= expressive_mask(train["votes"], tuple(cfg.hard_classes.split(",")))
    hard |= mouth_open_ratio(train["landmarks"]) > MOUTH_OPEN
    clean_p[hard] = cfg.hard_clean_fraction
    info["ferplus_hard_negatives"] = int((hard & keep).sum())
    crops, marks, probs = [train["crops"][keep]], [train["landmarks"][keep]], [clean_p[keep]]
    fixed = [np.full((int(keep.sum()), len(REGIONS)), np.nan, np.float32)]
    if prev is not None and cfg.real_positives > 0:  # real FER+ occlusions, pseudo-labelled by the previous model
        real = (prev >= cfg.real_positives).any(1)
        labels = np.where(prev >= cfg.real_positives, 1.0, np.where(prev < 0.2, 0.0, -1.0)).astype(np.float32)
        for _ in range(cfg.real_repeat):
            crops.append(train["crops"][real])
            marks.append(train["landmarks"][real])
            probs.append(np.ones(int(real.sum()), np.float32))
            fixed.append(labels[real])
        info["ferplus_real_occlusions_pseudo_labelled"] = int(real.sum())
    if ckplus is not None and cfg.ckplus_repeat > 0:
        take = ~ckplus_heldout(ckplus["subjects"])
        for _ in range(cfg.ckplus_repeat):
            crops.append(ckplus["crops"][take])
            marks.append(ckplus["landmarks"][take])
            probs.append(np.full(int(take.sum()), cfg.hard_clean_fraction, np.float32))
            fixed.append(np.full((int(take.sum()), len(REGIONS)), np.nan, np.float32))
        info["ckplus_train_faces"] = int(take.sum())
        info["ckplus_train_subjects"] = len(set(ckplus["subjects"][take].tolist()))
    pool = {"crops": np.concatenate(crops), "landmarks": np.concatenate(marks), "clean_p": np.concatenate(probs),
            "fixed": np.concatenate(fixed)}
    info["pool"] = len(pool["crops"])
    return pool, info


def smoke_data(cfg: argparse.Namespace) -> OcclusionData:
    """Two slices of CK+: no hard negatives, no screening, no held-out subjects."""
    data = load_cache("ckplus", cfg.cache)
    n_train = min(192, len(data["crops"]) * 2 // 3)
    train = {k: v[:n_train] for k, v in data.items()}
    valid = {k: v[n_train: n_train + 128] for k, v in data.items()}
    pool = {**train, "clean_p": np.full(n_train, cfg.clean_fraction, np.float32)}
    n_valid = len(valid["crops"])
    return OcclusionData(pool=pool, info={"smoke": n_train}, valid=valid, valid_keep=np.ones(n_valid, bool),
                         valid_major=np.zeros(n_valid, int))


def load_data(cfg: argparse.Namespace) -> OcclusionData:
    """FER+ Train pool (hard negatives, screening, pseudo-labels, CK+ training subjects), FER+ Valid (screened
    clean set) and the CK+ held-out subjects; for --smoke two slices of CK+."""
    if cfg.smoke:
        return smoke_data(cfg)
    train, valid = load_cache("ferplus_train", cfg.cache), load_cache("ferplus_valid", cfg.cache)
    ckplus = load_cache("ckplus", cfg.cache)
    held = ckplus_heldout(ckplus["subjects"])
    ck_heldout = np.stack([to_input(c) for c in ckplus["crops"][held]])[:, None]
    pool, info = training_pool(train, ckplus if cfg.ckplus_repeat > 0 else None, cfg)
    valid_keep = np.ones(len(valid["crops"]), bool)
    if cfg.drop_clean_above > 0:
        valid_keep = ~screen_natural_occlusions(valid["crops"], cfg.screen_models_dir, cfg.drop_clean_above)
    info.update(ferplus_valid_screened_out=int((~valid_keep).sum()), ckplus_heldout_faces=int(held.sum()))
    valid_major = majority_class(valid["votes"]) if "votes" in valid else np.zeros(len(valid_keep), int)
    return OcclusionData(pool=pool, info=info, valid=valid, valid_keep=valid_keep, valid_major=valid_major,
                         ck_heldout=ck_heldout)


def validation_sets(valid: dict[str, np.ndarray], seed: int, families: tuple[str, ...],
                    weights: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid inputs clean, the same faces with a seeded occluder draw (``families``, plain weights), and the
    latter's labels."""
    valid_clean = np.stack([to_input(c) for c in valid["crops"]])[:, None]
    valid_occ, valid_y, _ = fixed_occluded_set(valid["crops"], valid["landmarks"], seed, families=families,
                                               weights=weights)
    return valid_clean, valid_occ, valid_y


# ----------------------------------------------------------------------------------------------- select
def thresholds_for(clean_p: np.ndarray, ck_p: np.ndarray | None, valid_keep: np.ndarray, valid_major: np.ndarray,
                   max_rate: float = MAX_FALSE_OCCLUSION, floor: float = MIN_THRESHOLD) -> dict[str, float]:
    """``choose_thresholds`` on the screened (``valid_keep``) clean FER+ Valid faces (``max_rate``), each
    expressive FER+ Valid class (``valid_major``) with at least 50 screened faces and the CK+ held-out subjects
    (twice that)."""
    extra = []
    for c in EXPRESSIVE:
        members = valid_keep & (valid_major == FERPLUS_VOTES.index(c))
        if members.sum() >= MIN_CLASS_FACES:
            extra.append((clean_p[members], 2 * max_rate))
    if ck_p is not None:
        extra.append((ck_p, 2 * max_rate))
    return choose_thresholds(clean_p[valid_keep], max_rate, extra, floor)


@dataclass
class ValidScores:
    """The network's scores on the clean Valid faces, their occluded copies and the CK+ held-out subjects."""

    clean: np.ndarray
    occluded: np.ndarray
    ckplus: np.ndarray | None


def valid_scores(net: nn.Module, valid_clean: np.ndarray, valid_occ: np.ndarray,
                 ck_heldout: np.ndarray | None) -> ValidScores:
    return ValidScores(predict(net, valid_clean), predict(net, valid_occ),
                       predict(net, ck_heldout) if ck_heldout is not None else None)


def valid_recalls(scores: ValidScores, valid_y: np.ndarray, thresholds: dict[str, float]) -> list[float]:
    """Recall per region on the occluded Valid set at ``thresholds``."""
    return [float(np.mean(scores.occluded[valid_y[:, k] > 0.5, k] >= thresholds[r])) for k, r in enumerate(REGIONS)]


def final_metrics(scores: ValidScores, valid_y: np.ndarray, data: OcclusionData, cfg: argparse.Namespace
                  ) -> tuple[dict[str, float], dict]:
    """Thresholds of the selected network and its FER+ Valid numbers (logged and stored in the manifest); the
    any-region false-occlusion rate per FER+ Valid majority class and on the CK+ held-out subjects (logged)."""
    clean_p, occ_p, keep = scores.clean, scores.occluded, data.valid_keep
    thresholds = thresholds_for(clean_p, scores.ckplus, data.valid_keep, data.valid_major,
                               cfg.max_false_occlusion, cfg.min_threshold)
    log.info("FER+ Valid (screened clean faces for FOR; seeded synthetic occlusions for recall/precision):")
    for line in describe(clean_p[keep], occ_p, valid_y, thresholds):
        log.info("  " + line)
    flags = region_flags(clean_p, thresholds)
    log.info("  any-region FOR per FER+ Valid majority class (screened): " + ", ".join(
        f"{c} {flags[keep & (data.valid_major == k)].mean():.3%}" for k, c in enumerate(FERPLUS_VOTES[:8])
        if (keep & (data.valid_major == k)).any()))
    if scores.ckplus is not None:
        ck_flags = region_flags(scores.ckplus, thresholds)
        log.info(f"  CK+ held-out subjects: any-region FOR {ck_flags.mean():.3%} of {len(scores.ckplus)}")
    metrics = {"ferplus_valid": {
        name: {"false_occlusion_rate_clean": round(float(np.mean(clean_p[keep, k] >= thresholds[name])), 4),
               "recall_synthetic": round(float(np.mean(occ_p[valid_y[:, k] > 0.5, k] >= thresholds[name])), 4)}
        for k, name in enumerate(REGIONS)}}
    return thresholds, metrics


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: argparse.Namespace) -> OcclusionNet:
    """A new network (``--width``, ``--band-limit``), or the one of ``--init`` (its own width and band limit)."""
    net = OcclusionNet(cfg.width, cfg.band_limit)
    if cfg.init is not None:
        checkpoint = torch.load(cfg.init)
        net = OcclusionNet(checkpoint["width"], checkpoint.get("band_limit", 0))
        net.load_state_dict(checkpoint["state"])
        log.info(f"initialised from {cfg.init} (epoch {checkpoint['epoch']})")
    return net


# ------------------------------------------------------------------------------------------------- loop
def train_epoch(net: nn.Module, loader, optim, sched, steps: int, teacher=None, distill: float = 0.0) -> float:
    """``steps`` batches of weighted BCE (ambiguous regions weigh 0); returns the mean loss per face. With a
    ``teacher`` (an onnxruntime session of an occlusion ONNX file, e.g. a seed ensemble) the targets become
    ``distill`` x the teacher's probabilities + (1 - ``distill``) x the labels, and the ambiguous regions learn
    the teacher's probability (knowledge distillation: one network that answers like the ensemble)."""
    net.train()
    total, n = 0.0, 0
    for step, (x, y, w) in enumerate(loader):
        if step >= steps:
            break
        if teacher is not None:
            soft = torch.from_numpy(teacher.run(None, {"input": x.numpy()})[0])
            y = torch.where(w > 0, distill * soft + (1 - distill) * y, soft)
            w = torch.ones_like(w)
        loss = (F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * w).sum() / w.sum().clamp(min=1)
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        total, n = total + loss.item() * len(x), n + len(x)
    return total / max(n, 1)


def fit(net: OcclusionNet, data: OcclusionData, valid_sets: tuple[np.ndarray, np.ndarray, np.ndarray],
        cfg: argparse.Namespace, train_weights: tuple[float, ...], families: tuple[str, ...], start: float) -> None:
    """Train ``cfg.epochs`` epochs; after each, thresholds by ``thresholds_for`` and the mean occluded Valid
    recall at them; the best epoch is saved to <out>/best.pt and loaded into ``net`` at the end."""
    valid_clean, valid_occ, valid_y = valid_sets
    pool = data.pool
    dataset = OccludedTrainSet(pool["crops"], pool["landmarks"], cfg.seed, pool["clean_p"], families,
                               train_weights, cfg.degrade, pool.get("fixed"), cfg.sharpen_clean, cfg.sharpen_faces,
                               cfg.sharpen_all)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, shuffle=True, num_workers=cfg.workers,
                                         drop_last=True, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    steps = cfg.max_batches or len(loader)
    optim = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps),
                                                pct_start=0.15)

    best, best_state = -1.0, {k: v.clone() for k, v in net.state_dict().items()}
    teacher = None
    if cfg.teacher is not None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = cfg.threads
        teacher = ort.InferenceSession(str(cfg.teacher), options, providers=["CPUExecutionProvider"])
        log.info(f"distilling {cfg.teacher} (targets {cfg.distill} x teacher + {1 - cfg.distill:g} x labels)")
    for epoch in range(cfg.epochs):
        dataset.epoch = epoch
        loss = train_epoch(net, loader, optim, sched, steps, teacher, cfg.distill)
        scores = valid_scores(net, valid_clean, valid_occ, data.ck_heldout)
        thresholds = thresholds_for(scores.clean, scores.ckplus, data.valid_keep, data.valid_major,
                                   cfg.max_false_occlusion, cfg.min_threshold)
        recalls = valid_recalls(scores, valid_y, thresholds)
        score = float(np.mean(recalls))
        log.info(f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} valid recall@thr "
                 f"{' '.join(f'{r}={v:.3f}' for r, v in zip(REGIONS, recalls))} mean {score:.3f} "
                 f"thr {' '.join(f'{t:.2f}' for t in thresholds.values())} "
                 f"({time.time() - start:.0f}s)")
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            torch.save({"state": best_state, "width": net.features[0][0].out_channels, "epoch": epoch + 1,
                        "band_limit": net.band_limit}, cfg.out / "best.pt")
    net.load_state_dict(best_state)


# -------------------------------------------------------------------------------------------------- run
def train(args: argparse.Namespace) -> Path:
    """Train, pick thresholds, export <out>/occlusion.onnx and <out>/manifest_entry.json, install unless
    --smoke / --no-install. Returns the ONNX path."""
    ensure_logging()
    cfg = run_config(args)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    families, weights, train_weights = occluder_families(cfg)
    data = load_data(cfg)
    log.info(f"train pool {json.dumps(data.info)}  valid {len(data.valid['crops'])}")
    valid_sets = validation_sets(data.valid, cfg.seed + 1, families, weights)
    log.info(f"valid occluded set: positives per region "
             f"{dict(zip(REGIONS, valid_sets[2].sum(0).astype(int).tolist()))} ({time.time() - start:.0f}s)")

    net = build_model(cfg)
    macs = count_macs(net, INPUT_SIZE)
    log.info(f"model: {sum(p.numel() for p in net.parameters())} parameters, {macs / 1e6:.2f} M MACs")
    fit(net, data, valid_sets, cfg, train_weights, families, start)

    scores = valid_scores(net, valid_sets[0], valid_sets[1], data.ck_heldout)
    thresholds, metrics = final_metrics(scores, valid_sets[2], data, cfg)
    onnx_path = cfg.out / "occlusion.onnx"
    diff = export_occlusion_onnx(net, onnx_path)
    log.info(f"exported {onnx_path} (opset 17); max |torch - onnx| = {diff:.2e}")
    entry = manifest_entry(thresholds, metrics, macs, diff, cfg.version, cfg)
    (cfg.out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    if not cfg.no_install:
        install(onnx_path, entry)
    log.info(f"done in {time.time() - start:.0f}s")
    return onnx_path


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    train(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
