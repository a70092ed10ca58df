# MicroFACS: CPU inference service with the ONNX models baked in (no weights are fetched at run time).
#   docker build -t microfacs:0.1.0 .
#   docker run -p 8000:8000 -e MICROFACS_WORKERS=2 microfacs:0.1.0
# tests/test_deploy.py lints this file with hadolint and replays its COPY/RUN/CMD steps in a fresh venv.
#
# Three targets. The default (the last stage) serves the research profile: every model, among them networks that
# are research use only (NOTICE). `--target open` builds an image with only the models licensed for commercial use
# (MICROFACS_PROFILE=open; models/OPEN_PROFILE.md); `--target gpu` the research image on a CUDA base with
# onnxruntime-gpu and MICROFACS_PROVIDERS=cuda,cpu (docker run --gpus all ...):
#   docker build --target open -t microfacs:0.1.0-open .
#   docker build --target gpu -t microfacs:0.1.0-gpu .

# --- target `open`: the open profile's model files only. Its other steps are the default target's (below): keep
# them in step (tests/test_deploy.py compares the two stages).
FROM python:3.11-slim-bookworm AS open

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MICROFACS_HOST=0.0.0.0 \
    MICROFACS_PORT=8000 \
    MICROFACS_WORKERS=1 \
    MICROFACS_ONNX_THREADS=1 \
    MICROFACS_FORWARDED_ALLOW_IPS=127.0.0.1 \
    MICROFACS_PROFILE=open

WORKDIR /srv/microfacs

RUN groupadd --system --gid 10001 microfacs \
    && useradd --system --uid 10001 --gid microfacs --no-create-home --home-dir /srv/microfacs microfacs

COPY requirements/lock.txt ./requirements/lock.txt
RUN pip install --no-cache-dir -r requirements/lock.txt
COPY pyproject.toml README.md ./
COPY LICENSE NOTICE ./
COPY clients/python ./clients/python
COPY app ./app
COPY microfacs_cli ./microfacs_cli
COPY models/manifest.json models/OPEN_PROFILE.md models/face_detection_short_range.onnx models/face_detection_full_range.onnx models/face_landmark.onnx models/face_landmarker.onnx models/face_blendshapes.onnx ./models/
RUN pip install --no-cache-dir --no-deps ./clients/python . && pip check && python -c "import app.main"

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MICROFACS_PORT', '8000'), timeout=4).status != 200)"]

CMD ["sh", "-c", "exec uvicorn app.main:create_app --factory --host \"$MICROFACS_HOST\" --port \"$MICROFACS_PORT\" --workers \"$MICROFACS_WORKERS\" --proxy-headers --forwarded-allow-ips \"$MICROFACS_FORWARDED_ALLOW_IPS\" --no-server-header --timeout-keep-alive 5 --timeout-graceful-shutdown 20"]

# --- target `gpu`: CUDA 12 + cuDNN 9 runtime (what onnxruntime-gpu 1.2x/1.3x is built against) and Ubuntu 22.04's
# Python 3.11 in a venv. onnxruntime-gpu stands in for onnxruntime (both install the `onnxruntime` module); it has no
# 1.32 build, hence 1.31.1 (the `gpu` extra's range), and no `pip check` (the project declares onnxruntime). A model
# whose CUDA session cannot start runs on the CPU with a log line; GET /version and /metrics say where each runs.
# Not built where the tests run (no container engine, no GPU): tests/test_deploy.py lints it and checks it as text.
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu22.04 AS gpu

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH \
    MICROFACS_HOST=0.0.0.0 \
    MICROFACS_PORT=8000 \
    MICROFACS_WORKERS=1 \
    MICROFACS_ONNX_THREADS=1 \
    MICROFACS_PROVIDERS=cuda,cpu \
    MICROFACS_FORWARDED_ALLOW_IPS=127.0.0.1

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv \
    && groupadd --system --gid 10001 microfacs \
    && useradd --system --uid 10001 --gid microfacs --no-create-home --home-dir /srv/microfacs microfacs

WORKDIR /srv/microfacs

COPY requirements/lock.txt ./requirements/lock.txt
RUN pip install --no-cache-dir -r requirements/lock.txt \
    && pip uninstall -y onnxruntime \
    && pip install --no-cache-dir "onnxruntime-gpu==1.31.1"
COPY pyproject.toml README.md ./
COPY LICENSE NOTICE ./
COPY clients/python ./clients/python
COPY app ./app
COPY microfacs_cli ./microfacs_cli
COPY models ./models
RUN pip install --no-cache-dir --no-deps ./clients/python . && python -c "import app.main, onnxruntime"

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MICROFACS_PORT', '8000'), timeout=4).status != 200)"]

CMD ["sh", "-c", "exec uvicorn app.main:create_app --factory --host \"$MICROFACS_HOST\" --port \"$MICROFACS_PORT\" --workers \"$MICROFACS_WORKERS\" --proxy-headers --forwarded-allow-ips \"$MICROFACS_FORWARDED_ALLOW_IPS\" --no-server-header --timeout-keep-alive 5 --timeout-graceful-shutdown 20"]

# --- default target: the research profile (every model in models/).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MICROFACS_HOST=0.0.0.0 \
    MICROFACS_PORT=8000 \
    MICROFACS_WORKERS=1 \
    MICROFACS_ONNX_THREADS=1 \
    MICROFACS_FORWARDED_ALLOW_IPS=127.0.0.1

WORKDIR /srv/microfacs

RUN groupadd --system --gid 10001 microfacs \
    && useradd --system --uid 10001 --gid microfacs --no-create-home --home-dir /srv/microfacs microfacs

# The locked versions (requirements/lock.txt: the service's and the SDK's dependencies, README "Locked
# versions"), in their own layer; then the project and the SDK without resolving anything again.
COPY requirements/lock.txt ./requirements/lock.txt
RUN pip install --no-cache-dir -r requirements/lock.txt
COPY pyproject.toml README.md ./
COPY LICENSE NOTICE ./
COPY clients/python ./clients/python
COPY app ./app
COPY microfacs_cli ./microfacs_cli
COPY models ./models
RUN pip install --no-cache-dir --no-deps ./clients/python . && pip check && python -c "import app.main"

USER 10001:10001
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('MICROFACS_PORT', '8000'), timeout=4).status != 200)"]

# --proxy-headers: the client address from X-Forwarded-For, trusted only from MICROFACS_FORWARDED_ALLOW_IPS (the
# proxy's addresses; compose sets its private network). No "server: uvicorn" header; idle keep-alive 5 s.
# On SIGTERM uvicorn lets the requests in flight finish for up to 20 s, then cancels them (503 shutting_down) and
# the app stops its analyses and removes its temporary files: compose's stop_grace_period and the pod's
# terminationGracePeriodSeconds are longer (tests/test_shutdown.py checks the three agree).
CMD ["sh", "-c", "exec uvicorn app.main:create_app --factory --host \"$MICROFACS_HOST\" --port \"$MICROFACS_PORT\" --workers \"$MICROFACS_WORKERS\" --proxy-headers --forwarded-allow-ips \"$MICROFACS_FORWARDED_ALLOW_IPS\" --no-server-header --timeout-keep-alive 5 --timeout-graceful-shutdown 20"]
