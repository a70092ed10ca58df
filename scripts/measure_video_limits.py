"""Time and peak memory of hostile video uploads through the server's own path
(``VideoAnalyzer.analyze_upload``: spool, MP4 box checks, header probe, packet count, work budget, decode,
tracking, events), each case in a fresh process, at the default settings (GET /version).

    python -m scripts.measure_video_limits                  # every case, a table
    python -m scripts.measure_video_limits --only h264_16000 h264_16000_x2

Each child loads the models, analyses a small clip once (warm-up: PyAV, scipy, the ONNX sessions), resets
the kernel's peak-RSS counter (``/proc/self/clear_refs``), then runs the case (in two threads at once for
the "_x2" rows) and reports VmHWM (the peak resident memory) against the RSS just before, the outcome
(status and error code, or the analysed frame count), the frames the tracker analysed (0: refused before
analysis) and the seconds. The clips are made here with PyAV, small files (a 16000x16000 H.264 frame of
one colour is 0.7 MB); each child is bounded (``--timeout``, 300 s). Linux only. Prints numbers only.

The clip makers are also used by tests/test_video_budget.py.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

REPO = Path(__file__).resolve().parents[1]

# -- clip makers ---------------------------------------------------------------------------------------------


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:  # noqa: BLE001 (PyAV raises UnknownCodecError, ValueError... by version)
        return False
    return True


def write_clip(
    path: Path,
    width: int,
    height: int,
    frames: int,
    fps: int = 30,
    codec: str = "mpeg4",
    container_options: dict[str, str] | None = None,
    codec_options: dict[str, str] | None = None,
    content: Callable[[int], np.ndarray] | None = None,
) -> Path:
    """A clip of ``frames`` frames (grey, or ``content(i)`` as RGB), the container from the suffix (.mp4,
    .mkv, .avi). ``container_options={"live": "1"}`` writes a Matroska file without duration or cues (as a
    live stream or a pipe does)."""
    pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    with av.open(str(path), "w", options=container_options or {}) as out:
        stream = out.add_stream(codec, rate=fps, options=codec_options or {})
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.time_base = Fraction(1, fps)
        grey = av.VideoFrame(width, height, pix_fmt)
        for plane in grey.planes:
            plane.update(bytes([128]) * plane.buffer_size)
        for i in range(frames):
            frame = grey if content is None else av.VideoFrame.from_ndarray(content(i), format="rgb24")
            frame.pts = i
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def h264_huge(path: Path, side: int = 16000) -> Path:
    """One grey ``side`` x ``side`` H.264 frame in MP4 (libx264, ultrafast: ~0.75 MB at 16000, but ~1.5 GB and
    2 s to encode: run it in its own process)."""
    return write_clip(path, side, side, 1, fps=1, codec="libx264",
                      codec_options={"preset": "ultrafast", "tune": "zerolatency", "threads": "1", "crf": "51"})


def shrink_declared_size(path: Path, width: int = 64, height: int = 64) -> Path:
    """Rewrite an H.264 MP4's container sizes (the avc1 sample entry, tkhd) to ``width`` x ``height``, leaving
    the codec's own header (SPS) as it is: a container that lies about the frame size."""
    data = bytearray(path.read_bytes())
    entry = data.index(b"avc1", data.index(b"stsd")) - 4
    struct.pack_into(">HH", data, entry + 32, width, height)
    tkhd = _box(data, b"tkhd")
    end = tkhd + struct.unpack_from(">I", data, tkhd)[0]
    struct.pack_into(">II", data, end - 8, width << 16, height << 16)
    path.write_bytes(data)
    return path


def tiny_boxes(path: Path, mebibytes: float, nested: bool = False) -> Path:
    """``ftyp`` and then 8-byte ``free`` boxes, at the top level or inside one ``moov``."""
    ftyp = struct.pack(">I4s4sI4s4s", 24, b"ftyp", b"isom", 0x200, b"isom", b"mp41")
    body = struct.pack(">I4s", 8, b"free") * int(mebibytes * (1 << 20) / 8)
    if nested:
        body = struct.pack(">I4s", 8 + len(body), b"moov") + body
    path.write_bytes(ftyp + body)
    return path


