"""The lock files (requirements/) cover every dependency that pyproject.toml declares, at versions it allows,
and the Dockerfile and .ci/run install them: a dependency added to pyproject without refreshing the locks
fails here (and `pip check` in .ci/run and the image), not on a fresh machine with whatever is newest."""
from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

import pytest
import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.helpers import REPO

LOCKS = REPO / "requirements"
# What the locks are resolved for (their refresh command's --python-version / --python-platform)
TARGET = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.0",
          "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
          "implementation_name": "cpython", "platform_python_implementation": "CPython", "os_name": "posix"}


def pins(path: Path) -> dict[str, Version]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        name, _, version = line.partition("==")
        assert version, f"{path.name}: {line!r} is not pinned with =="
        out[canonicalize_name(name.split("[")[0])] = Version(version.split(";")[0].strip())
    return out


def declared(pyproject: Path, *extras: str) -> list[Requirement]:
    project = tomllib.loads(pyproject.read_text())["project"]
    specs = list(project.get("dependencies", []))
    for extra in extras:
        specs += project["optional-dependencies"][extra]
    requirements = [Requirement(spec) for spec in specs]
    return [r for r in requirements if r.marker is None or r.marker.evaluate({**TARGET, "extra": ""})]


def extras_of(requirement: Requirement) -> list[Requirement]:
    """What ``requirement``'s extras (``uvicorn[standard]``) add, from the installed package's metadata (the
    installed version is the locked one where the dev lock was installed, as in CI)."""
    try:
        requires = importlib.metadata.requires(requirement.name) or []
    except importlib.metadata.PackageNotFoundError:
        return []
    out = []
    for spec in requires:
        dependency = Requirement(spec)
        marker = dependency.marker
        if marker is None or marker.evaluate({**TARGET, "extra": ""}):  # not an extra's: pip check's business
            continue
        if any(marker.evaluate({**TARGET, "extra": extra}) for extra in requirement.extras):
            out.append(dependency)
    return out


def missing(requirements: list[Requirement], locked: dict[str, Version]) -> list[str]:
    problems = []
    for requirement in requirements:
        version = locked.get(canonicalize_name(requirement.name))
        if version is None:
            problems.append(f"{requirement}: not in the lock")
        elif not requirement.specifier.contains(version, prereleases=True):
            problems.append(f"{requirement}: the lock has {version}")
        elif requirement.extras:
            problems += [f"{requirement} -> {p}" for p in missing(extras_of(requirement), locked)]
    return problems


RUNTIME = declared(REPO / "pyproject.toml") + declared(REPO / "clients" / "python" / "pyproject.toml")
DEV = declared(REPO / "pyproject.toml", "dev", "training") + declared(REPO / "clients" / "python" / "pyproject.toml")
TORCH_DEPS = [Requirement(line) for line in (LOCKS / "torch-cpu.in").read_text().splitlines()
              if line.strip() and not line.startswith("#")]


def test_the_runtime_lock_covers_the_service_and_the_sdk():
    assert not missing(RUNTIME, pins(LOCKS / "lock.txt"))


def test_the_dev_lock_covers_dev_training_and_the_sdk_but_torch():
    locked = pins(LOCKS / "dev-lock.txt")
    (torch,) = [r for r in DEV if r.name == "torch"]
    assert "torch" not in locked  # installed by .ci/run as the CPU wheel, at the training extra's pin
    assert f'pip install -q "{torch}"' in (REPO / ".ci" / "run").read_text()
    assert not missing([r for r in DEV if r.name != "torch"] + TORCH_DEPS, locked)


def test_the_image_runs_the_versions_ci_tested():
    runtime, dev = pins(LOCKS / "lock.txt"), pins(LOCKS / "dev-lock.txt")
    assert {name: dev.get(name) for name in runtime} == runtime


def test_the_dockerfile_and_ci_install_the_locks_then_the_project_without_resolving():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "pip install --no-cache-dir -r requirements/lock.txt" in dockerfile
    assert re.search(r"pip install --no-cache-dir --no-deps \./clients/python \. && pip check", dockerfile)
    ci = (REPO / ".ci" / "run").read_text()
    assert ci.index("-r requirements/dev-lock.txt") < ci.index("--no-deps -e . -e ./clients/python")
    assert "pip check" in ci


@pytest.mark.parametrize("lock", ["lock.txt", "dev-lock.txt"])
def test_the_checks_would_catch_a_missing_or_stale_pin(lock):
    locked = pins(LOCKS / lock)
    assert missing([Requirement("fastapi>=0.115")], {k: v for k, v in locked.items() if k != "fastapi"})
    assert missing([Requirement("fastapi>=9999")], locked)
    assert missing([Requirement("no-such-package-xyz")], locked)
    assert extras_of(Requirement("uvicorn[standard]"))  # the extras are looked at (uvloop, httptools, ...)
    assert missing([Requirement("uvicorn[standard]")], {k: v for k, v in locked.items() if k != "httptools"})
