"""``microfacs INPUTS --url URL --job``: the inputs as background jobs on the server (``POST /jobs``, through the
client SDK's ``Client.submit``) instead of one request per image or video.

Each video is one job; each folder's images are one zip archive (one job), and the image files named on the
command line another. All are submitted first (the server's workers take them in turn), then waited for in order,
each one's progress (frames or images done of the total) on stderr. The results are written as without ``--job``:
JSON lines or CSV rows (videos first, then images, in input order, ``frame`` 0-based), the events and per-track
summary files beside ``-o``; a job that failed or was cancelled gives its inputs an error row (``code: message``).
Ctrl-C cancels the jobs not yet finished.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from app.heads import OPT_IN
from microfacs_cli import output, sources

# Options of the synchronous calls that POST /jobs does not take: refused before anything is sent.
NOT_FOR_JOBS = (("max_frames", "--max-frames"), ("render", "--render"), ("reference", "--reference"),
                ("person", "--person"), ("min_face_size", "--min-face-size"), ("prior", "--prior"),
                *((name, f"--{name}") for name in OPT_IN))


def conflicts(args: argparse.Namespace) -> str | None:
    """Why ``--job`` cannot run with these options (else None)."""
    if not args.url:
        return "--job sends the inputs to a server's POST /jobs: give --url too"
    for name, option in NOT_FOR_JOBS:
        if getattr(args, name, None):
            return f"{option} is not an option of POST /jobs: leave it out, or run without --job"
    if args.endpoint not in ("auto", "analyze"):
        return "a job reads faces, AUs and expression (as /analyze): --endpoint auto or analyze with --job"
    return None


@dataclass
class Submission:
    """One job: a video, or an archive of images (``members``: name in the archive -> the file)."""

    label: str
    unit: str
    members: dict[str, Path] = field(default_factory=dict)
    job: Any = None
    error: dict[str, Any] | None = None  # the job could not be submitted, failed or was cancelled
    result: Any = None  # a video's result (JSON); an archive's images by name
    unreadable: dict[str, str] = field(default_factory=dict)  # archive members left out, and why
    finished: bool = False


@dataclass
class Plan:
    videos: list[tuple[Path, Submission]] = field(default_factory=list)
    archives: list[Submission] = field(default_factory=list)
    stills: list[tuple[Path, Submission, str]] = field(default_factory=list)  # (file, its archive, name there)


def plan(inputs: list[str], recursive: bool) -> Plan:
    out = Plan()
    loose = Submission("images", "images")
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            archive = Submission(path.name or str(path), "images")
            for found in sources.expand([raw], recursive=recursive):
                if sources.is_video(found):
                    out.videos.append((found, Submission(str(found), "frames")))
                else:
                    name = found.relative_to(path).as_posix()
                    archive.members[name] = found
                    out.stills.append((found, archive, name))
            if archive.members:
                out.archives.append(archive)
        elif sources.is_video(path):
            out.videos.append((path, Submission(str(path), "frames")))
        else:
            name = path.name if path.name not in loose.members else f"{len(loose.members):06d}_{path.name}"
            loose.members[name] = path
            out.stills.append((path, loose, name))
    if loose.members:
        out.archives.append(loose)
    return out


def zip_of(archive: Submission) -> tuple[IO[bytes], dict[str, str]]:
    """A temporary zip (stored: images are compressed already) of the archive's readable files, and why each
    unreadable one was left out."""
    handle = tempfile.TemporaryFile()  # noqa: SIM115 (the caller closes it once sent)
    unreadable: dict[str, str] = {}
    with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED, allowZip64=True) as bundle:
        for name, path in archive.members.items():
            try:
                bundle.write(path, name)
            except OSError as exc:
                unreadable[name] = f"cannot read {path}: {exc.strerror or exc}"
    handle.seek(0)
    return handle, unreadable


class JobLine:
    """One job's progress on stderr, redrawn in place (at most 10 times a second) when shown."""

    def __init__(self, label: str, unit: str, show: bool, stream: IO[str] | None = None) -> None:
        self.label, self.unit, self.show, self.stream = label, unit, show, stream or sys.stderr
        self.last, self.drawn = 0.0, False

    def __call__(self, progress: Any) -> None:
        now = time.monotonic()
        if not self.show or (now - self.last < 0.1 and progress.done != progress.total):
            return
        self.last, self.drawn = now, True
        total = "?" if progress.total is None else progress.total
        eta = f", ETA {progress.eta_s:.0f}s" if progress.eta_s else ""
        self.stream.write(f"\rmicrofacs: {self.label}: {progress.done}/{total} {self.unit}{eta} ")
        self.stream.flush()

    def end(self, status: Any) -> None:
        if self.drawn:
            self.stream.write("\n")
        p = status.progress
        total = "?" if p.total is None else p.total
        self.stream.write(f"microfacs: job {status.id} ({self.label}): {status.status}, {p.done}/{total} {self.unit}\n")
        self.stream.flush()


