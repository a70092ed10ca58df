"""Output ensemble of occlusion networks as one ONNX file: every member reads the same 64x64 input, the file
returns the mean of their per-region probabilities. Seeds of one recipe disagree on real photos (models/OCCLUSION.md,
rows H0 and H0 seed 7); averaging them asks whether that disagreement is noise a mean removes.

    python -m training.occlusion.ensemble runs/occ_h0 runs/occ_h0s7 --out runs/occ_e_h0
    python -m training.occlusion.evaluate --models-dir runs/occ_e_h0/models --derive-thresholds --screen-models-dir V1

Each member folder holds a trainer run (``occlusion.onnx`` + ``manifest_entry.json``). The result is written to
OUT/occlusion.onnx with a manifest entry (the first member's descriptions; version, sha256, size and architecture
its own; the members listed with their checksums; none of a member's metrics) and put into a scratch copy of
``models/`` at OUT/models to evaluate it in; ``--install`` puts it into ``--models-dir`` (default models/) instead.
Thresholds: re-derive them with the trainer's rule through the serving class (the second command); until then the
first member's stand. Metrics: ``training.occlusion.evaluate --write-manifest`` and ``training.occlusion.video
--write-manifest``. Nothing here trains.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import compose, helper

from app.manifest import sha256_of
from app.model_zoo.base import OnnxFile
from training.common import TrainingError, install, run_cli
from training.data import REPO_ROOT

INPUT, OUTPUT = "input", "probabilities"


def mean_graph(members: list[onnx.ModelProto]) -> onnx.ModelProto:
    """One model: the members' nodes side by side on the shared ``input``, then Mean of their ``probabilities``."""
    nodes, inits, outs = [], [], []
    for k, model in enumerate(members):
        if [i.name for i in model.graph.input] != [INPUT] or [o.name for o in model.graph.output] != [OUTPUT]:
            raise TrainingError(f"member {k}: expected one input {INPUT!r} and one output {OUTPUT!r}")
        prefixed = compose.add_prefix(model, prefix=f"m{k}_")
        renamed = {f"m{k}_{INPUT}": INPUT}
        for node in prefixed.graph.node:
            node.input[:] = [renamed.get(name, name) for name in node.input]
            nodes.append(node)
        inits.extend(prefixed.graph.initializer)
        outs.append(f"m{k}_{OUTPUT}")
    nodes.append(helper.make_node("Mean", outs, [OUTPUT], name="ensemble_mean"))
    first = members[0].graph
    graph = helper.make_graph(nodes, "occlusion_ensemble", [first.input[0]], [first.output[0]], inits)
    model = helper.make_model(graph, opset_imports=members[0].opset_import, ir_version=members[0].ir_version)
    onnx.checker.check_model(model)
    return model


def check(model_path: Path, member_paths: list[Path]) -> float:
    """max |ensemble - mean of the members| on random inputs, through onnxruntime."""
    x = np.random.default_rng(0).uniform(0, 255, (8, 1, 64, 64)).astype(np.float32)
    expected = np.mean([OnnxFile(p).run(x)[0] for p in member_paths], axis=0)
    return float(np.abs(OnnxFile(model_path).run(x)[0] - expected).max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("members", type=Path, nargs="+", help="trainer run folders")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--version", default="2.1.0", help="the manifest entry's version")
    parser.add_argument("--name", default="occlusion",
                        help="manifest entry (and file NAME.onnx) to install as: occlusion, or occlusion_ensemble "
                             "(served with MICROFACS_OCCLUSION_MODEL=ensemble)")
    parser.add_argument("--install", action="store_true",
                        help="put it into --models-dir (default: a scratch copy of models/ at OUT/models)")
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models", help="where --install puts it")
    args = parser.parse_args(argv)
    if len(args.members) < 2:
        raise TrainingError("an ensemble needs at least two members")
    paths = [m / "occlusion.onnx" for m in args.members]
    entries = [json.loads((m / "manifest_entry.json").read_text()) for m in args.members]
    args.out.mkdir(parents=True, exist_ok=True)
    out_path = args.out / "occlusion.onnx"
    onnx.save(mean_graph([onnx.load(p) for p in paths]), out_path)
    diff = check(out_path, paths)
    if diff > 1e-5:
        raise TrainingError(f"ensemble differs from the members' mean by {diff:.2e}")
    archs = sorted({str(e.get("architecture", "?")) for e in entries})
    entry = {k: v for k, v in entries[0].items() if k not in ("metrics", "produced_by", "updated_by")}
    entry.update(
        version=args.version, file=f"{args.name}.onnx", sha256=sha256_of(out_path), bytes=out_path.stat().st_size,
        architecture=f"output ensemble (mean of the per-region probabilities) of {len(paths)} networks, each: "
                     + " | ".join(archs),
        members=[{"run": str(m), "sha256": sha256_of(p), "valid": e.get("metrics", {}).get("ferplus_valid")}
                 for m, p, e in zip(args.members, paths, entries)],
        export_check=f"max |ensemble - mean of members| = {diff:.1e} (random inputs, onnxruntime)",
        metrics={"command": "python -m training.occlusion.ensemble "
                            + " ".join(sys.argv[1:] if argv is None else argv)},
    )
    (args.out / "manifest_entry.json").write_text(json.dumps(entry, indent=2) + "\n")
    models = args.models_dir if args.install else args.out / "models"
    if not args.install:  # a scratch copy of models/ to evaluate the ensemble in
        shutil.rmtree(models, ignore_errors=True)
        shutil.copytree(args.models_dir, models)
    install(models, args.name, {f"{args.name}.onnx": out_path}, entry)
    print(f"wrote {out_path} ({len(paths)} members, max diff {diff:.1e}) and installed it into {models}; "
          f"thresholds are the first member's until evaluate_occlusion --derive-thresholds")


if __name__ == "__main__":
    raise SystemExit(run_cli(main))
