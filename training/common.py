"""What every recipe shares, without torch: the logger, errors, the CLI wrapper, option files and installing a
model into models/.

Torch helpers (seed, ONNX export, MACs) are in training/torch_utils.py, so that the scripts that only score
exported ONNX files import no torch. Metrics are in training/metrics.py, fits in training/fitting.py.
"""
from __future__ import annotations

import argparse
import logging
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import tomllib

from app.manifest import Manifest, ModelError, replace_entry, sha256_of

log = logging.getLogger("microfacs.training")


class TrainingError(RuntimeError):
    """A training or evaluation run cannot go on (missing cache, no fold models...): the CLI prints it and
    exits with status 2; library callers get the exception."""


class MissingDataError(TrainingError, FileNotFoundError):
    """An input file (face cache, fold model) is not there; the message says which command makes it."""


def require_file(path: Path, how: str) -> Path:
    if not Path(path).is_file():
        raise MissingDataError(f"{path} is missing: run `{how}` first")
    return Path(path)


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is when a line is logged (pytest swaps it between tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout
        super().emit(record)


def setup_logging(path: Path | None = None) -> None:
    """Log INFO lines to stdout and, when given, to ``path`` (replaces earlier handlers: tests call main()
    several times). Only the training logger: the caller's own logging is left alone."""
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    handlers: list[logging.Handler] = [_CurrentStdout(sys.stdout)]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(path, mode="w"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def ensure_logging() -> None:
    """Library entry points (``train``) log to stdout when the caller set nothing up."""
    if not log.handlers:
        setup_logging()


def run_cli(main: Callable[[list[str] | None], object], argv: list[str] | None = None) -> int:
    """Run a script's ``main`` as a command: 0 on success, 2 with a one-line message (no traceback) when a
    library call raises TrainingError or a manifest/model error."""
    try:
        main(argv)
    except (TrainingError, ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------------------ option files
def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args`` with ``--config FILE``: a TOML file of the command's options (argparse names, e.g.
    ``hard_classes = "happiness,surprise"``) that replace the defaults; options on the command line win. Unknown
    names are an error, so a recipe file cannot silently drift from its trainer (tests/test_training_layout.py
    parses every file under training/*/configs/)."""
    parser.add_argument("--config", type=Path, default=None,
                        help="TOML file of this command's options (e.g. the served recipe, training/*/configs/); "
                             "options given on the command line win")
    first, _ = parser.parse_known_args(argv)
    if first.config is not None:
        parser.set_defaults(**config_defaults(parser, first.config))
    return parser.parse_args(argv)


def config_defaults(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """The options of a TOML file, converted by each option's own ``type`` (paths, numbers)."""
    values = tomllib.loads(require_file(path, "a recipe file: see training/*/configs/").read_text())
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(values) - set(actions))
    if unknown:
        raise TrainingError(f"{path}: no such option {', '.join(unknown)} (known: {', '.join(sorted(actions))})")
    out = {}
    for name, value in values.items():
        kind = actions[name].type
        out[name] = kind(value) if callable(kind) and isinstance(value, str) and kind is not str else value
    return out


# ------------------------------------------------------------------------------------------------- installing
def install(models_dir: Path, name: str, files: Mapping[str, Path], entry: dict[str, Any],
            keep_metrics: bool = False) -> dict[str, Any]:
    """Copy ``files`` (target file name -> produced file) into ``models_dir`` and write ``entry`` as the manifest
    entry ``name`` with the checksum and size of its ``entry["file"]``; with ``keep_metrics``, the old entry's
    metrics stay where the new entry has none of its own (test-set numbers an evaluator stored). Every recipe
    installs through here, and only when asked (``--install``). Returns the entry written."""
    models_dir = Path(models_dir)
    for target, source in files.items():
        if Path(source).resolve() != (models_dir / target).resolve():
            shutil.copyfile(source, models_dir / target)
    entry = dict(entry)
    if keep_metrics:
        old = Manifest.load(models_dir).models.get(name, {})
        entry["metrics"] = {**old.get("metrics", {}), **entry.get("metrics", {})}
    main_file = models_dir / entry["file"]
    entry.update(sha256=sha256_of(main_file), bytes=main_file.stat().st_size)
    replace_entry(models_dir, name, entry)
    log.info(f"installed {main_file} and its manifest entry {name!r} (sha256 {entry['sha256'][:16]}...)")
    return entry
