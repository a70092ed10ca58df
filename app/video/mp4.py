"""MP4/MOV structure checks, run on the spooled upload before FFmpeg opens it.

FFmpeg's mov demuxer reads every box but the media data when it opens a file, and builds one index entry
per sample (24 bytes; more per edit-list entry) before anything can be asked of the stream. Measured
(``scripts/measure_video_limits.py``): a 1.5 KB MP4 whose ``stsz`` declares 20 million samples takes
700 MiB in ``av.open``; a 0.7 MB MP4 whose edit list repeats a 1,000-sample track 60,000 times takes
1.4 GiB and 3.5 s; 20 MiB of 8-byte boxes take 1.4 s to walk. So the file's boxes are walked here first,
in Python, with bounds on each of those:

* top-level boxes: at most ``max_boxes`` (a fragmented MP4 has a few per fragment, a fragment at least one
  frame), and a truncated file (a box running past its end) is reported;
* the bytes FFmpeg parses (every top-level box but ``mdat``/``free``/``skip``/``wide``): at most
  ``max_metadata_bytes``, read into memory and walked (``moov``, ``trak``, ``mdia``, ``minf``, ``stbl``,
  ``edts``, ``moof``, ``traf``), at most ``MAX_NESTED_BOXES`` boxes;
* the index FFmpeg will build: per track, the samples of ``stsz``/``stz2`` (or, for old-style uncompressed
  audio, its chunks split as FFmpeg splits them) and of every ``trun``, times the edit-list entries: at most
  ``max_index_entries``;
* a compressed movie header (``cmov``, zlib: FFmpeg inflates it to whatever size it declares) is refused.

Only the box headers and the few fields named above are read; the media data is never touched.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.errors import ApiError

PAYLOAD_BOXES = {b"mdat", b"free", b"skip", b"wide"}  # top-level boxes FFmpeg skips without parsing
DESCEND = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"moof", b"traf"}
MAX_NESTED_BOXES = 100_000  # boxes walked inside the parsed boxes (a real file has a few hundred)
# FFmpeg splits an old-style uncompressed audio chunk into index entries of at least 160 samples (ADPCM;
# 1024 for PCM): the bound below counts 160.
AUDIO_CHUNK_SPLIT = 160


@dataclass
class _Track:
    handler: bytes = b""
    samples: int = 0  # stsz / stz2 sample_count
    stts: list[tuple[int, int]] = field(default_factory=list)  # the first two (count, delta) entries
    stts_entries: int = 0
    stsc: bytes = b""  # the raw stsc table (first_chunk, samples_per_chunk, description) x n
    chunks: int = 0  # stco / co64 entry_count
    edits: int = 0  # elst entry_count
    fragment_samples: int = 0  # trun sample_count of this track's fragments

    def index_entries(self) -> int:
        """An upper bound of the index entries FFmpeg's ``mov_build_index`` makes for this track."""
        chunked_audio = self.handler == b"soun" and self.stts_entries == 1 and self.stts and self.stts[0][1] == 1
        entries = _audio_chunk_entries(self.stsc, self.chunks) if chunked_audio else self.samples
        return (entries + self.fragment_samples) * max(1, self.edits)


@dataclass(frozen=True)
class Mp4Layout:
    truncated: bool  # a top-level box runs past the end of the file
    top_level_boxes: int
    metadata_bytes: int  # the bytes of the boxes FFmpeg parses
    index_entries: int  # bound of the index FFmpeg builds at open


