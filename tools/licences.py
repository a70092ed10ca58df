"""Model licences: which profile may load each model (the manifest's ``profiles`` and ``commercial_use``), and the
NOTICE file, generated from the manifest.

    python tools/licences.py --write-manifest   # set profiles / commercial_use of every entry from COMMERCIAL_USE
    python tools/licences.py --write-notice     # write NOTICE from models/manifest.json
    python tools/licences.py --check            # exit 1 when NOTICE or the manifest is not what these would write

A model is in the ``open`` profile only when both its weights' licence and its training data allow commercial
use. The judgement per model is COMMERCIAL_USE below, with the reason; it is not legal advice.
tests/test_open_profile.py runs ``--check``.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.manifest import Manifest, edit

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
NOTICE = REPO / "NOTICE"

MEDIAPIPE = ("Google MediaPipe model, Apache-2.0: weights and their use, commercial included, licensed by Google; "
             "trained by Google on data Google describes in the model card")
# model -> (commercial use allowed, why). Allowed -> profiles research and open; otherwise research only.
COMMERCIAL_USE: dict[str, tuple[bool, str]] = {
    "face_detection_short_range": (True, MEDIAPIPE),
    "face_detection_full_range": (True, MEDIAPIPE),
    "face_landmark": (True, MEDIAPIPE),
    "face_landmarker": (True, MEDIAPIPE),
    "face_blendshapes": (True, MEDIAPIPE),
    "expression": (False, "trained on FER2013 pixels (research use only)"),
    "au_detector": (False, "trained on CK+ (terms: non-commercial research, no redistribution) and FER2013 pixels "
                           "(research use only)"),
    "au_fusion": (False, "fitted on CK+ (non-commercial research, no redistribution) and FER2013 pixels"),
    "occlusion": (False, "trained on FER2013 pixels (research use only) and CK+ faces"),
    "occlusion_ensemble": (False, "trained on FER2013 pixels (research use only) and CK+ faces"),
    "face_identity": (False, "weights Apache-2.0, but trained on VGGFace2: photos collected from Google Image "
                             "Search whose copyright stays with their owners, and whose terms for commercial use we "
                             "have not been able to confirm; excluded from open until they are"),
}
# Card of an entry without a model_card key.
CARDS = {"au_detector": "AU_DETECTOR.md"}


def profiles_of(name: str) -> list[str]:
    allowed, _ = COMMERCIAL_USE[name]
    return ["research", "open"] if allowed else ["research"]


def write_manifest(models_dir: Path = MODELS) -> None:
    with edit(models_dir) as manifest:
        unknown = sorted(set(manifest.models) - set(COMMERCIAL_USE))
        if unknown:
            raise SystemExit(f"no licence judgement for {unknown}: add them to COMMERCIAL_USE")
        for name, entry in manifest.models.items():
            allowed, why = COMMERCIAL_USE[name]
            entry["profiles"] = profiles_of(name)
            entry["commercial_use"] = {"allowed": allowed, "why": why}
            if name in CARDS and "model_card" not in entry:
                entry["model_card"] = CARDS[name]


def model_files(entry: dict[str, Any]) -> list[str]:
    """The files of one manifest entry: its model file and, for the expression network, its prototypes."""
    files = [entry["file"]]
    prototypes = entry.get("prototypes")
    if isinstance(prototypes, dict) and prototypes.get("file"):
        files.append(prototypes["file"])
    return files


def origin(name: str, entry: dict[str, Any]) -> str:
    if entry.get("source"):
        return str(entry["source"])
    made = (entry.get("produced_by") or {}).get("command")
    card = entry.get("model_card")
    return "trained by this project" + (f" (`{made}`)" if made else "") + (f"; card: models/{card}" if card else "")


HEADER = """\
MicroFACS
Copyright The MicroFACS authors

The source code of this repository (app/, microfacs_cli/, clients/, training/, tools/, scripts/, tests/) is
licensed under the Apache License, Version 2.0: see LICENSE.

The model files in models/ are NOT all under that licence. Their licences, origins and training data follow,
generated from models/manifest.json by `python tools/licences.py --write-notice` (tests check that this file
matches the manifest). Which of them a server loads is chosen by MICROFACS_PROFILE:

  research (the default)  every model below. The AU detector, the AU fusion, the expression network and the
                          occlusion networks are RESEARCH USE ONLY (trained on FER2013 pixels and CK+; the CK+
                          terms also forbid redistribution). Do not ship them in a product.
  open                    only the models marked "open" below: Google MediaPipe's, Apache-2.0, usable
                          commercially. AUs and expressions come from published rules on their blendshapes
                          (models/OPEN_PROFILE.md); FER+, CK+ and taiwanese_dev were used only to measure them.
                          `docker build --target open .` builds an image with only these files.

The MediaPipe models were converted from TFLite to ONNX by this project (tools/convert_mediapipe.py): the ONNX
files are modified versions of Google's models (Copyright Google LLC, Apache License 2.0).

The research profile's AU detector and expression network follow the methods of patents CN109344744 and
CN110532880; the open profile uses neither method. Patents are territorial; this notice is not legal advice.

"""


def notice_text(models_dir: Path = MODELS) -> str:
    manifest = Manifest.load(models_dir)
    lines = [HEADER, "Model files", "===========", "",
             "| file | profiles | licence | commercial use |", "|---|---|---|---|"]
    for entry in manifest.models.values():
        allowed = entry.get("commercial_use", {}).get("allowed")
        use = "yes" if allowed else "no"
        for file in model_files(entry):
            lines.append(f"| models/{file} | {', '.join(entry.get('profiles', ['research']))} | "
                         f"{entry.get('licence', 'not stated')} | {use} |")
    lines += ["", "Details", "=======", ""]
    for name, entry in manifest.models.items():
        lines += [f"{name} (version {entry['version']})",
                  f"  files:          {', '.join('models/' + f for f in model_files(entry))}",
                  f"  sha256:         {entry['sha256']}",
                  f"  task:           {entry.get('task', '')}",
                  f"  profiles:       {', '.join(entry.get('profiles', ['research']))}",
                  f"  licence:        {entry.get('licence', 'not stated')}",
                  f"  commercial use: {'yes' if entry.get('commercial_use', {}).get('allowed') else 'no'}: "
                  f"{entry.get('commercial_use', {}).get('why', 'not judged')}",
                  f"  origin:         {origin(name, entry)}",
                  f"  training data:  {entry.get('training_data', 'not stated')}",
                  ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write-manifest", action="store_true")
    parser.add_argument("--write-notice", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    if args.write_manifest:
        write_manifest()
    if args.write_notice:
        NOTICE.write_text(notice_text(), encoding="utf-8")
        print(f"wrote {NOTICE.relative_to(REPO)}")
    if args.check:
        problems = []
        for name, entry in Manifest.load(MODELS).models.items():
            if name not in COMMERCIAL_USE:
                problems.append(f"no licence judgement for {name}: add it to COMMERCIAL_USE")
                continue
            allowed, why = COMMERCIAL_USE[name]
            if entry.get("profiles") != profiles_of(name) or entry.get("commercial_use") != {"allowed": allowed,
                                                                                           "why": why}:
                problems.append(f"manifest: {name}'s profiles / commercial_use are out of date: --write-manifest")
        if not NOTICE.is_file() or NOTICE.read_text(encoding="utf-8") != notice_text():
            problems.append("NOTICE does not match models/manifest.json: python tools/licences.py --write-notice")
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
