"""Execution providers (``MICROFACS_PROVIDERS``, e.g. ``cuda,cpu``): which onnxruntime backends the models run on,
in order of preference. A provider this onnxruntime build lacks (``cuda`` without ``onnxruntime-gpu``) is left out
with one log line, and the CPU is always the last resort; ``/version`` and ``/metrics`` say where each model runs.

No onnxruntime import at module level: the settings validate the names with ``parse_providers``.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

logger = logging.getLogger("microfacs")

CPU = "CPUExecutionProvider"
# Short names -> onnxruntime's. A full onnxruntime name ("...ExecutionProvider") is taken as it is.
PROVIDERS = {
    "cpu": CPU,
    "cuda": "CUDAExecutionProvider",  # onnxruntime-gpu: the `gpu` extra, the Dockerfile's `gpu` target
    "tensorrt": "TensorrtExecutionProvider",  # onnxruntime-gpu with TensorRT's libraries installed
    "openvino": "OpenVINOExecutionProvider",  # onnxruntime-openvino (in place of onnxruntime)
    "rocm": "ROCMExecutionProvider",
    "migraphx": "MIGraphXExecutionProvider",
    "dml": "DmlExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
}

Providers = tuple[tuple[str, dict[str, str]], ...]


def parse_providers(spec: str) -> Providers:
    """``"cuda:1,cpu"`` -> ((onnxruntime name, provider options), ...), in order of preference; ``:N`` picks a
    device (``device_id``). ValueError for an empty list or an unknown name."""
    out: list[tuple[str, dict[str, str]]] = []
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        name, _, device = item.partition(":")
        full = PROVIDERS.get(name.lower(), name if name.endswith("ExecutionProvider") else "")
        if not full:
            raise ValueError(f"unknown execution provider {name!r}: one of {', '.join(PROVIDERS)} (or onnxruntime's "
                             "full name, e.g. CUDAExecutionProvider)")
        if device and not device.isdigit():
            raise ValueError(f"{item!r}: the device after ':' is a number (e.g. cuda:1)")
        if full not in (p for p, _ in out):
            out.append((full, {"device_id": device} if device else {}))
    if not out:
        raise ValueError("no execution provider given (e.g. cpu, or cuda,cpu)")
    return tuple(out)


@dataclass(frozen=True)
class Runtime:
    """How the model sessions run: intra-op threads and the execution providers (with their options), in order of
    preference. Build it with ``Runtime.resolve``, which keeps what this onnxruntime build has."""

    threads: int = 1
    providers: Providers = ((CPU, {}),)
    requested: tuple[str, ...] = (CPU,)  # what the settings asked for (GET /version)

    @classmethod
    def resolve(cls, spec: str = "cpu", threads: int = 1, available: Sequence[str] | None = None) -> Runtime:
        """The providers of ``spec`` that onnxruntime has here (``available``: its list, by default
        ``onnxruntime.get_available_providers()``), then the CPU. One warning names those it lacks: they fall back
        to the next one asked for, and finally to the CPU."""
        wanted = parse_providers(spec)
        if available is None:
            import onnxruntime as ort

            available = ort.get_available_providers()
        have = set(available)
        kept = tuple((name, options) for name, options in wanted if name in have or name == CPU)
        missing = [name for name, _ in wanted if name not in have and name != CPU]
        if missing:
            devices = [name for name, _ in kept if name != CPU]
            logger.warning("MICROFACS_PROVIDERS: %s not available in this onnxruntime build (it has %s); the models "
                           "run on %s", ", ".join(missing), ", ".join(sorted(have)) or "none",
                           ", ".join(devices) + " then the CPU" if devices else "the CPU")
        if CPU not in (name for name, _ in kept):
            kept += ((CPU, {}),)
        return cls(threads, kept, tuple(name for name, _ in wanted))

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.providers]

    @property
    def on_device(self) -> bool:
        """Whether the first choice is an accelerator (not the CPU)."""
        return self.providers[0][0] != CPU

    def session_providers(self) -> list[str | tuple[str, dict[str, str]]]:
        """The ``providers`` argument of ``onnxruntime.InferenceSession``."""
        return [(name, dict(options)) if options else name for name, options in self.providers]
