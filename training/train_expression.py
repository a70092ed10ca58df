"""Train the expression recogniser on FER+ (cached aligned crops) and optionally export it to ONNX.

Ablation arms, same network, data order and budget:

    python -m training.train_expression --loss ce --name ce
    python -m training.train_expression --loss triplet --no-screening --name triplet
    python -m training.train_expression --loss triplet --screening --name screened
    python -m training.train_expression --loss quadruplet --screening --name quad   # optional variant

Two levers against the FER+ class prior, each an option on top of any arm (default off; both keep the
metric loss):

    python -m training.train_expression --logit-adjust 1.0   # CE on logits + tau * log(prior): raw logits balanced
    python -m training.train_expression --mixup 0.2          # mix pairs of faces and their target distributions

``--logit-adjust TAU`` (Menon et al. 2021, "Long-tail learning via logit adjustment"): the cross-entropy
reads ``logits + TAU * log(prior)``, prior = class frequencies of the training majority labels (FER+ Train's,
the same numbers as ``training.fit_expression_prior.ferplus_prior``). The network then need not learn the
prior itself, so its raw logits (and the exported ONNX scores) are the class-balanced ones; adding
``TAU * log(prior)`` back gives the FER+-prior reading, which is what selects the checkpoint on FER+ Valid
(the same criterion as every other arm).

``--mixup ALPHA`` (Zhang et al. 2018): after augmentation each batch is blended with a shuffled copy of
itself, x = lam * x + (1 - lam) * x[partner], and the CE targets (vote distributions, or one-hot majority
labels) with the same lam, lam ~ Beta(ALPHA, ALPHA) once per batch and folded to lam >= 0.5 so that every
mixed face is dominated by its own image. The triplet loss and its screening then use the faces' own
majority labels (the dominant label of each mixed face): there is no second, un-mixed forward pass. lam and
the partners come from their own generator, so batch order and augmentation match the arm without mixup.

Export a trained run (temperature on Valid, prototypes on Train, ONNX + manifest entry):

    python -m training.export_expression runs/expression/screened --install

``--smoke``: a few batches on a tiny subset (synthetic faces when the cache is absent) into a temp dir,
then an export; used by tests/test_expression.py.

Reads runs/cache/ferplus_{train,valid,test}.npz written by ``python -m training.prepare_faces``.
Model selection uses FER+ Valid only; Test is evaluated once, for the checkpoint chosen on Valid.

Reading order: ``train`` at the bottom runs config -> data -> model -> epochs (loop, select) -> test -> export.
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.model_zoo.expression import INPUT_SIZE
from training.common import MissingDataError, accuracy, ensure_logging, log, run_cli, setup_logging
from training.data import RUNS_DIR
from training.expression_data import (
    CACHE,
    NC,
    PREPARE,
    SPLITS,
    ckplus_split,
    corrupt_labels,
    have_cache,
    load_split,
    prescreen_mask,
    synthetic_split,
)
from training.expression_model import ExpressionNet, infer
from training.screening import ScreeningBounds, batch_stats, keep_negative, keep_positive, sphere_stats
from training.torch_utils import count_macs, seed_everything

SMOKE = {"epochs": 1, "max_batches": 3, "batch": 32}  # and the first SMOKE_FACES faces of each split
SMOKE_FACES = 256


# ------------------------------------------------------------------------------------------ augment
def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Horizontal flip, small rotation/scale/shift, brightness/contrast, on a (B, 1, H, W) batch in [0, 1]."""
    b = x.shape[0]
    r = lambda *shape: torch.rand(*shape, generator=gen)
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
    r = lambda *shape: torch.rand(*shape, generator=gen)
    pick = lambda: (r(b, 1, 1, 1) < p).float()
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


