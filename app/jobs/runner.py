"""What a job does, whichever worker runs it: a video through ``VideoAnalyzer`` (the job limits instead of the
synchronous ones, no per-request work budget), or each image of a zip/tar archive through ``Analyzer``; the
progress is written to the job's state as it goes."""
from __future__ import annotations

import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.analyzer import Analyzer
from app.baselines import automatic_baselines
from app.errors import ApiError
from app.jobs.stream import CHUNK_FRAMES, ResultWriter
from app.respond import analysis_response
from app.settings import Settings
from app.video.analyze import VideoAnalyzer
from app.video.decode import VideoLimits, VideoReader, sniff_container

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
Progress = Callable[[int, int | None], None]  # (done, total)


def job_video_limits(settings: Settings) -> VideoLimits:
    return replace(VideoLimits.of(settings), max_bytes=settings.jobs_max_upload_bytes,
                   max_duration_s=settings.jobs_max_duration_s, max_frames=settings.jobs_max_frames)


def upload_kind(head: bytes, path: Path | None = None) -> str | None:
    """``video``, ``zip``, ``tar`` or None (neither: 415) from the upload's first bytes."""
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if head[:2] == b"\x1f\x8b" and path is not None:  # .tar.gz
        try:
            with tarfile.open(path, "r:gz") as archive:
                archive.next()
            return "tar"
        except (tarfile.TarError, OSError, EOFError):
            return None
    return "video" if sniff_container(head) else None


