"""Shared fixtures: the app (models loaded once per test session) and real face images."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings


@pytest.fixture(scope="session")
def client() -> TestClient:
    with TestClient(create_app(Settings())) as test_client:
        yield test_client


@pytest.fixture(scope="session")
def live_url(tmp_path_factory) -> str:
    """The real app served by uvicorn on a free 127.0.0.1 port (for the SDK and CLI tests); its jobs (POST /jobs)
    in a folder of its own, not in a queue another test run on this machine shares."""
    from tests.helpers import LiveServer

    with LiveServer(create_app(Settings(jobs_dir=tmp_path_factory.mktemp("live-jobs")))) as url:
        yield url


@pytest.fixture(scope="session")
def analyzer(client):
    """The app's own Analyzer (models loaded once for the session)."""
    return client.app.state.analyzer


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (Eileen Collins, NASA, public domain): one frontal smiling face, BGR."""
    from skimage import data

    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


@pytest.fixture(scope="session")
def cameraman() -> np.ndarray:
    """scikit-image's camera (public domain): a man seen nearly in profile, grey -> BGR."""
    from skimage import data

    return cv2.cvtColor(data.camera(), cv2.COLOR_GRAY2BGR)


@pytest.fixture(scope="session")
def face_cache(tmp_path_factory):
    """A tiny aligned-face cache (48 faces of each set) made by training.prepare_faces from the shared
    data, so that every trainer's smoke run reads real faces through the real preprocessing."""
    from tests.helpers import DATA, requires_data

    requires_data(DATA / "ckplus48")
    requires_data(DATA / "ferplus")
    from training.prepare_faces import main as prepare_faces

    out = tmp_path_factory.mktemp("face_cache")
    prepare_faces(["--limit", "48", "--out", str(out)])
    return out
