"""The patent's claim, tested: does statistical screening make the expression net robust to wrong labels?

    python -m training.noise_experiment --fractions 0.1 0.2 0.3 --epochs 6 --width 16
    python -m training.noise_experiment --table runs/noise          # print the table of finished runs

For each fraction of deliberately corrupted FER+ Train labels (``train_expression --corrupt``: a seeded pick
of faces gets a wrong class, as label and as one-hot target), two runs with the same data, seed and
budget: batch-hard triplets **with** the statistical screening and **without** it (both plus CE). Each run
is exported (mirror averaging, temperature on Valid) and read on FER+ Valid / Test (clean labels) and out of
domain on taiwanese_dev: the service's face stage (``Analyzer.run``, filters off) makes every aligned crop
once, then each run's ONNX file scores the same crops with the service's preprocessing
(``app.model_zoo.expression.preprocess``); the balanced prior divides by FER+ Train's class frequencies.
taiwanese_dev is only read.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from training.common import log, run_cli
from training.data import FERPLUS_CLASSES, RUNS_DIR, TW_TO_FERPLUS, data_root, taiwanese_rows


def taiwanese_crops(root: Path, intended: bool = False) -> tuple[np.ndarray, ...]:
    """Aligned crops of every taiwanese_dev photo by the service's own face stage, and observers' top vote
    (FER+ class indices); with ``intended``, also the expression each performer was asked to show."""
    from app.analyzer import Analyzer, FaceOptions
    from app.settings import Settings

    analyzer = Analyzer(Settings())
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1)
    crops, truth, asked = [], [], []
    for row in taiwanese_rows(root):
        faces = analyzer.run(cv2.imread(str(row.path)), options).faces
        if faces and not faces[0].filtered:
            crops.append(faces[0].aligned.image)
            truth.append(FERPLUS_CLASSES.index(TW_TO_FERPLUS[row.top_vote]))
            asked.append(FERPLUS_CLASSES.index(TW_TO_FERPLUS[row.intended]))
    if intended:
        return np.stack(crops), np.array(truth), np.array(asked)
    return np.stack(crops), np.array(truth)


def run_onnx(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    """The ONNX file's probabilities for network inputs ``x`` (N, 1, 48, 48), one thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = x.astype(np.float32)
    return np.concatenate([session.run(None, {name: x[i:i + 256]})[0] for i in range(0, len(x), 256)])


def score_onnx(onnx_path: Path, crops: np.ndarray) -> np.ndarray:
    """The ONNX file's probabilities for aligned crops, with the service's preprocessing."""
    from app.model_zoo.expression import preprocess

    return run_onnx(onnx_path, np.stack([preprocess(c) for c in crops])[:, None])


def run_arm(fraction: float, screening: bool, args: argparse.Namespace) -> Path:
    from training.export_expression import export_run
    from training.train_expression import parse_args, train

    name = f"noise{int(round(fraction * 100)):02d}_{'screened' if screening else 'plain'}"
    out = args.out / name
    if not (out / "export.json").is_file():
        argv = ["--loss", "triplet", "--screening" if screening else "--no-screening", "--corrupt", str(fraction),
                "--epochs", str(args.epochs), "--width", str(args.width), "--seed", str(args.seed),
                "--threads", str(args.threads), "--name", name, "--out", str(out)]
        train(parse_args(argv))
        export_run(out, onnx_path=out / "expression.onnx")
    return out


def table(out_dir: Path, crops: np.ndarray | None, truth: np.ndarray | None) -> list[dict]:
    from training.fit_expression_prior import ferplus_prior

    prior = ferplus_prior()
    rows = []
    for run in sorted(out_dir.glob("noise*/export.json")):
        info = json.loads(run.read_text())
        row = {"run": run.parent.name, "valid": round(info["valid_acc"], 4), "test": round(info["test_acc"], 4)}
        if crops is not None and truth is not None:
            p = score_onnx(run.parent / "expression.onnx", crops)
            balanced = p / prior
            row["taiwanese_ferplus_prior"] = round(float((p.argmax(1) == truth).mean()), 4)
            row["taiwanese_balanced"] = round(float((balanced.argmax(1) == truth).mean()), 4)
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.1, 0.2, 0.3])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RUNS_DIR / "noise")
    parser.add_argument("--table", type=Path, help="only print the table of the runs in this folder")
    args = parser.parse_args(argv)
    if args.table is None:
        for fraction in args.fractions:
            for screening in (True, False):
                log.info(f"label noise {fraction:.0%}, screening {screening}")
                run_arm(fraction, screening, args)
    root = data_root() / "taiwanese_dev"
    crops, truth = taiwanese_crops(root) if (root / "labels.csv").is_file() else (None, None)
    rows = table(args.table or args.out, crops, truth)
    print("| run | FER+ Valid | FER+ Test | taiwanese_dev top vote, FER+ prior | same, balanced prior |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['run']} | {r['valid']} | {r['test']} | {r.get('taiwanese_ferplus_prior', '')} | "
              f"{r.get('taiwanese_balanced', '')} |")
    (args.table or args.out).mkdir(parents=True, exist_ok=True)
    ((args.table or args.out) / "table.json").write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
