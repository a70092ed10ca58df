"""How the training code is put together: no import cycle (an AST walk over training/ and experiments/, imports
inside functions included), no sys.path edits, scorers of exported ONNX files import no torch, installing into
models/ is opt-in, the recipe files parse, and every `python -m` command the docs quote names a module that
exists and options it has."""
from __future__ import annotations

import argparse
import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "experiments", "tools", "scripts")
# Modules that need torch (they train or export networks), each with its reason; every other module of training/
# and experiments/ must import without it.
TORCH = {
    "training.torch_utils": "seed, MACs, ONNX export",
    "training.expression.model": "the network", "training.expression.train": "trains",
    "training.expression.export": "exports",
    "training.au.model": "the network", "training.au.train": "trains",
    "training.occlusion.model": "the network", "training.occlusion.train": "trains",
    "experiments.ablation_expression": "reads checkpoints",
}
# The last commit with the rejected variants' code: doc blocks that quote its commands say so on their first line.
VARIANTS_COMMIT = "b5155f8"


def modules(*packages: str) -> dict[str, Path]:
    """Dotted name -> file of every module in ``packages``."""
    out = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imported(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions (the project uses absolute imports only)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert not node.level, f"{path}: relative import"
            found.add(node.module or "")
            found |= {f"{node.module}.{a.name}" for a in node.names}  # `from training.au import train`
    return found


def import_graph(*packages: str) -> dict[str, set[str]]:
    known = modules(*packages)
    return {name: {m for m in imported(path) if m in known and m != name} for name, path in known.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), and modules importing themselves."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_the_cycle_check_finds_a_cycle_hidden_in_a_function(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    from training.occlusion.train import x\n")
    assert "training.occlusion.train" in imported(probe)


def test_no_import_cycle_in_training_or_experiments():
    graph = import_graph("training", "experiments")
    assert len(graph) > 30
    assert cycles(graph) == []


def test_training_never_imports_experiments_tools_or_scripts():
    graph = import_graph(*PACKAGES)
    for name, targets in graph.items():
        if name.startswith("training"):
            assert not {t for t in targets if not t.startswith("training")}, name


def test_nothing_edits_sys_path():
    """Everything runs as a module from the repository root (python -m training.au.train, python -m tools.X)."""
    for path in modules(*PACKAGES, "tests").values():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and isinstance(node.value, ast.Name):
                assert node.value.id != "sys", f"{path.relative_to(REPO)}:{node.lineno} edits sys.path"


def test_modules_import_without_torch_except_those_that_train():
    """``sys.modules['torch'] = None`` makes any ``import torch`` fail: the scorers of exported ONNX files, the
    metrics, fits and the data code must not need it."""
    names = sorted(n for n in modules("training", "experiments") if n not in TORCH) + ["app.manifest"]
    assert set(TORCH) <= set(modules("training", "experiments"))
    code = ("import importlib, sys, traceback\nsys.modules['torch'] = None\nfailed = []\n"
            f"for name in {names!r}:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except Exception:\n        failed.append(name + ': ' + traceback.format_exc().splitlines()[-1])\n"
            "print('\\n'.join(failed)); sys.exit(1 if failed else 0)\n")
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]


@pytest.mark.parametrize("module", ["expression", "occlusion", "au"])
def test_smoke_config_is_derived_not_written_into_args(module):
    pytest.importorskip("torch")
    trainer = importlib.import_module(f"training.{module}.train")
    args = trainer.parse_args(["--smoke", "--out", "/tmp/unused", "--epochs", "7"])
    before = dict(vars(args))
    cfg = trainer.run_config(args)
    assert vars(args) == before and cfg.epochs == 1 and args.epochs == 7


def test_installing_into_models_is_opt_in():
    """A trainer, the soup, the ensemble and the fusion write their own folder; models/ only with --install."""
    pytest.importorskip("torch")
    for module, argv in (("training.occlusion.train", []), ("training.au.train", ["--final"]),
                         ("training.expression.export", ["run"]), ("training.au.soup", ["a", "b", "--out", "o"]),
                         ("training.occlusion.ensemble", ["a", "b", "--out", "o"]), ("training.au.fuse", [])):
        parser = captured_parser(module)
        assert not parser.parse_args(argv).install, module
        assert parser.parse_args([*argv, "--install"]).install, module


def recipe_files() -> list[Path]:
    return sorted((REPO / "training").glob("*/configs/*.toml"))


