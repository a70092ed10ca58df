"""Train the expression recogniser on FER+ (cached aligned crops) and optionally export it to ONNX.

Ablation arms, same network, data order and budget:

    python -m training.train_expression --loss ce --name ce
    python -m training.train_expression --loss triplet --no-screening --name triplet
    python -m training.train_expression --loss triplet --screening --name screened
    python -m training.train_expression --loss quadruplet --screening --name quad   # optional variant

Export a trained run (temperature on Valid, prototypes on Train, ONNX + manifest entry):

    python -m training.export_expression runs/expression/screened --install

``--smoke``: a few batches on a tiny subset (synthetic faces when the cache is absent) into a temp dir,
then an export; used by tests/test_expression.py.

Reads runs/cache/ferplus_{train,valid,test}.npz written by ``python -m training.prepare_faces``.
Model selection uses FER+ Valid only; Test is evaluated once, for the checkpoint chosen on Valid.
"""
from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.model_zoo.expression import INPUT_SIZE, preprocess
from training.data import FERPLUS_CLASSES, REPO_ROOT, RUNS_DIR
from training.expression_model import ExpressionNet, predict
from training.macs import count_macs
from training.screening import ScreeningBounds, batch_stats, sphere_stats

CACHE = RUNS_DIR / "cache"
MODELS_DIR = REPO_ROOT / "models"
NC = len(FERPLUS_CLASSES)


# ----------------------------------------------------------------------------------------------- data
def majority_labels(votes: np.ndarray) -> np.ndarray:
    """Index of the strict plurality of the 10 votes, -1 when unknown/NF win or on a tie (FerPlusRow.majority)."""
    votes = np.asarray(votes, dtype=np.int64)
    top = votes.max(1, keepdims=True)
    winners = votes == top
    label = votes.argmax(1)
    bad = (winners.sum(1) != 1) | (label >= NC)
    return np.where(bad, -1, label)


def soft_targets(votes: np.ndarray) -> np.ndarray:
    v = np.asarray(votes, dtype=np.float32)[:, :NC]
    return v / np.maximum(v.sum(1, keepdims=True), 1.0)


def prescreen_mask(pose: np.ndarray, presence: np.ndarray, occluded: np.ndarray | None = None,
                   max_yaw: float = 30.0, max_pitch: float = 25.0, min_presence: float = 0.5
                   ) -> dict[str, np.ndarray]:
    """The service's pre-filters on training faces: side face (pose), mesh presence, occlusion."""
    side = (np.abs(pose[:, 0]) > max_yaw) | (np.abs(pose[:, 1]) > max_pitch)
    low = presence < min_presence
    occ = np.zeros_like(low) if occluded is None else occluded
    return {"side_face": side, "low_presence": low, "occluded": occ, "keep": ~(side | low | occ)}


def occluded_faces(crops: np.ndarray, models_dir: Path = MODELS_DIR) -> np.ndarray:
    """The service's occlusion verdict (models/occlusion.onnx, manifest thresholds, any region) per crop,
    scored the way training/evaluate_occlusion.py scores it."""
    from app.model_zoo.occlusion import REGIONS, OcclusionClassifier
    from training.evaluate_occlusion import score

    model = OcclusionClassifier(models_dir)
    limits = np.array([model.thresholds[r] for r in REGIONS], dtype=np.float32)
    return (score(model, crops) >= limits).any(1)


def load_split(split: str, cache: Path = CACHE, limit: int = 0, occlusion: bool = False) -> dict[str, np.ndarray]:
    with np.load(cache / f"ferplus_{split}.npz") as z:
        crops, votes, pose, presence = z["crops"], z["votes"], z["pose"], z["presence"]
    if limit:
        crops, votes, pose, presence = crops[:limit], votes[:limit], pose[:limit], presence[:limit]
    y = majority_labels(votes)
    ok = y >= 0
    x = np.stack([preprocess(c) for c in crops[ok]])[:, None]
    split_data = {"x": x, "y": y[ok], "soft": soft_targets(votes[ok]), "pose": pose[ok], "presence": presence[ok],
                  "dropped_no_majority": int((~ok).sum()), "total": int(len(y))}
    if occlusion:
        split_data["occluded"] = occluded_faces(crops[ok])
    return split_data


