"""Train the per-region occlusion classifier (eyes, nose, mouth, brows) and export it to ONNX.

Data: FER+ Train aligned crops from runs/cache (made by training/prepare_faces.py with the service's
own landmark + alignment code); about half of each batch gets 1-3 synthetic occluders from
training/occluders.py, drawn on the fly. Validation: FER+ Valid, every face once clean and once with a
fixed, seeded occluder draw. FER+ has naturally occluded faces (hands, glasses, hair, text); they count
as "clean" here, so the clean labels carry some noise.

    python -m training.train_occlusion                       # full run (~25 min on 1 CPU thread)
    python -m training.train_occlusion --smoke --out /tmp/occ # plumbing check, < 60 s

Writes <out>/occlusion.onnx (and, unless --smoke or --no-install, models/occlusion.onnx plus its
manifest entry with per-region thresholds), <out>/train.log lines on stdout, <out>/best.pt.

Thresholds: per region, the smallest t >= 0.5 for which at most 2% of the clean FER+ Valid faces score
>= t (false-occlusion rate <= 2% on clean faces, which the natural FER+ occlusions make pessimistic).
"""
from __future__ import annotations

import argparse
import json
import time
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
from training.occluders import HELDOUT_IMAGES, REGIONS, TRAIN_IMAGES, load_images, occlude
from training.torch_utils import count_macs, export_onnx, seed_everything

INPUT_SIZE = 64
SEED = 20240611
MAX_FALSE_OCCLUSION = 0.02
MIN_THRESHOLD = 0.5
SMOKE_BATCHES = 3


