"""Refresh the sha256 and byte size of every model file listed in models/manifest.json.

    python -m tools.update_manifest
"""
from __future__ import annotations

import argparse
from pathlib import Path

from app.manifest import edit, sha256_of

MODELS = Path(__file__).resolve().parents[1] / "models"


def refresh_checksums(models_dir: Path = MODELS) -> None:
    """Entries whose file changed get the new sha256 and bytes (and an ``updated_by`` stamp)."""
    with edit(models_dir) as manifest:
        for name, entry in manifest.models.items():
            path = models_dir / entry["file"]
            if not path.is_file():
                print(f"{name}: {path.name} missing, left as is")
                continue
            entry["sha256"] = sha256_of(path)
            entry["bytes"] = path.stat().st_size
            print(f"{name}: {entry['sha256'][:16]}… {entry['bytes']} bytes")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models-dir", type=Path, default=MODELS)
    refresh_checksums(parser.parse_args(argv).models_dir)


if __name__ == "__main__":
    main()
