"""``microfacs``: analyse images, folders and videos, in-process or against a running server.

    microfacs photo.jpg                                  # in-process (loads the models here), JSON lines
    microfacs photos/ --format csv -o out.csv            # a folder
    microfacs clip.mp4 --every 5 --format csv            # a video, every 5th frame
    microfacs photos/ --url http://localhost:8000        # against a server (the microfacs-client SDK)
    microfacs clip.mp4 --render overlays/                # also write annotated PNGs
    microfacs smiles/ --reference neutral.jpg            # relative to the person's neutral face
    microfacs long.mp4 photos/ --url URL --job -o out.csv  # as background jobs on the server (POST /jobs)
    microfacs session/ --baseline auto --persons who.csv # each person's most neutral faces as their reference

Without ``--url`` the CLI runs the service's own ``app.analyzer.Analyzer`` in this process (frames go to
it as arrays, never re-encoded; the JSON is what the server would answer); with ``--url`` it calls that
server through the microfacs-client SDK.
Column meanings: see ``microfacs_cli/output.py`` (also ``microfacs --help``).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import deque
from collections.abc import Hashable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

import cv2
import numpy as np

from app.heads import OPT_IN, SPECS, TYPED
from app.respond import ENDPOINTS
from microfacs_cli import output, sources
from microfacs_cli.video import write_video, write_video_tables

# The server's image endpoints (app/respond.py ENDPOINTS), by their paths: --endpoint detect-au
ENDPOINT_NAMES = {"auto"} | {path.strip("/") for path in ENDPOINTS}


class Progress:
    """A plain text progress bar on stderr (redrawn at most 10 times a second)."""

    def __init__(self, total: int, enabled: bool, stream: IO[str] | None = None, width: int = 30) -> None:
        self.total, self.enabled, self.stream, self.width = total, enabled, stream or sys.stderr, width
        self.done, self.start, self.last = 0, time.monotonic(), 0.0
        self.counted: dict[str, int] = {}  # units already counted per video, frame by frame

    def count(self, source: str) -> None:
        """One analysed frame of ``source``."""
        self.counted[source] = self.counted.get(source, 0) + 1
        self.update()

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-6)
        rate = self.done / elapsed
        if self.total:
            filled = int(self.width * min(self.done / self.total, 1.0))
            eta = (self.total - self.done) / rate if rate > 0 else 0.0
            text = (f"\r[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                    f"{rate:.1f}/s ETA {eta:.0f}s ")
        else:
            text = f"\r{self.done} done {rate:.1f}/s "
        self.stream.write(text)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            if self.done != self.total:
                self._draw(time.monotonic())
            self.stream.write("\n")
            self.stream.flush()


# CLI endpoint name (the SDK's) -> the heads the in-process analyzer runs for it.
HEADS_OF: dict[str, set[str]] = {e.name: set(e.heads) for e in ENDPOINTS.values()}


class LocalBackend:
    """The service's own Analyzer, in this process."""

    def __init__(self, args: argparse.Namespace, endpoint: str, options: dict[str, Any]) -> None:
        from app.analyzer import Analyzer
        from app.settings import Settings

        # Files are read whole and checked against these limits; video frames arrive decoded.
        settings = Settings(max_upload_bytes=512 * 1024 * 1024, api_key=None, onnx_threads=args.threads)
        self.analyzer = Analyzer(settings)
        self.endpoints = ["analyze" if endpoint == "auto" else endpoint.replace("-", "_")]
        self.heads = HEADS_OF[self.endpoints[0]] | {h for h in OPT_IN if getattr(args, h, False)}
        self.options = self.analyzer.options(**options)
        if getattr(args, "reference", None):  # one person's neutral photo(s): every face is read against them
            reference = self.analyzer.reference(args.reference, side_face_filter=self.options.side_face_filter,
                                                occlusion_filter=self.options.occlusion_filter)
            for warning in reference.warnings:
                print(f"microfacs: reference: {warning}", file=sys.stderr)
            self.options = self.analyzer.with_reference(self.options, reference)
        self.face_references: dict[str, list] = {}  # --baseline auto: source -> one reference per face

    def prepare_baselines(self, stills: list[Path], persons: dict[str, str] | None) -> int:
        """--baseline auto, first pass (``app.baselines``): each face's reading, grouped by person (``persons``: file
        -> person, the largest face of each file; else identity clustering), then each person's most
        neutral-looking faces as their reference. Returns how many people were found."""
        from app.baselines import automatic_baselines

        items = [item for item in sources.iter_items(stills, 1, None) if not item.error]
        named: dict[Hashable, str] | None = None
        if persons is not None:
            named = {}
            for item in items:
                person = persons.get(Path(item.source).name) or persons.get(item.source)
                if person is not None:
                    named[item.source] = person
        references, people = automatic_baselines(self.analyzer, ((item.source, item.payload()) for item in items),
                                                 self.options, named)
        self.face_references.update(references)  # type: ignore[arg-type]
        return people

    def analyse(self, item: sources.Item) -> tuple[dict | None, dict | None, np.ndarray | None]:
        """-> (result, error, decoded image)."""
        import uuid

        from app.errors import ApiError
        from app.respond import analysis_response

        if item.error:
            return None, {"status": 0, "code": "invalid_input", "message": item.error}, None
        try:
            references = self.face_references.get(item.source)
            analysis = self.analyzer.run(item.payload(), self.options, self.heads, references)
        except ApiError as exc:
            return None, {"status": exc.status, "code": exc.code, "message": exc.message}, None
        response = analysis_response(uuid.uuid4().hex, analysis, include_landmarks=False)
        return response.model_dump(mode="json"), None, analysis.image


