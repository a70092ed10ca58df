"""The docs match the repository: the layout table of docs/development.md names paths that exist and every
top-level folder; every manifest entry has the same keys and a model card that says, on its first screen, what is
served (the manifest's version), how good it is (a metrics table naming its data) and under which licence; no
internal issue numbers in the user-facing pages."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MANIFEST = json.loads((REPO / "models" / "manifest.json").read_text())["models"]
UNIFORM_KEYS = ("version", "file", "sha256", "task", "source", "training_data", "licence", "model_card", "metrics")
FIRST_SCREEN = 40
DATA_SETS = ("CK+", "FER+", "taiwanese_dev", "VGGFace2", "random input", "real faces")


def section(text: str, heading: str) -> str:
    """The text under ``## heading`` up to the next heading of level 1 or 2."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^#{{1,2}} |\Z)", text, flags=re.M | re.S)
    assert match, f"no section {heading!r}"
    return match.group(1)


def layout_paths() -> list[str]:
    """Every backquoted path in the first column of the layout table."""
    rows = [line for line in section((REPO / "docs" / "development.md").read_text(), "Layout").splitlines()
            if line.startswith("| `")]
    return [p.rstrip("/") for row in rows for p in re.findall(r"`([^`]+)`", row.split("|")[1])]


def top_level_folders() -> set[str]:
    """The repository's top-level folders: those git tracks files in (else those on disk, hidden ones left out)."""
    try:
        files = subprocess.run(["git", "ls-files"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {p.name for p in REPO.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    return {line.split("/")[0] for line in files.splitlines() if "/" in line}


def test_the_layout_table_names_paths_that_exist():
    paths = layout_paths()
    assert len(paths) > 10
    missing = [p for p in paths if not (REPO / p).exists()]
    assert not missing, f"the layout table names paths that do not exist: {missing}"


def test_every_top_level_folder_is_in_the_layout_table():
    listed = {p.split("/")[0] for p in layout_paths()}
    assert not top_level_folders() - listed, f"not in docs/development.md's layout: {top_level_folders() - listed}"


def test_the_layout_check_catches_a_missing_folder(tmp_path):
    text = "## Layout\n\n| path | what |\n|---|---|\n| `app/` | x |\n| `nowhere/` | y |\n\n## Next\n| `tests/` | z |\n"
    rows = [line for line in section(text, "Layout").splitlines() if line.startswith("| `")]
    assert [re.findall(r"`([^`]+)`", r.split("|")[1])[0] for r in rows] == ["app/", "nowhere/"]


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_every_manifest_entry_has_the_uniform_keys(name):
    entry = MANIFEST[name]
    assert not [k for k in UNIFORM_KEYS if not entry.get(k)], name
    assert (REPO / "models" / entry["model_card"]).is_file(), entry["model_card"]


def first_screen(card: str) -> str:
    return "\n".join((REPO / "models" / card).read_text().splitlines()[:FIRST_SCREEN])


@pytest.mark.parametrize("name", sorted(MANIFEST))
def test_each_card_says_what_is_served_and_how_good_on_its_first_screen(name):
    entry = MANIFEST[name]
    screen = first_screen(entry["model_card"])
    assert entry["version"] in screen, f"{entry['model_card']}: served version {entry['version']} of {name}"
    licence = entry["licence"].split(" (")[0].split(";")[0].strip()
    assert "licence" in screen.lower() and licence.lower() in screen.lower(), (entry["model_card"], licence)
    table = [line for line in screen.splitlines() if line.startswith("|") and re.search(r"\d", line)]
    assert table, f"{entry['model_card']}: no metrics table on the first screen"
    assert any(d in line for line in table for d in DATA_SETS), f"{entry['model_card']}: the table names no data"


def test_every_card_is_some_entrys_card_and_has_a_reproduce_command():
    cards = {p.name for p in (REPO / "models").glob("*.md")} - {"OPEN_PROFILE.md"}  # a profile, not one model
    assert cards == {e["model_card"] for e in MANIFEST.values()}
    for card in cards:
        assert re.search(r"^## Reproduce\n(.|\n)*?```bash\n.*python -m ", (REPO / "models" / card).read_text(),
                         flags=re.M), card


def test_the_open_profile_card_names_its_licence_and_data_on_its_first_screen():
    screen = first_screen("OPEN_PROFILE.md")
    assert "Apache-2.0" in screen and "CK+" in screen and "FER+" in screen


def test_user_facing_pages_name_no_internal_issue_numbers():
    pages = [REPO / "README.md", *(REPO / "models").glob("*.md"), *(REPO / "docs").glob("*.md")]
    found = [f"{p.relative_to(REPO)}: {m.group(0)}" for p in pages
             for m in re.finditer(r"\bissues?[ -]#?\d+|#\d{1,4}\b(?!\w)", p.read_text(), flags=re.I)]
    assert not found, found
