"""Refresh the sha256 and byte size of every model file listed in models/manifest.json."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from app.model_zoo.base import sha256_of  # noqa: E402

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "manifest.json"


def main() -> None:
    manifest = json.loads(MANIFEST.read_text())
    for name, entry in manifest["models"].items():
        path = MANIFEST.parent / entry["file"]
        if not path.is_file():
            print(f"{name}: {path.name} missing, left as is")
            continue
        entry["sha256"] = sha256_of(path)
        entry["bytes"] = path.stat().st_size
        print(f"{name}: {entry['sha256'][:16]}… {entry['bytes']} bytes")
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")


if __name__ == "__main__":
    main()
