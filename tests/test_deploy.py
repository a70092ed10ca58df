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
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import httpx
import pytest
import yaml

from scripts.servers import free_port
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


# Custom resources that kubernetes-validate has no schema for (KEDA's CRDs): checked as structure in
# test_keda_scales_the_workers_on_hueys_queue instead.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def builtin_documents() -> list[tuple[str, dict]]:
    return [(n, d) for n, d in k8s_documents() if (d["apiVersion"], d["kind"]) not in CUSTOM_KINDS]


def test_kubernetes_manifests_match_their_schemas():
    import kubernetes_validate

    kinds = {}
    for _name, doc in builtin_documents():
        kubernetes_validate.validate(doc, kubernetes_validate.utils.latest_version(), strict=True)
        if doc["metadata"]["name"] == "microfacs" or doc["kind"] not in kinds:
            kinds[doc["kind"]] = doc  # the API's own objects where there are several of a kind
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PersistentVolumeClaim"} <= set(kinds)
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

    doc = by_name("Deployment")["microfacs"]
    bad = json.loads(json.dumps(doc))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.utils.latest_version(), strict=True)


def by_name(kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for _, d in k8s_documents() if d["kind"] == kind}


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def gib(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti)", quantity).groups()
    return float(number) * units[unit] / 2**30


def test_jobs_run_distributed_on_a_shared_volume_with_room_for_the_published_limits():
    """The API and the workers: the same Redis queue and jobs folder, on one ReadWriteMany claim; /tmp and the
    claim sized for the job limits GET /version publishes (the settings' defaults unless the manifest sets them)."""
    from app.settings import Settings

    deployments, claims, services = by_name("Deployment"), by_name("PersistentVolumeClaim"), by_name("Service")
    api = deployments["microfacs"]["spec"]["template"]["spec"]
    worker = deployments["microfacs-worker"]["spec"]["template"]["spec"]
    api_env, worker_env = env_of(api["containers"][0]), env_of(worker["containers"][0])
    assert worker["containers"][0]["command"] == ["microfacs-worker"]
    assert api_env["MICROFACS_JOBS_URL"] == worker_env["MICROFACS_JOBS_URL"]
    assert api_env["MICROFACS_JOBS_DIR"] == worker_env["MICROFACS_JOBS_DIR"]
    assert api_env["MICROFACS_JOBS_WORKERS"] == "0"
    host = re.fullmatch(r"redis://([\w-]+):(\d+)/\d+", api_env["MICROFACS_JOBS_URL"]).group(1)
    redis = services[host]
    assert redis["spec"]["selector"] == deployments[host]["spec"]["selector"]["matchLabels"]
    for pod, env in ((api, api_env), (worker, worker_env)):
        (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == env["MICROFACS_JOBS_DIR"]]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # pods on several nodes write it
    settings = Settings(**{k[len("MICROFACS_"):].lower(): v for k, v in api_env.items()
                           if k.startswith("MICROFACS_JOBS_MAX")})
    upload = settings.jobs_max_upload_bytes / 2**30
    tmp = next(v for v in api["volumes"] if v["name"] == "tmp")["emptyDir"]["sizeLimit"]
    assert gib(tmp) >= 1.6 + 2 * upload  # the synchronous spool budget plus two full-size job uploads at once
    assert gib(claim["spec"]["resources"]["requests"]["storage"]) >= 10 * upload  # ten queued full-size uploads
    assert next(v for v in worker["volumes"] if v["name"] == "tmp")["emptyDir"]["sizeLimit"]
    assert worker["securityContext"]["runAsNonRoot"] and worker["containers"][0]["resources"]["limits"]


