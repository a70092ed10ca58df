"""Train the AU detector on CK+ (automatic AU rectangles from the mesh), with subject-wise cross-validation.

    python -m training.au.train --pretrain --epochs 5 --out runs/au_pre    # the backbone on FER+ expressions
    python -m training.au.train --cv --config training/au/configs/pnpl.toml --out runs/au_pnpl   # 5 subject folds
    python -m training.au.train --final --config training/au/configs/pnpl.toml --out runs/au_pnpl  # all subjects
    python -m training.au.train --smoke --out /tmp/x   # a few batches, exports a loadable ONNX (CI)

``--cv`` writes OUT/cv/fold{k}.onnx (+ .json with the held-out faces); ``--final`` writes OUT/au_detector.onnx and
OUT/manifest_entry.json, and with ``--install`` also puts them into ``--models-dir`` (default models/). The served
v2.1 is the weight soup of two recipes (training/au/configs/pnp.toml, pnpl.toml; ``training.au.soup``), then
``python -m training.au.evaluate --write-manifest`` scores the fold ONNX files through the service's decoding and
writes the per-AU thresholds and the CV metrics (models/AU_DETECTOR.md has the whole chain).
FER+ faces join CK+ with ``--neutral`` (all-AU-absent negatives), ``--pseudo`` (the AUs their votes make
certain) and ``--lips-from-mesh`` (AU25 from the mesh's lip gap).
Reads runs/cache/ckplus.npz (``python -m training.prepare_faces --only ckplus``). Logs to OUT/*.log.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from app.manifest import Manifest, sha256_of
from training.au.data import CACHE, CLASSES, INPUT_SIZE, CkPlus, augment, ferplus_inputs, load_data, training_data
from training.au.model import AuNet, au_scores_torch, kmeans_anchors, standardise, yolo_loss
from training.au.regions import FACS_NAMES
from training.common import install, log, parse_with_config, require_file, run_cli, setup_logging
from training.data import REPO_ROOT, RUNS_DIR, subject_folds
from training.torch_utils import count_macs, export_onnx, seed_everything

NUM_ANCHORS = 5
FOLDS = 5
SMOKE_BATCHES = 3
LICENCE = "research use only (CK+ terms: non-commercial research, no redistribution)"
LICENCE_FERPLUS = "research use only (CK+ terms: non-commercial research, no redistribution; FER2013 pixels)"


# ---------------------------------------------------------------------------------------------- data
def batches(data: CkPlus, index: np.ndarray, batch_size: int, rng: np.random.Generator, train: bool):
    order = rng.permutation(index) if train else index
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        if train and len(chunk) < 2:
            continue
        images, targets = [], []
        for i in chunk:
            if train:
                image, marks = augment(data.images[i], data.landmarks[i], rng)
            else:
                image, marks = data.images[i], data.landmarks[i]
            images.append(image)
            targets.append(data.targets(marks, data.labels[i], data.known[i]))
        yield torch.from_numpy(np.stack(images)[:, None]), targets, chunk


# ---------------------------------------------------------------------------------------------- training


def fit_anchors(data: CkPlus, index: np.ndarray, k: int = NUM_ANCHORS) -> np.ndarray:
    wh = np.concatenate([data.targets(data.landmarks[i], data.labels[i])[:, 3:5] for i in index])
    return kmeans_anchors(wh.astype(np.float64), k).astype(np.float32)


def train(data: CkPlus, index: np.ndarray, args: argparse.Namespace, tag: str) -> AuNet:
    seed_everything(args.seed)
    rng = np.random.default_rng(args.seed)
    ck, extra = index[index < data.ckplus], index[index >= data.ckplus]
    per_epoch = min(args.extra_per_epoch, len(extra)) if args.extra_per_epoch else len(extra)
    anchors = fit_anchors(data, ck)
    log.info(f"[{tag}] {len(ck)} CK+ images of {len(set(data.subjects[ck]))} subjects + {len(extra)} FER+ faces "
             f"({per_epoch} an epoch); anchors (w,h): "
             + " ".join(f"{w:.3f}x{h:.3f}" for w, h in anchors))
    model = AuNet(len(CLASSES), anchors, width=args.width)
    if args.init:
        load_backbone(model, args.init)
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True)
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = max(1, (len(ck) + per_epoch) // args.batch_size)
    if args.max_batches:
        steps_per_epoch = min(steps_per_epoch, args.max_batches)
    total = steps_per_epoch * args.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=args.lr, total_steps=total, pct_start=0.1)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        sums = {"loss": 0.0, "box": 0.0, "obj": 0.0, "cls": 0.0}
        seen = 0
        if per_epoch < len(extra):
            index = np.concatenate([ck, rng.choice(extra, per_epoch, replace=False)])
        for step, (images, targets, _) in enumerate(batches(data, index, args.batch_size, rng, train=True)):
            if step >= steps_per_epoch:
                break
            loss, parts = yolo_loss(model(images), targets, model.anchors)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimiser.step()
            schedule.step()
            ema.update_parameters(model)
            sums["loss"] += loss.item()
            for key, value in parts.items():
                sums[key] += value
            seen += 1
        if epoch % 5 == 4 or epoch == args.epochs - 1:
            losses = " ".join(f"{k} {v / max(seen, 1):.3f}" for k, v in sums.items())
            log.info(f"[{tag}] epoch {epoch + 1}/{args.epochs} {losses}"
                     + f" lr {schedule.get_last_lr()[0]:.2e} ({time.time() - start:.0f}s)")
    final = ema.module
    assert isinstance(final, AuNet)
    final.eval()
    return final


# ---------------------------------------------------------------------------------- FER+ pretraining
BACKBONE = ("stem", "s2", "s4", "s8", "s16")  # the AuNet parts a pretrained state carries (not the AU layers)


class ExpressionProbe(torch.nn.Module):
    """AuNet's backbone with a linear expression classifier on its pooled stride-16 features: the pretraining
    task. Only the backbone is kept; the AU layers then learn on top of features that have seen 27k faces."""

    def __init__(self, width: int, classes: int = 8) -> None:
        super().__init__()
        net = AuNet(len(CLASSES), np.ones((NUM_ANCHORS, 2), np.float32) / 4, width=width)
        self.backbone = torch.nn.ModuleDict({name: getattr(net, name) for name in BACKBONE})
        self.fc = torch.nn.Linear(16 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = standardise(x)  # as AuNet.forward
        for name in BACKBONE:
            x = self.backbone[name](x)
        return self.fc(torch.nn.functional.dropout(x.mean(dim=(2, 3)), 0.2, self.training))


def pretrain(cfg: argparse.Namespace) -> Path:
    """Train the backbone to read FER+ expressions (soft vote targets, the AU trainer's image augmentation),
    keep the epoch with the best FER+ Valid accuracy, and save its backbone to ``cfg.out / 'pretrain.pt'``."""
    seed_everything(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    images, targets = ferplus_inputs("train", cfg.cache.parent)
    valid_x, valid_t = ferplus_inputs("valid", cfg.cache.parent)
    model = ExpressionProbe(cfg.width)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, len(images) // 64)
    if cfg.max_batches:
        steps = min(steps, cfg.max_batches)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=cfg.lr, total_steps=steps * cfg.epochs,
                                                   pct_start=0.1)
    no_marks = np.zeros((1, 2), np.float32)
    best, path, start = -1.0, cfg.out / "pretrain.pt", time.time()
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(images))
        for step in range(steps):
            chunk = order[step * 64:(step + 1) * 64]
            x = np.stack([augment(images[i], no_marks, rng)[0] for i in chunk])[:, None]
            log_p = torch.log_softmax(model(torch.from_numpy(x)), 1)
            loss = -(torch.from_numpy(targets[chunk]) * log_p).sum(1).mean()  # soft-target cross-entropy
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
        model.eval()
        with torch.no_grad():
            logits = torch.cat([model(torch.from_numpy(valid_x[i:i + 256, None])) for i in range(0, len(valid_x), 256)])
        accuracy = float((logits.argmax(1).numpy() == valid_t.argmax(1)).mean())
        log.info(f"[pretrain] epoch {epoch + 1}/{cfg.epochs} FER+ Valid accuracy {accuracy:.4f} "
                 f"({time.time() - start:.0f}s)")
        if accuracy > best:
            best = accuracy
            torch.save({"width": cfg.width, "valid_accuracy": accuracy, "epoch": epoch + 1,
                        "backbone": {f"{n}.{k}": v for n in BACKBONE
                                     for k, v in model.backbone[n].state_dict().items()}}, path)
    log.info(f"[pretrain] backbone of the best epoch (FER+ Valid {best:.4f}) -> {path}")
    return path


def load_backbone(model: AuNet, path: Path) -> None:
    state = torch.load(require_file(path, "python -m training.au.train --pretrain"), weights_only=True)
    if state["width"] != model.stem[0].out_channels:
        raise ValueError(f"{path}: width {state['width']}, the model's {model.stem[0].out_channels}")
    missing, unexpected = model.load_state_dict(state["backbone"], strict=False)
    assert not unexpected and all(k.split(".")[0] not in BACKBONE for k in missing), (missing, unexpected)


@torch.no_grad()
def predict_scores(model: AuNet, data: CkPlus, index: np.ndarray) -> np.ndarray:
    model.eval()
    out = []
    for images, _, _ in batches(data, index, 64, np.random.default_rng(0), train=False):
        out.append(au_scores_torch(model(images)).numpy())
    return np.concatenate(out)


def export_au_onnx(model: AuNet, path: Path, data: CkPlus | None = None) -> float:
    """Export, then check onnxruntime against torch on random and (given ``data``) real crops; max |diff|."""
    dummy = torch.rand(1, 1, INPUT_SIZE, INPUT_SIZE)
    checks = {"random": torch.rand(4, 1, INPUT_SIZE, INPUT_SIZE)}
    if data is not None:
        checks["real"] = torch.from_numpy(data.images[:8, None])
    return export_onnx(model, path, dummy, ["raw"], checks)


def model_meta(model: AuNet, args: argparse.Namespace) -> dict:
    macs = count_macs(model, INPUT_SIZE)
    params = sum(p.numel() for p in model.parameters())
    grid = INPUT_SIZE // 8
    return {
        "classes": CLASSES, "names": {a: FACS_NAMES[a] for a in CLASSES},
        "anchors": [[round(float(w), 5), round(float(h), 5)] for w, h in model.anchors.numpy()],
        "input_size": INPUT_SIZE, "grid": grid, "mflops": round(2 * macs / 1e6, 1), "params": int(params),
        "train_args": {k: v for k, v in vars(args).items() if k in
                       ("epochs", "batch_size", "lr", "weight_decay", "width", "seed", "ema", "neutral", "pseudo",
                                 "extra_per_epoch", "lips_from_mesh")}
                      | {"init": str(args.init.name) if args.init else None},
    }


def manifest_entry(meta: dict, onnx_check: float, onnx_path: Path, models_dir: Path) -> dict:
    """The au_detector entry of a final model; thresholds and metrics are filled in by ``training.au.evaluate
    --write-manifest`` (until then those of ``models_dir``'s entry stand)."""
    old = Manifest.load(models_dir).models.get("au_detector", {})
    grid, a = meta["grid"], len(meta["anchors"])
    entry_data = training_data(meta["train_args"])
    return {
        "version": time.strftime("%Y.%m.%d") + ("-ckplus-ferplus" if meta["train_args"]["neutral"]
                                                   or meta["train_args"]["pseudo"] else "-ckplus"),
        "file": "au_detector.onnx",
        "sha256": sha256_of(onnx_path),
        "task": "FACS Action Unit detection on the aligned face crop (YOLO-style AU boxes, patent CN109344744)",
        "input": {"name": "input", "shape": ["batch", 1, meta["input_size"], meta["input_size"]], "layout": "NCHW",
                  "color": "grey (BGR->GRAY of the 112x112 aligned crop, cv2.INTER_AREA resize)",
                  "range": [0.0, 1.0], "resize": "app.align aligned crop, resized"},
        "outputs": {"raw": f"[batch, {grid * grid * a}, {5 + len(meta['classes'])}]: per (cell row, cell col, anchor): "
                           "tx, ty, tw, th, objectness logit, one logit per AU"},
        "grid": grid,
        "classes": meta["classes"],
        "names": meta["names"],
        "anchors": meta["anchors"],
        "thresholds": old.get("thresholds", {a: 0.5 for a in meta["classes"]}),
        "metrics": old.get("metrics", {}),
        "architecture": {"mflops": meta["mflops"], "params": meta["params"], "train_args": meta["train_args"]},
        "export_check": f"max |torch - onnx| = {onnx_check:.1e} on random and real crops (training/au/train.py)",
        "training_data": entry_data,
        "licence": LICENCE if "FER+" not in entry_data else LICENCE_FERPLUS,
        "bytes": onnx_path.stat().st_size,
    }


# --------------------------------------------------------------------------------------------------- run
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--cv", action="store_true", help="subject-wise k-fold cross-validation")
    mode.add_argument("--final", action="store_true",
                      help="train on all subjects, export OUT/au_detector.onnx (+ --install: into --models-dir)")
    mode.add_argument("--smoke", action="store_true", help="a few batches; exports to --out")
    mode.add_argument("--pretrain", action="store_true",
                      help="train the backbone on FER+ Train expressions (vote distributions) -> --out/pretrain.pt")
    parser.add_argument("--folds", type=str, default="", help="comma-separated fold numbers to run (default all)")
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "au")
    parser.add_argument("--install", action="store_true",
                        help="with --final: also copy the model into --models-dir and write its manifest entry")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models",
                        help="where --install puts the final model (and whose au_detector entry's thresholds the new "
                             "entry starts from)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-batches", type=int, default=0, help="batches per epoch (0 = all)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--ema", type=float, default=0.99)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--init", type=Path, default=None,
                        help="start the backbone from a --pretrain state (runs/au/pretrain.pt)")
    parser.add_argument("--neutral", type=int, default=0,
                        help="add this many FER+ Train faces with >= 8/10 neutral votes as all-AU-absent negatives "
                             "(always in training, never in a CV test fold)")
    parser.add_argument("--pseudo", type=int, default=0,
                        help="add up to this many FER+ Train faces per expression with >= 8/10 happiness (AU12) or "
                             "surprise (AU1, AU2) votes, those AUs present and the others unknown")
    parser.add_argument("--lips-from-mesh", action="store_true",
                        help="AU25 of the FER+ faces from the mesh's inner-lip gap (present / absent / unknown)")
    parser.add_argument("--extra-per-epoch", type=int, default=0,
                        help="FER+ faces drawn afresh each epoch from those added (0: all of them every epoch)")
    return parse_with_config(parser, argv)


