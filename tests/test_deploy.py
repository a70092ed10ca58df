"""Deployment files without a container engine: hadolint on the Dockerfile, the compose file against the
compose-spec schema, the Kubernetes manifests against the Kubernetes schemas, and a replay of the
Dockerfile's steps into a fresh virtual environment that must serve /readyz."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import pytest
import yaml

from tests.helpers import REPO

K8S = REPO / "deploy" / "k8s"


def tool(name: str) -> str:
    found = shutil.which(name) or (str(Path(sys.executable).parent / name)
                                   if (Path(sys.executable).parent / name).exists() else None)
    if not found:
        pytest.fail(f"{name} is missing: pip install -e '.[dev]'")
    return found


# ---------------------------------------------------------------------------------------------- lint


def test_dockerfile_is_hadolint_clean():
    done = subprocess.run([tool("hadolint"), "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr


def test_hadolint_would_catch_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nADD . /app\n")
    done = subprocess.run([tool("hadolint"), "--no-color", str(bad)], capture_output=True, text=True)
    assert done.returncode != 0 and "DL3007" in done.stdout


def check_compose(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", str(path)],
                          capture_output=True, text=True)


def test_compose_file_matches_the_compose_spec(tmp_path):
    done = check_compose(REPO / "docker-compose.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["microfacs"]["ports"] == ["8000:8000"]
    scaled = {name for name, service in compose["services"].items() if service.get("profiles") == ["scaled"]}
    assert {"nginx", "microfacs-replica"} <= scaled
    assert (REPO / "deploy" / "nginx.conf").is_file()
    broken = dict(compose, services={"microfacs": {**compose["services"]["microfacs"], "restart_policy": "always"}})
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(broken))
    assert check_compose(tmp_path / "compose.yml").returncode != 0, "the schema check rejects unknown keys"


def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_match_their_schemas():
    import kubernetes_validate

    kinds = {}
    for _name, doc in k8s_documents():
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
        kinds[doc["kind"]] = doc
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {"cpu", "memory"} <= set(container["resources"]["requests"]) and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["allowPrivilegeEscalation"] is False
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    assert kinds["Service"]["spec"]["selector"] == kinds["Deployment"]["spec"]["selector"]["matchLabels"]


def test_kubernetes_gpu_example_requests_a_gpu():
    """deploy/k8s/gpu/: a Deployment of the `gpu` image with an nvidia.com/gpu resource request, valid, apart from the
    default manifests (`kubectl apply -f deploy/k8s/` does not pick it up)."""
    import kubernetes_validate

    (doc,) = [d for d in yaml.safe_load_all((K8S / "gpu" / "deployment.yaml").read_text()) if d]
    kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
    container = doc["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert {e["name"]: e.get("value") for e in container["env"]}["MICROFACS_PROVIDERS"] == "cuda,cpu"
    assert container["image"].endswith("-gpu") and container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    cpu = next(d for _, d in k8s_documents() if d["kind"] == "Deployment")
    assert doc["metadata"]["name"] != cpu["metadata"]["name"]


def test_kubernetes_validation_is_strict():
    import kubernetes_validate

    _, doc = next((n, d) for n, d in k8s_documents() if d["kind"] == "Deployment")
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.utils.latest_version(), strict=True)


# -------------------------------------------------------------------------------------------- replay


@dataclass
class Dockerfile:
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments), in order

    @classmethod
    def parse(cls, text: str, stage: str | None = None) -> Dockerfile:
        """The steps of one build stage: ``stage`` (its ``AS`` name), or the last one (``docker build``'s default)."""
        steps, current = [], ""
        for raw in text.splitlines():
            line = raw.strip()
            if not current and (not line or line.startswith("#")):
                continue
            if current and line.startswith("#"):
                continue
            current += (" " if current else "") + line
            if current.endswith("\\"):
                current = current[:-1].rstrip()
                continue
            instruction, _, args = current.partition(" ")
            steps.append((instruction.upper(), args.strip()))
            current = ""
        starts = [n for n, (instruction, _) in enumerate(steps) if instruction == "FROM"]
        names = [steps[n][1].split()[-1] if " AS " in steps[n][1].upper() else "" for n in starts]
        n = len(starts) - 1 if stage is None else names.index(stage)
        return cls(steps[starts[n]:starts[n + 1] if n + 1 < len(starts) else None])

    def env(self) -> dict[str, str]:
        out = {}
        for instruction, args in self.steps:
            if instruction == "ENV":
                for pair in shlex.split(args):
                    key, _, value = pair.partition("=")
                    out[key] = value
        return out

    def last(self, instruction: str) -> str:
        return [a for i, a in self.steps if i == instruction][-1]


def models_missing() -> list[str]:
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())["models"]
    missing = [name for name in ("occlusion",) if name not in manifest]
    return missing + [e["file"] for e in manifest.values() if not (REPO / "models" / e["file"]).is_file()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_dockerfile_parses_to_the_expected_steps():
    docker = Dockerfile.parse((REPO / "Dockerfile").read_text())
    kinds = [i for i, _ in docker.steps]
    assert kinds[0] == "FROM" and "slim" in docker.steps[0][1]
    assert "USER" in kinds and docker.last("USER").split(":")[0] not in ("root", "0")
    assert "/readyz" in docker.last("HEALTHCHECK")
    assert "MICROFACS_WORKERS" in docker.last("CMD")
    copied = [a.split()[0] for i, a in docker.steps if i == "COPY"]
    assert "models" in copied and "app" in copied


def test_dockerfile_gpu_target_runs_the_models_on_cuda():
    """The `gpu` stage (no GPU nor container engine here: checked as text): a CUDA base, onnxruntime-gpu in place of
    onnxruntime at a version the `gpu` extra allows, MICROFACS_PROVIDERS=cuda,cpu, the CPU image's command; and it is
    not the default target (the CPU stage stays last)."""
    import tomllib
    from packaging.requirements import Requirement

    text = (REPO / "Dockerfile").read_text()
    gpu, cpu = Dockerfile.parse(text, "gpu"), Dockerfile.parse(text)
    assert gpu.steps[0][1].startswith("nvidia/cuda:") and "cudnn" in gpu.steps[0][1]
    assert cpu.steps[0][1].startswith("python:3.11-slim") and cpu.steps[0][1].endswith("AS cpu")
    assert gpu.env()["MICROFACS_PROVIDERS"] == "cuda,cpu"
    runs = " && ".join(args for instruction, args in gpu.steps if instruction == "RUN")
    assert "pip uninstall -y onnxruntime" in runs
    pinned = re.search(r'"onnxruntime-gpu==([\d.]+)"', runs)
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]["gpu"]
    (wanted,) = [Requirement(r) for r in extra if r.startswith("onnxruntime-gpu")]
    assert pinned and wanted.specifier.contains(pinned.group(1))
    assert gpu.last("CMD") == cpu.last("CMD") and gpu.last("USER") == cpu.last("USER")
    assert [a for i, a in gpu.steps if i == "COPY"] == [a for i, a in cpu.steps if i == "COPY"]