class RemoteBackend:
    """A MicroFACS server, through the client SDK."""

    def __init__(self, stack: ExitStack, args: argparse.Namespace, endpoint: str, options: dict[str, Any]) -> None:
        from microfacs_client import Client

        self.client = stack.enter_context(Client(args.url, api_key=args.api_key, timeout=args.timeout))
        self.endpoints = choose_endpoints(self.client, endpoint)
        self.options = dict(options)
        if getattr(args, "person", None):
            self.options["person"] = args.person
        elif getattr(args, "reference", None):  # enrolled for this run, forgotten at its end
            person = self.client.create_person(args.reference)
            stack.callback(self.client.delete_person, person.person_id)
            self.options["person"] = person.person_id

    def analyse(self, item: sources.Item) -> tuple[dict | None, dict | None, np.ndarray | None]:
        from microfacs_client import MicroFACSError

        if item.error:
            return None, {"status": 0, "code": "invalid_input", "message": item.error}, None
        payload = item.payload()
        data = payload if isinstance(payload, bytes) else jpeg_bytes(payload)
        try:
            results = [getattr(self.client, name)(data, **self.options).model_dump(exclude_unset=True)
                       for name in self.endpoints]
        except MicroFACSError as exc:
            error = {"status": exc.status, "code": exc.code, "message": exc.message, "request_id": exc.request_id}
            return None, error, None
        return merge(results), None, None


def choose_endpoints(client, wanted: str) -> list[str]:
    """SDK call names to run per image. ``auto``: /analyze when the server has it, else every one of
    /detect-au and /recognize-expression it has (results merged per face), else /detect-faces."""
    if wanted != "auto":
        return [wanted.replace("-", "_")]
    available = client.endpoints()
    if "analyze" in available:
        return ["analyze"]
    parts = [name for name in ("detect_au", "recognize_expression") if name in available]
    return parts or ["detect_faces"]


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Several endpoints' answers for the same image -> one (faces matched by face_id; same face stage)."""
    merged = results[0]
    for other in results[1:]:
        by_id = {f["face_id"]: f for f in other.get("faces", [])}
        for face in merged.get("faces", []):
            extra = by_id.get(face["face_id"], {})
            for key in sorted(SPECS[name].field for name in TYPED):  # what each endpoint adds
                if extra.get(key) is not None:
                    face[key] = extra[key]
        for key, ms in other.get("timings_ms", {}).items():
            merged.setdefault("timings_ms", {})[key] = round(merged["timings_ms"].get(key, 0.0) + ms, 2)
    return merged


def jpeg_bytes(image: np.ndarray) -> bytes:
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise RuntimeError("could not encode a frame")
    return buffer.tobytes()


def decoded(item: sources.Item) -> np.ndarray | None:
    if item.image is not None:
        return item.image
    from app.decode import ImageLimits, decode_image

    if item.data is None:
        return None
    try:
        return decode_image(item.data, ImageLimits(max_bytes=1 << 31, max_pixels=1 << 31, max_side=1 << 16, min_side=1))
    except Exception:
        return None


def render_to(directory: Path, item: sources.Item, result: dict[str, Any], image: np.ndarray | None) -> None:
    from app.render import draw_analysis

    image = image if image is not None else decoded(item)
    if image is None:
        return
    stem = Path(item.source).stem
    name = f"{stem}_f{item.frame:06d}.png" if sources.is_video(Path(item.source)) else f"{stem}.png"
    cv2.imwrite(str(directory / name), draw_analysis(image, result))