def test_keda_scales_the_workers_on_hueys_queue():
    """No schema for KEDA's ScaledObject in kubernetes-validate: its structure checked here. The list it counts must
    be the one huey's RedisHuey pushes the app's jobs onto (its storage's ``queue_key``, no Redis needed)."""
    from app.jobs.queue import make_huey
    from app.settings import Settings

    (scaled,) = by_name("ScaledObject").values()
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    assert set(spec) <= {"scaleTargetRef", "minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod",
                         "idleReplicaCount", "advanced", "fallback", "triggers"}
    target = spec["scaleTargetRef"]
    assert target["kind"] == "Deployment" and target["name"] in by_name("Deployment")
    assert by_name("Deployment")[target["name"]]["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "microfacs-worker"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]  # never zero: the list omits running jobs
    (trigger,) = spec["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "redis" and all(isinstance(v, str) for v in meta.values())  # KEDA wants strings
    assert int(meta["listLength"]) >= 1
    worker = by_name("Deployment")[target["name"]]["spec"]["template"]["spec"]["containers"][0]
    url = env_of(worker)["MICROFACS_JOBS_URL"]
    huey = make_huey(Settings(jobs_url=url))
    assert meta["listName"] == huey.storage.queue_key == "huey.redis.microfacsjobs"
    host, port, db = re.fullmatch(r"redis://([\w-]+):(\d+)/(\d+)", url).groups()
    assert meta["address"].split(".")[0] == host and meta["address"].endswith(f":{port}")
    assert meta["databaseIndex"] == db
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
    assert behavior["stabilizationWindowSeconds"] >= 300


# -------------------------------------------------------------------------------------------- replay


@dataclass
class Dockerfile:
    steps: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments), in order

    @classmethod
    def parse(cls, text: str, target: str | None = None) -> Dockerfile:
        """The steps of one build stage: ``target`` (``FROM ... AS target``), or the last one (the default target).
        Each stage of ours starts from the base image (no stage builds on another)."""
        stages = cls._parse(text)
        if target is None:
            return cls(stages[-1])
        named = [steps for steps in stages if steps[0][1].split()[-1] == target and " AS " in steps[0][1].upper()]
        assert len(named) == 1, f"no stage {target!r} in the Dockerfile"
        return cls(named[0])

    @staticmethod
    def _parse(text: str) -> list[list[tuple[str, str]]]:
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
        starts = [i for i, (instruction, _) in enumerate(steps) if instruction == "FROM"]
        return [steps[a:b] for a, b in zip(starts, [*starts[1:], len(steps)])]

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


def open_models() -> dict[str, str]:
    """Manifest name -> file of the models the open profile may load."""
    manifest = json.loads((REPO / "models" / "manifest.json").read_text())["models"]
    return {name: e["file"] for name, e in manifest.items() if "open" in e.get("profiles", [])}


def test_dockerfile_parses_to_the_expected_steps():
    docker = Dockerfile.parse((REPO / "Dockerfile").read_text())
    kinds = [i for i, _ in docker.steps]
    assert kinds[0] == "FROM" and "slim" in docker.steps[0][1]
    assert "USER" in kinds and docker.last("USER").split(":")[0] not in ("root", "0")
    assert "/readyz" in docker.last("HEALTHCHECK")
    assert "MICROFACS_WORKERS" in docker.last("CMD")
    copied = [a.split()[0] for i, a in docker.steps if i == "COPY"]
    assert "models" in copied and "app" in copied


def test_the_open_target_copies_only_the_open_models_and_matches_the_default_target():
    """`docker build --target open`: the open profile's model files (manifest `profiles`) and nothing else, and
    otherwise the same steps as the default target, so that a change to one cannot silently miss the other."""
    text = (REPO / "Dockerfile").read_text()
    default, open_stage = Dockerfile.parse(text), Dockerfile.parse(text, "open")
    copied = [shlex.split(a)[:-1] for i, a in open_stage.steps if i == "COPY"]
    model_sources = [src for sources in copied for src in sources if src.startswith("models")]
    assert sorted(model_sources) == sorted(["models/manifest.json", "models/OPEN_PROFILE.md",
                                            *(f"models/{f}" for f in open_models().values())])
    assert set(open_models()) == {"face_detection_short_range", "face_detection_full_range", "face_landmark",
                                  "face_landmarker", "face_blendshapes"}
    assert open_stage.env().get("MICROFACS_PROFILE") == "open" and "MICROFACS_PROFILE" not in default.env()

    def rest(stage: Dockerfile) -> list[tuple[str, str]]:  # every step but FROM, ENV and the models' COPY
        return [(i, a) for i, a in stage.steps if i not in ("FROM", "ENV") and not (i == "COPY" and "models" in a)]

    assert rest(open_stage) == rest(default)
    assert {k: v for k, v in open_stage.env().items() if k != "MICROFACS_PROFILE"} == default.env()


def test_dockerfile_gpu_target_runs_the_models_on_cuda():
    """The `gpu` stage (no GPU nor container engine here: checked as text): a CUDA base, onnxruntime-gpu in place of
    onnxruntime at a version the `gpu` extra allows, MICROFACS_PROVIDERS=cuda,cpu, the CPU image's command; and it is
    not the default target (the CPU stage stays last)."""
    import tomllib
    from packaging.requirements import Requirement

    text = (REPO / "Dockerfile").read_text()
    gpu, cpu = Dockerfile.parse(text, "gpu"), Dockerfile.parse(text)
    assert gpu.steps[0][1].startswith("nvidia/cuda:") and "cudnn" in gpu.steps[0][1]
    assert cpu.steps[0][1].startswith("python:3.11-slim")  # the default target stays the CPU image
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
@pytest.mark.parametrize("stage", [None, "open"])
def test_dockerfile_replay_serves_readyz(tmp_path, astronaut, stage):
    """Replays COPY / RUN / ENV / WORKDIR / CMD / HEALTHCHECK into a temp dir and a fresh venv (no engine).
    Not replayed: FROM (this machine's Python instead of the image's), the user-creating RUN and USER.
    ``stage``: the default target (research profile), and ``--target open``."""
    assert not models_missing(), f"the Dockerfile bakes in models/, but these are missing: {models_missing()}"
    docker = Dockerfile.parse((REPO / "Dockerfile").read_text(), stage)
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
        version = httpx.get(f"http://127.0.0.1:{port}/version", timeout=5).json()
        assert version["profile"] == (stage or "research")
        if stage == "open":  # the image holds the open profile's model files and nothing else
            assert set(version["models"]) == set(open_models())
            assert {p.name for p in (workdir / "models").iterdir()} == {"manifest.json", "OPEN_PROFILE.md",
                                                                       *open_models().values()}
            installed = venv / "share" / "microfacs" / "models"
            assert {p.name for p in installed.glob("*.onnx")} == set(open_models().values())
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


def test_nginx_rate_limits_per_client_and_per_key():
    """Checked as text (no nginx here): the zones, the per-key map on X-API-Key / Bearer, the limits applied to
    every proxied location, and their 429 in the service's JSON error shape with Retry-After."""
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in conf.splitlines())
    zones = dict(re.findall(r"limit_req_zone\s+(\S+)\s+zone=(\w+):\d+m\s+rate=\d+r/s;", code))
    assert zones.get("$binary_remote_addr") and zones.get("$microfacs_api_key"), zones
    per_client, per_key = zones["$binary_remote_addr"], zones["$microfacs_api_key"]
    (conn_zone,) = re.findall(r"limit_conn_zone\s+\$binary_remote_addr\s+zone=(\w+):\d+m;", code)
    # the key: X-API-Key when sent, else the Bearer token (the service accepts either)
    maps = {source: target for source, target in re.findall(r"map\s+(\$\w+)\s+(\$\w+)\s*\{", code)}
    assert maps["$http_x_api_key"] == "$microfacs_api_key" and maps["$http_authorization"] == "$microfacs_bearer"
    key_map = re.search(r"map\s+\$http_x_api_key\s+\$microfacs_api_key\s*\{([^}]*)\}", code).group(1)
    assert re.search(r'""\s+\$microfacs_bearer;', key_map) and re.search(r"default\s+\$http_x_api_key;", key_map)
    bearer_map = re.search(r"map\s+\$http_authorization\s+\$microfacs_bearer\s*\{([^}]*)\}", code).group(1)
    pattern, value = re.search(r'"~\*([^"]+)"\s+(\$\w+);', bearer_map).groups()
    bearer = re.compile(pattern.replace("(?<", "(?P<"), re.I)  # nginx's PCRE named group, in Python's spelling
    token = lambda header: (m := bearer.search(header)) and m.group(value[1:])
    assert token("Bearer s3cret") == "s3cret" and token("bearer   s3cret ") == "s3cret"
    assert not token("Basic czNjcmV0") and not token("s3cret")
    # applied at the server level, so every proxied location (/ and /analyze-video) inherits them
    server = code[code.index("server {"):]
    assert not re.search(r"location[^{]*\{[^}]*limit_(req|conn)\s", server), "a location's own limits drop the server's"
    assert re.search(rf"limit_req\s+zone={per_client}\s+burst=\d+\s+nodelay;", server)
    assert re.search(rf"limit_req\s+zone={per_key}\s+burst=\d+\s+nodelay;", server)
    assert re.search(rf"limit_conn\s+{conn_zone}\s+\d+;", server)
    assert "limit_req_status 429;" in code and "limit_conn_status 429;" in code
    assert "error_page 429 = @rate_limited;" in server
    answer = server[server.index("location @rate_limited {"):].split("location ", 2)[1]
    assert "add_header Retry-After 1 always;" in answer and "default_type application/json;" in answer
    body = re.search(r"return 429 '([^']*)';", answer).group(1)
    assert json.loads(body.replace("$microfacs_request_id", "r"))["error"]["code"] == "rate_limited"


def test_nginx_accepts_the_config_when_installed(tmp_path):
    """`nginx -t` on deploy/nginx.conf where an nginx binary is on PATH (CI installs none: skipped there; the
    limits are checked as text above)."""
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("no nginx binary on PATH")
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    paths = "".join(f"  {name}_temp_path {tmp_path / name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    logs = f"  access_log {tmp_path / 'access.log'};\n"
    (tmp_path / "nginx.conf").write_text(conf.replace("http {\n", f"http {{\n{paths}{logs}", 1))
    done = subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                           "-g", f"pid {tmp_path / 'nginx.pid'}; error_log stderr;"], capture_output=True, text=True)
    assert done.returncode == 0 and "test is successful" in done.stderr, done.stderr
