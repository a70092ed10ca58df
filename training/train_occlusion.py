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
import torch.nn as nn
import torch.nn.functional as F

from app.align import grey_input
from training.data import REPO_ROOT, RUNS_DIR
from training.macs import count_macs
from training.occluders import (
    HELDOUT_IMAGES, REGIONS, TRAIN_IMAGES, load_images, occlude,
)

INPUT_SIZE = 64
SEED = 20240611
MAX_FALSE_OCCLUSION = 0.02
MIN_THRESHOLD = 0.5


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
    path = cache_dir / f"{name}.npz"
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run `python -m training.prepare_faces` first")
    data = np.load(path)
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
                print(f"occluder failed on train face {i}: {exc}", flush=True)
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
def export_onnx(net: nn.Module, path: Path) -> float:
    import onnxruntime as ort

    model = WithSigmoid(net).eval()
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE) * 255
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.onnx.export(model, (dummy,), str(path), dynamo=False, opset_version=17, input_names=["input"],
                      output_names=["probabilities"],
                      dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}})
    check = torch.rand(8, 1, INPUT_SIZE, INPUT_SIZE) * 255
    with torch.no_grad():
        ref = model(check).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": check.numpy()})[0]
    return float(np.abs(ref - got).max())


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
        "card": "OCCLUSION.md",
        "bytes": 0,
    }


def install(onnx_path: Path, entry: dict) -> None:
    from app.model_zoo.base import sha256_of

    models = REPO_ROOT / "models"
    target = models / "occlusion.onnx"
    target.write_bytes(onnx_path.read_bytes())
    manifest_path = models / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    old = manifest["models"].get("occlusion", {})
    entry = dict(entry)
    if "metrics" in old:  # keep the test-set numbers evaluate_occlusion.py wrote, refresh the rest
        entry["metrics"] = {**old["metrics"], **entry["metrics"]}
    entry["sha256"] = sha256_of(target)
    entry["bytes"] = target.stat().st_size
    manifest["models"]["occlusion"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installed {target} and its manifest entry (sha256 {entry['sha256'][:16]}...)", flush=True)


# -------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
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
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.time()

    if args.smoke:
        data = load_cache("ckplus", args.cache)
        n_train = min(192, len(data["crops"]) * 2 // 3)
        train = {k: v[:n_train] for k, v in data.items()}
        valid = {k: v[n_train : n_train + 128] for k, v in data.items()}
        args.epochs, args.workers = 1, 0
    else:
        train, valid = load_cache("ferplus_train", args.cache), load_cache("ferplus_valid", args.cache)
    print(f"train {len(train['crops'])}  valid {len(valid['crops'])}", flush=True)

    valid_clean = np.stack([to_input(c) for c in valid["crops"]])[:, None]
    valid_occ, valid_y, _ = fixed_occluded_set(valid["crops"], valid["landmarks"], args.seed + 1)
    print(f"valid occluded set: positives per region {dict(zip(REGIONS, valid_y.sum(0).astype(int).tolist()))} "
          f"({time.time() - start:.0f}s)", flush=True)

    net = OcclusionNet(args.width)
    if args.init is not None:
        checkpoint = torch.load(args.init)
        net = OcclusionNet(checkpoint["width"])
        net.load_state_dict(checkpoint["state"])
        print(f"initialised from {args.init} (epoch {checkpoint['epoch']})", flush=True)
    macs = count_macs(net, INPUT_SIZE)
    print(f"model: {sum(p.numel() for p in net.parameters())} parameters, {macs / 1e6:.2f} M MACs", flush=True)
    dataset = OccludedTrainSet(train["crops"], train["landmarks"], args.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers,
                                         drop_last=True, persistent_workers=False,
                                         generator=torch.Generator().manual_seed(args.seed))
    steps_per_epoch = 3 if args.smoke else len(loader)
    optim = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(optim, max_lr=args.lr,
                                                total_steps=max(1, args.epochs * steps_per_epoch), pct_start=0.15)
    best, best_state = -1.0, {k: v.clone() for k, v in net.state_dict().items()}
    for epoch in range(args.epochs):
        dataset.epoch = epoch
        net.train()
        total, n = 0.0, 0
        for step, (x, y, w) in enumerate(loader):
            if step >= steps_per_epoch:
                break
            loss = (F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * w).sum() / w.sum().clamp(min=1)
            optim.zero_grad()
            loss.backward()
            optim.step()
            sched.step()
            total, n = total + loss.item() * len(x), n + len(x)
        clean_p, occ_p = predict(net, valid_clean), predict(net, valid_occ)
        thresholds = choose_thresholds(clean_p)
        recalls = [float(np.mean(occ_p[valid_y[:, k] > 0.5, k] >= thresholds[r])) for k, r in enumerate(REGIONS)]
        score = float(np.mean(recalls))
        print(f"epoch {epoch + 1}/{args.epochs} loss {total / max(n, 1):.4f} valid recall@thr "
              f"{' '.join(f'{r}={v:.3f}' for r, v in zip(REGIONS, recalls))} mean {score:.3f} "
              f"({time.time() - start:.0f}s)", flush=True)
        if score > best:
            best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            torch.save({"state": best_state, "width": net.features[0][0].out_channels, "epoch": epoch + 1},
                       args.out / "best.pt")

    net.load_state_dict(best_state)
    clean_p, occ_p = predict(net, valid_clean), predict(net, valid_occ)
    thresholds = choose_thresholds(clean_p)
    print("FER+ Valid (clean faces for FOR; seeded synthetic occlusions for recall/precision):")
    for line in describe(clean_p, occ_p, valid_y, thresholds):
        print("  " + line)
    diff = export_onnx(net, args.out / "occlusion.onnx")
    print(f"exported {args.out / 'occlusion.onnx'} (opset 17); max |torch - onnx| = {diff:.2e}", flush=True)
    metrics = {"ferplus_valid": {
        name: {"false_occlusion_rate_clean": round(float(np.mean(clean_p[:, k] >= thresholds[name])), 4),
               "recall_synthetic": round(float(np.mean(occ_p[valid_y[:, k] > 0.5, k] >= thresholds[name])), 4)}
        for k, name in enumerate(REGIONS)}}
    entry = manifest_entry(thresholds, metrics, macs, diff, args.version)
    (args.out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    if not (args.smoke or args.no_install):
        install(args.out / "occlusion.onnx", entry)
    print(f"done in {time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
    main()
