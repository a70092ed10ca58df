"""A weight soup of AU detector runs: one network whose weights are the mean of several runs' weights.

    python -m training.au.soup runs/au_pnp runs/au_pnpl --out runs/au_soup [--install]
    python -m training.au.evaluate --cv-dir runs/au_soup/cv --neutral-valid --write-manifest [--models-dir D]

Model soups (Wortsman et al., ICML 2022): networks fine-tuned from the same pretrained weights tend to stay in
one basin of the loss, so the mean of their weights is a single model, of the same size and speed, that is
often better than each of them (an ensemble of their outputs would cost one network per member). Each run
folder holds ``cv/fold{k}.onnx`` + ``.json`` (``training.au.train --cv``) and ``au_detector.onnx`` with its
``manifest_entry.json`` (``--final``); every run must start from the same ``--init`` (checked).

* fold k of the soup = mean of the runs' fold-k models: the same held-out subjects in every run (checked),
  so ``evaluate_au`` on ``OUT/cv`` is still an honest subject-wise CV of the soup;
* the final soup = mean of the runs' final models: OUT/au_detector.onnx and OUT/manifest_entry.json, put into a
  scratch copy of models/ at OUT/models, or with ``--install`` into ``--models-dir`` (default models/);
  ``training.au.evaluate --write-manifest`` then sets its thresholds.

The ONNX graphs must be identical but for the values of their initialisers (checked). BatchNorm is folded into
the convolutions at export (eval mode), so the mean is over each layer's effective weights and biases.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from app.manifest import sha256_of
from training.au.data import training_data
from training.common import TrainingError, install, log, run_cli
from training.data import REPO_ROOT


def graph_signature(model: onnx.ModelProto) -> list:
    """Everything about the graph except the initialisers' values."""
    nodes = [(n.op_type, tuple(n.input), tuple(n.output), n.SerializeToString()) for n in model.graph.node]
    inits = [(i.name, tuple(i.dims), i.data_type) for i in model.graph.initializer]
    return [nodes, inits]


def average_onnx(paths: list[Path], out: Path) -> None:
    """Write the model whose float initialisers are the mean of ``paths``' (identical graphs, checked)."""
    models = [onnx.load(str(p)) for p in paths]
    first = models[0]
    for path, model in zip(paths[1:], models[1:]):
        if graph_signature(model) != graph_signature(first):
            raise TrainingError(f"{path} and {paths[0]} are not the same network; a soup needs identical graphs")
    for i, init in enumerate(first.graph.initializer):
        values = [numpy_helper.to_array(m.graph.initializer[i]) for m in models]
        if values[0].dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.mean(values, axis=0).astype(values[0].dtype), init.name))
        elif any(not np.array_equal(v, values[0]) for v in values[1:]):
            raise TrainingError(f"integer initialiser {init.name} differs between runs")
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.checker.check_model(first)
    onnx.save(first, str(out))


def soup_folds(runs: list[Path], out: Path) -> list[dict]:
    """Fold k of the soup from every run's fold k; returns the runs' fold-0 metas."""
    members: list[dict] = []
    folds = sorted(p.stem for p in (runs[0] / "cv").glob("fold*.json"))
    if not folds:
        raise TrainingError(f"no fold models in {runs[0] / 'cv'}")
    for fold in folds:
        metas = [json.loads((run / "cv" / f"{fold}.json").read_text()) for run in runs]
        for run, meta in zip(runs[1:], metas[1:]):
            for key in ("test_index", "anchors", "classes", "input_size"):
                if meta[key] != metas[0][key]:
                    raise TrainingError(f"{run} {fold}: {key} differs from {runs[0]}; a soup needs the same folds")
            if meta["train_args"].get("init") != metas[0]["train_args"].get("init"):
                raise TrainingError(f"{run}: a different --init than {runs[0]}; a soup needs one starting point")
        average_onnx([run / "cv" / f"{fold}.onnx" for run in runs], out / "cv" / f"{fold}.onnx")
        meta = {k: v for k, v in metas[0].items() if k not in ("torch_scores", "onnx_check", "train_args")}
        meta["soup_of"] = [{"run": str(run), "train_args": m["train_args"]} for run, m in zip(runs, metas)]
        (out / "cv" / f"{fold}.json").write_text(json.dumps(meta))
        members = members or metas
    log.info(f"{len(folds)} fold soups of {len(runs)} runs -> {out / 'cv'}")
    return members


def member_entries(runs: list[Path]) -> list[dict]:
    """Each member's final model entry (``manifest_entry.json`` beside its ``au_detector.onnx``)."""
    entries = []
    for run in runs:
        path = run / "manifest_entry.json"
        if not path.is_file() or not (run / "au_detector.onnx").is_file():
            raise TrainingError(f"{run}: no final model; run `python -m training.au.train --final --out {run}` first")
        entries.append(json.loads(path.read_text()))
    return entries


def member_checks(entries: list[dict]) -> list[float]:
    """Each member's export check (max |torch - onnx|) from its entry."""
    checks = []
    for entry in entries:
        text = entry.get("export_check", "")
        match = re.match(r"max \|torch - onnx\| = ([0-9.e+-]+)", text)
        if not match:
            raise TrainingError(f"an au_detector entry has no export check ({text!r})")
        checks.append(float(match.group(1)))
    return checks


def soup_final(runs: list[Path], metas: list[dict], out: Path) -> tuple[Path, dict]:
    """The final soup, OUT/au_detector.onnx, and its manifest entry (also written to OUT/manifest_entry.json)."""
    entries = member_entries(runs)
    target = out / "au_detector.onnx"
    average_onnx([run / "au_detector.onnx" for run in runs], target)
    entry = dict(entries[0])
    members = [f"({i + 1}) {training_data(m['train_args'])}" for i, m in enumerate(metas)]
    entry.update({
        "version": time.strftime("%Y.%m.%d") + "-ckplus-ferplus-soup",
        "sha256": sha256_of(target),
        "bytes": target.stat().st_size,
        "export_check": (f"max |torch - onnx| = {max(member_checks(entries)):.1e} over the {len(runs)} members at "
                         "export (training/au/train.py); the soup is the mean of their float initialisers, identical "
                         "graphs checked (training/au/soup.py)"),
        "training_data": f"weight average (model soup) of {len(runs)} runs from the same pretrained backbone, "
                         "each trained on: " + " | ".join(members),
        "architecture": dict(entry["architecture"], train_args=None,
                             soup_of=[m["train_args"] for m in metas]),
    })
    entry = {k: v for k, v in entry.items() if k not in ("produced_by", "updated_by")}
    (out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    log.info(f"final soup -> {target}")
    return target, entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders of train_au (cv/ and models/)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--install", action="store_true",
                        help="put the final soup into --models-dir (default: a scratch copy of models/ at OUT/models)")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models", help="where --install puts it")
    parser.add_argument("--cv-only", action="store_true", help="only the fold soups (no final models needed)")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        raise TrainingError("a soup needs at least two runs")
    metas = soup_folds(args.runs, args.out)
    if not args.cv_only:
        target, entry = soup_final(args.runs, metas, args.out)
        models = args.models_dir if args.install else args.out / "models"
        if not args.install:  # a scratch copy of models/ to evaluate the soup in
            shutil.rmtree(models, ignore_errors=True)
            shutil.copytree(args.models_dir, models)
        install(models, "au_detector", {"au_detector.onnx": target}, entry)
        log.info("run training.au.evaluate --write-manifest for its thresholds")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
