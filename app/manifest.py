"""models/manifest.json: the one place that reads and writes it.

The manifest lists every model file the service loads: its version, file name and sha256 (checked at
start-up), and whatever its model class needs (classes, thresholds, input spec...). Trainers, evaluators
and ``tools/update_manifest.py`` change entries only through this module, so that every write

* is atomic (a temporary file beside it, then ``os.replace``: a reader never sees half a file),
* keeps the layout (``indent=2``, trailing newline: small diffs),
* uses one spelling per key (``model_card``, ``export_check``; the older ``card`` and ``conversion_check``
  are read and renamed),
* records provenance: ``produced_by`` (the command that wrote the whole entry) or, for a partial update
  (thresholds, metrics, checksums), one ``updated_by`` item per command: git commit, command line, date.

Reading::

    manifest = Manifest.load(models_dir)           # ManifestError naming the file if absent or invalid
    entry = manifest.entry("expression")           # typed ModelEntry

Writing::

    replace_entry(models_dir, "occlusion", entry)                  # a whole new entry (trainers)
    update_entry(models_dir, "au_detector", {"thresholds": t}, metrics={...})   # part of one (evaluators)
    with edit(models_dir) as manifest: ...                         # anything else (tools)

No heavy imports here: the service, the trainers and the tools all use it.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = 1
REQUIRED_KEYS = ("version", "file", "sha256")
# Old spelling -> the one kept. Entries written before the keys were unified use the old ones.
RENAMED_KEYS = {"card": "model_card", "conversion_check": "export_check"}
REPO_ROOT = Path(__file__).resolve().parents[1]


class ModelError(RuntimeError):
    """A model file is missing, altered or does not match its manifest entry."""


class ManifestError(ModelError):
    """The manifest itself is missing, not JSON, or lacks what the service needs. The message names the file."""


# ----------------------------------------------------------------------------------------------- read
@dataclass(frozen=True)
class Provenance:
    """Which code and command wrote a manifest entry."""

    commit: str | None  # git rev-parse HEAD of the checkout, None outside a git checkout
    command: str  # e.g. "python -m training.train_au --final --epochs 40"
    date: str  # UTC, ISO 8601, seconds
    dirty: bool | None = None  # the checkout had uncommitted changes (None: unknown)

    def to_dict(self) -> dict[str, Any]:
        return {"commit": self.commit, "dirty": self.dirty, "command": self.command, "date": self.date}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> Provenance:
        return cls(commit=raw.get("commit"), command=str(raw.get("command", "")), date=str(raw.get("date", "")),
                   dirty=raw.get("dirty"))


@dataclass(frozen=True)
class ModelEntry:
    """One model of the manifest. ``extra`` is the whole JSON object (model classes read their own keys)."""

    name: str
    version: str
    file: str
    sha256: str
    extra: dict[str, Any] = field(hash=False)

    @classmethod
    def from_manifest(cls, models_dir: Path, name: str) -> ModelEntry:
        return Manifest.load(models_dir).entry(name)

    @property
    def model_card(self) -> str | None:
        return self.extra.get("model_card")

    @property
    def export_check(self) -> str | None:
        return self.extra.get("export_check")

    @property
    def produced_by(self) -> Provenance | None:
        raw = self.extra.get("produced_by")
        return Provenance.from_dict(raw) if isinstance(raw, Mapping) else None


@dataclass
class Manifest:
    """The parsed manifest: ``models`` maps a model name to its JSON object (a plain dict, edited in place)."""

    path: Path
    models: dict[str, dict[str, Any]]
    manifest_version: int = MANIFEST_VERSION

    @classmethod
    def load(cls, models_dir: Path) -> Manifest:
        """Read ``models_dir/manifest.json``; ManifestError (naming the file) if absent, not JSON or malformed."""
        path = manifest_path(models_dir)
        if not path.is_file():
            raise ManifestError(f"no model manifest at {path}")
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
                                "is it truncated?") from exc
        except (OSError, UnicodeDecodeError) as exc:
            raise ManifestError(f"cannot read {path}: {exc}") from exc
        return cls.from_json(raw, path)

    @classmethod
    def from_json(cls, raw: Any, path: Path) -> Manifest:
        if not isinstance(raw, dict) or not isinstance(raw.get("models"), dict):
            raise ManifestError(f"{path} has no \"models\" object")
        models: dict[str, dict[str, Any]] = {}
        for name, entry in raw["models"].items():
            if not isinstance(entry, dict):
                raise ManifestError(f"{path}: entry {name!r} is not an object")
            missing = [k for k in REQUIRED_KEYS if not isinstance(entry.get(k), str)]
            if missing:
                raise ManifestError(f"{path}: entry {name!r} lacks {', '.join(missing)}")
            models[name] = _unify_keys(entry)
        return cls(path=path, models=models, manifest_version=int(raw.get("manifest_version", MANIFEST_VERSION)))

    def entry(self, name: str) -> ModelEntry:
        try:
            raw = self.models[name]
        except KeyError:
            raise ManifestError(f"model {name!r} is not in {self.path}") from None
        return ModelEntry(name=name, version=raw["version"], file=raw["file"], sha256=raw["sha256"], extra=raw)

    def to_json(self) -> dict[str, Any]:
        return {"manifest_version": self.manifest_version, "models": self.models}

    def save(self) -> None:
        """Write atomically, ``indent=2`` and a trailing newline, keeping the file's permissions."""
        text = json.dumps(self.to_json(), indent=2) + "\n"
        mode = self.path.stat().st_mode & 0o777 if self.path.exists() else 0o644
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, mode)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest_path(models_dir: Path) -> Path:
    return Path(models_dir) / MANIFEST_NAME


