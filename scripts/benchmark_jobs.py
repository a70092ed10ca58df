"""Jobs (POST /jobs): a worker's speed and memory over a long clip, image latency with jobs running, a worker killed
mid-job. Bounded: every part stops after its clip (or ``--timeout`` seconds) and cleans up its processes.

    python -m scripts.benchmark_jobs worker --minutes 3     # frames/s and RSS of the worker path, in-process
    python -m scripts.benchmark_jobs worker --minutes 30    # the 30-minute RSS claim
    python -m scripts.benchmark_jobs latency                # /analyze p50/p99 unloaded, then with two jobs running
    python -m scripts.benchmark_jobs kill --minutes 10      # redis + API + two microfacs-worker, one killed mid-job

The clip is made at run time from ``samples/single_face.mp4`` (640x360, 30 fps) letterboxed to 640x480 and played
forwards and backwards (one continuous track), H.264 (scripts/benchmark_video.py's ``make_clip``). ``worker``
runs ``JobRunner.run`` (what a worker thread runs: decode, track, heads, chunks to disk, events, result.json and
result.csv) and samples the process's RSS (/proc/self/statm) every second. ``kill`` needs ``redis-server``.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from scripts.benchmark_video import DATA, make_clip
from scripts.servers import free_port, serve, spawn, stop

REPO = Path(__file__).resolve().parents[1]

SOURCE = DATA / "samples" / "single_face.mp4"
PHOTO = DATA / "samples" / "single_face.jpg"


def rss_mib() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def machine() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at the start, {platform.python_version()}"


def clip_of(minutes: float, tmp: Path) -> Path:
    path = tmp / f"clip-{minutes:g}min.mp4"
    if not path.exists():
        started = time.monotonic()
        make_clip(SOURCE, minutes * 60.0, path)
        print(f"made {path.name}: {path.stat().st_size / 2**20:.1f} MiB in {time.monotonic() - started:.0f} s",
              file=sys.stderr, flush=True)
    return path


# -- worker: frames/s and RSS ----------------------------------------------------------------------------------


def worker(args: argparse.Namespace, tmp: Path) -> dict:
    from app.analyzer import Analyzer
    from app.jobs.runner import JobRunner
    from app.settings import Settings

    clip = clip_of(args.minutes, tmp)
    runner = JobRunner(Analyzer(Settings()))
    never = threading.Event()
    runner.run("video", clip, {"every": 1, "max_frames": 30}, "warm", lambda d, t: None, never, tmp / "warm")
    samples: list[tuple[float, float, int]] = []
    done = [0]
    stop = threading.Event()
    start = time.monotonic()

    def sample() -> None:
        while not stop.wait(1.0):
            samples.append((time.monotonic() - start, rss_mib(), done[0]))

    def progress(n: int, total: int | None) -> None:
        done[0] = n
        if args.timeout and time.monotonic() - start > args.timeout:
            never.set()  # bounded: stops at the next frame (503) and the numbers so far are reported

    rss_start = rss_mib()
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    finished = True
    try:
        folder = runner.run("video", clip, {"every": 1}, "bench", progress, never, tmp / "run")
        out = folder if isinstance(folder, Path) else None  # a video job's run: its folder of result files
    except Exception as exc:  # the timeout
        finished, out = False, None
        print(f"stopped: {exc}", file=sys.stderr)
    seconds = time.monotonic() - start
    stop.set()
    sampler.join()
    rss_end = rss_mib()
    report: dict = {"part": "worker", "clip": f"single_face.mp4 letterboxed to 640x480, 30 fps, {args.minutes:g} min",
                    "finished": finished, "analysed_frames": done[0], "seconds": round(seconds, 1),
                    "frames_per_s": round(done[0] / seconds, 1)}
    if out is not None:
        tail = (out / "result.json").read_bytes()[-3000:].decode()
        timings = json.loads(re.search(r'"timings_ms":(\{[^}]*\})', tail).group(1))  # type: ignore[union-attr]
        report["ms_per_frame"] = {k: round(v / max(done[0], 1), 2) for k, v in timings.items()}
        report["result_json_mib"] = round((out / "result.json").stat().st_size / 2**20, 1)
        report["result_csv_mib"] = round((out / "result.csv").stat().st_size / 2**20, 1)
    rss = [r for _, r, _ in samples] or [rss_end]
    step = max(1, len(samples) // 10)
    report["rss_mib"] = {"start": round(rss_start, 1), "peak": round(max(rss), 1), "end": round(rss_end, 1),
                         "over_time": [(round(t), n, round(r, 1)) for t, r, n in samples[::step]]}
    return report


# -- latency: /analyze with and without jobs -------------------------------------------------------------------


def percentiles(http: httpx.Client, photo: bytes, n: int) -> dict:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        response = http.post("/analyze", files={"file": ("p.jpg", photo, "image/jpeg")})
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, response.text
    ms = np.array(times)
    return {"n": n, "p50_ms": round(float(np.percentile(ms, 50)), 1), "p99_ms": round(float(np.percentile(ms, 99)), 1)}


def wait_job(http: httpx.Client, job_id: str, until, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = http.get(f"/jobs/{job_id}").json()
        if until(job) or time.monotonic() > deadline:
            return job
        time.sleep(0.5)


def latency(args: argparse.Namespace, tmp: Path) -> dict:
    clip = clip_of(args.minutes, tmp).read_bytes()
    photo = PHOTO.read_bytes()
    env = {"MICROFACS_JOBS_DIR": str(tmp / "jobs-latency"), "MICROFACS_JOBS_WORKERS": "2"}
    server, url = serve(env, tmp / "api.log")
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            percentiles(http, photo, 5)  # warm-up
            unloaded = percentiles(http, photo, args.requests)
            ids = [http.post("/jobs", files={"file": ("c.mp4", clip, "video/mp4")}).json()["id"] for _ in range(2)]
            for job_id in ids:
                wait_job(http, job_id, lambda j: j["status"] == "running" and j["progress"]["done"] > 0, 120)
            loaded = percentiles(http, photo, args.requests)
            states = [http.get(f"/jobs/{i}").json() for i in ids]
            for job_id in ids:
                http.delete(f"/jobs/{job_id}")
    finally:
        stop(server)
    return {"part": "latency", "photo": "samples/single_face.jpg", "unloaded": unloaded, "two_jobs_running": loaded,
            "jobs_still_running_after": [s["status"] for s in states],
            "jobs_frames_done_during": [s["progress"]["done"] for s in states],
            "p99_ratio": round(loaded["p99_ms"] / unloaded["p99_ms"], 2)}


# -- kill: two workers on redis, the one holding the job killed mid-way -----------------------------------------


def kill(args: argparse.Namespace, tmp: Path) -> dict:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    clip = clip_of(args.minutes, tmp)
    port = free_port()
    redis = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                              "--dir", str(tmp)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    jobs = tmp / "jobs-kill"
    env = {"MICROFACS_JOBS_URL": f"redis://127.0.0.1:{port}/0", "MICROFACS_JOBS_DIR": str(jobs),
           "MICROFACS_JOBS_LEASE_S": "5"}
    workers = [spawn(["-m", "app.jobs.worker"], env, tmp / f"worker{n}.log") for n in range(2)]
    server, url = serve({**env, "MICROFACS_JOBS_WORKERS": "0"}, tmp / "api-kill.log")
    started = time.monotonic()
    try:
        with httpx.Client(base_url=url, timeout=120) as http:
            with clip.open("rb") as fh:
                job_id = http.post("/jobs", files={"file": ("long.mp4", fh, "video/mp4")}).json()["id"]
            job = wait_job(http, job_id, lambda j: (j["progress"]["total"] or 1e9) / 2 <= j["progress"]["done"],
                           args.timeout)
            holder = (jobs / job_id / "attempt-1").read_text()
            (victim,) = [w for w in workers if w.pid == int(holder.rsplit(":", 1)[1])]
            killed_at = job["progress"]
            victim.send_signal(signal.SIGKILL)
            job = wait_job(http, job_id, lambda j: j["status"] in ("done", "failed", "cancelled"), args.timeout)
            report: dict = {"part": "kill", "clip": f"{args.minutes:g} min, 640x480, 30 fps",
                            "killed_at": killed_at, "status": job["status"], "attempts": job["attempts"],
                            "seconds": round(time.monotonic() - started, 1)}
            if job["status"] == "done":
                result = http.get(f"/jobs/{job_id}/result").json()
                frames = [f["frame"] for t in result["tracks"] for f in t["frames"]]
                table = http.get(f"/jobs/{job_id}/result", params={"format": "csv"}).text.splitlines()[1:]
                rows = [(r.split(",")[0], r.split(",")[1]) for r in table]
                report.update({
                    "decoded_frames": result["video"]["frames"], "analysed_frames": result["video"]["analysed_frames"],
                    "tracks": len(result["tracks"]), "frames_in_tracks": len(frames),
                    "distinct_frames_in_tracks": len(set(frames)),
                    "every_frame_once": sorted(frames) == list(range(result["video"]["analysed_frames"])),
                    "csv_rows": len(rows), "csv_rows_distinct": len(set(rows)),
                    "summaries": all(t.get("summary") and t["summary"]["frames"] for t in result["tracks"]),
                    "second_run_by_the_other_worker": (jobs / job_id / "attempt-2").read_text() != holder,
                })
    finally:
        stop(server)
        for w in workers:
            stop(w)
        redis.kill()
        redis.wait(10)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("part", choices=["worker", "latency", "kill"])
    parser.add_argument("--minutes", type=float, help="clip length (worker 3, latency 2, kill 10)")
    parser.add_argument("--requests", type=int, default=200, help="latency: /analyze requests per measurement")
    parser.add_argument("--timeout", type=float, default=1800.0, help="stop a part after this many seconds")
    parser.add_argument("--indent", action="store_true", help="pretty-print the report")
    args = parser.parse_args(argv)
    args.minutes = args.minutes or {"worker": 3.0, "latency": 2.0, "kill": 10.0}[args.part]
    if not SOURCE.exists():
        print(f"benchmark_jobs: {SOURCE} is absent (set MICROFACS_DATA)", file=sys.stderr)
        return 2
    print(machine(), file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="microfacs-jobs-bench-") as tmp:
        report = {"worker": worker, "latency": latency, "kill": kill}[args.part](args, Path(tmp))
    report["machine"] = machine()
    print(json.dumps(report, indent=1) if args.indent else json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