# ------------------------------------------------------------------------------------------ model
def conv_bn(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class OcclusionNet(nn.Module):
    """64x64 grey (0..255) -> 4 logits. Spatial features are flattened, not pooled: each output must
    know *where* in the aligned crop the evidence is."""

    def __init__(self, width: int = 12) -> None:
        super().__init__()
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
    if r < 0.25:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.4, 1.3))
    elif r < 0.45:
        blur = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 2.0))
        img = img + rng.uniform(0.3, 1.2) * (img - blur)
    if rng.random() < 0.4:
        img = img + rng.normal(0, rng.uniform(1, 8), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def load_cache(name: str, cache_dir: Path = RUNS_DIR / "cache") -> dict[str, np.ndarray]:
    data = np.load(require_file(cache_dir / f"{name}.npz", "python -m training.prepare_faces"))
    return {"crops": data["crops"], "landmarks": data["landmarks"].astype(np.float32)}


class OccludedTrainSet(torch.utils.data.Dataset):
    def __init__(self, crops: np.ndarray, landmarks: np.ndarray, seed: int, clean_fraction: float = 0.5) -> None:
        self.crops, self.landmarks, self.seed, self.clean_fraction = crops, landmarks, seed, clean_fraction
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
        if rng.random() < self.clean_fraction:
            image, labels, weights = crop, np.zeros(len(REGIONS), np.float32), np.ones(len(REGIONS), np.float32)
        else:
            try:
                occ = occlude(crop, self.landmarks[i], rng, self._context())
                image, labels, weights = occ.image, occ.labels, occ.weights
            except (ValueError, cv2.error) as exc:  # degenerate landmarks: keep the face clean
                log.warning(f"occluder failed on train face {i}: {exc}")
                image, labels, weights = crop, np.zeros(len(REGIONS), np.float32), np.ones(len(REGIONS), np.float32)
        x = to_input(photometric(image, rng))[None]
        return torch.from_numpy(x), torch.from_numpy(labels), torch.from_numpy(weights)


def fixed_occluded_set(crops: np.ndarray, landmarks: np.ndarray, seed: int, images_names=TRAIN_IMAGES,
                       families=None, other_pool: np.ndarray | None = None, heldout: bool = False):
    """Every face once with a seeded occluder draw (1-3 occluders). Returns inputs, labels, fractions."""
    from training.occluders import TRAIN_FAMILIES, TRAIN_WEIGHTS

    pool = crops if other_pool is None else other_pool
    ctx = {"images": load_images(images_names), "other_crop": lambda r: pool[r.integers(len(pool))]}
    if heldout:
        ctx["heldout_images"] = load_images(HELDOUT_IMAGES)
    fams = families or TRAIN_FAMILIES
    w = TRAIN_WEIGHTS if families is None else None
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


def choose_thresholds(clean_probs: np.ndarray) -> dict[str, float]:
    out = {}
    for k, name in enumerate(REGIONS):
        q = float(np.quantile(clean_probs[:, k], 1 - MAX_FALSE_OCCLUSION, method="higher"))
        out[name] = round(max(MIN_THRESHOLD, min(q + 1e-4, 0.99)), 4)
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


# ------------------------------------------------------------------------------------------ export
def export_occlusion_onnx(net: nn.Module, path: Path) -> float:
    """Network + sigmoid to ONNX; max |torch - onnx| on random 0..255 input."""
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    check = torch.rand(8, 1, INPUT_SIZE, INPUT_SIZE) * 255
    return export_onnx(WithSigmoid(net).eval(), path, dummy, ["probabilities"], {"random": check})


def manifest_entry(thresholds: dict[str, float], metrics: dict, macs: int, diff: float, version: str) -> dict:
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
        "threshold_rule": f"per region, the smallest t >= {MIN_THRESHOLD} with <= {MAX_FALSE_OCCLUSION:.0%} of clean "
                          "FER+ Valid faces at or above t",
        "label_rule": ">= 30% of the region's landmark mask covered by occluders (alpha > 0.5); 15-30% ignored "
                      "in training",
        "architecture": f"6 conv3x3-BN-ReLU (4 stride 2) + 2 linear, {macs / 1e6:.2f} M MACs "
                        f"({2 * macs / 1e6:.1f} MFLOPs)",
        "export_check": f"max |torch - onnx| = {diff:.1e} on random input (training/train_occlusion.py)",
        "metrics": metrics,
        "training_data": "FER+ Train aligned crops (runs/cache/ferplus_train.npz) + synthetic occluders "
                         "(training/occluders.py: hands, bars, scarves, sunglasses, masks, textures, real image "
                         "patches); about half the samples clean",
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
    return parser.parse_args(argv)


def run_config(args: argparse.Namespace) -> argparse.Namespace:
    """What ``args`` implies, as a new namespace (``args`` is left as given): ``--smoke`` is one epoch of
    3 batches in the main process, and never installs."""
    cfg = argparse.Namespace(**vars(args))
    cfg.max_batches = 0
    if args.smoke:
        cfg.epochs, cfg.workers, cfg.max_batches, cfg.no_install = 1, 0, SMOKE_BATCHES, True
    return cfg


# ------------------------------------------------------------------------------------------------- data
def load_data(cfg: argparse.Namespace) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(train, valid) crops and landmarks: FER+ Train / Valid, or for --smoke two slices of CK+."""
    if cfg.smoke:
        data = load_cache("ckplus", cfg.cache)
        n_train = min(192, len(data["crops"]) * 2 // 3)
        return {k: v[:n_train] for k, v in data.items()}, {k: v[n_train: n_train + 128] for k, v in data.items()}
    return load_cache("ferplus_train", cfg.cache), load_cache("ferplus_valid", cfg.cache)


def validation_sets(valid: dict[str, np.ndarray], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Valid inputs clean, the same faces with a seeded occluder draw, and the latter's labels."""
    valid_clean = np.stack([to_input(c) for c in valid["crops"]])[:, None]
    valid_occ, valid_y, _ = fixed_occluded_set(valid["crops"], valid["landmarks"], seed)
    return valid_clean, valid_occ, valid_y


# ------------------------------------------------------------------------------------------------ model
def build_model(cfg: argparse.Namespace) -> OcclusionNet:
    net = OcclusionNet(cfg.width)
    if cfg.init is not None:
        checkpoint = torch.load(cfg.init)
        net = OcclusionNet(checkpoint["width"])
        net.load_state_dict(checkpoint["state"])
        log.info(f"initialised from {cfg.init} (epoch {checkpoint['epoch']})")
    return net


# ------------------------------------------------------------------------------------------------- loop
def train_epoch(net: nn.Module, loader, optim, sched, steps: int) -> float:
    """``steps`` batches of weighted BCE (ambiguous regions weigh 0); returns the mean loss per face."""
    net.train()
    total, n = 0.0, 0
    for step, (x, y, w) in enumerate(loader):
        if step >= steps:
            break
        loss = (F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * w).sum() / w.sum().clamp(min=1)
        optim.zero_grad()
        loss.backward()
        optim.step()
        sched.step()
        total, n = total + loss.item() * len(x), n + len(x)
    return total / max(n, 1)


# ----------------------------------------------------------------------------------------------- select
def valid_recalls(net: nn.Module, valid_clean: np.ndarray, valid_occ: np.ndarray, valid_y: np.ndarray
                  ) -> tuple[list[float], dict[str, float]]:
    """Recall per region on the occluded Valid set at the thresholds the clean Valid faces give."""
    clean_p, occ_p = predict(net, valid_clean), predict(net, valid_occ)
    thresholds = choose_thresholds(clean_p)
    recalls = [float(np.mean(occ_p[valid_y[:, k] > 0.5, k] >= thresholds[r])) for k, r in enumerate(REGIONS)]
    return recalls, thresholds


def final_metrics(net: nn.Module, valid_clean: np.ndarray, valid_occ: np.ndarray, valid_y: np.ndarray
                  ) -> tuple[dict[str, float], dict]:
    """Thresholds of the selected network and its FER+ Valid numbers (logged and stored in the manifest)."""
    clean_p, occ_p = predict(net, valid_clean), predict(net, valid_occ)
    thresholds = choose_thresholds(clean_p)
    log.info("FER+ Valid (clean faces for FOR; seeded synthetic occlusions for recall/precision):")
    for line in describe(clean_p, occ_p, valid_y, thresholds):
        log.info("  " + line)
    metrics = {"ferplus_valid": {
        name: {"false_occlusion_rate_clean": round(float(np.mean(clean_p[:, k] >= thresholds[name])), 4),
               "recall_synthetic": round(float(np.mean(occ_p[valid_y[:, k] > 0.5, k] >= thresholds[name])), 4)}
        for k, name in enumerate(REGIONS)}}
    return thresholds, metrics


# -------------------------------------------------------------------------------------------------- run
def train(args: argparse.Namespace) -> Path:
    """Train, pick thresholds, export <out>/occlusion.onnx and <out>/manifest_entry.json, install unless
    --smoke / --no-install. Returns the ONNX path."""
    ensure_logging()
    cfg = run_config(args)
    torch.set_num_threads(1)
    seed_everything(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    train_set, valid = load_data(cfg)
    log.info(f"train {len(train_set['crops'])}  valid {len(valid['crops'])}")
    valid_clean, valid_occ, valid_y = validation_sets(valid, cfg.seed + 1)
    log.info(f"valid occluded set: positives per region {dict(zip(REGIONS, valid_y.sum(0).astype(int).tolist()))} "
             f"({time.time() - start:.0f}s)")

    net = build_model(cfg)
    macs = count_macs(net, INPUT_SIZE)
    log.info(f"model: {sum(p.numel() for p in net.parameters())} parameters, {macs / 1e6:.2f} M MACs")
    dataset = OccludedTrainSet(train_set["crops"], train_set["landmarks"], cfg.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.batch, shuffle=True, num_workers=cfg.workers,
                                         drop_last=True, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    steps = cfg.max_batches or len(loader)
    optim = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * steps),
                                                pct_start=0.15)

    best, best_state = -1.0, {k: v.clone() for k, v in net.state_dict().items()}
    for epoch in range(cfg.epochs):
        dataset.epoch = epoch
        loss = train_epoch(net, loader, optim, sched, steps)
        recalls, _ = valid_recalls(net, valid_clean, valid_occ, valid_y)
        score = float(np.mean(recalls))
        log.info(f"epoch {epoch + 1}/{cfg.epochs} loss {loss:.4f} valid recall@thr "
                 f"{' '.join(f'{r}={v:.3f}' for r, v in zip(REGIONS, recalls))} mean {score:.3f} "
                 f"({time.time() - start:.0f}s)")
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            torch.save({"state": best_state, "width": net.features[0][0].out_channels, "epoch": epoch + 1},
                       cfg.out / "best.pt")

    net.load_state_dict(best_state)
    thresholds, metrics = final_metrics(net, valid_clean, valid_occ, valid_y)
    onnx_path = cfg.out / "occlusion.onnx"
    diff = export_occlusion_onnx(net, onnx_path)
    log.info(f"exported {onnx_path} (opset 17); max |torch - onnx| = {diff:.2e}")
    entry = manifest_entry(thresholds, metrics, macs, diff, cfg.version)
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