def load_manifest(models_dir: Path) -> dict[str, Any]:
    """The checked manifest as plain JSON (``{"manifest_version", "models"}``), for code that serves it as is."""
    return Manifest.load(models_dir).to_json()


def _unify_keys(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry with old key spellings renamed in place (same position), the newer value winning."""
    if not any(old in entry for old in RENAMED_KEYS):
        return entry
    out: dict[str, Any] = {}
    for key, value in entry.items():
        new = RENAMED_KEYS.get(key, key)
        if new != key and new in entry:
            continue  # both spellings present: keep the new one
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------- provenance
def git_commit(repo: Path = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(HEAD commit, whether the work tree has uncommitted changes); (None, None) outside git."""
    try:
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None, None
    return head or None, bool(status.strip())


def command_line(argv: list[str] | None = None, module: str | None = None) -> str:
    """A command line as one would type it: ``python -m package.module ARGS`` for a module run with -m,
    ``python path/relative/to/repo.py ARGS`` for a script. Without arguments: this process's own."""
    if argv is None:
        argv = sys.argv
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = module or (spec.name.removesuffix(".__main__") if spec is not None and spec.name else None)
    if module:
        return shlex.join(["python", "-m", module, *argv[1:]])
    script = argv[0] if argv and argv[0] else "python"
    with contextlib.suppress(ValueError):  # a script outside the repo keeps its path as given
        script = str(Path(script).resolve().relative_to(REPO_ROOT))
    return shlex.join(["python", script, *argv[1:]])


def provenance(argv: list[str] | None = None) -> Provenance:
    commit, dirty = git_commit()
    date = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    return Provenance(commit=commit, dirty=dirty, command=command_line(argv), date=date)


def stamp_update(entry: dict[str, Any], fields: list[str], stamp: Provenance) -> None:
    """Record a partial update in ``entry["updated_by"]``: one item per command (a rerun replaces its item)."""
    item = {**stamp.to_dict(), "fields": sorted(fields)}
    history = [h for h in entry.get("updated_by", []) if h.get("command") != stamp.command]
    entry["updated_by"] = [*history, item]


# ---------------------------------------------------------------------------------------------- write
@contextmanager
def edit(models_dir: Path) -> Iterator[Manifest]:
    """Load, let the caller change ``manifest.models``, then save atomically. Entries whose content changed
    get an ``updated_by`` stamp naming the top-level keys that changed; nothing changed, nothing written."""
    manifest = Manifest.load(models_dir)
    before = copy.deepcopy(manifest.models)
    yield manifest
    changed = {name: sorted(k for k in set(entry) | set(before.get(name, {}))
                            if entry.get(k) != before.get(name, {}).get(k))
               for name, entry in manifest.models.items()}
    changed = {name: keys for name, keys in changed.items() if keys}
    if not changed and before.keys() == manifest.models.keys():
        return
    stamp = provenance()
    for name, keys in changed.items():
        if "produced_by" not in keys:  # a replaced entry carries its own stamp
            stamp_update(manifest.models[name], keys, stamp)
    Manifest.from_json(manifest.to_json(), manifest.path)  # never write an entry the service would refuse
    manifest.save()


def replace_entry(models_dir: Path, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``entry`` as model ``name`` (new or replacing the old one), stamped ``produced_by``."""
    new = _unify_keys({k: v for k, v in entry.items() if k not in ("produced_by", "updated_by")})
    new["produced_by"] = provenance().to_dict()
    with edit(models_dir) as manifest:
        manifest.models[name] = new
    return new


def update_entry(models_dir: Path, name: str, fields: Mapping[str, Any] | None = None, *,
                 metrics: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Set top-level ``fields`` of an existing entry and merge ``metrics`` into its ``metrics`` object;
    the other keys stay. Stamped in ``updated_by``."""
    with edit(models_dir) as manifest:
        if name not in manifest.models:
            raise ManifestError(f"model {name!r} is not in {manifest.path}")
        entry = manifest.models[name]
        entry.update(_unify_keys(dict(fields or {})))
        if metrics:
            entry["metrics"] = {**entry.get("metrics", {}), **metrics}
    return entry