@pytest.mark.slow
def test_dockerfile_replay_serves_readyz(tmp_path, astronaut):
    """Replays COPY / RUN / ENV / WORKDIR / CMD / HEALTHCHECK into a temp dir and a fresh venv (no engine).
    Not replayed: FROM (this machine's Python instead of the image's), the user-creating RUN and USER."""
    assert not models_missing(), f"the Dockerfile bakes in models/, but these are missing: {models_missing()}"
    docker = Dockerfile.parse((REPO / "Dockerfile").read_text())
    root, venv = tmp_path / "rootfs", tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "MICROFACS_", "VIRTUAL_ENV"))}
    env.update(docker.env())
    env.update(PATH=f"{venv / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}", VIRTUAL_ENV=str(venv), HOME=str(tmp_path),
               MICROFACS_HOST="127.0.0.1", MICROFACS_PORT=str(port))
    workdir = root
    skipped = []
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for instruction, args in docker.steps:
        if instruction == "WORKDIR":
            workdir = root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif instruction == "COPY":
            *sources, dest = shlex.split(args)
            target = workdir / dest if not dest.startswith("/") else root / dest.lstrip("/")
            for src in sources:
                path = REPO / src
                assert path.exists(), f"COPY {src}: not in the repository"
                if path.is_dir():
                    into = target if len(sources) == 1 and not dest.endswith("/") else target / path.name
                    shutil.copytree(path, into, ignore=ignore, dirs_exist_ok=True)
                else:
                    target.mkdir(parents=True, exist_ok=True) if dest.endswith("/") else target.parent.mkdir(
                        parents=True, exist_ok=True)
                    shutil.copy2(path, target / path.name if dest.endswith("/") else target)
        elif instruction == "RUN":
            if "useradd" in args or "groupadd" in args:
                skipped.append(args)
                continue
            done = subprocess.run(["sh", "-c", args], cwd=workdir, env=env, capture_output=True, text=True,
                                  timeout=300)
            offline = "Could not find a version" in done.stderr or "NewConnectionError" in done.stderr
            if done.returncode != 0 and offline:
                pytest.skip(f"the package index is unreachable, cannot replay `RUN {args}`")
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert (workdir / "app" / "static" / "demo.html").is_file()
    installed = subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import microfacs_client, app.render; print('ok')"], cwd=workdir, env=env,
                               capture_output=True, text=True)
    assert installed.stdout.strip() == "ok", installed.stderr
    # The CLI from the non-editable install, outside any checkout: it finds the models pip installed.
    photo = tmp_path / "astronaut.jpg"
    photo.write_bytes(cv2.imencode(".jpg", astronaut)[1].tobytes())
    cli = subprocess.run([str(venv / "bin" / "microfacs"), str(photo), "--no-progress"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr[-3000:]
    (line,) = [json.loads(text) for text in cli.stdout.splitlines()]
    assert len(line["faces"]) == 1 and line["faces"][0]["expression"]["label"]
    command = json.loads(docker.last("CMD"))
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline, ready = time.monotonic() + 90, None
        while time.monotonic() < deadline and server.poll() is None:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
                if ready.status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert ready is not None and ready.status_code == 200, (tmp_path / "server.log").read_text()[-3000:]
        assert ready.json()["status"] == "ready"
        healthcheck = json.loads(docker.last("HEALTHCHECK").split(" CMD ", 1)[1])
        assert subprocess.run(healthcheck, cwd=workdir, env=env, timeout=10).returncode == 0
        demo = httpx.get(f"http://127.0.0.1:{port}/demo", timeout=5)
        assert demo.status_code == 200
        assert "server" not in demo.headers  # --no-server-header
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
        log.close()


def test_nginx_reresolves_replicas_and_forwards_the_client():
    """No nginx binary here: the directives that matter, checked as text."""
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    assert "resolver 127.0.0.11 valid=10s" in code
    assert not re.search(r"^\s*upstream\s", code, re.M)  # a static upstream block resolves its servers once, at start
    assert code.count("proxy_pass http://$microfacs_upstream;") == 2  # a variable: resolved per request
    for header in ("X-Forwarded-For $proxy_add_x_forwarded_for", "X-Forwarded-Proto $scheme",
                   "X-Request-ID $microfacs_request_id"):
        assert f"proxy_set_header {header};" in code
    for directive in ("client_header_timeout", "client_body_timeout", "send_timeout", "server_tokens off"):
        assert directive in code
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert compose["services"]["microfacs-replica"]["environment"]["MICROFACS_FORWARDED_ALLOW_IPS"] == "*"
    assert "ports" not in compose["services"]["microfacs-replica"]  # only nginx reaches the replicas
