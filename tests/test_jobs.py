"""POST /jobs (app/jobs/): the embedded queue (SQLite, worker threads in the API), a restart mid-job, cancel, a
corrupt upload, key isolation, archives; the distributed queue on a real redis-server with two worker processes,
one killed mid-job (skipped, saying so, only where redis-server is not installed; .ci/run installs it)."""
from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import time
import zipfile

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from scripts.servers import free_port, serve, spawn, stop
from tests.helpers import SAMPLES, encode, requires_data

TERMINAL = ("done", "failed", "cancelled")


def clip(name: str = "single_face.mp4") -> bytes:
    return requires_data(SAMPLES / name).read_bytes()


def wait(get, job_id: str, until=lambda j: j["status"] in TERMINAL, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = get(f"/jobs/{job_id}").json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


@pytest.fixture(scope="module")
def jobs_client(tmp_path_factory):
    settings = Settings(jobs_dir=tmp_path_factory.mktemp("jobs"), jobs_lease_s=2.0, jobs_workers=1)
    with TestClient(create_app(settings)) as client:
        yield client


def test_video_job_gives_the_analyze_video_answer_with_progress_and_tables(jobs_client):
    response = jobs_client.post("/jobs", files={"file": ("clip.mp4", clip(), "video/mp4")}, params={"every": 4})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "queued" and len(body["id"]) >= 22 and response.headers["location"].endswith(body["id"])
    job = wait(jobs_client.get, body["id"])
    assert job["status"] == "done" and job["progress"]["done"] == job["progress"]["total"] == 18
    assert job["attempts"] == 1 and job["finished_at"] >= job["started_at"] >= job["created_at"][:19]
    result = jobs_client.get(f"/jobs/{body['id']}/result").json()
    assert set(result) == {"request_id", "video", "tracks", "timings_ms", "profile"}
    assert result["video"]["analysed_frames"] == 18
    (track,) = result["tracks"]
    assert track["summary"]["frames"] == 18 and track["summary"]["dominant_expression"]
    table = jobs_client.get(f"/jobs/{body['id']}/result", params={"format": "csv"}).text.splitlines()
    header = table[0].split(",")
    assert header[:3] == ["frame", "face_id", "timestamp"] and header[-1] == "error" and "AU12_p" in header
    assert [row.split(",")[0] for row in table[1:4]] == ["0", "4", "8"]  # 0-based, as the JSON
    assert len(table) == 1 + 18  # the worker's result.csv: one row per analysed frame with the face
    parquet = jobs_client.get(f"/jobs/{body['id']}/result", params={"format": "parquet"})
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert parquet.status_code == 406 and parquet.json()["error"]["code"] == "format_unavailable"
    else:
        assert pq.read_table(io.BytesIO(parquet.content)).num_rows == 18


def test_image_archive_job_reports_each_images_error(jobs_client, astronaut):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("a/astronaut.jpg", encode(astronaut))
        archive.writestr("b/broken.jpg", b"\xff\xd8\xff not a jpeg")
        archive.writestr("notes.txt", "ignored")
    response = jobs_client.post("/jobs", files={"file": ("set.zip", buffer.getvalue(), "application/zip")})
    assert response.status_code == 202, response.text
    job = wait(jobs_client.get, response.json()["id"])
    assert job["status"] == "done" and job["kind"] == "zip" and job["progress"]["total"] == 2
    result = jobs_client.get(f"/jobs/{job['id']}/result").json()
    assert [i["name"] for i in result["images"]] == ["a/astronaut.jpg", "b/broken.jpg"]
    assert len(result["images"][0]["result"]["faces"]) == 1 and result["images"][1]["error"]["code"]
    assert result["summary"] == {"images": 2, "faces": 1, "errors": 1}


def test_image_archive_job_with_automatic_baselines(jobs_client, astronaut):
    """baseline=auto on an archive: faces grouped by identity, each read against its person's most neutral faces
    (here the same smiling face twice: relative to itself it reads neutral, the smile kept under `absolute`)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("one.jpg", encode(astronaut))
        archive.writestr("two.jpg", encode(astronaut))
    response = jobs_client.post("/jobs", files={"file": ("same.zip", buffer.getvalue(), "application/zip")},
                                params={"baseline": "auto"})
    assert response.status_code == 202, response.text
    job = wait(jobs_client.get, response.json()["id"])
    assert job["status"] == "done", job
    result = jobs_client.get(f"/jobs/{job['id']}/result").json()
    for image in result["images"]:
        expression = image["result"]["faces"][0]["expression"]
        assert expression["reference"] is True and expression["label"] == "neutral"
        assert expression["absolute"]["label"] == "happiness"


def test_corrupt_uploads(jobs_client):
    not_media = jobs_client.post("/jobs", files={"file": ("x.mp4", b"plain text, no video" * 50, "video/mp4")})
    assert not_media.status_code == 415 and not_media.json()["error"]["code"] == "unsupported_media_type"
    data = clip()
    truncated = jobs_client.post("/jobs", files={"file": ("cut.mp4", data[: len(data) // 3], "video/mp4")})
    assert truncated.status_code == 202
    job = wait(jobs_client.get, truncated.json()["id"])
    assert job["status"] == "failed" and job["error"]["code"] and job["error"]["message"]
    assert jobs_client.get(f"/jobs/{job['id']}/result").status_code == 409
    assert jobs_client.get("/jobs/nonexistent-job-id-000000").status_code == 404


def test_cancel_a_running_job(jobs_client):
    response = jobs_client.post("/jobs", files={"file": ("long.mp4", clip("WolfgangLanger_Pexels.mp4"), "video/mp4")})
    job_id = response.json()["id"]
    wait(jobs_client.get, job_id, until=lambda j: j["progress"]["done"] > 0)
    cancelled = jobs_client.delete(f"/jobs/{job_id}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    job = wait(jobs_client.get, job_id, until=lambda j: j["finished_at"] is not None, timeout=30)
    assert job["status"] == "cancelled" and job["progress"]["done"] < 472
    assert jobs_client.get(f"/jobs/{job_id}/result").status_code == 409
    assert not list(jobs_client.app.state.jobs.store.folder(job_id).glob("run-*"))  # its partial chunks are gone


def test_one_key_cannot_read_another_keys_jobs(tmp_path):
    settings = Settings(jobs_dir=tmp_path, api_keys=["key-one", "key-two"], jobs_workers=0)
    with TestClient(create_app(settings)) as client:
        assert client.post("/jobs", files={"file": ("c.mp4", clip(), "video/mp4")}).status_code == 401
        created = client.post("/jobs", files={"file": ("c.mp4", clip(), "video/mp4")}, headers={"X-API-Key": "key-one"})
        job_id = created.json()["id"]
        assert client.get(f"/jobs/{job_id}", headers={"X-API-Key": "key-one"}).json()["status"] == "queued"
        assert client.get(f"/jobs/{job_id}", headers={"X-API-Key": "key-two"}).status_code == 404
        assert client.delete(f"/jobs/{job_id}", headers={"X-API-Key": "key-two"}).status_code == 404
        assert client.get(f"/jobs/{job_id}").status_code == 401


# -- real processes ---------------------------------------------------------------------------------------------


def test_embedded_api_killed_mid_job_finishes_it_after_a_restart(tmp_path):
    env = {"MICROFACS_JOBS_DIR": str(tmp_path / "jobs"), "MICROFACS_JOBS_LEASE_S": "2"}
    server, url = serve(env, tmp_path / "api.log", timeout=60)
    try:
        with httpx.Client(base_url=url, timeout=30) as http:
            created = http.post("/jobs", files={"file": ("w.mp4", clip("WolfgangLanger_Pexels.mp4"), "video/mp4")},
                                params={"every": 2})
            job_id = created.json()["id"]
            wait(http.get, job_id, until=lambda j: j["progress"]["done"] > 10)
        server.send_signal(signal.SIGKILL)
        server.wait(10)
        server, url = serve(env, tmp_path / "api.log", timeout=60)
        with httpx.Client(base_url=url, timeout=30) as http:
            job = wait(http.get, job_id)
            assert job["status"] == "done" and job["attempts"] == 2, job
            assert http.get(f"/jobs/{job_id}/result").json()["video"]["analysed_frames"] == 236
    finally:
        stop(server)


@pytest.fixture()
def redis_url(tmp_path):
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (.ci/run installs it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server): the distributed-mode test")
    port = free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly",
                                "no", "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    yield f"redis://127.0.0.1:{port}/0"
    process.kill()
    process.wait(10)


def test_distributed_two_workers_one_killed_mid_job_completes_once(tmp_path, redis_url):
    env = {"MICROFACS_JOBS_URL": redis_url, "MICROFACS_JOBS_DIR": str(tmp_path / "jobs"), "MICROFACS_JOBS_LEASE_S": "2"}
    workers = [spawn(["-m", "app.jobs.worker"], env, tmp_path / f"worker{n}.log") for n in range(2)]
    settings = Settings(jobs_url=redis_url, jobs_dir=tmp_path / "jobs", jobs_lease_s=2.0, jobs_workers=0)
    try:
        with TestClient(create_app(settings)) as client:
            created = client.post("/jobs", files={"file": ("w.mp4", clip("WolfgangLanger_Pexels.mp4"), "video/mp4")},
                                  params={"every": 2})
            job_id = created.json()["id"]
            job = wait(client.get, job_id, until=lambda j: j["progress"]["done"] > 10, timeout=90)
            assert job["status"] == "running"
            holder = (tmp_path / "jobs" / job_id / "attempt-1").read_text()
            pid = int(holder.rsplit(":", 1)[1])
            (victim,) = [w for w in workers if w.pid == pid]
            victim.send_signal(signal.SIGKILL)
            job = wait(client.get, job_id, timeout=90)
            assert job["status"] == "done" and job["attempts"] == 2, job
            assert (tmp_path / "jobs" / job_id / "attempt-2").read_text() != holder  # the other worker
            result = client.get(f"/jobs/{job_id}/result").json()
            assert result["video"]["analysed_frames"] == 236 and len(result["tracks"]) == 1
    finally:
        for worker in workers:
            stop(worker)


def test_images_are_served_while_jobs_run(jobs_client, astronaut):
    """Separate admission: a running job holds no image place (latency: scripts/jobs_image_latency.py)."""
    created = jobs_client.post("/jobs", files={"file": ("w.mp4", clip("WolfgangLanger_Pexels.mp4"), "video/mp4")})
    job_id = created.json()["id"]
    wait(jobs_client.get, job_id, until=lambda j: j["status"] == "running")
    for _ in range(3):
        response = jobs_client.post("/analyze", files={"file": ("a.jpg", encode(astronaut), "image/jpeg")})
        assert response.status_code == 200 and len(response.json()["faces"]) == 1
    assert jobs_client.get(f"/jobs/{job_id}").json()["status"] == "running"
    jobs_client.delete(f"/jobs/{job_id}")


def test_job_uploads_are_bounded_before_their_body_is_read():
    """POST /jobs bodies (up to gigabytes each, spooled) have their own bound: beyond it, 503 before reading."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(jobs_max_uploads=1))
    uploads = next(m for m in app.user_middleware if m.kwargs.get("paths") == {"/jobs"})
    admission = uploads.kwargs["admission"]
    admission.uploading = 1  # one job upload under way
    with TestClient(app) as client:
        r = client.post("/jobs", files={"file": ("v.mp4", b"\x00" * 10)})
        assert r.status_code == 503 and r.json()["error"]["code"] == "overloaded"
        assert "receiving too many uploads (1 at once)" in r.json()["error"]["message"]
        assert client.get("/version").json()["jobs"]["max_uploads"] == 1
