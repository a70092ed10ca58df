"""Job states on disk: one folder per job under ``MICROFACS_JOBS_DIR`` (a volume the API and the workers share).

    <jobs_dir>/<id>/job.json      the state (written whole: a temporary file renamed over it)
    <jobs_dir>/<id>/upload        the uploaded video or archive
    <jobs_dir>/<id>/result.json   the result, once done
    <jobs_dir>/<id>/result.csv    a video's table, once done
    <jobs_dir>/<id>/run-<n>/      the n-th run's chunks and result while it runs (app/jobs/stream.py); its
                                  results are moved up when it completes and still holds the job
    <jobs_dir>/<id>/cancel        present once DELETE /jobs/<id> was called
    <jobs_dir>/<id>/attempt-<n>   the claim of the worker running the job's n-th run (created exclusively, its
                                  modification time renewed while the worker lives: its lease)

A worker killed mid-job stops renewing its lease; after ``lease_s`` any worker's reaper (``JobStore.stale``)
queues run n+1, which exactly one worker can claim (``O_EXCL``); the old run, if it was only slow, sees the newer
claim and stops without writing. So a job completes once.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

TERMINAL = ("done", "failed", "cancelled")
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")


def now_iso(t: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if t is None else t, timezone.utc).isoformat(timespec="milliseconds")


def new_id() -> str:
    """Unguessable: 128 random bits."""
    return secrets.token_urlsafe(16)


@dataclass
class JobStore:
    root: Path
    lease_s: float = 30.0

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.root.mkdir(parents=True, exist_ok=True)

    # -- paths ----------------------------------------------------------------------------------------------

    def folder(self, job_id: str) -> Path:
        if not job_id or len(job_id) > 64 or not set(job_id) <= _ID_CHARS:
            raise KeyError(job_id)
        return self.root / job_id

    def upload_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "upload"

    def result_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "result.json"

    # -- state ----------------------------------------------------------------------------------------------

    def create(self, job_id: str, owner: str, kind: str, filename: str, options: dict[str, Any]) -> dict[str, Any]:
        folder = self.folder(job_id)
        folder.mkdir(parents=True, exist_ok=True)
        job = {"id": job_id, "owner": owner, "kind": kind, "filename": filename, "options": options,
               "status": "queued", "progress": {"done": 0, "total": None, "eta_s": None},
               "created_at": now_iso(), "started_at": None, "finished_at": None, "error": None, "attempts": 0}
        self.write(job)
        return job

    def read(self, job_id: str) -> dict[str, Any] | None:
        try:
            job = json.loads((self.folder(job_id) / "job.json").read_text())
        except (OSError, ValueError, KeyError):
            return None
        if job["status"] not in TERMINAL and self.cancel_requested(job_id):
            job["status"] = "cancelled"  # the worker finalises it at its next frame (or never runs it)
        return job

    def write(self, job: dict[str, Any]) -> None:
        folder = self.folder(job["id"])
        tmp = folder / f".job.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_text(json.dumps(job))
        os.replace(tmp, folder / "job.json")

    def update(self, job_id: str, **fields: Any) -> dict[str, Any] | None:
        job = self.read_raw(job_id)
        if job is None:
            return None
        job.update(fields)
        self.write(job)
        return job

    def read_raw(self, job_id: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder(job_id) / "job.json").read_text())
        except (OSError, ValueError, KeyError):
            return None

    def write_result(self, job_id: str, data: bytes) -> None:
        tmp = self.folder(job_id) / f".result.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, self.result_path(job_id))

    def csv_path(self, job_id: str) -> Path:
        return self.folder(job_id) / "result.csv"

    def run_folder(self, job_id: str, attempt: int) -> Path:
        return self.folder(job_id) / f"run-{attempt}"

    def clear_runs(self, job_id: str) -> None:
        """Deletes the folders of the job's earlier runs (a killed worker's partial chunks)."""
        for entry in self.folder(job_id).glob("run-*"):
            shutil.rmtree(entry, ignore_errors=True)

    def commit_result(self, job_id: str, run: Path) -> None:
        """A streamed run's ``result.csv`` then ``result.json`` moved into the job's folder (renames: a reader
        sees a whole file or none), then the run's folder deleted."""
        for name in ("result.csv", "result.json"):
            if (run / name).exists():
                os.replace(run / name, self.folder(job_id) / name)
        shutil.rmtree(run, ignore_errors=True)

    def ids(self) -> Iterator[str]:
        for entry in self.root.iterdir():
            if entry.is_dir() and (entry / "job.json").exists():
                yield entry.name

    def active(self) -> int:
        return sum(1 for i in self.ids() if (self.read_raw(i) or {}).get("status") not in TERMINAL)

    # -- cancellation ---------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> None:
        (self.folder(job_id) / "cancel").touch()

    def cancel_requested(self, job_id: str) -> bool:
        return (self.folder(job_id) / "cancel").exists()

    # -- claims (leases) ------------------------------------------------------------------------------------

    def attempts(self, job_id: str) -> list[int]:
        try:
            names = os.listdir(self.folder(job_id))
        except OSError:
            return []
        return sorted(int(n.split("-", 1)[1]) for n in names if n.startswith("attempt-") and n[8:].isdigit())

    def claim(self, job_id: str, attempt: int, worker: str) -> bool:
        """True for exactly one caller per (job, attempt), and only while no later attempt exists."""
        if any(a >= attempt for a in self.attempts(job_id)):
            return False
        try:
            fd = os.open(self.folder(job_id) / f"attempt-{attempt}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(worker)
        return max(self.attempts(job_id)) == attempt

    def renew(self, job_id: str, attempt: int) -> bool:
        """Renews the lease; False when the job was taken over (a later attempt) or its folder is gone."""
        try:
            os.utime(self.folder(job_id) / f"attempt-{attempt}")
        except OSError:
            return False
        return max(self.attempts(job_id), default=attempt) == attempt

    def holds(self, job_id: str, attempt: int) -> bool:
        return max(self.attempts(job_id), default=-1) == attempt

    def stale(self, now: float | None = None) -> Iterator[tuple[str, int]]:
        """(job id, next attempt) of each running job whose lease expired: its worker died."""
        now = time.time() if now is None else now
        for job_id in list(self.ids()):
            job = self.read_raw(job_id)
            if job is None or job["status"] in TERMINAL:
                continue
            attempts = self.attempts(job_id)
            if not attempts:
                continue  # still queued: its message is in the queue
            last = attempts[-1]
            try:
                age = now - (self.folder(job_id) / f"attempt-{last}").stat().st_mtime
            except OSError:
                continue
            if age > self.lease_s:
                yield job_id, last + 1

    def mark_requeued(self, job_id: str, attempt: int) -> bool:
        """True for the one reaper that re-queues (job, attempt)."""
        try:
            fd = os.open(self.folder(job_id) / f"requeued-{attempt}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except (FileExistsError, OSError):
            return False
        os.close(fd)
        return True

    # -- expiry ---------------------------------------------------------------------------------------------

    def expire(self, ttl_s: float, now: float | None = None) -> int:
        """Deletes the jobs that ended more than ``ttl_s`` ago; how many."""
        now = time.time() if now is None else now
        gone = 0
        for job_id in list(self.ids()):
            job = self.read_raw(job_id)
            if job is None or job["status"] not in TERMINAL or not job.get("finished_at"):
                continue
            ended = datetime.fromisoformat(job["finished_at"]).timestamp()
            if now - ended > ttl_s:
                shutil.rmtree(self.folder(job_id), ignore_errors=True)
                gone += 1
        return gone