def job_error(status: Any) -> dict[str, Any]:
    if status.error is not None:
        return {"code": status.error.code, "message": status.error.message, "job_id": status.id}
    return {"code": f"job_{status.status}", "message": f"the job was {status.status}", "job_id": status.id}


def client_error(exc: Any) -> dict[str, Any]:
    return {"status": exc.status, "code": exc.code, "message": exc.message, "request_id": exc.request_id}


def submit_all(client: Any, work: Plan, options: dict[str, Any]) -> list[Submission]:
    from microfacs_client import MicroFACSError

    submitted = []
    for path, video in work.videos:
        try:
            video.job = client.submit(path, **options)
        except MicroFACSError as exc:
            video.error = client_error(exc)
        submitted.append(video)
    for archive in work.archives:
        handle, archive.unreadable = zip_of(archive)
        try:
            if len(archive.unreadable) < len(archive.members):
                archive.job = client.submit(handle, filename=f"{archive.label}.zip", **options)
        except MicroFACSError as exc:
            archive.error = client_error(exc)
        finally:
            handle.close()
        submitted.append(archive)
    for item in submitted:
        if item.job is not None:
            print(f"microfacs: job {item.job.id}: {item.label} submitted", file=sys.stderr)
    return submitted


def wait_all(submitted: list[Submission], show: bool, poll: float) -> None:
    from microfacs_client import MicroFACSError

    pending = [s for s in submitted if s.job is not None]
    try:
        for item in pending:
            line = JobLine(item.label, item.unit, show)
            try:
                status = item.job.wait(progress=line, poll=poll)
                item.finished = True
                line.end(status)
                if status.status != "done":
                    item.error = job_error(status)
                    continue
                result = item.job.result()
                item.result = (result.model_dump(mode="json") if item.unit == "frames"
                               else {i.name: i for i in result.images})
            except MicroFACSError as exc:
                item.error = client_error(exc)
    except KeyboardInterrupt:
        for item in pending:
            if not item.finished:
                try:
                    item.job.cancel()
                    print(f"microfacs: job {item.job.id} ({item.label}) cancelled", file=sys.stderr)
                except MicroFACSError:
                    pass
        raise


def run_jobs(client: Any, args: argparse.Namespace, writer: output.Writer, show: bool) -> None:
    from microfacs_cli.video import write_video, write_video_tables

    options = {k: v for k, v in dict(
        every=args.every, max_faces=args.max_faces, series=True,
        side_face_filter=False if args.no_side_face_filter else None,
        occlusion_filter=False if args.no_occlusion_filter else None).items() if v is not None}
    work = plan(args.inputs, recursive=not args.no_recursive)
    submitted = submit_all(client, work, options)
    wait_all(submitted, show, args.poll)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir:
        plot_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, dict[str, Any]]] = []
    for path, video in work.videos:
        if video.error is not None:
            writer.write({"source": str(path), "frame": 0, "timestamp": 0.0}, None, video.error)
            continue
        write_video(writer, str(path), video.result, args, plot_dir)
        done.append((str(path), video.result))
    write_video_tables(done, args)
    for index, (path, archive, name) in enumerate(work.stills):
        meta = {"source": str(path), "frame": index, "timestamp": 0.0}
        if name in archive.unreadable:
            writer.write(meta, None, {"status": 0, "code": "invalid_input", "message": archive.unreadable[name]})
        elif archive.error is not None:
            writer.write(meta, None, archive.error)
        else:
            image = (archive.result or {}).get(name)
            if image is None:  # the server found no such image in the archive
                writer.write(meta, None, {"code": "missing_result", "message": f"no result for {name}"})
            elif image.error is not None:
                writer.write(meta, None, {"code": image.error.code, "message": image.error.message})
            else:
                writer.write(meta, image.result.model_dump(exclude_unset=True), None)

