"""POST /jobs, GET /jobs/{id}, GET /jobs/{id}/result, DELETE /jobs/{id}: long videos and image archives as
background jobs (app/jobs/). Thin: the queue is ``app.jobs.queue.JobQueue``, the work ``app.jobs.runner``."""
from __future__ import annotations

import asyncio
import json
import shutil
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from app.errors import ApiError
from app.jobs.queue import JobQueue
from app.jobs.runner import JobRunner, upload_kind
from app.jobs.store import TERMINAL, new_id
from app.persons import key_scope
from app.routes.deps import multipart_body, read_upload
from app.schemas import JobOut
from app.security import presented_key

router = APIRouter(tags=["jobs"])


def queue_of(request: Request) -> JobQueue:
    queue = getattr(request.app.state, "jobs", None)
    if queue is None:
        raise ApiError(503, "not_ready", "the job queue is starting")
    return queue


def job_out(job: dict[str, Any], request: Request) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/") + f"/jobs/{job['id']}"
    out = {k: job.get(k) for k in ("id", "status", "kind", "filename", "progress", "created_at", "started_at",
                                   "finished_at", "error", "attempts")}
    out["links"] = {"self": base, "result": f"{base}/result", "cancel": base}
    return JobOut.model_validate(out).model_dump(mode="json")


def owned_job(request: Request, job_id: str) -> dict[str, Any]:
    """The job, or 404 when it does not exist or belongs to another API key (same answer: no probing)."""
    queue = queue_of(request)
    try:
        job = queue.store.read(job_id)
    except KeyError:
        job = None
    if job is None or job.get("owner") != key_scope(presented_key(request)):
        raise ApiError(404, "job_not_found", "no such job (it may have expired: GET /version jobs_result_ttl_s)")
    return job


@router.post("/jobs", status_code=202, response_model=JobOut,
             openapi_extra=multipart_body("a video (MP4, MOV, WebM, MKV, AVI) or a zip/tar of images"))
async def create_job(
    request: Request,
    every: Annotated[int | None, Query(ge=1, le=1000, description="videos: analyse every n-th frame")] = None,
    max_faces: Annotated[int | None, Query(ge=1, description="at most this many faces (tracks) at a time")] = None,
    side_face_filter: Annotated[bool, Query()] = True,
    occlusion_filter: Annotated[bool, Query()] = True,
    series: Annotated[bool, Query(description="videos: each track's per-frame data in the result")] = True,
    baseline: Annotated[Literal["none", "auto"], Query(
        description="auto: videos, each track against its own most neutral-looking frames (as /analyze-video); "
        "image archives, each face against its person's most neutral-looking faces, people found by identity "
        "clustering (research profile)")] = "none",
) -> Response:
    """Accepts the upload as a job (202 with its id and links, ``Location`` its state) and returns at once: poll
    ``GET /jobs/{id}`` for the progress, fetch ``GET /jobs/{id}/result`` once ``done``. Job limits (upload size,
    video duration, images per archive, how long results are kept) are in ``GET /version``'s ``jobs``."""
    queue = queue_of(request)
    settings = request.app.state.settings
    options = {"every": every or 1, "max_faces": max_faces, "side_face_filter": side_face_filter,
               "occlusion_filter": occlusion_filter, "series": series, "baseline": baseline}
    file = await read_upload(request)
    try:
        head = await file.read(4096)
        await file.seek(0)
        if not head:
            raise ApiError(400, "empty_file", "the upload is empty")
        if await asyncio.to_thread(queue.store.active) >= settings.jobs_max_queued:
            raise ApiError(503, "overloaded", f"{settings.jobs_max_queued} jobs are queued or running "
                           "(MICROFACS_JOBS_MAX_QUEUED); retry later", headers={"Retry-After": "30"})
        job_id = new_id()
        upload = queue.store.upload_path(job_id)
        upload.parent.mkdir(parents=True, exist_ok=True)

        def keep() -> str | None:
            with upload.open("wb") as out:
                shutil.copyfileobj(file.file, out, 1 << 20)
            return upload_kind(head, upload)

        try:
            kind = await asyncio.to_thread(keep)
            if kind is None:
                raise ApiError(415, "unsupported_media_type",
                               "a job takes a video (MP4, MOV, WebM, MKV, AVI) or a zip/tar archive of images")
            runner = JobRunner(request.app.state.analyzer)
            runner.validate("video" if kind == "video" else "images", options)
        except BaseException:
            shutil.rmtree(upload.parent, ignore_errors=True)
            raise
    finally:
        await request.close()
    job = queue.store.create(job_id, key_scope(presented_key(request)), "video" if kind == "video" else kind,
                             file.filename or "upload", options)
    queue.enqueue(job_id)
    body = job_out(job, request)
    return JSONResponse(body, status_code=202, headers={"Location": body["links"]["self"]})


@router.get("/jobs/{job_id}", response_model=JobOut)
async def get_job(request: Request, job_id: str) -> Response:
    """The job's ``status`` (queued, running, done, failed, cancelled), ``progress`` (frames or images done of
    ``total``, ``eta_s``), timestamps and ``error`` (code and message) when it failed."""
    return JSONResponse(job_out(owned_job(request, job_id), request))


@router.get("/jobs/{job_id}/result")
async def get_result(request: Request, job_id: str,
                     format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json") -> Response:
    """The result once ``done`` (else 409 ``job_not_done``): JSON (a video's is /analyze-video's answer, with each
    track's ``summary``), ``csv`` (the CLI's OpenFace-style table, frames 0-based) or ``parquet`` (with pyarrow)."""
    job = owned_job(request, job_id)
    if job["status"] != "done":
        raise ApiError(409, "job_not_done", f"the job is {job['status']}; its result exists once it is done")
    store = queue_of(request).store
    path = store.result_path(job_id)
    if format == "json":
        return FileResponse(path, media_type="application/json")
    table = store.csv_path(job_id)  # a video's, written by the worker as it went
    if table.exists():
        if format == "csv":
            return FileResponse(table, media_type="text/csv", filename=f"{job_id}.csv")
        from app.jobs.tables import csv_to_parquet

        return Response(await asyncio.to_thread(csv_to_parquet, table), media_type="application/vnd.apache.parquet",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.parquet"'})
    from app.jobs.tables import result_table

    result = json.loads(await asyncio.to_thread(path.read_text))
    columns, rows = result_table(job["kind"], result)
    if format == "csv":
        from app.jobs.tables import to_csv

        return Response(to_csv(columns, rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{job_id}.csv"'})
    from app.jobs.tables import to_parquet

    return Response(to_parquet(columns, rows), media_type="application/vnd.apache.parquet",
                    headers={"Content-Disposition": f'attachment; filename="{job_id}.parquet"'})


@router.delete("/jobs/{job_id}", response_model=JobOut)
async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancels a queued or running job (a running one stops within about a second); a finished job is left as it
    is. Answers the job's state."""
    job = owned_job(request, job_id)
    store = queue_of(request).store
    if job["status"] not in TERMINAL:
        store.cancel(job_id)
        job = store.read(job_id) or job
    return JSONResponse(job_out(job, request))