@pytest.mark.parametrize("path", recipe_files(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_recipe_files_set_only_options_their_trainer_has(path):
    """Every name in a recipe file is one of the trainer's options and arrives in its arguments (a typo or an
    option that left the code fails here, not at the start of a two-hour run)."""
    pytest.importorskip("torch")
    import tomllib

    trainer = importlib.import_module(f"training.{path.parent.parent.name}.train")
    mode = ["--cv"] if path.parent.parent.name == "au" else []
    args = trainer.parse_args([*mode, "--config", str(path)])
    for name, value in tomllib.loads(path.read_text()).items():
        got = getattr(args, name)
        assert (str(got) if isinstance(got, Path) else got) == value, name


def test_a_recipe_file_with_an_unknown_option_is_refused(tmp_path):
    pytest.importorskip("torch")
    from training.common import TrainingError
    from training.occlusion.train import parse_args

    path = tmp_path / "bad.toml"
    path.write_text('epochs = 3\nsharpen_clean = 0.5\n')
    with pytest.raises(TrainingError, match="sharpen_clean"):
        parse_args(["--config", str(path)])
    path.write_text("epochs = 3\n")
    assert parse_args(["--config", str(path)]).epochs == 3
    assert parse_args(["--config", str(path), "--epochs", "5"]).epochs == 5  # the command line wins


def test_missing_cache_is_an_exception_for_callers_and_exit_status_2_for_the_cli(tmp_path):
    from training.common import MissingDataError
    from training.data import load_cache

    with pytest.raises(MissingDataError, match="prepare_faces"):
        load_cache("ckplus", tmp_path)
    code = "from training.au.evaluate import main; from training.common import run_cli; import sys; " \
           f"sys.exit(run_cli(main, ['--cv-dir', {str(tmp_path)!r}]))"
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr


# ------------------------------------------------------------------------------------------ documented commands
class Captured(Exception):
    pass


def captured_parser(module: str) -> argparse.ArgumentParser:
    """The ArgumentParser a module's ``parse_args`` (or ``main``) builds, caught at its first parse (for modules whose
    ``main`` parses before doing anything)."""
    mod = importlib.import_module(module)

    def capture(self, *args, **kwargs):
        raise Captured(self)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture):
        try:
            (getattr(mod, "parse_args", None) or mod.main)([])
        except Captured as caught:
            return caught.args[0]
    raise AssertionError(f"{module} builds no ArgumentParser")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, module, options) of every `python -m training|experiments|tools|scripts.X` the README, BENCHMARKS,
    the model cards and docs/ (the notebooks included) quote, continuation lines joined; blocks that quote the
    variants' commit are skipped."""
    out = []
    for doc in [REPO / "README.md", REPO / "BENCHMARKS.md", *sorted((REPO / "models").glob("*.md")),
                *sorted((REPO / "docs").rglob("*.md"))]:
        text = doc.read_text()
        blocks = re.split(r"^```", text, flags=re.M)
        for i, block in enumerate(blocks):
            if i % 2 and VARIANTS_COMMIT in "\n".join(block.splitlines()[:3]):
                continue
            joined = re.sub(r"\\\n\s*", " ", block)
            for line in joined.splitlines():
                if VARIANTS_COMMIT in line:
                    continue
                for match in re.finditer(r"python -m ((?:training|experiments|tools|scripts)\.[\w.]+)([^`;|&#)]*)",
                                         line):
                    options = [t.split("=")[0].strip("[]") for t in match.group(2).split()
                               if t.lstrip("[").startswith("--")]
                    out.append((f"{doc.name}: {line.strip()[:80]}", match.group(1), options))
    return out


def declared_options(path: Path) -> set[str]:
    """The option strings a module's argparse code declares (``add_argument("--x", ...)``), read from its source:
    nothing is run. ``parse_with_config`` adds ``--config``."""
    options = {"-h", "--help"}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "add_argument":
                options |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
            elif node.func.attr == "parse_with_config" or getattr(node.func, "id", "") == "parse_with_config":
                options.add("--config")
        elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "parse_with_config":
            options.add("--config")
    return options


def test_documented_commands_name_modules_and_options_that_exist():
    commands = documented_commands()
    assert len(commands) > 40
    known = modules(*PACKAGES)
    problems = []
    for where, module, options in commands:
        if module not in known:
            problems.append(f"{where}: no module {module}")
            continue
        declared = declared_options(known[module])
        problems += [f"{where}: {module} has no {o}" for o in options if o not in declared]
    assert not problems, "\n".join(problems)
