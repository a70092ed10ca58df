"""app/manifest.py: clear errors naming the file, atomic updates that keep the other entries, provenance."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from app.manifest import (
    Manifest,
    ManifestError,
    ModelError,
    command_line,
    edit,
    load_manifest,
    replace_entry,
    update_entry,
)

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"


@pytest.fixture
def models(tmp_path) -> Path:
    """A copy of the real manifest (no model files) in a temp dir."""
    shutil.copy(MODELS / "manifest.json", tmp_path / "manifest.json")
    return tmp_path


def checksums(path: Path) -> dict[str, str]:
    return {n: e["sha256"] for n, e in json.loads(path.read_text())["models"].items()}


def test_the_shipped_manifest_reads_with_unified_keys():
    manifest = Manifest.load(MODELS)
    assert {"expression", "au_detector", "occlusion", "face_landmark"} <= set(manifest.models)
    raw = (MODELS / "manifest.json").read_text()
    assert '"card"' not in raw and '"conversion_check"' not in raw  # one spelling: model_card, export_check
    assert manifest.entry("occlusion").model_card == "OCCLUSION.md"
    assert manifest.entry("expression").model_card == "EXPRESSION.md"
    assert manifest.entry("au_detector").export_check.startswith("max |torch - onnx|")
    assert load_manifest(MODELS)["models"]["expression"]["sha256"] == manifest.entry("expression").sha256


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(ManifestError, match=str(tmp_path / "manifest.json")):
        Manifest.load(tmp_path)


def test_truncated_manifest_is_a_model_error_naming_the_file(models):
    path = models / "manifest.json"
    path.write_text(path.read_text()[:500])
    with pytest.raises(ModelError) as info:
        load_manifest(models)
    assert isinstance(info.value, ManifestError)
    assert str(path) in str(info.value) and "not valid JSON" in str(info.value)
    assert not isinstance(info.value, json.JSONDecodeError)


@pytest.mark.parametrize("text, problem", [
    ('[]', 'no "models" object'),
    ('{"models": {"x": 3}}', "entry 'x' is not an object"),
    ('{"models": {"x": {"version": "1", "file": "x.onnx"}}}', "entry 'x' lacks sha256"),
])
def test_malformed_manifest_says_what_is_wrong(tmp_path, text, problem):
    (tmp_path / "manifest.json").write_text(text)
    with pytest.raises(ManifestError, match=problem) as info:
        Manifest.load(tmp_path)
    assert str(tmp_path / "manifest.json") in str(info.value)


def test_unknown_model_names_the_file(models):
    with pytest.raises(ManifestError, match="'nope' is not in .*manifest.json"):
        Manifest.load(models).entry("nope")
    with pytest.raises(ManifestError):
        update_entry(models, "nope", {"x": 1})


def test_update_keeps_other_entries_checksums_and_layout(models):
    path = models / "manifest.json"
    before = json.loads(path.read_text())
    sums = checksums(path)
    update_entry(models, "occlusion", {"thresholds": {"eyes": 0.6, "nose": 0.5, "mouth": 0.5, "brows": 0.5}},
                 metrics={"extra": 1})
    after = json.loads(path.read_text())
    assert checksums(path) == sums
    for name in before["models"]:
        if name != "occlusion":
            assert after["models"][name] == before["models"][name]
    occ = after["models"]["occlusion"]
    assert occ["thresholds"]["eyes"] == 0.6
    assert occ["metrics"]["extra"] == 1 and occ["metrics"]["ckplus_clean"] == before["models"]["occlusion"][
        "metrics"]["ckplus_clean"]  # metrics are merged, not replaced
    stamp = occ["updated_by"][-1]
    assert stamp["fields"] == ["metrics", "thresholds"] and stamp["command"] and stamp["date"]
    text = path.read_text()
    assert text.endswith("}\n") and text == json.dumps(after, indent=2) + "\n"
    assert not list(models.glob(".manifest.json.*"))  # no temp file left behind


def test_rerunning_an_update_replaces_its_stamp(models):
    earlier = len(Manifest.load(models).models["expression"].get("updated_by", []))  # other commands' stamps stay
    for value in (1, 2):
        update_entry(models, "expression", metrics={"x": value})
    entry = Manifest.load(models).models["expression"]
    assert entry["metrics"]["x"] == 2 and len(entry["updated_by"]) == earlier + 1


def test_replace_entry_stamps_provenance(models):
    old = Manifest.load(models).models["occlusion"]
    new = {**old, "version": "9.9.9", "card": "OCCLUSION.md", "updated_by": [{"command": "old"}]}
    new.pop("model_card")
    replace_entry(models, "occlusion", new)
    entry = Manifest.load(models).entry("occlusion")
    assert entry.version == "9.9.9" and entry.model_card == "OCCLUSION.md" and "card" not in entry.extra
    assert "updated_by" not in entry.extra  # a new entry starts a new history
    stamp = entry.produced_by
    assert stamp is not None and stamp.command and stamp.date.endswith("+00:00")
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], check=False, capture_output=True, text=True)
    assert stamp.commit == (head.stdout.strip() if head.returncode == 0 else None)


def test_an_edit_that_changes_nothing_writes_nothing(models):
    path = models / "manifest.json"
    path.write_text(path.read_text().replace('"model_card"', '"card"', 1))  # an old spelling stays as is
    before = path.read_bytes()
    with edit(models):
        pass
    assert path.read_bytes() == before


def test_an_edit_cannot_write_an_entry_the_service_would_refuse(models):
    before = (models / "manifest.json").read_bytes()
    with pytest.raises(ManifestError, match="lacks sha256"), edit(models) as manifest:
        del manifest.models["occlusion"]["sha256"]
    assert (models / "manifest.json").read_bytes() == before


def test_command_line_is_the_python_dash_m_form():
    assert command_line(["/abs/training/au/train.py", "--final", "--epochs", "40"], module="training.au.train") \
        == "python -m training.au.train --final --epochs 40"
    assert command_line([str(REPO / "tools" / "update_manifest.py")]) == "python tools/update_manifest.py"
    code = "from app.manifest import command_line; print(command_line())"
    result = subprocess.run([sys.executable, "-c", code, "--flag", "a b"], check=False, capture_output=True, text=True,
                            cwd=REPO)
    assert result.stdout.strip() == "python -c --flag 'a b'"


def test_update_manifest_tool_changes_nothing_when_files_match(models):
    for name in ("face_detection_short_range.onnx", "occlusion.onnx"):
        shutil.copy(MODELS / name, models / name)
    before = (models / "manifest.json").read_bytes()
    from tools.update_manifest import refresh_checksums

    refresh_checksums(models)
    assert (models / "manifest.json").read_bytes() == before
    (models / "occlusion.onnx").write_bytes(b"not the model")
    refresh_checksums(models)
    entry = Manifest.load(models).models["occlusion"]
    assert entry["bytes"] == 13 and entry["updated_by"][-1]["fields"] == ["bytes", "sha256"]
    assert checksums(models / "manifest.json")["expression"] == checksums(MODELS / "manifest.json")["expression"]