def run_config(args: argparse.Namespace) -> argparse.Namespace:
    """What ``args`` implies, as a new namespace (``args`` is left as given): ``--smoke`` is one epoch of
    ``--max-batches`` (default 3) batches."""
    cfg = argparse.Namespace(**vars(args))
    if args.smoke:
        cfg.epochs, cfg.max_batches = 1, args.max_batches or SMOKE_BATCHES
    cfg.mode = "cv" if args.cv else "final" if args.final else "pretrain" if args.pretrain else "smoke"
    return cfg


def cross_validate(data: CkPlus, extras: np.ndarray, cfg: argparse.Namespace) -> None:
    """Subject-wise folds: train on the others (+ the FER+ extras), export runs/au/cv/fold{k}.onnx and its meta
    with the torch scores of the held-out faces (training.au.evaluate compares the ONNX decode with them)."""
    folds = subject_folds(data.subjects[:data.ckplus], FOLDS)
    wanted = [int(f) for f in cfg.folds.split(",")] if cfg.folds else list(range(FOLDS))
    for k in wanted:
        train_idx = np.concatenate([np.flatnonzero(folds != k), extras])
        test_idx = np.flatnonzero(folds == k)
        model = train(data, train_idx, cfg, tag=f"fold {k}")
        scores = predict_scores(model, data, test_idx)
        check = export_au_onnx(model, cfg.out / "cv" / f"fold{k}.onnx", data)
        meta = model_meta(model, cfg) | {"fold": k, "test_index": test_idx.tolist(), "onnx_check": check,
                                          "torch_scores": scores.round(5).tolist()}
        (cfg.out / "cv" / f"fold{k}.json").write_text(json.dumps(meta))
        hit = ((scores > 0.5) == data.labels[test_idx].astype(bool))
        accuracy = " ".join(f"{a} {v:.2f}" for a, v in zip(CLASSES, hit.mean(0)))
        log.info(f"[fold {k}] accuracy at 0.5 per AU: {accuracy}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = run_config(args)
    torch.set_num_threads(cfg.threads)
    setup_logging(cfg.out / f"train_{cfg.mode}{'_' + cfg.folds.replace(',', '') if cfg.folds else ''}.log")
    log.info(f"args: {vars(cfg)}")
    if cfg.pretrain:
        pretrain(cfg)
        return
    data, extras = load_data(cfg)
    if cfg.cv:
        cross_validate(data, extras, cfg)
        return
    model = train(data, np.arange(len(data)), cfg, tag=cfg.mode)
    if cfg.smoke:
        export_au_onnx(model, cfg.out / "au_detector.onnx", data)
        (cfg.out / "au_detector.json").write_text(json.dumps(model_meta(model, cfg)))
        return
    path = cfg.out / "au_detector.onnx"
    check = export_au_onnx(model, path, data)
    meta = model_meta(model, cfg)
    log.info(f"final model: {meta['mflops']} MFLOPs, {meta['params']} parameters -> {path}")
    entry = manifest_entry(meta, check, path, cfg.models_dir)
    (cfg.out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    if cfg.install:
        install(cfg.models_dir, "au_detector", {"au_detector.onnx": path}, entry)
        log.info("run training.au.evaluate --write-manifest for its thresholds")

if __name__ == "__main__":
    raise SystemExit(run_cli(main))
