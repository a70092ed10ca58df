"""Calibrate and export a trained expression run to ONNX (and optionally install it into models/).

    python -m training.export_expression runs/expression/screened            # -> runs/.../expression.onnx
    python -m training.export_expression runs/expression/screened --install  # + models/expression.onnx, manifest

Steps: temperature T fitted on FER+ Valid (NLL on majority labels, 1-D search on log T), ECE (15 bins)
before/after; class prototypes = mean unit embedding per class over FER+ Train (majority labels, no
augmentation), re-normalised; ``uncertain`` threshold = 95th percentile of the nearest-prototype distance
of the correctly classified Valid faces. ONNX opset 17, input (N, 1, 48, 48) float in [0, 1], outputs
``probabilities`` (N, 8) = softmax(logits / T) and ``embedding`` (N, d), norm s.

Mirror averaging (``training.expression_model.predict``; ``--no-flip`` to leave it out) is baked into the
ONNX graph, and the temperature, prototypes, threshold and reported accuracies are all computed with it,
so the numbers describe exactly what the service runs.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from training.data import FERPLUS_CLASSES, REPO_ROOT
from training.expression_model import INPUT_SIZE, ExportWrapper, ExpressionNet

MODELS = REPO_ROOT / "models"
OPSET = 17


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, t: float) -> float:
    p = softmax(logits / t)
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], 1e-12)).mean())


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    grid = np.exp(np.linspace(np.log(0.2), np.log(10.0), 400))
    losses = [nll(logits, y, t) for t in grid]
    return float(grid[int(np.argmin(losses))])


def ece(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    conf, pred = probs.max(1), probs.argmax(1)
    correct = (pred == y).astype(np.float64)
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(total)


def load_net(run_dir: Path) -> tuple[ExpressionNet, dict]:
    ckpt = torch.load(run_dir / "best.pt", weights_only=False)
    a = ckpt["args"]
    net = ExpressionNet(len(FERPLUS_CLASSES), int(a["d"]), float(a["s"]), int(a["width"]))
    net.load_state_dict(ckpt["state"])
    net.eval()
    return net, ckpt


def export_onnx(net: ExpressionNet, temperature: float, path: Path, flip: bool = True) -> float:
    """Write the ONNX file; return max |torch - onnx| over both outputs on a random batch."""
    import onnxruntime as ort

    wrapper = ExportWrapper(net, temperature, flip).eval()
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE)
    path.parent.mkdir(parents=True, exist_ok=True)
    kwargs = dict(input_names=["input"], output_names=["probabilities", "embedding"], opset_version=OPSET,
                  dynamic_axes={"input": {0: "batch"}, "probabilities": {0: "batch"}, "embedding": {0: "batch"}})
    try:
        torch.onnx.export(wrapper, (dummy,), str(path), dynamo=False, **kwargs)
    except TypeError:  # older torch without the dynamo flag
        torch.onnx.export(wrapper, (dummy,), str(path), **kwargs)
    check = torch.rand(16, 1, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tp, te = wrapper(check)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    op, oe = sess.run(None, {"input": check.numpy()})
    return float(max(np.abs(tp.numpy() - op).max(), np.abs(te.numpy() - oe).max()))


def export_run(run_dir: Path, data: dict | None = None, onnx_path: Path | None = None,
               install: bool = False, flip: bool = True) -> dict:
    from training.train_expression import accuracy, infer, load_split

    run_dir = Path(run_dir)
    net, ckpt = load_net(run_dir)
    torch.set_num_threads(1)
    if data is None:
        data = {s: load_split(s) for s in ("train", "valid", "test")}
    v_logits, v_emb = infer(net, data["valid"]["x"], flip=flip)
    yv = data["valid"]["y"]
    t = fit_temperature(v_logits, yv)
    ece_before, ece_after = ece(softmax(v_logits), yv), ece(softmax(v_logits / t), yv)
    t_logits, _ = infer(net, data["test"]["x"], flip=flip)
    yt = data["test"]["y"]
    test_ece_before, test_ece_after = ece(softmax(t_logits), yt), ece(softmax(t_logits / t), yt)

    _, tr_emb = infer(net, data["train"]["x"], flip=flip)
    unit = lambda e: e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)  # noqa: E731
    tr_unit, v_unit = unit(tr_emb), unit(v_emb)
    protos = np.zeros((len(FERPLUS_CLASSES), tr_unit.shape[1]), np.float32)
    for c in range(len(FERPLUS_CLASSES)):
        m = data["train"]["y"] == c
        if m.any():
            protos[c] = tr_unit[m].mean(0)
    protos = unit(protos)
    dist = np.linalg.norm(v_unit[:, None] - protos[None], axis=2)
    nearest = dist.min(1)
    correct = v_logits.argmax(1) == yv
    threshold = float(np.percentile(nearest[correct], 95)) if correct.any() else float(nearest.max())
    unc_rate_correct = float((nearest[correct] > threshold).mean()) if correct.any() else 0.0
    unc_rate_wrong = float((nearest[~correct] > threshold).mean()) if (~correct).any() else 0.0
    acc_certain = float(correct[nearest <= threshold].mean()) if (nearest <= threshold).any() else float("nan")

    onnx_path = onnx_path or run_dir / "expression.onnx"
    diff = export_onnx(net, t, onnx_path, flip)
    info = {
        "run": run_dir.name, "epoch": ckpt["epoch"], "args": ckpt["args"], "temperature": round(t, 4),
        "flip_averaging": flip,
        "valid_acc": accuracy(v_logits, yv), "test_acc": accuracy(t_logits, yt),
        "ece_valid_before": ece_before, "ece_valid_after": ece_after,
        "ece_test_before": test_ece_before, "ece_test_after": test_ece_after,
        "prototype_threshold": threshold, "uncertain_rate_valid_correct": unc_rate_correct,
        "uncertain_rate_valid_wrong": unc_rate_wrong, "valid_acc_when_certain": acc_certain,
        "prototypes": protos.round(5).tolist(), "onnx": str(onnx_path), "onnx_max_abs_diff": diff,
    }
    (run_dir / "export.json").write_text(json.dumps(info, indent=2))
    print(f"temperature {t:.3f}; ECE valid {ece_before:.4f} -> {ece_after:.4f}, test {test_ece_before:.4f} -> "
          f"{test_ece_after:.4f}; prototype threshold {threshold:.4f} (uncertain: {unc_rate_correct:.1%} of correct, "
          f"{unc_rate_wrong:.1%} of wrong Valid faces); max |torch - onnx| = {diff:.2e}", flush=True)
    if install:
        install_model(info, onnx_path)
    return info


def install_model(info: dict, onnx_path: Path, models_dir: Path = MODELS) -> None:
    from app.model_zoo.base import sha256_of

    target = models_dir / "expression.onnx"
    shutil.copyfile(onnx_path, target)
    protos = np.asarray(info["prototypes"], dtype=np.float32)
    proto_file = models_dir / "expression_prototypes.npy"
    np.save(proto_file, protos)
    metrics_path = Path(info["onnx"]).parent / "metrics.json"
    counts = json.loads(metrics_path.read_text())["counts"] if metrics_path.is_file() else {}
    a = info["args"]
    manifest_path = models_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    entry = {
        "version": f"ferplus-{info['run']}-e{info['epoch']}",
        "file": "expression.onnx",
        "sha256": sha256_of(target),
        "task": "facial expression recognition, 8 FER+ classes, from the aligned face crop",
        "input": {"name": "input", "shape": ["batch", 1, INPUT_SIZE, INPUT_SIZE], "layout": "NCHW", "color": "grey",
                  "range": [0.0, 1.0],
                  "resize": "app.align 112x112 aligned crop -> BGR2GRAY -> cv2.resize INTER_AREA to 48x48 -> /255; "
                            "the network standardises each image itself"},
        "outputs": {"probabilities": "[batch, 8]: softmax(logits / temperature), classes order"
                                     + (", logits averaged over the face and its mirror image"
                                        if info.get("flip_averaging") else ""),
                    "embedding": f"[batch, {a['d']}]: L2 norm s = {a['s']}"},
        "classes": list(FERPLUS_CLASSES),
        "d": int(a["d"]), "s": float(a["s"]),
        "loss": a["loss"], "screening": bool(a["screening"]) and a["loss"] != "ce", "mu_sigma": a["mu_sigma"],
        "alpha_p": float(a["alpha_p"]), "alpha_n": float(a["alpha_n"]), "margin": float(a["margin"]),
        "temperature": info["temperature"],
        "flip_averaging": bool(info.get("flip_averaging", False)),
        "architecture": f"residual CNN, width {a['width']}",
        "prototypes": {"space": "unit sphere (embedding / s)", "file": proto_file.name,
                       "sha256": sha256_of(proto_file), "shape": list(protos.shape),
                       "threshold": round(info["prototype_threshold"], 5),
                       "threshold_rule": "95th percentile of nearest-prototype distance of correctly classified "
                                         "FER+ Valid faces; farther = uncertain"},
        "metrics": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in info.items()
                    if k.startswith(("valid", "test", "ece", "uncertain"))},
        "conversion_check": f"max |torch - onnx| = {info['onnx_max_abs_diff']:.1e} (training/export_expression.py)",
        "training_data": "FER+ (FERPlus labels on FER2013) Train, majority vote; selected on FER+ Valid; "
                         f"aligned by the service's own face stage (training/prepare_faces.py). Counts: {counts}",
        "licence": "research use only (FER2013 pixels)",
        "model_card": "EXPRESSION.md",
        "bytes": target.stat().st_size,
    }
    manifest["models"]["expression"] = entry
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"installed {target} ({entry['sha256'][:16]}…) and its manifest entry", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--install", action="store_true", help="copy to models/expression.onnx and write the manifest")
    p.add_argument("--no-flip", dest="flip", action="store_false",
                   help="export the single-view network, without mirror averaging")
    p.add_argument("--install-only", action="store_true",
                   help="install RUN_DIR/expression.onnx with the numbers of a previous export (export.json)")
    args = p.parse_args()
    if args.install_only:
        info = json.loads((args.run_dir / "export.json").read_text())
        install_model(info, Path(info["onnx"]))
    else:
        export_run(args.run_dir, install=args.install, flip=args.flip)


if __name__ == "__main__":
    main()
