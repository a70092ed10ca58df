"""Train the expression recogniser on FER+ (cached aligned crops) and optionally export it to ONNX.

Ablation arms, same network, data order and budget:

    python -m training.expression.train --loss ce --name ce
    python -m training.expression.train --loss triplet --no-screening --name triplet
    python -m training.expression.train --loss triplet --screening --name screened
    python -m training.expression.train --loss quadruplet --screening --name quad   # optional variant

Two levers against the FER+ class prior, each an option on top of any arm (default off; both keep the
metric loss):

    python -m training.expression.train --logit-adjust 1.0   # CE on logits + tau * log(prior): raw logits balanced
    python -m training.expression.train --mixup 0.2          # mix pairs of faces and their target distributions

``--logit-adjust TAU`` (Menon et al. 2021, "Long-tail learning via logit adjustment"): the cross-entropy
reads ``logits + TAU * log(prior)``, prior = class frequencies of the training majority labels (FER+ Train's,
the same numbers as ``training.expression.prior.ferplus_prior``). The network then need not learn the
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

    python -m training.expression.export runs/expression/screened --install

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
from training.common import MissingDataError, ensure_logging, log, parse_with_config, run_cli, setup_logging
from training.data import CACHE_DIR, PREPARE, RUNS_DIR
from training.expression.data import NC, SPLITS, have_cache, load_split, synthetic_split
from training.expression.model import ExpressionNet, infer
from training.expression.screening import ScreeningBounds, batch_stats, keep_negative, keep_positive, sphere_stats
from training.metrics import accuracy
from training.torch_utils import count_macs, seed_everything

SMOKE = {"epochs": 1, "max_batches": 3, "batch": 32}  # and the first SMOKE_FACES faces of each split
SMOKE_FACES = 256
Splits = dict[str, dict[str, np.ndarray]]


# ------------------------------------------------------------------------------------------- config
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--loss", choices=["ce", "triplet"], default="triplet",
                   help="ce: soft-target cross-entropy alone; triplet: plus the batch-hard triplet loss")
    p.add_argument("--screening", dest="screening", action="store_true", default=True,
                   help="the patent's statistical screening of triplets (default)")
    p.add_argument("--no-screening", dest="screening", action="store_false")
    p.add_argument("--alpha-p", type=float, default=0.05, help="screening: significance of the positive test")
    p.add_argument("--alpha-n", type=float, default=0.05, help="screening: significance of the negative test")
    p.add_argument("--margin", type=float, default=0.3, help="triplet margin on the unit sphere")
    p.add_argument("--d", type=int, default=64, help="embedding dimension")
    p.add_argument("--s", type=float, default=16.0, help="embedding norm")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--wd", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--name", default="screened")
    p.add_argument("--out", type=Path, default=None, help="run folder (default runs/expression/NAME)")
    p.add_argument("--cache", type=Path, default=CACHE_DIR)
    p.add_argument("--smoke", action="store_true", help="few batches, tiny subset, temp dir, then export")
    p.add_argument("--max-batches", type=int, default=0, help="batches per epoch cap (0 = all)")
    return parse_with_config(p, argv)


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
def load_data(cfg: argparse.Namespace) -> tuple[Splits, dict[str, Any]]:
    """The FER+ splits (synthetic faces for a smoke run without a cache) and their counts."""
    cached = have_cache(cfg.cache)
    if cfg.smoke and not cached:
        data = {"train": synthetic_split(128, 1), "valid": synthetic_split(64, 2), "test": synthetic_split(64, 3)}
    elif not cached:
        raise MissingDataError(f"no FER+ cache in {cfg.cache}; run `{PREPARE}` first")
    else:
        limit = SMOKE_FACES if cfg.smoke else 0
        data = {s: load_split(s, cfg.cache, limit) for s in SPLITS}
    tr = data["train"]
    counts: dict[str, Any] = {"train_total": tr["total"], "train_no_majority": tr["dropped_no_majority"],
                              "train_used": len(tr["y"]), "valid_n": len(data["valid"]["y"]),
                              "test_n": len(data["test"]["y"])}
    return data, counts


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


# --------------------------------------------------------------------------------------------- loss
def metric_loss(emb: torch.Tensor, y: torch.Tensor, *, s: float, d: int, margin: float, screening: bool,
                alpha_p: float, alpha_n: float) -> tuple[torch.Tensor, dict[str, float]]:
    """Batch-hard triplet loss on embeddings of norm s, with statistical screening.

    A triplet is valid when anchor and positive share the class and the negative differs. Screening
    (training/expression/screening.py) tests each distance of a triplet on its own: ``keep_positive`` on d(a, p),
    ``keep_negative`` on d(a, n), with mu and sigma of the batch's cross-class distances (``batch_stats``; the
    sphere formula where a batch has fewer than two such pairs); a triplet survives when both distances do. So
    with ``screening`` the hardest positive is mined among the pairs passing ``keep_positive`` and the hardest
    negative among those passing ``keep_negative``, which is mining the hardest among the surviving triplets;
    anchors left with none drop out. The loss is in unit-sphere distance units (divided by s); ``margin`` too.
    Stats report the fraction of valid triplets the screening removes (computed in both modes).
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
    bounds = ScreeningBounds(mu_b, sigma_b, alpha_p, alpha_n)
    ok_pos = pos & keep_positive(dist.detach(), bounds)
    ok_neg = neg & keep_negative(dist.detach(), bounds)
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
    stats["anchors_used"] = float(valid.float().mean())
    if not bool(valid.any()):
        return emb.sum() * 0.0, stats
    return terms[valid].mean() / s, stats


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
               cfg: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """(loss, CE term, stats): CE against the vote distributions ``target``, plus the metric loss on the majority
    labels ``yb`` unless ``--loss ce`` (then the screening stats are still computed, for the log)."""
    logits, emb = net(xb)
    ce = -(target * F.log_softmax(logits, 1)).sum(1).mean()
    metric_args = {"s": cfg.s, "d": cfg.d, "margin": cfg.margin, "alpha_p": cfg.alpha_p, "alpha_n": cfg.alpha_n}
    if cfg.loss == "ce":
        with torch.no_grad():  # what screening would do, for the log
            _, stats = metric_loss(emb.detach(), yb, screening=True, **metric_args)
        return ce, ce, stats
    ml, stats = metric_loss(emb, yb, screening=cfg.screening, **metric_args)
    stats["metric"] = float(ml.detach())
    return ce + ml, ce, stats