def _box(data: bytes | bytearray, kind: bytes) -> int:
    return data.index(kind) - 4


def sample_count_bomb(path: Path, samples: int) -> Path:
    """A one-frame MP4 (1.5 KB) whose sample tables declare ``samples`` samples of a constant size: FFmpeg
    builds an index entry for each when it opens the file."""
    data = bytearray(write_clip(path, 16, 16, 1, codec="mpeg4").read_bytes())
    stsz, stts, stsc = _box(data, b"stsz"), _box(data, b"stts"), _box(data, b"stsc")
    struct.pack_into(">II", data, stsz + 12, 100, samples)  # constant sample size, count
    struct.pack_into(">I", data, stts + 16, samples)  # one stts run of `samples`
    struct.pack_into(">I", data, stsc + 20, samples)  # samples per chunk
    path.write_bytes(data)
    return path


def edit_list_bomb(path: Path, frames: int = 1000, edits: int = 60_000, fps: int = 30) -> Path:
    """A 16x16 MP4 of ``frames`` frames whose edit list plays the whole track ``edits`` times: FFmpeg's
    index becomes frames x edits entries when it opens the file."""
    data = bytearray(write_clip(path, 16, 16, frames, fps=fps, codec="mpeg4").read_bytes())
    mvhd = _box(data, b"mvhd")
    version = data[mvhd + 8]
    timescale = struct.unpack_from(">I", data, mvhd + (28 if version else 20))[0]
    span = int(frames / fps * timescale) + 1
    body = struct.pack(">II", 0, edits) + struct.pack(">IiI", span, 0, 0x10000) * edits
    elst = struct.pack(">I4s", 8 + len(body), b"elst") + body
    edts = struct.pack(">I4s", 8 + len(elst), b"edts") + elst
    if b"edts" in data:
        old = _box(data, b"edts")
        removed = struct.unpack_from(">I", data, old)[0]
        del data[old : old + removed]
    else:
        removed = 0
    tkhd = _box(data, b"tkhd")
    insert_at = tkhd + struct.unpack_from(">I", data, tkhd)[0]
    data[insert_at:insert_at] = edts
    delta = len(edts) - removed
    for kind in (b"trak", b"moov"):
        at = _box(data, kind)
        struct.pack_into(">I", data, at, struct.unpack_from(">I", data, at)[0] + delta)
    if _box(data, b"moov") < _box(data, b"mdat"):  # the chunk offsets point past the grown moov
        stco = _box(data, b"stco")
        for k in range(struct.unpack_from(">I", data, stco + 12)[0]):
            at = stco + 16 + 4 * k
            struct.pack_into(">I", data, at, struct.unpack_from(">I", data, at)[0] + delta)
    path.write_bytes(data)
    return path


def avi_index_bomb(path: Path, mebibytes: float) -> Path:
    """A 10-frame MJPEG AVI whose idx1 index repeats its first entry to fill ``mebibytes``."""
    data = bytearray(write_clip(path, 64, 64, 10, codec="mjpeg").read_bytes())
    at = data.index(b"idx1")
    size = struct.unpack_from("<I", data, at + 4)[0]
    entries = data[at + 8 : at + 24] * int(mebibytes * (1 << 20) / 16)
    data = data[:at] + b"idx1" + struct.pack("<I", len(entries)) + entries + data[at + 8 + size :]
    struct.pack_into("<I", data, 4, len(data) - 8)
    path.write_bytes(data)
    return path