# ------------------------------------------------------------------------ levers against the class prior
def class_log_prior(y: np.ndarray, nc: int = NC) -> torch.Tensor:
    """log of the class frequencies of the training majority labels ``y``; a class with no face counts as
    half a face, so the log stays finite (the smoke data may miss a class; FER+ Train misses none)."""
    counts = np.maximum(np.bincount(y, minlength=nc).astype(np.float64), 0.5)
    return torch.from_numpy(np.log(counts / counts.sum())).float()


def adjusted_logits(logits: torch.Tensor, log_prior: torch.Tensor | None, tau: float) -> torch.Tensor:
    """What the training CE reads under logit adjustment: ``logits + tau * log_prior`` (``logits`` as they
    are for tau = 0). Minimising CE on these makes softmax(logits + tau log prior) fit the training labels,
    so softmax(logits) itself is the prior-free (for tau = 1, class-balanced) score."""
    if not tau:
        return logits
    if log_prior is None:
        raise ValueError("logit adjustment needs the class prior")
    return logits + tau * log_prior


def mixup(x: torch.Tensor, target: torch.Tensor, alpha: float, rng: np.random.Generator
          ) -> tuple[torch.Tensor, torch.Tensor, float, torch.Tensor]:
    """(mixed x, mixed targets, lam, partner): ``x`` (B, ...) and ``target`` (B, NC) distributions blended with
    ``x[partner]``, ``target[partner]`` by the same lam ~ Beta(alpha, alpha) folded to lam >= 0.5 (each row
    stays dominated by its own face, whose majority label the metric loss keeps). alpha <= 0: unchanged."""
    b = x.shape[0]
    if alpha <= 0:
        return x, target, 1.0, torch.arange(b)
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    partner = torch.from_numpy(rng.permutation(b))
    return lam * x + (1 - lam) * x[partner], lam * target + (1 - lam) * target[partner], lam, partner


# --------------------------------------------------------------------------------------------- loss
def metric_loss(emb: torch.Tensor, y: torch.Tensor, *, s: float, d: int, margin: float, screening: bool,
                alpha_p: float, alpha_n: float, mu_sigma: str = "batch", quadruplet: bool = False
                ) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-hard triplet (or quadruplet) loss on embeddings of norm s, with statistical screening.

    A tuple is valid when anchor/positive share the class and the negatives differ (quadruplet: n1, n2
    from two more classes). Screening (training/screening.py) tests each distance of a tuple on its own:
    ``keep_positive`` on d(a, p), ``keep_negative`` on d(a, n) (and, for quadruplets, on d(a, n2) and
    d(n1, n2)); a tuple survives when all its distances do. So with ``screening`` the hardest positive
    is mined among the pairs passing ``keep_positive`` and the hardest negative among those passing
    ``keep_negative``, which is mining the hardest among the surviving tuples; anchors left with none drop
    out. The loss is in unit-sphere distance units (divided by s); ``margin`` too.
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
    pair_kept_as_negative = keep_negative(dist.detach(), bounds)
    ok_pos = pos & keep_positive(dist.detach(), bounds)
    ok_neg = neg & pair_kept_as_negative
    n_pos, n_neg = pos.sum(1).double(), neg.sum(1).double()
    k_pos, k_neg = ok_pos.sum(1).double(), ok_neg.sum(1).double()
    total = float((n_pos * n_neg).sum())
    kept = float((k_pos * k_neg).sum())  # triplets (a, p, n) passing both tests
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
            pair_ok = pair_ok & pair_kept_as_negative[None]  # d(n1, n2) passes keep_negative too
        d_nn = torch.where(pair_ok, dist[None].expand(b, b, b), torch.full((b, b, b), big)).flatten(1).min(1).values
        qvalid = valid & pair_ok.flatten(1).any(1)
        terms = terms + torch.where(qvalid, F.relu(hard_p - d_nn + 0.5 * margin * s), torch.zeros_like(terms))
    stats["anchors_used"] = float(valid.float().mean())
    if not bool(valid.any()):
        return emb.sum() * 0.0, stats
    return terms[valid].mean() / s, stats