class JobRunner:
    def __init__(self, analyzer: Analyzer, chunk_frames: int = CHUNK_FRAMES) -> None:
        self.analyzer = analyzer
        self.chunk_frames = max(chunk_frames, analyzer.settings.video_confirm_hits + 1)
        self.settings = analyzer.settings
        self.video = VideoAnalyzer(analyzer)

    def validate(self, kind: str, options: dict[str, Any]) -> None:
        """422 for options no job could run with (checked at POST /jobs, before the upload is kept)."""
        if kind == "video":
            self.video.options(**options)
        else:
            self._image_options(options)

    def _image_options(self, options: dict[str, Any]) -> Any:
        return self.analyzer.options(options.get("side_face_filter", True), options.get("occlusion_filter", True),
                                     options.get("max_faces"), None)

    def run(self, kind: str, path: Path, options: dict[str, Any], job_id: str, progress: Progress,
            cancel: Any, workdir: Path) -> dict[str, Any] | Path:
        """An archive's result (a dict: bounded by ``jobs_max_images``), or for a video ``workdir`` holding
        ``result.json`` and ``result.csv``, written as it went (``app.jobs.stream``)."""
        if kind == "video":
            return self.run_video(path, options, job_id, progress, cancel, workdir)
        return self.run_images(kind, path, options, job_id, progress, cancel)

    def run_video(self, path: Path, options: dict[str, Any], job_id: str, progress: Progress,
                  cancel: Any, workdir: Path) -> Path:
        video_options = self.video.options(**options)
        every = video_options.every or 1
        writer = ResultWriter(workdir, every, self.chunk_frames)
        with VideoReader(path, job_video_limits(self.settings)) as reader:
            header = reader.header
            total = -(-header.frames // every) if header.frames else None
            done = 0

            def step(frame: int, t: float, image: Any, seen: list) -> None:
                nonlocal done
                done += 1
                progress(done, total)

            # step() only counts frames: the heads may read several frames' faces at once (on an accelerator)
            answer = self.video.analyze_frames(reader.frames(), header, video_options, job_id, step, None, cancel,
                                               batch_frames=self.video.batch_frames, sink=writer)
        writer.finish(answer, self.video, video_options)
        progress(done, done)
        return workdir

    def run_images(self, kind: str, path: Path, options: dict[str, Any], job_id: str, progress: Progress,
                   cancel: Any) -> dict[str, Any]:
        face_options = self._image_options(options)
        images: list[dict[str, Any]] = []
        faces = errors = 0
        with _open_archive(kind, path) as archive:
            members = self._members(archive)
            total = len(members)
            references: dict[Any, list] = {}
            if options.get("baseline") == "auto":  # each face against its person's most neutral-looking faces
                references, _ = automatic_baselines(self.analyzer, self._readable(archive, members, cancel),
                                                    face_options)
            for index, (name, member) in enumerate(members):
                if cancel.is_set():
                    raise ApiError(503, "shutting_down", "the job was stopped")
                try:
                    analysis = self.analyzer.run(_read(archive, member), face_options, ("au", "expression"),
                                                 face_references=references.get(name))
                    response = analysis_response(uuid.uuid4().hex, analysis, include_landmarks=False)
                    images.append({"name": name, "result": response.model_dump(mode="json"), "error": None})
                    faces += len(analysis.faces)
                except ApiError as exc:
                    images.append({"name": name, "result": None,
                                   "error": {"code": exc.code, "message": exc.message}})
                    errors += 1
                progress(index + 1, total)
        return {"request_id": job_id, "images": images,
                "summary": {"images": total, "faces": faces, "errors": errors}}

    @staticmethod
    def _readable(archive: zipfile.ZipFile | tarfile.TarFile, members: list[tuple[str, Any]],
                  cancel: Any) -> Iterator[tuple[str, bytes]]:
        """(name, bytes) of the members that can be read (the second pass reports the others' errors)."""
        for name, member in members:
            if cancel.is_set():
                raise ApiError(503, "shutting_down", "the job was stopped")
            try:
                yield name, _read(archive, member)
            except ApiError:
                continue

    def _members(self, archive: zipfile.ZipFile | tarfile.TarFile) -> list[tuple[str, Any]]:
        """(name, member) for each image of the archive, in name order; 413 when there are too many, or for a
        member over the image upload limit (read from the archive's directory, before inflating anything)."""
        limit = self.settings.max_upload_bytes
        found: list[tuple[str, Any]] = []
        try:
            if isinstance(archive, zipfile.ZipFile):
                for info in archive.infolist():
                    if not info.is_dir() and info.filename.lower().endswith(IMAGE_EXTS):
                        _check_size(info.filename, info.file_size, limit)
                        found.append((info.filename, info))
            else:
                for member in archive.getmembers():
                    if member.isfile() and member.name.lower().endswith(IMAGE_EXTS):
                        _check_size(member.name, member.size, limit)
                        found.append((member.name, member))
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
            raise ApiError(400, "invalid_archive", f"the archive cannot be read: {exc}") from None
        if not found:
            raise ApiError(422, "empty_archive", f"no image ({', '.join(IMAGE_EXTS)}) in the archive")
        if len(found) > self.settings.jobs_max_images:
            raise ApiError(413, "too_many_images",
                           f"{len(found)} images; a job takes at most {self.settings.jobs_max_images} "
                           "(MICROFACS_JOBS_MAX_IMAGES)")
        return sorted(found, key=lambda item: item[0])


def _open_archive(kind: str, path: Path) -> zipfile.ZipFile | tarfile.TarFile:
    try:
        return zipfile.ZipFile(path) if kind == "zip" else tarfile.open(path)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ApiError(400, "invalid_archive", f"the archive cannot be read: {exc}") from None


def _read(archive: zipfile.ZipFile | tarfile.TarFile, member: Any) -> bytes:
    try:
        if isinstance(archive, zipfile.ZipFile):
            return archive.read(member)
        handle = archive.extractfile(member)
        return b"" if handle is None else handle.read()
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        raise ApiError(400, "invalid_image", f"{member}: cannot be read from the archive: {exc}") from None


def _check_size(name: str, size: int, limit: int) -> None:
    if size > limit:
        raise ApiError(413, "file_too_large", f"{name}: {size} bytes; an image may have at most {limit}")


def eta(started: float, done: int, total: int | None) -> float | None:
    if not total or done <= 0:
        return None
    return round((time.monotonic() - started) / done * max(total - done, 0), 1)


__all__ = ["JobRunner", "eta", "job_video_limits", "upload_kind"]
