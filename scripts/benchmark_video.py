"""Video analysis speed and memory: analysed frames per second and peak resident memory of
``VideoAnalyzer.analyze`` (decode, tracking, AU and expression heads, events), one worker, one ONNX thread.

    python -m scripts.benchmark_video                       # a 640x480 30 fps one-face clip, 20 s
    python -m scripts.benchmark_video --seconds 120         # the 120 s clip of the memory goal
    python -m scripts.benchmark_video --clip some.mp4       # any clip

The default clip is made at run time from ``samples/single_face.mp4`` (640x360, 30 fps): its frames are
letterboxed to 640x480 and played forwards and backwards (no cut, so one track) until ``--seconds``;
H.264 in MP4, written to a temporary file and deleted afterwards. Peak RSS is read from the kernel
(``resource.getrusage``, the whole process: models, onnxruntime, PyAV buffers, Python).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import numpy as np

from app.analyzer import Analyzer
from app.settings import Settings
from app.video.analyze import VideoAnalyzer

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MICROFACS_DATA", REPO.parent / "shared" / "data"))


def make_clip(source: Path, seconds: float, path: Path) -> None:
    with av.open(str(source)) as src:
        frames: list[np.ndarray] = [f.to_ndarray(format="bgr24") for f in src.decode(video=0)]
    pad = (480 - frames[0].shape[0]) // 2
    frames = [cv2.copyMakeBorder(f, pad, 480 - f.shape[0] - pad, 0, 0, cv2.BORDER_CONSTANT) for f in frames]
    cycle = frames + frames[-2:0:-1]  # forwards then backwards: a continuous clip
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=30)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.options = {"crf": "23", "preset": "veryfast"}
        for i in range(int(seconds * 30)):
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(cycle[i % len(cycle)]), format="bgr24")
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # kilobytes on Linux


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, help="a video to analyse (default: a clip made from single_face.mp4)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the made clip")
    parser.add_argument("--every", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="ONNX intra-op threads")
    args = parser.parse_args(argv)
    settings = Settings(onnx_threads=args.threads)
    video = VideoAnalyzer(Analyzer(settings))
    rss_models = peak_rss_mib()
    with tempfile.TemporaryDirectory(prefix="microfacs-bench-") as tmp:
        clip = args.clip
        if clip is None:
            source = DATA / "samples" / "single_face.mp4"
            if not source.exists():
                print(f"benchmark_video: {source} is absent (set MICROFACS_DATA)", file=sys.stderr)
                return 2
            clip = Path(tmp) / "clip.mp4"
            make_clip(source, args.seconds, clip)
        # warm-up (first calls of each onnxruntime session), then the measured run
        video.analyze(clip, video.options(every=args.every, max_frames=30))
        start = time.perf_counter()
        result = video.analyze(clip, video.options(every=args.every, series=True))
        seconds = time.perf_counter() - start
    info = result.video
    report = {
        "clip": str(args.clip or f"single_face.mp4 letterboxed to 640x480, {args.seconds:g} s"),
        "resolution": f"{info.width}x{info.height}", "fps": info.fps, "frames": info.frames,
        "analysed_frames": info.analysed_frames, "every": args.every, "onnx_threads": args.threads,
        "tracks": len(result.tracks), "events": sum(len(t.events) for t in result.tracks),
        "seconds": round(seconds, 2), "analysed_frames_per_s": round(info.analysed_frames / seconds, 1),
        "realtime_factor": round(info.duration_s / seconds, 2),
        "peak_rss_mib_after_loading_models": round(rss_models, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
        "ms_per_analysed_frame": {k: round(v / max(info.analysed_frames, 1), 2) for k, v in result.timings_ms.items()},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    print(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
