"""Start-up and shutdown: the worker's temporary directory, and requests that the server cancels.

Temporary files. Each worker spools its video uploads into its own directory, ``<tmp>/microfacs-work-*``,
whose ``.lock`` file it holds locked (``flock``) while it lives: the kernel drops the lock when the process
ends, however it ends (SIGKILL included). At start-up a worker removes the work directories whose lock is
free (their process is gone) and loose ``microfacs-video-*`` files an hour old (older versions spooled into
the temporary directory itself); at shutdown it removes its own. Workers of one server share the temporary
directory: a live worker's directory is locked, so nobody else removes it.

Shutdown. uvicorn waits ``--timeout-graceful-shutdown`` seconds for the requests in flight, then cancels
them. ``CancelledRequestMiddleware`` answers such a request ``503 shutting_down`` when it has not answered
yet and ends it quietly (uvicorn would log a traceback); the lifespan then sets ``app.state.stopping``, which
the video analysis checks between frames, waits a little for the analyses still computing in threads, and
removes the work directory.
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError, send_error

logger = logging.getLogger("microfacs")

WORK_PREFIX = "microfacs-work-"
LOOSE_PATTERN = "microfacs-video-*"  # spool files (app/video/decode.py) made outside a work directory
LOOSE_MAX_AGE_S = 3600.0
LOCK_NAME = ".lock"


def _try_lock(path: Path) -> int | None:
    """An fd holding ``path``'s exclusive lock, or None when another process holds it."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


class WorkDir:
    """This worker's temporary directory, locked for as long as the worker lives: ``WorkDir.create()``,
    ``.path``, ``.close()`` (removes it)."""

    def __init__(self, path: Path, lock_fd: int) -> None:
        self.path, self._lock_fd = path, lock_fd

    @classmethod
    def create(cls, root: str | Path | None = None) -> WorkDir:
        root = Path(root or tempfile.gettempdir())
        # Made under a name the start-up sweep ignores, locked, then renamed: a directory is never visible to
        # another worker's sweep without its lock held.
        staging = Path(tempfile.mkdtemp(prefix=".microfacs-staging-", dir=root))
        fd = _try_lock(staging / LOCK_NAME)
        if fd is None:
            shutil.rmtree(staging, ignore_errors=True)
            raise OSError(f"cannot lock a work directory in {root}")
        path = root / (WORK_PREFIX + staging.name.rsplit("-", 1)[-1])
        staging.rename(path)
        return cls(path, fd)

    @classmethod
    def start(cls, root: str | Path | None = None) -> WorkDir | None:
        """At a worker's start: sweeps what dead workers left (``clean_stale``), then makes this worker's
        directory; None (logged: uploads then spool in the temporary directory itself) when it cannot."""
        try:
            clean_stale(root)
            return cls.create(root)
        except OSError as exc:
            logger.warning("no work directory in %s (%s): video uploads spool there directly",
                           root or tempfile.gettempdir(), exc)
            return None

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def clean_stale(root: str | Path | None = None, loose_max_age_s: float = LOOSE_MAX_AGE_S) -> list[Path]:
    """Removes the work directories of workers that are gone (their lock is free) and loose spool files older
    than ``loose_max_age_s``; returns what it removed."""
    root = Path(root or tempfile.gettempdir())
    removed: list[Path] = []
    for path in sorted(root.glob(WORK_PREFIX + "*")):
        if not path.is_dir() or path.is_symlink():
            continue
        fd = _try_lock(path / LOCK_NAME)
        if fd is None:  # a live worker's
            continue
        try:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
        finally:
            os.close(fd)
    now = time.time()
    for path in sorted(root.glob(LOOSE_PATTERN)):
        with contextlib.suppress(OSError):
            if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > loose_max_age_s:
                path.unlink()
                removed.append(path)
    if removed:
        logger.info("removed %d stale temporary file(s) or directories in %s", len(removed), root)
    return removed


class CancelledRequestMiddleware:
    """A request task that the server cancels (uvicorn, once ``--timeout-graceful-shutdown`` is up) gets
    ``503 shutting_down`` when it has not answered yet, and ends here, logged on one line: no traceback.

    Only the server cancels a request task from outside the app: the app's own timeouts (``anyio`` scopes)
    end inside the app as ``TimeoutError`` or a JSON error, so a cancellation that reaches this middleware
    is the server's."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except anyio.get_cancelled_exc_class():
            logger.warning("%s %s cancelled by the server (shutting down)", scope.get("method"), scope.get("path"))
            if not started:
                error = ApiError(503, "shutting_down", "the server is shutting down; retry the request")
                with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await send_error(scope, send, error, [(b"connection", b"close"), (b"retry-after", b"1")])
            # Not re-raised: the request's task ends here, as uvicorn meant, without an "Exception in ASGI
            # application" traceback.