# ------------------------------------------------------------------------------------------- config
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
    p.add_argument("--logit-adjust", type=float, default=0.0, metavar="TAU",
                   help="logit adjustment: the training CE reads logits + TAU * log(FER+ Train class prior), so the "
                        "raw logits come out class-balanced (0 = off; Menon et al. 2021)")
    p.add_argument("--mixup", type=float, default=0.0, metavar="ALPHA",
                   help="mixup of faces and CE targets, lam ~ Beta(ALPHA, ALPHA) folded to >= 0.5, one per batch; "
                        "the metric loss keeps each face's own (dominant) majority label (0 = off)")
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
                   help="drop training faces the service would filter with its default settings (side face, low mesh "
                        "presence) or as occluded (models/occlusion.onnx); the counts are logged either way")
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


def run_config(args: argparse.Namespace) -> argparse.Namespace:
    """What ``args`` implies, as a new namespace (``args`` is left as given): the run folder, and for
    ``--smoke`` one epoch of 3 batches of 32 in a temporary folder."""
    cfg = argparse.Namespace(**vars(args))
    if args.smoke:
        vars(cfg).update(SMOKE)
        cfg.out = args.out or Path(tempfile.mkdtemp(prefix="expr_smoke_"))
    cfg.out = cfg.out or RUNS_DIR / "expression" / args.name
    return cfg


# --------------------------------------------------------------------------------------------- data
Splits = dict[str, dict[str, np.ndarray]]


def load_data(cfg: argparse.Namespace) -> tuple[Splits, dict[str, np.ndarray], dict[str, Any]]:
    """The splits as cached, the training set as trained on (pre-screened, CK+ added, labels corrupted as
    asked), and the counts of each step."""
    cached = have_cache(cfg.cache)
    if cfg.smoke and not cached:
        data = {"train": synthetic_split(128, 1), "valid": synthetic_split(64, 2), "test": synthetic_split(64, 3)}
    elif not cached:
        raise MissingDataError(f"no FER+ cache in {cfg.cache}; run `{PREPARE}` first")
    else:
        limit = SMOKE_FACES if cfg.smoke else 0
        data = {s: load_split(s, cfg.cache, limit, occlusion=s == "train") for s in SPLITS}
    tr = data["train"]
    screened = prescreen_mask(tr["pose"], tr["presence"], tr["occluded"])
    counts: dict[str, Any] = {
        "train_total": tr["total"], "train_no_majority": tr["dropped_no_majority"],
        "train_side_face": int(screened["side_face"].sum()), "train_low_presence": int(screened["low_presence"].sum()),
        "train_occluded": int(screened["occluded"].sum()), "train_prescreened_out": int((~screened["keep"]).sum()),
        "prescreen": cfg.prescreen, "valid_n": len(data["valid"]["y"]), "test_n": len(data["test"]["y"])}
    if cfg.prescreen:
        tr = {k: (v[screened["keep"]] if isinstance(v, np.ndarray) else v) for k, v in tr.items()}
    if cfg.ckplus and cached:
        ck = ckplus_split(cfg.cache, holdout=False)
        data["ckplus_heldout"] = ckplus_split(cfg.cache, holdout=True)
        tr = {k: np.concatenate([tr[k], *[ck[k]] * max(1, cfg.ckplus_weight)]) for k in ("x", "y", "soft")}
        counts.update(ckplus_train=len(ck["y"]), ckplus_subjects_train=len(set(ck["subjects"].tolist())),
                      ckplus_heldout=len(data["ckplus_heldout"]["y"]))
    if cfg.corrupt:
        tr = corrupt_labels(tr, cfg.corrupt, cfg.seed)
        counts["train_corrupted"] = int(tr["corrupted"].sum())
    counts["train_used"] = len(tr["y"])
    return data, tr, counts


# -------------------------------------------------------------------------------------------- model
def steps_per_epoch(n: int, cfg: argparse.Namespace) -> int:
    steps = n // cfg.batch
    if cfg.max_batches:
        steps = min(steps, cfg.max_batches)
    return max(steps, 1)


