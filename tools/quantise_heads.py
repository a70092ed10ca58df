"""Would int8 versions of our own networks (the AU detector, the expression network) change what the service says?
Measures it, ships nothing: the int8 files are written to a temporary folder.

    python -m tools.quantise_heads                 # FER+ Test, CK+ peak frames, taiwanese_dev; speed per face
    python -m tools.quantise_heads --limit 500     # the first 500 faces of each set (quicker)

Static int8 (onnxruntime.quantization, QDQ, per-channel int8 weights, uint8 activations), calibrated on FER+ *Train*
faces (the first ``--calibration`` of them, through the service's face-crop path). Then every evaluation face goes
through the service's own face stage once (``Analyzer.run(face_crop=True)`` for FER+ and CK+, the detector for
taiwanese_dev) and both networks read the same aligned crop, fp32 and int8:

* expression: accuracy (FER+ Test majority vote; taiwanese_dev observers' top vote: VALIDATION ONLY, read here to
  compare two variants, nothing is fitted to it), label changes under the served (balanced) prior, the largest change
  of a served score;
* AUs: per-AU F1 on CK+ peak frames with the manifest's thresholds (the served detector was trained on CK+: the
  absolute F1 is optimistic, the fp32 - int8 difference is the point), decision changes, the largest change of a
  probability;
* ms per face for each network, fp32 against int8, one thread, interleaved.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from app.analyzer import Analyzer, FaceOptions
from app.model_zoo.au_detector import AuDetector, face_decisions
from app.model_zoo.au_detector import preprocess as au_input
from app.model_zoo.expression import ExpressionRecognizer
from app.model_zoo.expression import preprocess as expression_input
from app.settings import Settings
from training.data import (
    CKPLUS_TO_FERPLUS,
    FERPLUS_CLASSES,
    TW_TO_FERPLUS,
    ckplus_rows,
    ferplus_rows,
    read_bgr,
    taiwanese_rows,
)


def session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def crops(analyzer: Analyzer, images: list[np.ndarray], face_crop: bool) -> list[np.ndarray | None]:
    """The aligned crop of each image's largest face (None when none is found)."""
    options = FaceOptions(side_face_filter=False, occlusion_filter=False, max_faces=1, face_crop=face_crop)
    out: list[np.ndarray | None] = []
    for image in images:
        faces = analyzer.run(image, options).faces
        out.append(faces[0].aligned.image if faces else None)
    return out


def expression_of(analyzer: Analyzer) -> ExpressionRecognizer:
    return analyzer.models.require(analyzer.models.expression, "expression network")  # research profile only


def au_of(analyzer: Analyzer) -> AuDetector:
    return analyzer.models.require(analyzer.models.au, "AU detector")


