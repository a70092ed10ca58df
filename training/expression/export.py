"""Calibrate and export a trained expression run to ONNX (and optionally install it into models/).

    python -m training.expression.export runs/expression/screened            # -> runs/.../expression.onnx
    python -m training.expression.export runs/expression/screened --install  # + models/expression.onnx, manifest

Steps: temperature T fitted on FER+ Valid (NLL on majority labels, ``training.fitting.fit_temperature``), ECE (15 bins)
before/after; class prototypes = mean unit embedding per class over FER+ Train (majority labels, no
augmentation), re-normalised; ``uncertain`` threshold = 95th percentile of the nearest-prototype distance
of the correctly classified Valid faces. ONNX opset 17, input (N, 1, 48, 48) float in [0, 1], outputs
``probabilities`` (N, 8) = softmax(logits / T) and ``embedding`` (N, d), norm s.

Mirror averaging (``training.expression.model.predict``) is baked into the ONNX graph, and the temperature,
prototypes, threshold and reported accuracies are all computed with it, so the numbers describe exactly what the
service runs. Writes RUN/expression.onnx, RUN/expression_prototypes.npy and RUN/export.json; ``--install`` also
puts the model into ``--models-dir`` (default models/) with a new manifest entry.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from app.manifest import sha256_of
from training.common import install, log, run_cli, setup_logging
from training.data import FERPLUS_CLASSES, REPO_ROOT
from training.expression.data import SPLITS, load_split
from training.expression.model import INPUT_SIZE, ExportWrapper, ExpressionNet, infer, load_net
from training.fitting import fit_temperature
from training.metrics import accuracy, ece, softmax
from training.torch_utils import export_onnx

MODELS = REPO_ROOT / "models"


def export_expression_onnx(net: ExpressionNet, temperature: float, path: Path) -> float:
    """Write the ONNX file (mirror averaging in the graph); return max |torch - onnx| over both outputs on a seeded
    random batch."""
    wrapper = ExportWrapper(net, temperature).eval()
    dummy = torch.rand(2, 1, INPUT_SIZE, INPUT_SIZE)
    check = torch.rand(16, 1, INPUT_SIZE, INPUT_SIZE, generator=torch.Generator().manual_seed(0))
    return export_onnx(wrapper, path, dummy, ["probabilities", "embedding"], {"random": check})


def unit_rows(e: np.ndarray) -> np.ndarray:
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)


def calibration(net: ExpressionNet, data: dict) -> dict:
    """Temperature on FER+ Valid and the ECE before/after on Valid and Test; also the (mirror-averaged) logits it
    read."""
    v_logits, v_emb = infer(net, data["valid"]["x"], flip=True)
    t_logits, _ = infer(net, data["test"]["x"], flip=True)
    yv, yt = data["valid"]["y"], data["test"]["y"]
    t = fit_temperature(v_logits, yv)
    return {"temperature": t, "v_logits": v_logits, "v_emb": v_emb, "t_logits": t_logits,
            "ece_valid_before": ece(softmax(v_logits), yv), "ece_valid_after": ece(softmax(v_logits / t), yv),
            "ece_test_before": ece(softmax(t_logits), yt), "ece_test_after": ece(softmax(t_logits / t), yt)}


def class_prototypes(train_emb: np.ndarray, train_y: np.ndarray, valid_emb: np.ndarray,
                     valid_correct: np.ndarray) -> dict:
    """Mean unit embedding per class over Train, re-normalised; the ``uncertain`` threshold (95th percentile
    of the nearest-prototype distance of correctly classified Valid faces) and what it does on Valid."""
    tr_unit, v_unit = unit_rows(train_emb), unit_rows(valid_emb)
    protos = np.zeros((len(FERPLUS_CLASSES), tr_unit.shape[1]), np.float32)
    for c in range(len(FERPLUS_CLASSES)):
        m = train_y == c
        if m.any():
            protos[c] = tr_unit[m].mean(0)
    protos = unit_rows(protos)
    nearest = np.linalg.norm(v_unit[:, None] - protos[None], axis=2).min(1)
    correct = valid_correct
    threshold = float(np.percentile(nearest[correct], 95)) if correct.any() else float(nearest.max())
    certain = nearest <= threshold
    return {"prototypes": protos, "prototype_threshold": threshold,
            "uncertain_rate_valid_correct": float((nearest[correct] > threshold).mean()) if correct.any() else 0.0,
            "uncertain_rate_valid_wrong": float((nearest[~correct] > threshold).mean()) if (~correct).any() else 0.0,
            "valid_acc_when_certain": float(correct[certain].mean()) if certain.any() else float("nan")}


def export_run(run_dir: Path, data: dict | None = None, onnx_path: Path | None = None,
               install: bool = False, models_dir: Path = MODELS) -> dict:
    """Calibrate, compute prototypes, export RUN/expression.onnx (or ``onnx_path``) and RUN/export.json;
    with ``install``, also into ``models_dir`` and its manifest. Returns what export.json holds."""
    run_dir = Path(run_dir)
    net, ckpt = load_net(run_dir)
    torch.set_num_threads(1)
    if data is None:
        data = {s: load_split(s) for s in SPLITS}
    cal = calibration(net, data)
    yv, yt = data["valid"]["y"], data["test"]["y"]
    _, train_emb = infer(net, data["train"]["x"], flip=True)
    proto = class_prototypes(train_emb, data["train"]["y"], cal["v_emb"], cal["v_logits"].argmax(1) == yv)
    onnx_path = onnx_path or run_dir / "expression.onnx"
    diff = export_expression_onnx(net, cal["temperature"], onnx_path)
    info = {
        "run": run_dir.name, "epoch": ckpt["epoch"], "args": ckpt["args"], "temperature": round(cal["temperature"], 4),
        "flip_averaging": True,
        "valid_acc": accuracy(yv, cal["v_logits"].argmax(1)), "test_acc": accuracy(yt, cal["t_logits"].argmax(1)),
        **{k: cal[k] for k in ("ece_valid_before", "ece_valid_after", "ece_test_before", "ece_test_after")},
        **{k: v for k, v in proto.items() if k != "prototypes"},
        "prototypes": proto["prototypes"].round(5).tolist(), "onnx": str(onnx_path), "onnx_max_abs_diff": diff,
    }
    (run_dir / "export.json").write_text(json.dumps(info, indent=2))
    log.info(f"temperature {cal['temperature']:.3f}; ECE valid {info['ece_valid_before']:.4f} -> "
             f"{info['ece_valid_after']:.4f}, test {info['ece_test_before']:.4f} -> {info['ece_test_after']:.4f}; "
             f"prototype threshold {info['prototype_threshold']:.4f} (uncertain: "
             f"{info['uncertain_rate_valid_correct']:.1%} of correct, {info['uncertain_rate_valid_wrong']:.1%} of "
             f"wrong Valid faces); max |torch - onnx| = {diff:.2e}")
    if install:
        install_model(info, onnx_path, models_dir)
    return info


def install_model(info: dict, onnx_path: Path, models_dir: Path = MODELS) -> None:
    """Put the ONNX file and the prototypes into ``models_dir`` with a new ``expression`` entry. Its ``priors``
    come next, from ``python -m training.expression.prior --write-manifest``."""
    protos = np.asarray(info["prototypes"], dtype=np.float32)
    proto_file = Path(onnx_path).parent / "expression_prototypes.npy"
    np.save(proto_file, protos)
    metrics_path = Path(info["onnx"]).parent / "metrics.json"
    counts = json.loads(metrics_path.read_text())["counts"] if metrics_path.is_file() else {}
    a = info["args"]
    entry = {
        "version": f"ferplus-{info['run']}-e{info['epoch']}",
        "file": "expression.onnx",
        "sha256": "",
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
        "loss": a["loss"], "screening": bool(a["screening"]) and a["loss"] != "ce",
        "mu_sigma": a.get("mu_sigma", "batch"),
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
        "export_check": f"max |torch - onnx| = {info['onnx_max_abs_diff']:.1e} (training/expression/export.py)",
        "training_data": "FER+ (FERPlus labels on FER2013) Train, majority vote; selected on FER+ Valid; "
                         f"aligned by the service's own face stage (training/prepare_faces.py). Counts: {counts}",
        "licence": "research use only (FER2013 pixels)",
        "model_card": "EXPRESSION.md",
        "bytes": 0,
    }
    install(models_dir, "expression", {"expression.onnx": onnx_path, proto_file.name: proto_file}, entry)


def main(argv: list[str] | None = None) -> None:
    setup_logging()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path)
    p.add_argument("--install", action="store_true",
                   help="also put the model into --models-dir (default models/) and write its manifest entry")
    p.add_argument("--install-only", action="store_true",
                   help="install RUN_DIR/expression.onnx with the numbers of a previous export (export.json)")
    p.add_argument("--models-dir", type=Path, default=MODELS)
    args = p.parse_args(argv)
    if args.install_only:
        info = json.loads((args.run_dir / "export.json").read_text())
        install_model(info, Path(info["onnx"]), args.models_dir)
    else:
        export_run(args.run_dir, install=args.install, models_dir=args.models_dir)


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
