"""Floods over loopback: does one good client keep its throughput and latency while others flood the server?

    python scripts/flood.py                                   # starts uvicorn (1 worker) with an API key
    python scripts/flood.py --workers 2 --seconds 8 --repeat 2
    python scripts/flood.py --scenarios unloaded,wrong-key --flood-body photo --json flood.json
    python scripts/flood.py --env MICROFACS_MAX_IN_FLIGHT=1 --access-log   # uvicorn's access log on, as the image
    python scripts/flood.py --proxy nginx                     # through deploy/nginx.conf and its rate limits

Scenarios (each --seconds long, the good client measured throughout):
  unloaded   the good client alone: one keep-alive connection, POST /analyze with the right key, the next request
             as soon as the answer is in (closed loop), a sample photo (--image, in --data's samples/).
  wrong-key  the same, while --connections (64) keep-alive connections POST /analyze with a wrong X-API-Key as
             fast as they are answered (an empty body by default, --flood-body photo sends the photo).
  healthz    the same, while --connections connections GET /healthz as fast as they are answered.
  retry      the same, while --connections clients POST the photo with a right key (their own: a second key
             the server accepts) and resend at once whatever the answer (503 overloaded included): a retry
             storm; the table shows all their 200s too.

The server is ``uvicorn app.main:create_app --factory`` from the current directory (run from the repository
root), on a free 127.0.0.1 port, with MICROFACS_API_KEY set, --env settings and --workers; like
scripts/load_test.py it runs with --no-access-log unless --access-log (the Docker image keeps uvicorn's access
log). --url measures a server that
is already running (loopback only; then --key is its key). The floods run in another process (uvloop when
installed, a minimal HTTP/1.1 client on asyncio streams: the load generator should cost the server little); the
good client runs in this one. Every connection goes to 127.0.0.1; the floods' come from 127.0.0.2 (still
loopback), so that a proxy tells them from the good client (127.0.0.1) by address. --pin runs the server on half
the CPUs and the clients (and nginx) on the others, as if they ran on other machines; without it everything
shares every CPU. --proxy nginx puts deploy/nginx.conf in front (an nginx binary: --nginx, e.g. Debian's package
extracted with dpkg -x): the same file with its upstream, listen port and resolver pointed at this loopback
server, and its temporary and log paths in a temporary folder. Bounded: --seconds per scenario, at most
--max-requests requests per scenario from the flood and from the good client, --timeout per request.
"CPU %" is the CPU time of the server's processes (workers summed; nginx's not included) over the scenario, in %
of one core; "box %" is the whole machine's busy time in % of one core (the clients, nginx, anything else);
"flood/s" the flood's answers a second and "flood %" its generator's CPU time in % of one core. With one worker,
"srv ms" and "pipe ms" come from the server's GET /metrics over the scenario: the mean time of a 200 on /analyze
from its arrival to its last byte, and the analyzer's own stage times summed per image (the retry storm's 200s
included): waiting in the event loop and the queue is the difference, a slower analysis shows in "pipe ms".
Prints numbers only; nothing here asserts a speed.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import platform
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from scripts.servers import free_port

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = ("unloaded", "wrong-key", "healthz", "retry")
BOUNDARY = "floodboundary7d3c"
FLOOD_SOURCE = "127.0.0.2"  # loopback too: the floods' address, the good client's is 127.0.0.1


# ------------------------------------------------------------------------------------------- HTTP/1.1 client


def raw_request(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def upload(image: bytes, key: str) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"photo.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + image + f"\r\n--{BOUNDARY}--\r\n".encode()
    return raw_request("POST", "/analyze", {"X-API-Key": key,
                                            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}, body)


class Connection:
    """One keep-alive connection: send a request, read the status line, headers and a Content-Length body."""

    def __init__(self, host: str, port: int, source: str | None = None) -> None:
        self.host, self.port, self.source = host, port, source
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def exchange(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, local_addr=(self.source, 0) if self.source else None)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status, length, close = int(head[9:12]), 0, False
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                close = True
            elif name == b"transfer-encoding":
                raise RuntimeError("chunked answers are not read by this client")
        body = await self.reader.readexactly(length) if length else b""
        if close:
            self.close()
        return status, body

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def closed_loop(conn: Connection, raw: bytes, stop_at: float, budget: list[int], timeout: float,
                      statuses: Counter, ok_ms: list[float] | None = None) -> None:
    """Send ``raw`` again as soon as each answer is in, until ``stop_at`` or the shared budget is spent."""
    while time.monotonic() < stop_at and budget[0] > 0:
        budget[0] -= 1
        start = time.perf_counter()
        try:
            status, _ = await asyncio.wait_for(conn.exchange(raw), timeout)
        except asyncio.TimeoutError:
            statuses["timeout"] += 1
            conn.close()
            continue
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            statuses[type(exc).__name__] += 1
            conn.close()
            await asyncio.sleep(0.01)
            continue
        statuses[str(status)] += 1
        if ok_ms is not None and status == 200:
            ok_ms.append((time.perf_counter() - start) * 1000.0)
    conn.close()


# ------------------------------------------------------------------------------------------------ the flood


def flood_requests(kind: str, image: bytes, key: str, flood_body: str) -> bytes:
    if kind == "wrong-key":
        if flood_body == "photo":
            return upload(image, "wrong-" + key)
        return raw_request("POST", "/analyze", {"X-API-Key": "wrong-" + key}, b"")
    if kind == "healthz":
        return raw_request("GET", "/healthz", {})
    if kind == "retry":
        return upload(image, key)
    raise ValueError(kind)


def run_flood(kind: str, host: str, port: int, raw: bytes, connections: int, seconds: float, max_requests: int,
              timeout: float, results: mp.Queue) -> None:
    """In its own process: ``connections`` closed loops for ``seconds``; puts (statuses, ok latencies, seconds,
    this process's CPU seconds)."""
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass

    async def main() -> tuple[Counter, list[float], float]:
        statuses: Counter = Counter()
        ok_ms: list[float] = []
        budget = [max_requests]
        start = time.monotonic()
        stop_at = start + seconds
        await asyncio.gather(*(closed_loop(Connection(host, port, FLOOD_SOURCE), raw, stop_at, budget, timeout,
                                           statuses, ok_ms if kind == "retry" else None) for _ in range(connections)))
        return statuses, ok_ms, time.monotonic() - start

    cpu_start = time.process_time()
    statuses, ok_ms, elapsed = asyncio.run(main())
    results.put((dict(statuses), ok_ms, elapsed, time.process_time() - cpu_start))


# ------------------------------------------------------------------------------------------------ the server


def get_status(host: str, port: int, path: str) -> int | None:
    try:
        with socket.create_connection((host, port), timeout=2) as s:
            s.sendall(raw_request("GET", path, {"Connection": "close"}))
            return int(s.recv(64)[9:12])
    except (OSError, ValueError):
        return None


def start_server(workers: int, env: dict[str, str], access_log: bool, cpus: set[int] | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory", "--host", "127.0.0.1",
               "--port", str(port), "--workers", str(workers), "--log-level", "warning", "--timeout-keep-alive", "5"]
    if not access_log:
        command.append("--no-access-log")
    server = subprocess.Popen(command, env={**os.environ, **env}, cwd=os.getcwd(),
                              preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None,
                              stdout=subprocess.DEVNULL if access_log else None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited ({server.returncode}) while starting")
        # With several workers /readyz answers from whichever accepts: wait for several in a row.
        if all(get_status("127.0.0.1", port, "/readyz") == 200 for _ in range(4 * workers)):
            return server, port
        time.sleep(0.3)
    server.terminate()
    raise SystemExit(f"the server was not ready within {timeout} s")


def start_nginx(binary: str, upstream_port: int, folder: Path, timeout: float = 20.0) -> tuple[subprocess.Popen, int]:
    """deploy/nginx.conf in front of the loopback server: only the upstream, the listen address, the resolver
    (none needed for an address) and the paths change."""
    conf = (REPO / "deploy" / "nginx.conf").read_text()
    port = free_port()
    replacements = [(r"\n\s*resolver [^;]*;", ""), (r"listen 8080;", f"listen 127.0.0.1:{port};"),
                    (r"set \$microfacs_upstream [^;]*;", f"set $microfacs_upstream 127.0.0.1:{upstream_port};")]
    for pattern, value in replacements:
        conf, n = re.subn(pattern, value.replace("\\", "\\\\"), conf)
        if n != 1:
            raise SystemExit(f"deploy/nginx.conf: expected one {pattern!r}")
    paths = "".join(f"  {name}_temp_path {folder / name};\n"
                    for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    conf = conf.replace("http {\n", f"http {{\n{paths}  access_log {folder / 'access.log'};\n", 1)
    (folder / "nginx.conf").write_text(conf)
    folder.chmod(0o755)  # run as root, nginx's workers are another user
    nginx = subprocess.Popen([binary, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-g",
                              f"daemon off; pid {folder / 'nginx.pid'}; error_log {folder / 'error.log'} warn;"])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx.poll() is not None:
            raise SystemExit(f"nginx exited ({nginx.returncode}): {(folder / 'error.log').read_text()[-2000:]}")
        if get_status("127.0.0.1", port, "/readyz") == 200:
            return nginx, port
        time.sleep(0.2)
    nginx.terminate()
    raise SystemExit("nginx did not answer /readyz")


def analysis_totals(port: int) -> dict[str, float] | None:
    """From the server's GET /metrics: /analyze 200s (count and summed seconds, arrival to last byte) and the
    analyzer's own stage seconds and images, to tell waiting (event loop, queue) from a slower analysis."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(raw_request("GET", "/metrics", {"Connection": "close"}))
            text = b"".join(iter(lambda: s.recv(65536), b"")).split(b"\r\n\r\n", 1)[1].decode()
    except (OSError, IndexError):
        return None
    totals = {"requests": 0.0, "request_s": 0.0, "stage_s": 0.0, "images": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            analyze_ok = sample.labels.get("route") == "/analyze" and sample.labels.get("status") == "200"
            if sample.name == "microfacs_request_duration_seconds_count" and analyze_ok:
                totals["requests"] += sample.value
            elif sample.name == "microfacs_request_duration_seconds_sum" and analyze_ok:
                totals["request_s"] += sample.value
            elif sample.name == "microfacs_stage_duration_seconds_sum":
                totals["stage_s"] += sample.value
            elif sample.name == "microfacs_faces_per_image_count":
                totals["images"] += sample.value
    return totals


def machine_busy_seconds() -> float:
    """CPU seconds every core spent busy since boot (/proc/stat: all but idle and iowait)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def server_cpu_seconds(pid: int) -> float:
    """utime + stime of the process and its children (uvicorn's workers), from /proc (Linux)."""
    pids = [pid]
    for child in Path("/proc").glob(f"{pid}/task/*/children"):
        pids += [int(p) for p in child.read_text().split()]
    ticks = 0
    for p in pids:
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------------------------------------- a scenario


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 1) if values else None


def run_scenario(kind: str, port: int, image: bytes, key: str, storm_key: str, args: argparse.Namespace,
                 server_pid: int | None, metrics_port: int | None) -> dict:
    flood, results = None, None
    if kind != "unloaded":
        results = mp.get_context("spawn").Queue()
        raw = flood_requests(kind, image, storm_key if kind == "retry" else key, args.flood_body)
        flood = mp.get_context("spawn").Process(target=run_flood, args=(
            kind, "127.0.0.1", port, raw, args.connections, args.seconds + args.ramp_s, args.max_requests,
            args.timeout, results))
        flood.start()
        time.sleep(args.ramp_s)  # the flood's connections open and reach their pace first
    cpu_before, wall_before = (server_cpu_seconds(server_pid) if server_pid else 0.0), time.monotonic()
    busy_before = machine_busy_seconds()
    totals_before = analysis_totals(metrics_port) if metrics_port else None

    async def good_client() -> tuple[Counter, list[float], float]:
        statuses: Counter = Counter()
        ok_ms: list[float] = []
        start = time.monotonic()
        await closed_loop(Connection("127.0.0.1", port), upload(image, key), start + args.seconds,
                          [args.max_requests], args.timeout, statuses, ok_ms)
        return statuses, ok_ms, time.monotonic() - start

    statuses, ok_ms, elapsed = asyncio.run(good_client())
    wall = time.monotonic() - wall_before
    cpu = (server_cpu_seconds(server_pid) - cpu_before) / wall * 100.0 if server_pid else None
    busy = (machine_busy_seconds() - busy_before) / wall * 100.0
    row = {"scenario": kind, "seconds": round(elapsed, 2), "good_ok_per_s": round(len(ok_ms) / elapsed, 1),
           "good_p50_ms": pct(ok_ms, 50), "good_p99_ms": pct(ok_ms, 99),
           "good_statuses": dict(sorted(statuses.items())),
           "server_cpu_pct": round(cpu) if cpu is not None else None, "machine_busy_pct": round(busy),
           "load_average": round(os.getloadavg()[0], 2)}
    totals_after = analysis_totals(metrics_port) if metrics_port else None
    if totals_before and totals_after:  # every 200 of /analyze in the window, the retry storm's included
        done = {k: totals_after[k] - totals_before[k] for k in totals_after}
        if done["requests"] and done["images"]:
            row.update(server_ms=round(done["request_s"] / done["requests"] * 1000.0, 1),
                       pipeline_ms=round(done["stage_s"] / done["images"] * 1000.0, 1))
    if flood is not None and results is not None:
        flood_statuses, flood_ok_ms, flood_elapsed, flood_cpu = results.get(
            timeout=args.seconds + args.ramp_s + 2 * args.timeout)
        flood.join(timeout=30)
        answered = sum(v for k, v in flood_statuses.items() if k.isdigit())
        row.update(flood_answers_per_s=round(answered / flood_elapsed),
                   flood_cpu_pct=round(flood_cpu / flood_elapsed * 100),
                   flood_statuses=dict(sorted(flood_statuses.items())))
        if kind == "retry":  # the storm's own successes: everyone's 200s, and their latency
            all_ok = flood_ok_ms + ok_ms
            row.update(all_ok_per_s=round(len(flood_ok_ms) / flood_elapsed + len(ok_ms) / elapsed, 1),
                       all_ok_p99_ms=pct(all_ok, 99))
    return row


def print_row(row: dict, base: dict | None) -> None:
    keep = (f"{row['good_ok_per_s'] / base['good_ok_per_s']:.0%}" if base and base["good_ok_per_s"] else "-")
    p99x = (f"{row['good_p99_ms'] / base['good_p99_ms']:.1f}x" if base and row["good_p99_ms"] and base["good_p99_ms"]
            else "-")
    flood = f"{row.get('flood_answers_per_s', '-')!s:>7} {row.get('flood_cpu_pct', '-')!s:>7}"
    extra = (f"  all clients: {row['all_ok_per_s']} ok/s, ok p99 {row['all_ok_p99_ms']} ms"
             if "all_ok_per_s" in row else "")
    inside = f"{row.get('server_ms', '-')!s:>7} {row.get('pipeline_ms', '-')!s:>7}"
    print(f"{row['scenario']:>10} {row['good_ok_per_s']:>7} {keep:>6} {row['good_p50_ms']!s:>8} "
          f"{row['good_p99_ms']!s:>8} {p99x:>6} {row['server_cpu_pct']!s:>6} {row['machine_busy_pct']!s:>6} "
          f"{flood} {inside}  good {row['good_statuses']}"
          f"  flood {row.get('flood_statuses', {})}{extra}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server on 127.0.0.1 (else this script starts one)")
    parser.add_argument("--key", help="the API key of --url's server (else a random one is set on the server)")
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server it starts")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="server environment")
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log (to /dev/null)")
    parser.add_argument("--proxy", choices=("none", "nginx"), default="none", help="deploy/nginx.conf in front")
    parser.add_argument("--nginx", default="nginx", help="the nginx binary for --proxy nginx")
    parser.add_argument("--pin", action="store_true",
                        help="the server on the first half of the CPUs, the clients and nginx on the others (Linux): "
                        "the load generator and the proxy then take no CPU from the server, as on other machines")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data", help="the shared data root")
    parser.add_argument("--image", default="samples/single_face.jpg", help="the photo, relative to --data")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    parser.add_argument("--connections", type=int, default=64, help="flood connections (clients, for retry)")
    parser.add_argument("--flood-body", choices=("empty", "photo"), default="empty",
                        help="what the wrong-key flood uploads")
    parser.add_argument("--seconds", type=float, default=10.0, help="per scenario")
    parser.add_argument("--ramp-s", type=float, default=1.0, help="flood alone before the good client starts")
    parser.add_argument("--max-requests", type=int, default=200_000, help="per scenario, flood and good client each")
    parser.add_argument("--timeout", type=float, default=30.0, help="per request")
    parser.add_argument("--warmup", type=int, default=20, help="good-client requests before the first scenario")
    parser.add_argument("--repeat", type=int, default=1, help="run the scenarios this many times")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    image = (args.data / args.image).read_bytes()
    server, proxy, key = None, None, args.key or secrets.token_urlsafe(24)
    storm_key = key if args.key else secrets.token_urlsafe(24)  # the retry storm's own key (started server)
    server_cpus: set[int] | None = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs two CPUs")
        server_cpus = set(cpus[:len(cpus) // 2])
        os.sched_setaffinity(0, set(cpus[len(cpus) // 2:]))  # this process, its flood processes and nginx
    if args.url:
        parsed = urlparse(args.url)
        if parsed.hostname not in ("127.0.0.1", "localhost") or not parsed.port:
            raise SystemExit("loopback only: --url must be http://127.0.0.1:<port>")
        if not args.key:
            raise SystemExit("--url needs the server's --key")
        port = parsed.port
        metrics_port = None if args.workers > 1 else port  # --workers: what the running server has
    else:
        env = {"MICROFACS_API_KEY": key, "MICROFACS_API_KEYS": json.dumps([storm_key]),
               **dict(item.split("=", 1) for item in args.env)}
        server, port = start_server(args.workers, env, args.access_log, server_cpus)
        metrics_port = None if args.workers > 1 else port  # with several workers a scrape reaches one of them
    folder = tempfile.mkdtemp(prefix="flood-nginx-")
    try:
        if args.proxy == "nginx":
            binary = shutil.which(args.nginx) or args.nginx
            proxy, port = start_nginx(binary, port, Path(folder))
        warm: Counter = Counter()
        asyncio.run(closed_loop(Connection("127.0.0.1", port), upload(image, key), time.monotonic() + 60,
                                [args.warmup], args.timeout, warm))
        if set(warm) != {"200"}:
            raise SystemExit(f"the good client's warm-up was not all 200: {dict(warm)}")
        print(f"/analyze on 127.0.0.1:{port}: {args.image} ({len(image)} bytes), workers "
              f"{args.workers if server else '?'}, env {args.env}, access log {'on' if args.access_log else 'off'}, "
              f"proxy {args.proxy}, server CPUs {sorted(server_cpus) if server_cpus else 'any'}, "
              f"{args.connections} flood connections, wrong-key body {args.flood_body}, {args.seconds:g} s each; "
              f"{os.cpu_count()} CPUs, {platform.platform()}, load average {os.getloadavg()[0]:.2f}")
        print(f"{'scenario':>10} {'ok/s':>7} {'kept':>6} {'p50 ms':>8} {'p99 ms':>8} {'p99 x':>6} {'CPU %':>6} "
              f"{'box %':>6} {'flood/s':>7} {'flood %':>7} {'srv ms':>7} {'pipe ms':>7}  statuses")
        rows: list[dict] = []
        for _ in range(args.repeat):
            base = None
            for kind in args.scenarios.split(","):
                if kind not in SCENARIOS:
                    raise SystemExit(f"unknown scenario {kind!r}")
                row = run_scenario(kind, port, image, key, storm_key, args, server.pid if server else None,
                                   metrics_port)
                base = row if kind == "unloaded" else base
                print_row(row, base)
                rows.append(row)
        if args.json:
            args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items() if k != "key"},
                                             "platform": platform.platform(), "cpus": os.cpu_count(),
                                             "results": rows}, indent=2))
    finally:
        for process in (proxy, server):
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
