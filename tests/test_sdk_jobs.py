"""The client SDK's jobs (``Client.submit`` -> ``Job``; ``AsyncClient.submit`` -> ``AsyncJob``) against the live
server: a short video and a zip of two images submitted, waited for with a callback and with a tqdm-like bar,
their results read as models and as CSV; a long video cancelled; a wait that times out."""
from __future__ import annotations

import asyncio
import io
import zipfile

import pytest
from microfacs_client import (
    ArchiveResult,
    AsyncClient,
    Client,
    JobProgress,
    MicroFACSError,
    VideoResult,
)

from tests.helpers import SAMPLES, encode, requires_data


class Bar:
    """What ``Job.wait`` uses of a tqdm bar: ``total``, ``update(n)``, ``refresh()``."""

    def __init__(self) -> None:
        self.total, self.n, self.refreshed = None, 0, 0

    def update(self, n: int) -> None:
        self.n += n

    def refresh(self) -> None:
        self.refreshed += 1


def two_images_zip(astronaut, cameraman) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("astronaut.jpg", encode(astronaut))
        archive.writestr("cameraman.png", encode(cameraman, ".png"))
    return buffer.getvalue()


def test_submit_wait_result_and_cancel(live_url, astronaut, cameraman):
    video_path = requires_data(SAMPLES / "single_face.mp4")
    long_path = requires_data(SAMPLES / "WolfgangLanger_Pexels.mp4")
    with Client(live_url, timeout=60) as mf:
        video = mf.submit(video_path, every=4)
        archive = mf.submit(two_images_zip(astronaut, cameraman), filename="two.zip")
        long = mf.submit(long_path)  # queued behind the two (one job thread): cancelled before it finishes
        assert video.last.status == "queued" and video.last.kind == "video" and archive.last.kind == "zip"
        assert video.id != archive.id and video.last.links["result"].endswith(f"/jobs/{video.id}/result")

        with pytest.raises(MicroFACSError) as waited:
            long.wait(poll=0.05, timeout=0.2)
        assert waited.value.code == "timeout" and long.id in waited.value.message
        cancelled = long.cancel()
        assert cancelled.status == "cancelled" and long.wait(poll=0.1, timeout=30).status == "cancelled"
        with pytest.raises(MicroFACSError) as not_done:
            long.result()
        assert not_done.value.status == 409 and not_done.value.code == "job_not_done"

        seen: list[JobProgress] = []
        final = video.wait(progress=seen.append, poll=0.2, timeout=120)
        assert final.status == "done" and final.finished and final.error is None
        assert seen and seen[-1].done == seen[-1].total == 18 and seen[-1].fraction == 1.0
        assert [p.done for p in seen] == sorted(p.done for p in seen)  # reported as it went, never backwards
        result = video.result()
        assert isinstance(result, VideoResult) and result.video.analysed_frames == 18
        (track,) = result.tracks
        assert track.summary is not None and track.summary.frames == 18 and track.summary.dominant_expression
        table = video.result(format="csv").splitlines()
        assert table[0].startswith("frame,face_id,timestamp") and len(table) == 19
        assert mf.job(video.id).last.status == "done"  # found again by its id

        bar = Bar()
        assert archive.wait(progress=bar, poll=0.2, timeout=120).status == "done"
        assert bar.total == 2 and bar.n == 2 and bar.refreshed >= 1
        images = archive.result()
        assert isinstance(images, ArchiveResult) and images.summary["images"] == 2
        assert [i.name for i in images.images] == ["astronaut.jpg", "cameraman.png"]
        assert len(images.images[0].result.faces) == 1 and images.images[0].error is None

        with pytest.raises(MicroFACSError) as refused:
            mf.submit(b"plain text, not a video" * 20, filename="notes.mp4")
        assert refused.value.status == 415 and refused.value.code == "unsupported_media_type"
        with pytest.raises(MicroFACSError) as unknown:
            mf.job("no-such-job-0000000000000")
        assert unknown.value.status == 404


def test_async_submit_from_a_file_wait_and_result(live_url, astronaut, cameraman, tmp_path):
    path = tmp_path / "two.zip"
    path.write_bytes(two_images_zip(astronaut, cameraman))

    async def go():
        async with AsyncClient(live_url, timeout=60) as mf:
            job = await mf.submit(path, occlusion_filter=False)  # streamed from the file
            assert job.last.filename == "two.zip"
            seen: list[JobProgress] = []
            final = await job.wait(progress=seen.append, poll=0.2, timeout=120)
            result = await job.result()
            table = await job.result(format="csv")
            again = await job.cancel()  # a finished job stays as it is
            return final, seen, result, table, again

    final, seen, result, table, again = asyncio.run(go())
    assert final.status == "done" and seen[-1].done == 2
    assert isinstance(result, ArchiveResult) and result.summary["images"] == 2 and result.summary["errors"] == 0
    assert len(table.splitlines()) >= 3 and again.status == "done"


def test_progress_must_be_a_callback_or_a_bar():
    from microfacs_client.jobs import progress_reporter

    with pytest.raises(TypeError):
        progress_reporter(42)
    bar = Bar()
    report = progress_reporter(bar)
    for done in (0, 3, 3, 7):
        report(JobProgress(done=done, total=10))
    assert bar.n == 7 and bar.total == 10