def ordered_map(fn, items: Iterator[sources.Item], workers: int) -> Iterator[tuple[sources.Item, Any]]:
    """``fn`` over ``items`` with at most ``workers`` in flight, results in input order."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    window: deque[tuple[sources.Item, Future]] = deque()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for item in items:
            window.append((item, pool.submit(fn, item)))
            if len(window) >= workers:
                done_item, future = window.popleft()
                yield done_item, future.result()
        while window:
            done_item, future = window.popleft()
            yield done_item, future.result()


def run_videos(videos: list[Path], args: argparse.Namespace, backend: Any, options: dict[str, Any],
               writer: output.Writer, render_dir: Path | None, progress: Progress) -> int:
    """Each video whole through the tracker (in-process ``VideoAnalyzer`` or the server's /analyze-video): CSV
    rows per analysed frame and track (``face_id`` = track id), JSON lines per video, events, plots."""
    from microfacs_cli import video as video_out

    if isinstance(backend, LocalBackend):
        video_options = {**options, "baseline": args.baseline} if args.baseline != "none" else options
        runner: Any = video_out.LocalVideoBackend(backend.analyzer, video_options, args.every)
    else:
        runner = video_out.RemoteVideoBackend(backend.client, options, args.every)
    plot_dir = Path(args.plot) if args.plot else None
    if plot_dir:
        plot_dir.mkdir(parents=True, exist_ok=True)
    done: list[tuple[str, dict[str, Any]]] = []
    for path in videos:
        expected = video_units(path, args)
        try:
            result = analyse_video(runner, path, args, render_dir, progress)
        except Exception as exc:  # ApiError in-process, MicroFACSError remote: same fields
            error = {"status": getattr(exc, "status", 0), "code": getattr(exc, "code", "invalid_input"),
                     "message": getattr(exc, "message", str(exc))}
            writer.write({"source": str(path), "frame": 0, "timestamp": 0.0}, None, error)
            progress.update(max(0, expected - progress.counted.pop(str(path), 0)))
            continue
        done.append((str(path), result))
        write_video(writer, str(path), result, args, plot_dir)
        progress.update(max(0, expected - progress.counted.pop(str(path), 0)))
    write_video_tables(done, args)
    return 0


def video_units(path: Path, args: argparse.Namespace) -> int:
    """The progress bar's units for one video: the frames it will analyse (from its header)."""
    frames = sources.video_info(path)[0]
    n = (frames + args.every - 1) // args.every if frames else 1
    return max(1, min(n, args.max_frames) if args.max_frames else n)


def analyse_video(runner: Any, path: Path, args: argparse.Namespace, render_dir: Path | None,
                  progress: Progress | None = None) -> dict[str, Any]:
    """One video; in-process, the progress bar moves with each analysed frame."""
    local = hasattr(runner, "video")
    if local:
        from dataclasses import replace

        from app.render import draw_analysis
        from app.video.analyze import frame_out

        def step(frame: int, t: float, image: np.ndarray, seen: list) -> None:
            if progress is not None:
                progress.count(str(path))
            if render_dir is None:
                return
            faces = [{"face_id": track_id, **frame_out(record).model_dump(mode="json")} for track_id, record in seen]
            for face in faces:
                face["action_units"] = None  # boxes and ids only: per-frame AU boxes are not kept for videos
            cv2.imwrite(str(render_dir / f"{path.stem}_f{frame:06d}.png"), draw_analysis(image, {"faces": faces}))

        options = replace(runner.options, max_frames=args.max_frames)
        # Progress only counts frames: the heads may run beside the next frames. Drawing needs each frame's own.
        batch = None if render_dir is not None else runner.video.batch_frames
        return runner.video.analyze(path, options, on_frame=step, batch_frames=batch).model_dump(mode="json")
    return runner.analyse(path)


def check_dependencies(args: argparse.Namespace) -> str | None:
    """What an option needs that is not installed, before any work starts (else None)."""
    import importlib.util

    needs = []
    if args.plot:
        needs.append(("matplotlib", "--plot", "microfacs[plot]"))
    if args.url:
        needs.append(("microfacs_client", "--url", "./clients/python"))
    for module, option, package in needs:
        if importlib.util.find_spec(module) is None:
            return f'{option} needs {module}: pip install "{package}"'
    return None


def read_persons(path: Path) -> dict[str, str]:
    """--persons: file -> person, from a CSV with columns ``file`` and ``person``."""
    import csv

    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"file", "person"} <= set(reader.fieldnames):
            raise ValueError(f"{path} needs the columns file,person")
        return {row["file"]: row["person"] for row in reader if row["file"] and row["person"]}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="microfacs",
        description="Faces, FACS Action Units and the expression a face appears to show, for images, folders "
                    "and videos; in-process (default) or against a MicroFACS server (--url).",
        epilog="CSV: one row per face with OpenFace-style columns: frame, face_id, timestamp, confidence, success, "
               "pose_Rx/Ry/Rz in RADIANS (Rx=pitch, Ry=yaw, Rz=roll), AUxx_c (present 0/1) and AUxx_p "
               "(PROBABILITY, not OpenFace's 0-5 intensity _r), expression, expression_confidence, "
               "expr_<label>, filtered, filter_reasons. A frame without a face gets one row with success=0.",
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders of images/videos, or video files")
    parser.add_argument("--url", help="a MicroFACS server (e.g. http://localhost:8000); default: in-process")
    parser.add_argument("--endpoint", default="auto", choices=sorted(ENDPOINT_NAMES),
                        help="auto: /analyze if available, else AUs and expression merged, else faces only")
    parser.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    parser.add_argument("-o", "--output", help="file to write (default: stdout)")
    parser.add_argument("--every", type=int, default=1, help="videos: analyse every Nth frame (default 1)")
    parser.add_argument("--max-frames", type=int, help="videos: at most this many analysed frames per video")
    parser.add_argument("--render", metavar="DIR", help="also write annotated PNGs here")
    parser.add_argument("--events", metavar="FILE", help="videos: write their events (CSV) here "
                        "(default with -o: beside it, <output>.events.csv)")
    parser.add_argument("--summary", metavar="FILE", help="videos: write one row per track (share of time of each "
                        "expression, AU base rates, events by kind) here (default with -o: <output>.summary.csv)")
    parser.add_argument("--no-recursive", action="store_true", help="folders: do not look into their subfolders")
    parser.add_argument("--plot", metavar="DIR", help="videos: a PNG timeline per track here (needs matplotlib)")
    parser.add_argument("--no-side-face-filter", action="store_true", help="analyse side faces too")
    parser.add_argument("--no-occlusion-filter", action="store_true", help="analyse occluded faces too")
    parser.add_argument("--max-faces", type=int, help="at most this many faces per image")
    parser.add_argument("--min-face-size", type=int, help="pixels")
    parser.add_argument("--prior", choices=["balanced", "ferplus"],
                        help="class prior of the expression scores (default: the server's / the setting's)")
    for name in OPT_IN:  # the opt-in heads (app/heads.py SPECS): --blendshapes (bs_<name> columns), --gaze
        parser.add_argument(f"--{name}", action="store_true", help=f"{SPECS[name].help} (in-process)")
    parser.add_argument("--reference", nargs="+", metavar="PHOTO",
                        help="neutral photo(s) of the one person in the inputs: AUs and expression are read relative "
                             "to them (with --url: enrolled for the run, then deleted)")
    parser.add_argument("--person", help="with --url: an enrolled person's id (POST /persons) as the reference")
    parser.add_argument("--baseline", choices=["none", "auto"], default="none",
                        help="auto (in-process): images: group the faces by person and read each face relative to "
                             "its person's most neutral-looking faces (two passes over the images); videos: each "
                             "track relative to its own most neutral-looking frames")
    parser.add_argument("--persons", metavar="CSV",
                        help="with --baseline auto: a CSV with columns file,person (the largest face of each file "
                             "is that person); without it, faces are grouped by identity clustering")
    parser.add_argument("--job", action="store_true",
                        help="with --url: send each video, and each folder's images as one zip, to the server's "
                             "POST /jobs (background jobs; progress per job on stderr), then write their results "
                             "as usual; Ctrl-C cancels the unfinished jobs")
    parser.add_argument("--poll", type=float, default=1.0, help="--job: seconds between progress reads (default 1)")
    parser.add_argument("--api-key", help="sent as X-API-Key (default: $MICROFACS_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request (--url)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests in flight (--url; default 2)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX threads per model (in-process)")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", help="always show the progress bar (stderr)")
    bar.add_argument("--no-progress", action="store_true", help="never show it (default: when stderr is a terminal)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    if args.every < 1:
        print("microfacs: --every must be at least 1", file=sys.stderr)
        return 2
    missing_dependency = check_dependencies(args)
    if missing_dependency:
        print(f"microfacs: {missing_dependency}", file=sys.stderr)
        return 2
    paths = sources.expand(args.inputs, recursive=not args.no_recursive)
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"microfacs: no such file: {missing[0]}", file=sys.stderr)
        return 2
    if not paths:
        print("microfacs: no images or videos found", file=sys.stderr)
        return 2
    if args.baseline == "auto" and (args.url or args.reference or args.person):
        print("microfacs: --baseline auto runs in-process and replaces --reference/--person", file=sys.stderr)
        return 2
    if args.job:
        from microfacs_cli.jobs import conflicts

        problem = conflicts(args)
        if problem:
            print(f"microfacs: {problem}", file=sys.stderr)
            return 2
    if args.person and not args.url:
        print("microfacs: --person names a server's enrolled person: give --url too (or --reference)", file=sys.stderr)
        return 2
    persons = None
    if args.persons:
        try:
            persons = read_persons(Path(args.persons))
        except (OSError, ValueError) as exc:
            print(f"microfacs: --persons: {exc}", file=sys.stderr)
            return 2
    render_dir = Path(args.render) if args.render else None
    if render_dir:
        render_dir.mkdir(parents=True, exist_ok=True)
    options = {k: v for k, v in dict(
        side_face_filter=False if args.no_side_face_filter else None,
        occlusion_filter=False if args.no_occlusion_filter else None,
        max_faces=args.max_faces, min_face_size=args.min_face_size, prior=args.prior).items() if v is not None}
    local = not args.url
    with ExitStack() as stack:
        try:
            backend: Any = (LocalBackend(args, args.endpoint, options) if local
                       else RemoteBackend(stack, args, args.endpoint, options))
        except ImportError as exc:
            print(f"microfacs: {exc}: the CLI needs the client SDK too: pip install ./clients/python", file=sys.stderr)
            return 1
        except Exception as exc:  # no server, models missing, invalid options, ...
            print(f"microfacs: cannot start: {getattr(exc, 'message', exc)}", file=sys.stderr)
            return 1
        endpoints = ["jobs (as analyze)"] if args.job else backend.endpoints  # a job reads AUs and expression
        stream = stack.enter_context(open(args.output, "w", newline="")) if args.output else sys.stdout
        writer = output.Writer(stream, args.format,
                               with_aus=args.job or any("au" in HEADS_OF.get(e, ()) for e in endpoints),
                               with_expression=args.job or any("expression" in HEADS_OF.get(e, ())
                                                               for e in endpoints),
                               with_blendshapes=args.blendshapes, with_gaze=args.gaze)
        show = args.progress or (not args.no_progress and sys.stderr.isatty())
        if args.job:
            from microfacs_cli.jobs import run_jobs

            run_jobs(backend.client, args, writer, show)
            writer.close()
            return finish(writer, endpoints)
        videos = [p for p in paths if sources.is_video(p)]
        stills = [p for p in paths if not sources.is_video(p)]
        if args.baseline == "auto":
            from app.manifest import ModelError

            try:
                people = backend.prepare_baselines(stills, persons)
            except ModelError as exc:
                print(f"microfacs: --baseline auto without --persons needs the identity model: {exc}", file=sys.stderr)
                return 1
            print(f"microfacs: automatic baselines for {people} person(s)", file=sys.stderr)
        progress = Progress(len(stills) + sum(video_units(p, args) for p in videos), show)
        if videos:
            code = run_videos(videos, args, backend, options, writer, render_dir, progress)
            if code:
                return code
        items = sources.iter_items(stills, args.every, args.max_frames)
        workers = 1 if local else max(1, args.concurrency)
        for item, (result, error, image) in ordered_map(backend.analyse, items, workers):
            meta = {"source": item.source, "frame": item.frame, "timestamp": item.timestamp}
            writer.write(meta, result, error)
            if render_dir and result is not None:
                render_to(render_dir, item, result, image)
            progress.update()
        writer.close()
        progress.close()
    return finish(writer, endpoints)


def finish(writer: output.Writer, endpoints: list[str]) -> int:
    print(f"microfacs: {writer.images} image(s)/frame(s), {writer.faces} face(s), {writer.errors} error(s); "
          f"endpoint(s): {', '.join(endpoints)}", file=sys.stderr)
    return 0 if writer.errors == 0 else 3


if __name__ == "__main__":
    sys.exit(main())
