"""The job queue on huey: one code path, two storages.

* embedded (default): ``SqliteHuey`` in ``<jobs_dir>/queue.db``; ``jobs_workers`` threads in the API process
  take the jobs. The queue and the job states are on disk, so a restart loses no accepted job: queued jobs stay
  queued, a job that was running is run again (its lease expires, or it is re-queued at a graceful shutdown).
* distributed (``MICROFACS_JOBS_URL=redis://...``): ``RedisHuey``; the API only enqueues (``jobs_workers=0``
  there, or more to help), ``microfacs-worker`` processes take the jobs.

Each process runs its threads over huey's public ``dequeue()`` / ``execute()`` (huey's own consumer would take
the process's signal handlers, which are uvicorn's in the API), plus a reaper thread that re-queues the jobs
whose worker died (``JobStore.stale``) and deletes the jobs past their TTL. Worker threads run at a lower CPU
priority (``os.setpriority`` per thread on Linux): image requests come first.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from huey import RedisHuey, SqliteHuey
from huey.api import Huey

from app.errors import ApiError
from app.jobs.runner import JobRunner, eta
from app.jobs.store import TERMINAL, JobStore, now_iso
from app.settings import Settings

log = logging.getLogger("microfacs.jobs")
JOB_NICE = 10  # worker threads' niceness, above the request threads' 0
PROGRESS_EVERY_S = 0.5


def make_huey(settings: Settings) -> Huey:
    if settings.jobs_url:
        return RedisHuey("microfacs-jobs", url=settings.jobs_url, results=False, utc=True)
    settings.jobs_dir.mkdir(parents=True, exist_ok=True)
    return SqliteHuey("microfacs-jobs", filename=str(settings.jobs_dir / "queue.db"), results=False, utc=True)


class JobQueue:
    """Enqueues jobs (the API) and runs them (worker threads, once ``start`` was called with a runner)."""

    def __init__(self, settings: Settings, runner: JobRunner | None = None) -> None:
        self.settings = settings
        self.store = JobStore(settings.jobs_dir, settings.jobs_lease_s)
        self.huey = make_huey(settings)
        self.runner = runner
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self._task = self.huey.task(name="microfacs.run_job", retries=0)(self._execute)

    @property
    def mode(self) -> str:
        return "distributed" if self.settings.jobs_url else "embedded"

    def enqueue(self, job_id: str, attempt: int = 1) -> None:
        self._task(job_id, attempt)

    def depth(self) -> int:
        return int(self.huey.pending_count())

    # -- threads --------------------------------------------------------------------------------------------

    def start(self, runner: JobRunner, workers: int) -> None:
        self.runner = runner
        for n in range(workers):
            thread = threading.Thread(target=self._work, name=f"microfacs-job-{n}", daemon=True)
            thread.start()
            self.threads.append(thread)
        reaper = threading.Thread(target=self._reap, name="microfacs-job-reaper", daemon=True)
        reaper.start()
        self.threads.append(reaper)

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stops taking jobs; the running ones stop at their next frame and are re-queued (not failed)."""
        self.stopping.set()
        deadline = time.monotonic() + timeout_s
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        with contextlib.suppress(AttributeError, OSError):  # this thread only (Linux): image requests come first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), JOB_NICE)
        while not self.stopping.is_set():
            try:
                task = self.huey.dequeue()
            except Exception:  # the queue's storage is unreachable (Redis restarting): try again
                log.exception("jobs: cannot read the queue")
                self.stopping.wait(1.0)
                continue
            if task is None:
                self.stopping.wait(0.2)
                continue
            try:
                self.huey.execute(task)
            except Exception:
                log.exception("jobs: task failed")

    def _reap(self) -> None:
        every = max(0.2, min(self.settings.jobs_lease_s / 3, 5.0))
        last_expiry = 0.0
        while not self.stopping.wait(every):
            try:
                self.reap_once()
                if time.monotonic() - last_expiry > 60.0:
                    last_expiry = time.monotonic()
                    self.store.expire(self.settings.jobs_result_ttl_s)
            except Exception:
                log.exception("jobs: reaper")

    def reap_once(self) -> None:
        for job_id, attempt in self.store.stale():
            if not self.store.mark_requeued(job_id, attempt):
                continue
            if attempt > self.settings.jobs_max_attempts:
                self._finish(job_id, "failed", error={"code": "worker_lost", "message": (
                    f"the job's worker stopped {attempt - 1} times (MICROFACS_JOBS_MAX_ATTEMPTS)")})
                continue
            log.warning("jobs: %s: its worker stopped renewing its lease; run %d queued", job_id, attempt)
            self.enqueue(job_id, attempt)

    # -- one run of one job ---------------------------------------------------------------------------------

    def _execute(self, job_id: str, attempt: int) -> None:
        store = self.store
        job = store.read_raw(job_id)
        if job is None or job["status"] in TERMINAL:
            return
        if store.cancel_requested(job_id):
            self._finish(job_id, "cancelled")
            return
        if not store.claim(job_id, attempt, self.name):
            return
        assert self.runner is not None
        store.update(job_id, status="running", started_at=job.get("started_at") or now_iso(), attempts=attempt)
        stop, lost, finished = threading.Event(), threading.Event(), threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(job_id, attempt, stop, lost, finished), daemon=True)
        beat.start()
        started, last = time.monotonic(), 0.0

        def progress(done: int, total: int | None) -> None:
            nonlocal last
            now = time.monotonic()
            if (now - last >= PROGRESS_EVERY_S or done == total) and not lost.is_set():
                last = now
                store.update(job_id, progress={"done": done, "total": total, "eta_s": eta(started, done, total)})

        try:
            store.clear_runs(job_id)  # an earlier run's partial files (its worker was killed): this run starts over
            result = self.runner.run(job["kind"], store.upload_path(job_id), job["options"], job_id, progress, stop,
                                     store.run_folder(job_id, attempt))
        except ApiError as exc:
            self._stopped_or(job_id, attempt, lost, "failed", {"code": exc.code, "message": exc.message})
            return
        except Exception as exc:
            log.exception("jobs: %s failed", job_id)
            self._stopped_or(job_id, attempt, lost, "failed", {"code": "internal_error", "message": str(exc)})
            return
        finally:
            finished.set()
        if not store.holds(job_id, attempt):
            return  # taken over while it was slow: the newer run writes the result
        if isinstance(result, Path):
            store.commit_result(job_id, result)
        else:
            store.write_result(job_id, json.dumps(result, separators=(",", ":")).encode())
        done = (store.read_raw(job_id) or {}).get("progress") or {}
        self._finish(job_id, "done", progress={**done, "done": done.get("total") or done.get("done"), "eta_s": 0})

    def _stopped_or(self, job_id: str, attempt: int, lost: threading.Event, status: str,
                    error: dict[str, Any]) -> None:
        """After a run raised: nothing when it was taken over; re-queued when this process is stopping;
        cancelled when asked; else ``status`` with ``error``."""
        if lost.is_set() or not self.store.holds(job_id, attempt):
            return
        if self.store.cancel_requested(job_id):
            self._finish(job_id, "cancelled")
        elif self.stopping.is_set():
            if self.store.mark_requeued(job_id, attempt + 1):
                self.enqueue(job_id, attempt + 1)  # a restart (or another worker) runs it again
        else:
            self._finish(job_id, status, error=error)

    def _heartbeat(self, job_id: str, attempt: int, stop: threading.Event, lost: threading.Event,
                   finished: threading.Event) -> None:
        every = min(1.0, self.settings.jobs_lease_s / 3)  # renewing is a utime(): cheap; cancels are seen within 1 s
        while not finished.wait(every):
            if not self.store.renew(job_id, attempt):
                lost.set()
                stop.set()
            if self.store.cancel_requested(job_id) or self.stopping.is_set():
                stop.set()

    def _finish(self, job_id: str, status: str, **fields: Any) -> None:
        self.store.clear_runs(job_id)  # a failed or cancelled run's partial chunks
        self.store.update(job_id, status=status, finished_at=now_iso(), **fields)
        self.store.upload_path(job_id).unlink(missing_ok=True)