def ckplus_split(cache: Path, holdout: bool, holdout_every: int = 5) -> dict[str, np.ndarray]:
    """CK+ dev faces (posed, another domain) with one-hot targets. Subjects are split, never images: every
    ``holdout_every``-th subject (sorted ids) is held out for evaluation, the rest may join training."""
    from training.data import CKPLUS_TO_FERPLUS

    with np.load(cache / "ckplus.npz") as z:
        crops, emotions, subjects = z["crops"], z["emotions"], z["subjects"]
    ids = sorted(set(subjects.tolist()))
    held = {sid for i, sid in enumerate(ids) if i % holdout_every == 0}
    take = np.array([(sid in held) == holdout for sid in subjects])
    y = np.array([FERPLUS_CLASSES.index(CKPLUS_TO_FERPLUS[e]) for e in emotions[take]])
    x = np.stack([preprocess(c) for c in crops[take]])[:, None]
    return {"x": x, "y": y, "soft": np.eye(NC, dtype=np.float32)[y], "subjects": subjects[take]}


def corrupt_labels(split: dict[str, np.ndarray], fraction: float, seed: int) -> dict[str, np.ndarray]:
    """A copy of ``split`` in which ``fraction`` of the faces (seeded pick) carry a wrong class, uniformly
    among the other classes, as label and as one-hot target: the abnormal samples screening should reject."""
    rng = np.random.default_rng(seed + 7919)
    n = len(split["y"])
    hit = np.zeros(n, bool)
    hit[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
    y = split["y"].copy()
    y[hit] = (y[hit] + rng.integers(1, NC, int(hit.sum()))) % NC
    soft = split["soft"].copy()
    soft[hit] = np.eye(NC, dtype=np.float32)[y[hit]]
    return {**split, "y": y, "soft": soft, "corrupted": hit}


def synthetic_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Random 'faces' for the smoke run when no cache exists (CI): the class changes a bright patch."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, NC, n)
    x = rng.uniform(0.2, 0.4, (n, 1, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    for i, c in enumerate(y):
        x[i, 0, 6 * c: 6 * c + 6, :] += 0.5
    soft = np.eye(NC, dtype=np.float32)[y]
    return {"x": x, "y": y, "soft": soft, "pose": np.zeros((n, 3), np.float32),
            "presence": np.ones(n, np.float32), "occluded": np.zeros(n, bool), "dropped_no_majority": 0, "total": n}


# ------------------------------------------------------------------------------------------ augment
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip, small rotation/scale/shift, brightness/contrast, on a (B, 1, H, W) batch in [0, 1]."""
    b = x.shape[0]
    r = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    flip = torch.where(r(b) < 0.5, -1.0, 1.0)
    angle = (r(b) * 2 - 1) * math.radians(10)
    scale = 1.0 + (r(b) * 2 - 1) * 0.08
    tx, ty = (r(b) * 2 - 1) * 0.08, (r(b) * 2 - 1) * 0.08
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, tx], 1), torch.stack([sin * flip, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    contrast = 1.0 + (r(b, 1, 1, 1) * 2 - 1) * 0.3
    bright = (r(b, 1, 1, 1) * 2 - 1) * 0.1
    return ((x - 0.5) * contrast + 0.5 + bright).clamp(0, 1)


def augment_domain(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Camera/domain changes on a (B, 1, H, W) batch in [0, 1], each applied to a random half of the faces:
    gamma, blur or sharpening, low resolution (down- and up-sampling), sensor noise, and a cut-out patch
    (partial occluder)."""
    b, _, h, w = x.shape
    r = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    pick = lambda: (r(b, 1, 1, 1) < p).float()  # noqa: E731
    gamma = torch.exp((r(b, 1, 1, 1) * 2 - 1) * 0.4)
    x = torch.lerp(x, x.clamp_min(1e-4) ** gamma, pick())
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0)[None, None]
    blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel)
    amount = (r(b, 1, 1, 1) * 2 - 1) * 1.0  # < 0 blurs, > 0 sharpens (unsharp mask)
    x = torch.lerp(x, (x + amount * (x - blurred)).clamp(0, 1), pick())
    scale = 0.35 + 0.5 * float(r(1))
    small = F.interpolate(x, scale_factor=scale, mode="area")
    x = torch.lerp(x, F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False), pick())
    noise = torch.randn(x.shape, generator=gen) * (r(b, 1, 1, 1) * 0.04)
    x = torch.lerp(x, (x + noise).clamp(0, 1), pick())
    size = (r(b) * 0.35 * h).long() + 4
    cy, cx = (r(b) * h).long(), (r(b) * w).long()
    rows, cols = torch.arange(h)[None, :, None], torch.arange(w)[None, None, :]
    box = ((rows - cy[:, None, None]).abs() < size[:, None, None] // 2) & (
        (cols - cx[:, None, None]).abs() < size[:, None, None] // 2)
    cut = (box[:, None] & (r(b, 1, 1, 1) < p * 0.5)).float()
    return torch.lerp(x, r(b, 1, 1, 1).expand_as(x), cut)


# --------------------------------------------------------------------------------------------- loss
def metric_loss(emb: torch.Tensor, y: torch.Tensor, *, s: float, d: int, margin: float, screening: bool,
                alpha_p: float, alpha_n: float, mu_sigma: str = "batch", quadruplet: bool = False
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-hard triplet (or quadruplet) loss on embeddings of norm s, with statistical screening.

    A tuple is valid when anchor/positive share the class and the negatives differ (quadruplet: n1, n2
    from two more classes). With ``screening`` the hardest tuple is mined among the tuples that pass
    ``keep_triplet``/``keep_quadruplet`` (training/screening.py); anchors left with none drop out.
    The loss is in unit-sphere distance units (divided by s); ``margin`` too.
    Stats report the fraction of valid tuples the screening removes (computed in both modes).
    """
    b = emb.shape[0]
    sq = (emb * emb).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2 * emb @ emb.t()).clamp_min(1e-12).sqrt()
    same = y[:, None] == y[None, :]
    eye = torch.eye(b, dtype=torch.bool)
    pos, neg = same & ~eye, ~same
    mu_s, sigma_s = sphere_stats(s, d)
    try:
        mu_b, sigma_b = batch_stats(dist, same)
    except ValueError:
        mu_b, sigma_b = mu_s, sigma_s
    mu, sigma = (mu_b, sigma_b) if mu_sigma == "batch" else (mu_s, sigma_s)
    bounds = ScreeningBounds(mu, sigma, alpha_p, alpha_n)
    ok_pos = pos & (dist.detach() <= bounds.upper)
    ok_neg = neg & (dist.detach() >= bounds.lower)
    n_pos, n_neg = pos.sum(1).double(), neg.sum(1).double()
    k_pos, k_neg = ok_pos.sum(1).double(), ok_neg.sum(1).double()
    total = float((n_pos * n_neg).sum())
    kept = float((k_pos * k_neg).sum())
    stats = {"tuples": total, "screened_frac": 1.0 - kept / total if total else 0.0,
             "pos_screened": 1.0 - float(k_pos.sum() / n_pos.sum().clamp_min(1)),
             "neg_screened": 1.0 - float(k_neg.sum() / n_neg.sum().clamp_min(1)),
             "mu_batch": mu_b, "sigma_batch": sigma_b, "mu_sphere": mu_s, "sigma_sphere": sigma_s}
    P, N = (ok_pos, ok_neg) if screening else (pos, neg)
    big = 1e4
    hard_p = torch.where(P, dist, torch.full_like(dist, -big)).max(1).values
    hard_n = torch.where(N, dist, torch.full_like(dist, big)).min(1).values
    valid = P.any(1) & N.any(1)
    terms = F.relu(hard_p - hard_n + margin * s)
    if quadruplet:
        # (n1, n2): two samples of two different classes, both different from the anchor's
        pair_ok = (~same) & (N[:, :, None] & N[:, None, :])  # (a, i, j)
        if screening:
            pair_ok = pair_ok & (dist.detach() >= bounds.lower)[None]
        d_nn = torch.where(pair_ok, dist[None].expand(b, b, b), torch.full((b, b, b), big)).flatten(1).min(1).values
        qvalid = valid & pair_ok.flatten(1).any(1)
        terms = terms + torch.where(qvalid, F.relu(hard_p - d_nn + 0.5 * margin * s), torch.zeros_like(terms))
    stats["anchors_used"] = float(valid.float().mean())
    if not bool(valid.any()):
        return emb.sum() * 0.0, stats
    return terms[valid].mean() / s, stats


# --------------------------------------------------------------------------------------------- eval
@torch.no_grad()
def infer(net: ExpressionNet, x: np.ndarray, batch: int = 512, flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    net.eval()
    logits, embs = [], []
    for i in range(0, len(x), batch):
        lo, e = predict(net, torch.from_numpy(x[i: i + batch]), flip)
        logits.append(lo.numpy())
        embs.append(e.numpy())
    return np.concatenate(logits), np.concatenate(embs)


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean()) if len(y) else float("nan")


# -------------------------------------------------------------------------------------------- train
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["ce", "triplet", "quadruplet"], default="triplet")
    p.add_argument("--screening", dest="screening", action="store_true", default=True)
    p.add_argument("--no-screening", dest="screening", action="store_false")
    p.add_argument("--mu-sigma", choices=["batch", "sphere"], default="batch",
                   help="screening statistics: cross-class pairs of the batch (default) or the sphere formula")
    p.add_argument("--alpha-p", type=float, default=0.05)
    p.add_argument("--alpha-n", type=float, default=0.05)
    p.add_argument("--margin", type=float, default=0.3, help="triplet margin on the unit sphere")
    p.add_argument("--metric-weight", type=float, default=1.0)
    p.add_argument("--targets", choices=["soft", "majority"], default="soft",
                   help="CE targets: the 8-class vote distribution or the majority label")
    p.add_argument("--ckplus", action="store_true",
                   help="add CK+ dev faces of 4 in 5 subjects to training (the other subjects are held out and "
                        "reported); one-hot targets")
    p.add_argument("--ckplus-weight", type=int, default=4, help="times each CK+ training face is repeated")
    p.add_argument("--domain-aug", action="store_true",
                   help="also gamma, blur/sharpen, low resolution, noise and cut-out patches (augment_domain)")
    p.add_argument("--corrupt", type=float, default=0.0,
                   help="label-noise experiment: this fraction of FER+ Train faces gets a wrong class (seeded), as "
                        "its majority label and as a one-hot target")
    p.add_argument("--prescreen", action="store_true",
                   help="drop training faces the service would filter: |yaw|>30, |pitch|>25, mesh presence < 0.5 "
                        "or occluded (models/occlusion.onnx); the counts are logged either way")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--s", type=float, default=16.0)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="screened")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/expression/NAME)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--smoke", action="store_true", help="few batches, tiny subset, temp dir, then export")
    p.add_argument("--max-batches", type=int, default=0, help="batches per epoch cap (0 = all)")
    return p.parse_args(argv)


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(args: argparse.Namespace) -> Path:
    torch.set_num_threads(args.threads)
    set_seed(args.seed)
    if args.smoke:
        args.out = args.out or Path(tempfile.mkdtemp(prefix="expr_smoke_"))
        args.epochs, args.max_batches, args.batch = 1, 3, 32
    out = args.out or RUNS_DIR / "expression" / args.name
    out.mkdir(parents=True, exist_ok=True)
    have_cache = all((args.cache / f"ferplus_{s}.npz").is_file() for s in ("train", "valid", "test"))
    if args.smoke and not have_cache:
        data = {"train": synthetic_split(128, 1), "valid": synthetic_split(64, 2), "test": synthetic_split(64, 3)}
    elif not have_cache:
        sys.exit(f"no FER+ cache in {args.cache}; run `python -m training.prepare_faces` first")
    else:
        lim = 256 if args.smoke else 0
        data = {s: load_split(s, args.cache, lim, occlusion=s == "train") for s in ("train", "valid", "test")}
    tr = data["train"]
    screen_counts = prescreen_mask(tr["pose"], tr["presence"], tr["occluded"])
    counts = {"train_total": tr["total"], "train_no_majority": tr["dropped_no_majority"],
              "train_side_face": int(screen_counts["side_face"].sum()),
              "train_low_presence": int(screen_counts["low_presence"].sum()),
              "train_occluded": int(screen_counts["occluded"].sum()),
              "train_prescreened_out": int((~screen_counts["keep"]).sum()), "prescreen": args.prescreen,
              "valid_n": int(len(data["valid"]["y"])), "test_n": int(len(data["test"]["y"]))}
    if args.prescreen:
        keep = screen_counts["keep"]
        tr = {k: (v[keep] if isinstance(v, np.ndarray) else v) for k, v in tr.items()}
    if args.ckplus and not (args.smoke and not have_cache):
        ck = ckplus_split(args.cache, holdout=False)
        data["ckplus_heldout"] = ckplus_split(args.cache, holdout=True)
        reps = max(1, args.ckplus_weight)
        tr = {k: np.concatenate([tr[k], *[ck[k]] * reps]) for k in ("x", "y", "soft")}
        counts.update(ckplus_train=int(len(ck["y"])), ckplus_subjects_train=len(set(ck["subjects"].tolist())),
                      ckplus_heldout=int(len(data["ckplus_heldout"]["y"])))
    if args.corrupt:
        tr = corrupt_labels(tr, args.corrupt, args.seed)
        counts["train_corrupted"] = int(tr["corrupted"].sum())
    counts["train_used"] = int(len(tr["y"]))
    print(json.dumps(counts), flush=True)

    net = ExpressionNet(NC, args.d, args.s, args.width)
    print(f"ExpressionNet width={args.width} d={args.d} s={args.s}: {count_macs(net, INPUT_SIZE) / 1e6:.1f} MMACs, "
          f"{sum(p.numel() for p in net.parameters())} params", flush=True)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
    n = len(tr["y"])
    steps_per_epoch = n // args.batch
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    steps_per_epoch = max(steps_per_epoch, 1)
    total_steps = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total_steps, pct_start=0.15)
    gen = torch.Generator().manual_seed(args.seed)
    order_rng = np.random.default_rng(args.seed)
    x_all, y_all = torch.from_numpy(tr["x"]), torch.from_numpy(tr["y"]).long()
    soft_all = torch.from_numpy(tr["soft"])
    best, history = -1.0, []
    for epoch in range(1, args.epochs + 1):
        net.train()
        t0 = time.time()
        perm = torch.from_numpy(order_rng.permutation(n))
        agg: dict[str, float] = {}
        for step in range(steps_per_epoch):
            idx = perm[step * args.batch: (step + 1) * args.batch]
            xb, yb = augment(x_all[idx], gen), y_all[idx]
            if args.domain_aug:
                xb = augment_domain(xb, gen)
            logits, emb = net(xb)
            if args.targets == "soft":
                ce = -(soft_all[idx] * F.log_softmax(logits, 1)).sum(1).mean()
            else:
                ce = F.cross_entropy(logits, yb)
            loss = ce
            if args.loss != "ce":
                ml, st = metric_loss(emb, yb, s=args.s, d=args.d, margin=args.margin, screening=args.screening,
                                     alpha_p=args.alpha_p, alpha_n=args.alpha_n, mu_sigma=args.mu_sigma,
                                     quadruplet=args.loss == "quadruplet")
                loss = ce + args.metric_weight * ml
                st["metric"] = float(ml.detach())
            else:
                with torch.no_grad():  # what screening would do, for the log
                    _, st = metric_loss(emb.detach(), yb, s=args.s, d=args.d, margin=args.margin, screening=True,
                                        alpha_p=args.alpha_p, alpha_n=args.alpha_n, mu_sigma=args.mu_sigma)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            st["ce"], st["loss"] = float(ce.detach()), float(loss.detach())
            for k, v in st.items():
                agg[k] = agg.get(k, 0.0) + v
        agg = {k: v / steps_per_epoch for k, v in agg.items()}
        v_logits, _ = infer(net, data["valid"]["x"])
        v_acc = accuracy(v_logits, data["valid"]["y"])
        if "ckplus_heldout" in data:  # reported, never used for selection
            agg["ckplus_heldout_acc"] = accuracy(infer(net, data["ckplus_heldout"]["x"])[0], data["ckplus_heldout"]["y"])
        rec = {"epoch": epoch, "valid_acc": v_acc, "sec": time.time() - t0, **{k: round(v, 5) for k, v in agg.items()}}
        history.append(rec)
        print(json.dumps(rec), flush=True)
        if v_acc > best:
            best = v_acc
            torch.save({"state": net.state_dict(), "args": {k: str(v) if isinstance(v, Path) else v
                                                          for k, v in vars(args).items()}, "epoch": epoch},
                       out / "best.pt")
    ckpt = torch.load(out / "best.pt", weights_only=False)
    net.load_state_dict(ckpt["state"])
    t_logits, _ = infer(net, data["test"]["x"])
    summary = {"name": args.name, "loss": args.loss, "screening": args.screening and args.loss != "ce",
               "best_epoch": ckpt["epoch"], "valid_acc": best, "test_acc": accuracy(t_logits, data["test"]["y"]),
               "counts": counts, "history": history, "macs": count_macs(net, INPUT_SIZE)}
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("name", "best_epoch", "valid_acc", "test_acc")}), flush=True)
    if args.smoke:
        from training.export_expression import export_run

        export_run(out, data=data, onnx_path=out / "expression.onnx")
    return out


def main(argv=None) -> None:
    train(parse_args(argv))


if __name__ == "__main__":
    main()
