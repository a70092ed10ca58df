"""What every ONNX model class shares: the manifest entry, the checksum check and the session."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort


class ModelError(RuntimeError):
    """A model file is missing, altered or does not match its manifest entry."""


@dataclass(frozen=True)
class ModelEntry:
    name: str
    version: str
    file: str
    sha256: str
    extra: dict[str, Any]

    @classmethod
    def from_manifest(cls, models_dir: Path, name: str) -> "ModelEntry":
        manifest = load_manifest(models_dir)
        try:
            raw = manifest["models"][name]
        except KeyError as exc:
            raise ModelError(f"model {name!r} is not in {models_dir / 'manifest.json'}") from exc
        return cls(name=name, version=raw["version"], file=raw["file"], sha256=raw["sha256"], extra=raw)


def load_manifest(models_dir: Path) -> dict[str, Any]:
    path = models_dir / "manifest.json"
    if not path.is_file():
        raise ModelError(f"no model manifest at {path}")
    return json.loads(path.read_text())


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class OnnxModel:
    """One ONNX file, checked against its manifest entry, run on the CPU."""

    manifest_name: str = ""

    def __init__(self, models_dir: Path, threads: int = 1) -> None:
        self.entry = ModelEntry.from_manifest(models_dir, self.manifest_name)
        path = models_dir / self.entry.file
        if not path.is_file():
            raise ModelError(f"model file {path} is missing")
        actual = sha256_of(path)
        if actual != self.entry.sha256:
            raise ModelError(f"{path.name}: sha256 {actual} does not match the manifest ({self.entry.sha256})")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.input_shape = tuple(self.session.get_inputs()[0].shape)

    @property
    def version(self) -> str:
        return self.entry.version

    def run(self, tensor: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {self.input_name: tensor})

    def warm_up(self) -> None:
        shape = [d if isinstance(d, int) else 1 for d in self.input_shape]
        self.run(np.zeros(shape, dtype=np.float32))