def _audio_chunk_entries(stsc: bytes, chunks: int) -> int:
    n = len(stsc) // 12
    if not n or not chunks:
        return 0
    table = np.frombuffer(stsc[: n * 12], dtype=">u4").reshape(n, 3).astype(np.int64)
    first = np.clip(table[:, 0], 1, chunks + 1)
    ends = np.append(first[1:], chunks + 1)
    spans = np.clip(ends - first, 0, None)
    per_chunk = -(-table[:, 1] // AUDIO_CHUNK_SPLIT)  # ceil
    return int((spans * np.maximum(per_chunk, 1)).sum())


def _boxes(data: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in data[start:end]; stops at a malformed one (FFmpeg
    judges those)."""
    offset = start
    while offset + 8 <= end:
        size, kind = struct.unpack_from(">I4s", data, offset)
        header = 8
        if size == 1:
            if offset + 16 > end:
                return
            size, header = struct.unpack_from(">Q", data, offset + 8)[0], 16
        elif size == 0:
            size = end - offset
        if size < header or offset + size > end:
            return
        yield kind, offset + header, offset + size
        offset += size


class _Walker:
    def __init__(self) -> None:
        self.tracks: list[_Track] = []
        self.by_id: dict[int, _Track] = {}
        self.boxes = 0

    def walk(self, data: bytes, start: int, end: int, track: _Track | None = None) -> None:
        for kind, body, stop in _boxes(data, start, end):
            self.boxes += 1
            if self.boxes > MAX_NESTED_BOXES:
                raise ApiError(400, "invalid_video", f"the MP4 has more than {MAX_NESTED_BOXES} boxes in its headers")
            if kind == b"cmov":
                raise ApiError(400, "invalid_video", "compressed MP4 movie headers (cmov) are not supported")
            if kind == b"trak":
                track = _Track()
                self.tracks.append(track)
                self.walk(data, body, stop, track)
                track = None
            elif kind in DESCEND:
                self.walk(data, body, stop, track)
            elif track is not None:
                self.field(track, kind, data, body, stop)
            elif kind == b"trun":  # a fragment's run: count it against every track (no tfhd bookkeeping)
                count = _u32(data, body + 4, stop)
                for each in self.tracks:
                    each.fragment_samples += count

    @staticmethod
    def field(track: _Track, kind: bytes, data: bytes, body: int, stop: int) -> None:
        if kind == b"hdlr":
            track.handler = bytes(data[body + 8 : body + 12])
        elif kind in (b"stsz", b"stz2"):
            track.samples = _u32(data, body + 8, stop)
        elif kind == b"stts":
            track.stts_entries = _u32(data, body + 4, stop)
            raw = data[body + 8 : min(stop, body + 8 + 16)]
            track.stts = [struct.unpack_from(">II", raw, i) for i in range(0, len(raw) - 7, 8)]
        elif kind == b"stsc":
            count = _u32(data, body + 4, stop)
            track.stsc = bytes(data[body + 8 : min(stop, body + 8 + 12 * count)])
        elif kind in (b"stco", b"co64"):
            track.chunks = _u32(data, body + 4, stop)
        elif kind == b"elst":
            track.edits = _u32(data, body + 4, stop)


def _u32(data: bytes, offset: int, stop: int) -> int:
    return struct.unpack_from(">I", data, offset)[0] if offset + 4 <= stop else 0


def check_mp4(
    path: str | Path, size: int, *, max_boxes: int, max_metadata_bytes: int, max_index_entries: int
) -> Mp4Layout:
    """Walk an MP4/MOV's boxes (see the module's docstring); raises ``ApiError`` (400 ``invalid_video``, 413
    ``video_too_long``) when a bound is passed. Linear in the number of boxes, and that number is bounded."""
    offset = boxes = metadata = 0
    truncated = False
    parsed: list[bytes] = []
    with open(path, "rb") as fh:
        while offset + 8 <= size:
            boxes += 1
            if boxes > max_boxes:
                raise ApiError(400, "invalid_video", f"the MP4 has more than {max_boxes} top-level boxes")
            fh.seek(offset)
            header = fh.read(16)
            box_size, kind = int.from_bytes(header[:4], "big"), header[4:8]
            if box_size == 1 and len(header) == 16:
                box_size = int.from_bytes(header[8:16], "big")
            elif box_size == 0:  # the last box, to the end of the file
                box_size = size - offset
            if box_size < 8 or offset + box_size > size:
                truncated = True
                break
            if kind not in PAYLOAD_BOXES:
                metadata += box_size
                if metadata > max_metadata_bytes:
                    raise ApiError(
                        400, "invalid_video",
                        f"the MP4's header boxes (moov, moof...) exceed {max_metadata_bytes} bytes",
                    )
                fh.seek(offset)
                parsed.append(fh.read(box_size))
            offset += box_size
    truncated = truncated or offset != size
    walker = _Walker()
    for box in parsed:
        walker.walk(box, 0, len(box))
    entries = sum(track.index_entries() for track in walker.tracks)
    if entries > max_index_entries:
        raise ApiError(
            413, "video_too_long",
            f"the MP4's sample tables declare about {entries} samples; the limit is {max_index_entries}",
        )
    return Mp4Layout(truncated, boxes, metadata, entries)


def max_metadata_bytes(max_frames: int) -> int:
    """The header bytes an MP4 within ``max_frames`` needs, generously: 512 bytes a frame (sample tables of
    all tracks, fragment headers), at least 4 MiB (metadata, cover art)."""
    return max(4 << 20, 512 * max_frames)


def max_index_entries(max_frames: int) -> int:
    """At least a million index entries (24 MB), or 8 per allowed frame."""
    return max(1_000_000, 8 * max_frames)


def max_top_level_boxes(max_frames: int) -> int:
    """A fragmented MP4 has a few top-level boxes per fragment, and a fragment has at least one frame."""
    return 4 * max_frames + 64


__all__ = ["Mp4Layout", "check_mp4", "max_index_entries", "max_metadata_bytes", "max_top_level_boxes"]