def train_epoch(net: ExpressionNet, opt: torch.optim.Optimizer, sched: Any, train: dict[str, np.ndarray],
                cfg: argparse.Namespace, steps: int, gen: torch.Generator, order_rng: np.random.Generator
                ) -> dict[str, float]:
    """One pass over ``steps`` batches in a fresh random order; returns the mean of each logged stat."""
    net.train()
    x_all, y_all = torch.from_numpy(train["x"]), torch.from_numpy(train["y"]).long()
    target_all = torch.from_numpy(train["soft"])
    perm = torch.from_numpy(order_rng.permutation(len(train["y"])))
    sums: dict[str, float] = {}
    for step in range(steps):
        idx = perm[step * cfg.batch: (step + 1) * cfg.batch]
        loss, ce, stats = batch_loss(net, augment(x_all[idx], gen), y_all[idx], target_all[idx], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        stats["ce"], stats["loss"] = float(ce.detach()), float(loss.detach())
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + v
    return {k: v / steps for k, v in sums.items()}


# ------------------------------------------------------------------------------------------- select
def validate(net: ExpressionNet, data: Splits) -> float:
    """FER+ Valid accuracy: what selects the checkpoint."""
    return accuracy(data["valid"]["y"], infer(net, data["valid"]["x"])[0].argmax(1))


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

    data, counts = load_data(cfg)
    log.info(json.dumps(counts))
    train_split = data["train"]
    steps = steps_per_epoch(len(train_split["y"]), cfg)
    net, opt, sched = build_model(cfg, steps)

    gen = torch.Generator().manual_seed(cfg.seed)  # augmentation
    order_rng = np.random.default_rng(cfg.seed)  # batch order
    best, history = -1.0, []
    for epoch in range(1, cfg.epochs + 1):
        t0 = time.time()
        stats = train_epoch(net, opt, sched, train_split, cfg, steps, gen, order_rng)
        valid_acc = validate(net, data)
        rec = {"epoch": epoch, "valid_acc": valid_acc, "sec": time.time() - t0,
               **{k: round(v, 5) for k, v in stats.items()}}
        history.append(rec)
        log.info(json.dumps(rec))
        if valid_acc > best:
            best = valid_acc
            save_checkpoint(net, cfg, epoch)

    best_epoch = load_best(net, cfg)
    t_logits, _ = infer(net, data["test"]["x"])
    summary = {"name": cfg.name, "loss": cfg.loss, "screening": cfg.screening and cfg.loss != "ce",
               "best_epoch": best_epoch, "valid_acc": best, "test_acc": accuracy(data["test"]["y"], t_logits.argmax(1)),
               "counts": counts, "history": history, "macs": count_macs(net, INPUT_SIZE)}
    (cfg.out / "metrics.json").write_text(json.dumps(summary, indent=2))
    log.info(json.dumps({k: summary[k] for k in ("name", "best_epoch", "valid_acc", "test_acc")}))
    if cfg.smoke:
        from training.expression.export import export_run

        export_run(cfg.out, data=data, onnx_path=cfg.out / "expression.onnx")
    return cfg.out


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    train(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
