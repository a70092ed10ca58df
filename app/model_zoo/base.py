"""What every ONNX model class shares: the session (``OnnxFile``), on the execution providers of a ``Runtime``
(app/providers.py: ``MICROFACS_PROVIDERS``; the CPU by default), and, for the served models, the manifest entry
(app/manifest.py) with its checksum check (``OnnxModel``)."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.manifest import ManifestError, ModelEntry, ModelError, load_manifest, sha256_of
from app.providers import CPU, Runtime

__all__ = ["ManifestError", "ModelEntry", "ModelError", "OnnxFile", "OnnxModel", "Runtime", "load_manifest",
           "sha256_of"]

logger = logging.getLogger("microfacs")
MAX_BATCH = 32  # inputs per call at most (faces of one image): bounds the memory of one call


class OnnxFile:
    """One ONNX file with the service's session options (intra-op threads, full graph optimisation, errors only in
    the log). ``threads``: intra-op threads on the CPU, or a ``Runtime`` (threads and execution providers);
    ``provider``: the provider the session actually runs on. The served models are ``OnnxModel``s; the trainers and
    evaluators use this class directly for files outside the manifest (cross-validation folds, fresh exports)."""

    def __init__(self, path: Path, threads: int | Runtime = 1) -> None:
        runtime = threads if isinstance(threads, Runtime) else Runtime(threads)
        self.path = path = Path(path)
        if not path.is_file():
            raise ModelError(f"model file {path} is missing")
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: graph-optimiser notes are not for the service's logs
        try:
            self.session = ort.InferenceSession(str(path), options, providers=runtime.session_providers())
        except Exception as exc:  # a device provider that is installed but cannot start (driver, libraries)
            if not runtime.on_device:
                raise
            logger.warning("%s: %s failed to start (%s); this model runs on the CPU", path.name, runtime.names[0],
                           str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            self.session = ort.InferenceSession(str(path), options, providers=[CPU])
        self.provider: str = self.session.get_providers()[0]
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    @property
    def batched(self) -> bool:
        """Whether the input's first dimension is free: several faces in one call."""
        return not isinstance(self.input_shape[0], int)

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: tensor})

    def run_batch(self, tensor: np.ndarray) -> list[np.ndarray]:
        """``run`` on N inputs stacked on the first axis, every output stacked the same way: calls of at most
        ``MAX_BATCH`` when the graph's batch dimension is free, else one call per input."""
        step = MAX_BATCH if self.batched else 1
        if len(tensor) <= step:
            return self.run(tensor)
        parts = [self.run(tensor[i:i + step]) for i in range(0, len(tensor), step)]
        return [np.concatenate(outputs) for outputs in zip(*parts)]

    def warm_up(self) -> None:
        shape = [d if isinstance(d, int) else 1 for d in self.input_shape]
        self.run(np.zeros(shape, dtype=np.float32))


class OnnxModel(OnnxFile):
    """One served ONNX file, checked against its manifest entry."""

    manifest_name: str = ""

    def __init__(self, models_dir: Path, threads: int | Runtime = 1) -> None:
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
