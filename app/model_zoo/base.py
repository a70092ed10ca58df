"""What every ONNX model class shares: the session (``OnnxFile``) and, for the served models, the manifest entry
(app/manifest.py) with its checksum check (``OnnxModel``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.manifest import ManifestError, ModelEntry, ModelError, load_manifest, sha256_of

__all__ = ["ManifestError", "ModelEntry", "ModelError", "OnnxFile", "OnnxModel", "load_manifest", "sha256_of"]


class OnnxFile:
    """One ONNX file run on the CPU: the service's session options (``threads`` intra-op threads, full graph
    optimisation, errors only in the log). The served models are ``OnnxModel``s; the trainers and evaluators use
    this class directly for files outside the manifest (cross-validation folds, fresh exports)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        self.path = path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file {path} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: graph-optimiser notes are not for the service's logs
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: tensor})

    def warm_up(self) -> None:
        shape = [d if isinstance(d, int) else 1 for d in self.input_shape]
        self.run(np.zeros(shape, dtype=np.float32))


class OnnxModel(OnnxFile):
    """One served ONNX file, checked against its manifest entry, run on the CPU."""

    manifest_name: str = ""

    def __init__(self, models_dir: Path, threads: int = 1) -> None:
        self.entry = ModelEntry.from_manifest(models_dir, self.manifest_name)
        path = Path(models_dir) / self.entry.file
        if not path.is_file():
            raise ModelError(f"model file {path} is missing")
        actual = sha256_of(path)
        if actual != self.entry.sha256:
            raise ModelError(f"{path.name}: sha256 {actual} does not match the manifest ({self.entry.sha256})")
        super().__init__(path, threads)

    @property
    def version(self) -> str:
        return self.entry.version
