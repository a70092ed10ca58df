"""``microfacs-worker``: a process that takes jobs from the queue (distributed mode, MICROFACS_JOBS_URL=redis://...;
also works on the embedded SQLite queue beside an API on the same disk). Loads the models, runs
``MICROFACS_JOBS_WORKERS`` job threads (at least 1) and the reaper; SIGTERM/SIGINT stop it gracefully (its
running jobs are re-queued). ``kill -9`` loses nothing either: another worker's reaper re-queues its job once its
lease (MICROFACS_JOBS_LEASE_S) expires.

    MICROFACS_JOBS_URL=redis://redis:6379/0 MICROFACS_JOBS_DIR=/jobs microfacs-worker
"""
from __future__ import annotations

import logging
import signal
import sys
import threading

from app.analyzer import Analyzer
from app.jobs.queue import JobQueue
from app.jobs.runner import JobRunner
from app.logs import configure_logging
from app.registry import ModelRegistry
from app.settings import Settings


def main(argv: list[str] | None = None) -> int:
    settings = Settings()
    configure_logging(settings.log_format)
    registry = ModelRegistry(settings)
    registry.warm_up()
    queue = JobQueue(settings)
    queue.start(JobRunner(Analyzer(settings, registry)), max(1, settings.jobs_workers))
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    logging.getLogger("microfacs.jobs").warning("microfacs-worker %s: %s queue, %d thread(s)", queue.name,
                                                queue.mode, max(1, settings.jobs_workers))
    print(f"microfacs-worker ready: {queue.name}", flush=True)
    done.wait()
    queue.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