def build_model(cfg: argparse.Namespace, steps: int) -> tuple[ExpressionNet, torch.optim.Optimizer, Any]:
    """The network (initialised from torch's global generator), AdamW and the one-cycle schedule."""
    net = ExpressionNet(NC, cfg.d, cfg.s, cfg.width)
    log.info(f"ExpressionNet width={cfg.width} d={cfg.d} s={cfg.s}: {count_macs(net, INPUT_SIZE) / 1e6:.1f} MMACs, "
             f"{sum(p.numel() for p in net.parameters())} params")
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps * cfg.epochs, pct_start=0.15)
    return net, opt, sched


# --------------------------------------------------------------------------------------------- loop
def batch_loss(net: ExpressionNet, xb: torch.Tensor, yb: torch.Tensor, target: torch.Tensor,
               cfg: argparse.Namespace, log_prior: torch.Tensor | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, CE term, stats): CE against the target distributions ``target`` (vote distributions or one-hot
    majority labels, mixed under ``--mixup``) on the logits, shifted by ``--logit-adjust`` tau * ``log_prior``;
    plus the metric loss on the majority labels ``yb`` unless ``--loss ce`` (then the screening stats are
    still computed, for the log)."""
    logits, emb = net(xb)
    ce = -(target * F.log_softmax(adjusted_logits(logits, log_prior, cfg.logit_adjust), 1)).sum(1).mean()
    metric_args = {"s": cfg.s, "d": cfg.d, "margin": cfg.margin, "alpha_p": cfg.alpha_p, "alpha_n": cfg.alpha_n,
                   "mu_sigma": cfg.mu_sigma}
    if cfg.loss == "ce":
        with torch.no_grad():  # what screening would do, for the log
            _, stats = metric_loss(emb.detach(), yb, screening=True, **metric_args)
        return ce, ce, stats
    ml, stats = metric_loss(emb, yb, screening=cfg.screening, quadruplet=cfg.loss == "quadruplet", **metric_args)
    stats["metric"] = float(ml.detach())
    return ce + cfg.metric_weight * ml, ce, stats


def train_epoch(net: ExpressionNet, opt: torch.optim.Optimizer, sched: Any, train: dict[str, np.ndarray],
                cfg: argparse.Namespace, steps: int, gen: torch.Generator, order_rng: np.random.Generator,
                mix_rng: np.random.Generator | None = None, log_prior: torch.Tensor | None = None
                ) -> dict[str, float]:
    """One pass over ``steps`` batches in a fresh random order; returns the mean of each logged stat."""
    net.train()
    x_all, y_all = torch.from_numpy(train["x"]), torch.from_numpy(train["y"]).long()
    target_all = torch.from_numpy(train["soft"]) if cfg.targets == "soft" else F.one_hot(y_all, NC).float()
    perm = torch.from_numpy(order_rng.permutation(len(train["y"])))
    sums: dict[str, float] = {}
    for step in range(steps):
        idx = perm[step * cfg.batch: (step + 1) * cfg.batch]
        xb = augment(x_all[idx], gen)
        if cfg.domain_aug:
            xb = augment_domain(xb, gen)
        target = target_all[idx]
        if cfg.mixup > 0:
            xb, target, lam, _ = mixup(xb, target, cfg.mixup, mix_rng)
        loss, ce, stats = batch_loss(net, xb, y_all[idx], target, cfg, log_prior)
        if cfg.mixup > 0:
            stats["mixup_lam"] = lam
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stats["ce"], stats["loss"] = float(ce.detach()), float(loss.detach())
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / steps for k, v in sums.items()}


# ------------------------------------------------------------------------------------------- select
def validate(net: ExpressionNet, data: dict[str, dict[str, np.ndarray]], shift: np.ndarray | float = 0.0
             ) -> dict[str, float]:
    """FER+ Valid accuracy (selects the checkpoint) and, when present, held-out CK+ (reported only), of the
    logits + ``shift`` (``--logit-adjust``: tau * log prior, the FER+-prior reading, as in every other arm)."""
    scores = {"valid_acc": accuracy(infer(net, data["valid"]["x"])[0] + shift, data["valid"]["y"])}
    if "ckplus_heldout" in data:
        scores["ckplus_heldout_acc"] = accuracy(infer(net, data["ckplus_heldout"]["x"])[0] + shift,
                                                data["ckplus_heldout"]["y"])
    return scores


def save_checkpoint(net: ExpressionNet, cfg: argparse.Namespace, epoch: int) -> None:
    args = {k: str(v) if isinstance(v, Path) else v for k, v in vars(cfg).items()}
    torch.save({"state": net.state_dict(), "args": args, "epoch": epoch}, cfg.out / "best.pt")


def load_best(net: ExpressionNet, cfg: argparse.Namespace) -> int:
    """Load the checkpoint chosen on Valid into ``net``; returns its epoch."""
    ckpt = torch.load(cfg.out / "best.pt", weights_only=False)
    net.load_state_dict(ckpt["state"])
    return int(ckpt["epoch"])


# -------------------------------------------------------------------------------------------- train
def train(args: argparse.Namespace) -> Path:
    """Train one run into its folder (best.pt, metrics.json; with --smoke also the exported ONNX)."""
    ensure_logging()
    cfg = run_config(args)
    torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    cfg.out.mkdir(parents=True, exist_ok=True)

    data, train_split, counts = load_data(cfg)
    log.info(json.dumps(counts))
    steps = steps_per_epoch(len(train_split["y"]), cfg)
    net, opt, sched = build_model(cfg, steps)
    log_prior = class_log_prior(train_split["y"])  # used by --logit-adjust only
    shift = cfg.logit_adjust * log_prior.numpy()  # raw logits -> FER+-prior reading (0 without the option)
    if cfg.logit_adjust:
        log.info(f"logit adjustment tau={cfg.logit_adjust}, prior {np.round(np.exp(log_prior.numpy()), 4).tolist()}")

    gen = torch.Generator().manual_seed(cfg.seed)  # augmentation
    order_rng = np.random.default_rng(cfg.seed)  # batch order
    mix_rng = np.random.default_rng([cfg.seed, 1])  # mixup lam and partners, apart from the two above
    best, history = -1.0, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        stats = train_epoch(net, opt, sched, train_split, cfg, steps, gen, order_rng, mix_rng, log_prior)
        scores = validate(net, data, shift)
        stats.update({k: v for k, v in scores.items() if k != "valid_acc"})
        rec = {"epoch": epoch, "valid_acc": scores["valid_acc"], "sec": time.time() - t0,
               **{k: round(v, 5) for k, v in stats.items()}}
        history.append(rec)
        log.info(json.dumps(rec))
        if scores["valid_acc"] > best:
            best = scores["valid_acc"]
            save_checkpoint(net, cfg, epoch)

    best_epoch = load_best(net, cfg)
    t_logits, _ = infer(net, data["test"]["x"])
    summary = {"name": cfg.name, "loss": cfg.loss, "screening": cfg.screening and cfg.loss != "ce",
               "best_epoch": best_epoch, "valid_acc": best, "test_acc": accuracy(t_logits + shift, data["test"]["y"]),
               "logit_adjust": cfg.logit_adjust, "mixup": cfg.mixup,
               "train_prior": np.round(np.exp(log_prior.numpy()), 6).tolist(),
               "counts": counts, "history": history, "macs": count_macs(net, INPUT_SIZE)}
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    log.info(json.dumps({k: summary[k] for k in ("name", "best_epoch", "valid_acc", "test_acc")}))
    if cfg.smoke:
        from training.export_expression import export_run

        export_run(cfg.out, data=data, onnx_path=cfg.out / "expression.onnx")
    return cfg.out


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    train(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