def noise(width: int, height: int, seed: int = 0) -> Callable[[int], np.ndarray]:
    """Moving 8x8-block noise: about the hardest content for the decoder at a given size."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
    return lambda i: np.ascontiguousarray(np.roll(base, (3 * i, 5 * i), (0, 1))[:height, :width])


# -- cases ---------------------------------------------------------------------------------------------------


def cases() -> dict[str, tuple[str, Callable[[Path], Path], int, int | None]]:
    """name -> (what, maker(directory) -> clip, threads, every (None: left out))."""
    x264 = has_encoder("libx264")

    def huge(d: Path) -> Path:  # in its own process: the encoder's 1.5 GB stays out of the measured child
        clip = d / "huge.mp4"
        subprocess.run([sys.executable, __file__, "--make-huge", str(clip)], check=True, cwd=REPO)
        return clip

    table: dict[str, tuple[str, Callable[[Path], Path], int, int | None]] = {
        "h264_16000": ("H.264 16000x16000, one frame (0.75 MB)", huge, 1, None),
        "h264_16000_x2": ("the same, two at once", huge, 2, None),
        "h264_16000_as_64": ("the same frame, its MP4 declaring 64x64 (only the SPS says 16000x16000)",
                             lambda d: shrink_declared_size(huge(d)), 1, None),
        "h264_16000_as_64_x2": ("the same, two at once", lambda d: shrink_declared_size(huge(d)), 2, None),
        "mjpeg_8000_avi": ("MJPEG 8000x8000 in AVI, one frame",
                           lambda d: write_clip(d / "m.avi", 8000, 8000, 1, codec="mjpeg"), 1, None),
        "tiny_16_1000fps": ("16x16, 7000 frames at 1000 fps (7 s), every left out",
                            lambda d: write_clip(d / "t.mp4", 16, 16, 7000, fps=1000), 1, None),
        "tiny_16_1000fps_every1": ("the same with every=1",
                                   lambda d: write_clip(d / "t.mp4", 16, 16, 7000, fps=1000), 1, 1),
        "tiny_64_60fps": ("64x64, 7000 frames at 60 fps (117 s), every left out",
                          lambda d: write_clip(d / "t.mp4", 64, 64, 7000, fps=60), 1, None),
        "tiny_64_60fps_every1": ("the same with every=1",
                                 lambda d: write_clip(d / "t.mp4", 64, 64, 7000, fps=60), 1, 1),
        "mkv_no_duration": ("32x32 Matroska without duration, 7000 frames at 30 fps (233 s)",
                            lambda d: write_clip(d / "t.mkv", 32, 32, 7000, container_options={"live": "1"}),
                            1, None),
        "boxes_top_20mib": ("20 MiB of 8-byte top-level MP4 boxes", lambda d: tiny_boxes(d / "b.mp4", 20), 1, None),
        "boxes_top_200mib": ("200 MiB of them (the upload limit)",
                             lambda d: tiny_boxes(d / "b.mp4", 199), 1, None),
        "boxes_moov_3mib": ("3 MiB of 8-byte boxes inside moov",
                            lambda d: tiny_boxes(d / "b.mp4", 3, nested=True), 1, None),
        "stsz_20m_samples": ("1.5 KB MP4 declaring 20 million samples",
                             lambda d: sample_count_bomb(d / "s.mp4", 20_000_000), 1, None),
        "elst_60k_edits": ("1,000-frame MP4 whose edit list repeats it 60,000 times (0.7 MB)",
                           lambda d: edit_list_bomb(d / "e.mp4", 1000, 60_000), 1, None),
        "avi_index_190mib": ("10-frame AVI with a 190 MiB idx1 index",
                             lambda d: avi_index_bomb(d / "i.avi", 190), 1, None),
        "mpeg4_1080p_worst": ("worst allowed size: 1920x1080 noise, MPEG-4, 150 frames, every left out",
                              lambda d: write_clip(d / "w.mp4", 1920, 1080, 150, codec="mpeg4",
                                                   codec_options={"qscale": "2"}, content=noise(1920, 1080)),
                              1, None),
        "mpeg4_1080p_worst_x2": ("the same, two at once",
                                 lambda d: write_clip(d / "w.mp4", 1920, 1080, 150, codec="mpeg4",
                                                      codec_options={"qscale": "2"}, content=noise(1920, 1080)),
                                 2, None),
    }
    if x264:
        def worst_h264(d: Path) -> Path:
            return write_clip(d / "w.mp4", 1920, 1080, 150, codec="libx264", content=noise(1920, 1080),
                              codec_options={"preset": "veryfast", "ref": "16", "bframes": "3", "crf": "18"})

        table["h264_1080p_worst"] = ("worst allowed size: 1920x1080 noise, H.264 ref=16 B-frames, 150 frames",
                                     worst_h264, 1, None)
        table["h264_1080p_worst_x2"] = ("the same, two at once", worst_h264, 2, None)
    else:
        for name in ("h264_16000", "h264_16000_x2", "h264_16000_as_64", "h264_16000_as_64_x2"):
            del table[name]
    return table


# -- the measured child --------------------------------------------------------------------------------------


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(field)


def child(path: Path, threads: int, every: int | None) -> None:
    """Runs in the measured process (``app`` from the checkout on its PYTHONPATH): prints one JSON line."""
    from concurrent.futures import ThreadPoolExecutor

    from app.analyzer import Analyzer
    from app.errors import ApiError
    from app.video import tracking
    from app.video.analyze import VideoAnalyzer

    video = VideoAnalyzer(Analyzer())

    def options():
        try:
            return video.options(every=every, series=False)
        except TypeError:  # a checkout from before `every` could be left out (--repo)
            return video.options(every=every or 1, series=False)

    with tempfile.TemporaryDirectory() as tmp:
        warm = write_clip(Path(tmp) / "warm.mp4", 320, 240, 10)
        with open(warm, "rb") as fh:
            video.analyze_upload(fh, options())
    steps = [0]
    step = tracking.Tracker.step

    def counted(self, *args, **kwargs):
        steps[0] += 1
        return step(self, *args, **kwargs)

    tracking.Tracker.step = counted  # type: ignore[method-assign]
    Path("/proc/self/clear_refs").write_text("5")  # the peak-RSS counter restarts from the current RSS
    before = status_mb("VmRSS")
    start = time.perf_counter()

    def one(_: int) -> str:
        try:
            with open(path, "rb") as fh:
                result = video.analyze_upload(fh, options())
            return f"200 ({result.video.analysed_frames} of {result.video.frames} frames analysed)"
        except ApiError as error:
            return f"{error.status} {error.code}: {error.message[:90]}"

    with ThreadPoolExecutor(threads) as pool:
        outcomes = list(pool.map(one, range(threads)))
    seconds = time.perf_counter() - start
    print(json.dumps({"before_mb": before, "peak_mb": status_mb("VmHWM"), "seconds": seconds,
                      "outcomes": outcomes, "tracker_steps": steps[0]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="case names")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per case")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--every", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repo", type=Path, default=REPO,
                        help="measure the app/ of another checkout (e.g. the commit before a change)")
    parser.add_argument("--make-huge", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_huge:
        h264_huge(args.make_huge)
        return
    if args.child:
        child(args.child, args.threads, args.every)
        return
    print(f"{'case':<24}{'file':>10}{'RSS before':>12}{'peak':>9}{'increase':>10}{'s':>8}{'analysed':>10}  outcome")
    for name, (what, make, threads, every) in cases().items():
        if args.only and name not in args.only:
            continue
        with tempfile.TemporaryDirectory(prefix="microfacs-hostile-") as tmp:
            clip = make(Path(tmp))
            size = clip.stat().st_size
            # run by path with the measured checkout first on PYTHONPATH: its app/ is the one imported
            command = [sys.executable, __file__, "--child", str(clip), "--threads", str(threads)]
            if every is not None:
                command += ["--every", str(every)]
            try:
                run = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=args.timeout,
                                     env={**os.environ, "PYTHONPATH": str(args.repo.resolve())})
            except subprocess.TimeoutExpired:
                print(f"{name:<24}{size / 1024:>8.0f}KB  over {args.timeout:g} s: stopped   {what}")
                continue
        if run.returncode != 0:
            print(f"{name:<24} failed: {run.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(run.stdout.strip().splitlines()[-1])
        outcome = r["outcomes"][0] if len(set(r["outcomes"])) == 1 else " | ".join(r["outcomes"])
        print(f"{name:<24}{size / 1024:>8.0f}KB{r['before_mb']:>10.0f}MB{r['peak_mb']:>7.0f}MB"
              f"{r['peak_mb'] - r['before_mb']:>8.0f}MB{r['seconds']:>8.2f}{r['tracker_steps']:>10}  {outcome}")
        print(f"{'':<24}{what}")


if __name__ == "__main__":
    main()