def inputs(analyzer: Analyzer, aligned: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(expression input (N, 1, 48, 48), AU input (N, 1, 64, 64)) of aligned crops."""
    expression = np.stack([expression_input(c, expression_of(analyzer).size) for c in aligned])[:, None]
    au = np.concatenate([au_input(c, au_of(analyzer).size) for c in aligned])
    return expression.astype(np.float32), au.astype(np.float32)


class Reader:
    def __init__(self, batches: list[np.ndarray]) -> None:
        self.items = iter([{"input": b} for b in batches])

    def get_next(self):
        return next(self.items, None)


def quantise(source: Path, target: Path, calibration: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Data(Reader, CalibrationDataReader):
        pass

    prepared = target.with_suffix(".pre.onnx")
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    quantize_static(str(prepared), str(target), Data([calibration[i:i + 16] for i in range(0, len(calibration), 16)]),
                    quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8)


def run_all(sess, x: np.ndarray) -> list[np.ndarray]:
    parts = [sess.run(None, {"input": x[i:i + 32]}) for i in range(0, len(x), 32)]
    return [np.concatenate(p) for p in zip(*parts)]


def ms_per_face(fp32, int8, x: np.ndarray, runs: int = 400) -> tuple[float, float]:
    for sess in (fp32, int8):  # warm-up
        for i in range(10):
            sess.run(None, {"input": x[i % len(x)][None]})
    a: list[float] = []
    b: list[float] = []
    for i in range(runs):
        one = x[i % len(x)][None]
        for sess, times in ((fp32, a), (int8, b)) if i % 2 else ((int8, b), (fp32, a)):
            start = time.perf_counter()
            sess.run(None, {"input": one})
            times.append((time.perf_counter() - start) * 1000)
    return float(np.median(a)), float(np.median(b))


def f1(truth: np.ndarray, predicted: np.ndarray) -> float:
    tp = float((truth & predicted).sum())
    return 2 * tp / max(2 * tp + float((truth & ~predicted).sum()) + float((~truth & predicted).sum()), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=0, help="at most this many faces per evaluation set")
    parser.add_argument("--calibration", type=int, default=400, help="FER+ Train faces to calibrate on")
    args = parser.parse_args()
    analyzer = Analyzer(Settings())
    expression, au = expression_of(analyzer), au_of(analyzer)
    limit = (lambda rows: rows[:args.limit]) if args.limit else (lambda rows: rows)

    def read(paths, face_crop):
        images = [read_bgr(p) for p in paths]
        return crops(analyzer, images, face_crop)

    train = ferplus_rows("train")[:args.calibration]
    calibration = [c for c in read([r.path for r in train], True) if c is not None]
    cal_expression, cal_au = inputs(analyzer, calibration)
    with tempfile.TemporaryDirectory() as tmp:
        q_expression, q_au = Path(tmp) / "expression_int8.onnx", Path(tmp) / "au_detector_int8.onnx"
        quantise(expression.path, q_expression, cal_expression)
        quantise(au.path, q_au, cal_au)
        sessions = {"expression": (session(expression.path), session(q_expression)),
                    "au": (session(au.path), session(q_au))}
        print(f"calibrated on {len(calibration)} FER+ Train faces; int8 files: expression "
              f"{q_expression.stat().st_size / 1e6:.2f} MB (fp32 {expression.path.stat().st_size / 1e6:.2f}), AU "
              f"{q_au.stat().st_size / 1e6:.2f} MB (fp32 {au.path.stat().st_size / 1e6:.2f})")

        def expression_outputs(aligned):
            x, _ = inputs(analyzer, aligned)
            (p32, _e32), (p8, _e8) = (run_all(s, x) for s in sessions["expression"])
            return p32, p8

        def au_outputs(aligned):
            _, x = inputs(analyzer, aligned)
            r32, r8 = (run_all(s, x)[0] for s in sessions["au"])
            prob = [np.array([face_decisions(r, au.anchors)[0] for r in raw]) for raw in (r32, r8)]
            return prob[0], prob[1]

        def expression_report(name, aligned, truth):
            keep = [i for i, c in enumerate(aligned) if c is not None and truth[i] is not None]
            faces = [aligned[i] for i in keep]
            target = np.array([expression.classes.index(truth[i]) for i in keep])
            p32, p8 = expression_outputs(faces)
            b32, b8 = expression.reweight(p32, "balanced"), expression.reweight(p8, "balanced")
            acc = [float((p.argmax(1) == target).mean()) for p in (p32, p8)]
            bacc = [float((p.argmax(1) == target).mean()) for p in (b32, b8)]
            changed = float((b32.argmax(1) != b8.argmax(1)).mean())
            print(f"{name}: {len(faces)} faces; accuracy (FER+ prior) fp32 {acc[0]:.4f} int8 {acc[1]:.4f}; (balanced) "
                  f"fp32 {bacc[0]:.4f} int8 {bacc[1]:.4f}; served label changed on {changed:.2%}; served score "
                  f"|change| max {np.abs(b32 - b8).max():.4f}, mean {np.abs(b32 - b8).mean():.5f}")

        tests = limit([r for r in ferplus_rows("test") if r.majority is not None])
        truth = [FERPLUS_CLASSES[r.majority] if r.majority is not None else None for r in tests]
        expression_report("FER+ Test (majority vote)", read([r.path for r in tests], True), truth)

        ck = limit([r for r in ckplus_rows() if r.is_peak])
        ck_aligned = read([r.path for r in ck], True)
        expression_report("CK+ peak frames (8-way, unseen)", ck_aligned,
                          [CKPLUS_TO_FERPLUS.get(r.emotion) for r in ck])
        keep = [i for i, c in enumerate(ck_aligned) if c is not None]
        p32, p8 = au_outputs([ck_aligned[i] for i in keep])
        thresholds = au.thresholds
        d32, d8 = p32 >= thresholds, p8 >= thresholds
        scored = [(c, a) for c, a in enumerate(au.classes) if a in ck[0].aus]
        f32 = [f1(np.array([ck[i].aus[a] == 1 for i in keep]), d32[:, c]) for c, a in scored]
        f8 = [f1(np.array([ck[i].aus[a] == 1 for i in keep]), d8[:, c]) for c, a in scored]
        print(f"CK+ AUs: {len(keep)} peak frames, {len(scored)} AUs; mean F1 (manifest thresholds) fp32 "
              f"{np.mean(f32):.4f} int8 {np.mean(f8):.4f}; per AU |change| max "
              f"{np.abs(np.subtract(f32, f8)).max():.4f}; decisions changed {float((d32 != d8).mean()):.2%}; "
              "probability |change| max "
              f"{np.abs(p32 - p8).max():.4f}, mean {np.abs(p32 - p8).mean():.5f}")

        tw = limit(taiwanese_rows())
        expression_report("taiwanese_dev (top vote; validation only)", read([r.path for r in tw], False),
                          [TW_TO_FERPLUS[r.top_vote] for r in tw])

        x_expression, x_au = inputs(analyzer, calibration[:64])
        for name, x in (("expression", x_expression), ("au", x_au)):
            a, b = ms_per_face(*sessions[name], x)
            print(f"{name}: {a:.2f} ms a face fp32, {b:.2f} ms int8 (one thread, interleaved, median of 200 each)")


if __name__ == "__main__":
    main()
