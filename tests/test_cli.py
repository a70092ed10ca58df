"""The ``microfacs`` CLI (microfacs_cli/): folders and videos, in-process and against a live server."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from app.table import EXPRESSION_LABELS
from microfacs_cli import output
from microfacs_cli.main import main
from tests.helpers import SAMPLES, encode, requires_data

OPENFACE_HEAD = ["frame", "face_id", "timestamp", "confidence", "success"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def folder(tmp_path_factory, astronaut, cameraman):
    root = tmp_path_factory.mktemp("images")
    (root / "a_astronaut.jpg").write_bytes(encode(astronaut))
    (root / "b_cameraman.png").write_bytes(encode(cameraman, ".png"))
    (root / "c_blank.png").write_bytes(encode(np.full((120, 160, 3), 200, np.uint8), ".png"))
    (root / "d_broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "notes.txt").write_text("ignored")
    return root


def test_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "microfacs_cli", "--help"], capture_output=True, text=True)
    assert done.returncode == 0 and "RADIANS" in done.stdout and "PROBABILITY" in done.stdout


def test_folder_to_csv_in_process(folder, tmp_path, capsys):
    out = tmp_path / "faces.csv"
    code = main([str(folder), "--format", "csv", "-o", str(out), "--render", str(tmp_path / "overlays"),
                 "--progress"])
    assert code == 3, "one image is broken: exit status 3 (some errors), the rest analysed"
    rows = read_csv(out)
    header = list(rows[0].keys())
    assert header[:5] == OPENFACE_HEAD
    assert {"pose_Rx", "pose_Ry", "pose_Rz", "filtered", "filter_reasons"} <= set(header)
    by_file = {}
    for row in rows:
        by_file.setdefault(row["source"].rsplit("/", 1)[-1], []).append(row)
    assert set(by_file) == {"a_astronaut.jpg", "b_cameraman.png", "c_blank.png", "d_broken.jpg"}
    astro = by_file["a_astronaut.jpg"]
    assert len(astro) == 1 and astro[0]["face_id"] == "0" and astro[0]["success"] == "1"
    assert astro[0]["frame"] == "0" and float(astro[0]["confidence"]) > 0.5
    assert abs(float(astro[0]["pose_Ry"])) < 0.5, "radians"
    if any(c.endswith("_c") for c in header):
        assert any(c.endswith("_p") for c in header) and not any(c.endswith("_r") for c in header)
    if "expression" in header:
        assert {f"expr_{label}" for label in EXPRESSION_LABELS} <= set(header)
        assert astro[0]["expression"] in EXPRESSION_LABELS
    blank = by_file["c_blank.png"]
    assert len(blank) == 1 and blank[0]["face_id"] == "" and blank[0]["success"] == "0"
    assert by_file["d_broken.jpg"][0]["filter_reasons"] == "error:invalid_image"
    error = by_file["d_broken.jpg"][0]["error"]
    assert error.startswith("invalid_image: ") and len(error) > len("invalid_image: ") + 5  # the message too
    assert sorted(p.name for p in (tmp_path / "overlays").iterdir()) == [
        "a_astronaut.png", "b_cameraman.png", "c_blank.png"]
    drawn = cv2.imread(str(tmp_path / "overlays" / "a_astronaut.png"))
    assert ((drawn[:, :, 1] > 240) & (drawn[:, :, 0] < 30) & (drawn[:, :, 2] < 30)).sum() > 200
    err = capsys.readouterr().err
    assert "4/4" in err and "1 error(s)" in err


def test_video_to_csv_every_n_frames(tmp_path):
    video = requires_data(SAMPLES / "single_face.mp4")
    out = tmp_path / "video.csv"
    assert main([str(video), "--every", "24", "--max-frames", "3", "--format", "csv", "-o", str(out),
                 "--no-progress", "--render", str(tmp_path / "frames")]) == 0
    rows = read_csv(out)
    assert [r["frame"] for r in rows] == ["0", "24", "48"]  # 0-based, as in the JSON and the events file
    assert [float(r["timestamp"]) for r in rows] == pytest.approx([0.0, 0.8, 1.6], abs=0.01)  # 30 fps
    assert all(r["face_id"] == "0" and r["success"] == "1" for r in rows)
    assert len(list((tmp_path / "frames").glob("single_face_f*.png"))) == 3


def test_second_video_jsonl(tmp_path, capsys):
    """A video is one JSON line: the /analyze-video answer (tracks with their series and events)."""
    video = requires_data(SAMPLES / "WolfgangLanger_Pexels.mp4")
    events = tmp_path / "events.csv"
    assert main([str(video), "--every", "8", "--no-progress", "--events", str(events)]) == 0
    (line,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert line["source"].endswith("WolfgangLanger_Pexels.mp4") and line["video"]["analysed_frames"] == 59
    assert [t["track_id"] for t in line["tracks"]] == [0]
    assert all(f["frame"] % 8 == 0 for f in line["tracks"][0]["frames"])
    rows = read_csv(events)
    assert len(rows) == len(line["tracks"][0]["events"])
    assert all(r["face_id"] == "0" and r["kind"] in ("au", "expression") for r in rows)


def test_video_plot(tmp_path):
    pytest.importorskip("matplotlib", reason='--plot needs matplotlib: pip install "microfacs[plot]"')
    video = requires_data(SAMPLES / "single_face.mp4")
    out = tmp_path / "video.csv"
    assert main([str(video), "--every", "2", "--format", "csv", "-o", str(out), "--no-progress",
                 "--plot", str(tmp_path / "plots")]) == 0
    rows = read_csv(out)
    assert len(rows) == 36 and {r["face_id"] for r in rows} == {"0"}
    assert (tmp_path / "video.events.csv").exists()
    (png,) = (tmp_path / "plots").glob("single_face_track0.png")
    assert png.stat().st_size > 10_000


def test_against_live_server(live_url, folder, tmp_path):
    out = tmp_path / "remote.jsonl"
    assert main([str(folder / "a_astronaut.jpg"), str(folder / "d_broken.jpg"), "--url", live_url,
                 "-o", str(out), "--concurrency", "2", "--no-side-face-filter"]) == 3
    first, second = [json.loads(line) for line in out.read_text().splitlines()]
    assert first["source"].endswith("a_astronaut.jpg") and len(first["faces"]) == 1 and first["request_id"]
    assert second["error"]["code"] == "invalid_image" and second["error"]["status"] == 400


def test_no_server_is_a_clear_error(capsys):
    assert main(["x.jpg", "--url", "http://127.0.0.1:9"]) == 2  # the file is checked first
    assert "no such file" in capsys.readouterr().err


def test_csv_columns_for_action_units_and_expression():
    """The documented AU and expression columns, from a synthetic /analyze-shaped answer."""
    import io

    from tests.test_render import synthetic_result

    result = synthetic_result()
    for face in result["faces"]:
        face["pose"] = {"yaw": 90.0, "pitch": -45.0, "roll": 0.0}
    result["faces"][0]["expression"]["scores"] = {label: 0.0 for label in EXPRESSION_LABELS}
    stream = io.StringIO()
    writer = output.Writer(stream, "csv", with_aus=True, with_expression=True)
    writer.write({"source": "no_face.jpg", "frame": 1, "timestamp": 0.0}, {"faces": []}, None)
    writer.write({"source": "x.jpg", "frame": 2, "timestamp": 0.0}, result, None)
    writer.close()
    rows = list(csv.DictReader(io.StringIO(stream.getvalue())))
    header = list(rows[0])
    assert header[:5] == OPENFACE_HEAD
    assert header.index("AU04_c") < header.index("AU12_c") < header.index("AU45_c") < header.index("AU04_p")
    assert not any(c.endswith("_r") for c in header)
    assert [f"expr_{label}" for label in EXPRESSION_LABELS] == [c for c in header if c.startswith("expr_")]
    assert rows[0]["success"] == "0" and rows[0]["face_id"] == ""
    kept, dropped = rows[1], rows[2]
    assert kept["AU12_c"] == "1" and kept["AU12_p"] == "0.91" and kept["AU04_c"] == "0"
    assert kept["expression"] == "happiness" and kept["expression_confidence"] == "0.93"
    assert float(kept["pose_Ry"]) == pytest.approx(1.5708, abs=1e-3) and float(kept["pose_Rx"]) < 0
    assert dropped["success"] == "0" and dropped["filtered"] == "1" and dropped["filter_reasons"] == "side_face"
    assert dropped["AU12_c"] == "" and dropped["expression"] == ""


def test_merge_combines_endpoints_per_face():
    from microfacs_cli.main import merge

    au = {"faces": [{"face_id": 0, "action_units": [{"au": "AU12"}]}, {"face_id": 1, "action_units": None}],
          "timings_ms": {"detect": 1.0}}
    expr = {"faces": [{"face_id": 0, "expression": {"label": "neutral"}}, {"face_id": 1, "expression": None}],
            "timings_ms": {"detect": 2.0, "expression": 1.0}}
    merged = merge([au, expr])
    assert merged["faces"][0]["expression"]["label"] == "neutral" and merged["faces"][0]["action_units"]
    assert merged["faces"][1].get("expression") is None
    assert merged["timings_ms"] == {"detect": 3.0, "expression": 1.0}


def test_folders_are_searched_recursively_unless_told_not_to(tmp_path, astronaut, capsys):
    (tmp_path / "session" / "day2").mkdir(parents=True)
    (tmp_path / "session" / "top.jpg").write_bytes(encode(astronaut))
    (tmp_path / "session" / "day2" / "deep.jpg").write_bytes(encode(astronaut))
    (tmp_path / "session" / ".hidden").mkdir()
    (tmp_path / "session" / ".hidden" / "skip.jpg").write_bytes(encode(astronaut))
    out = tmp_path / "all.csv"
    assert main([str(tmp_path / "session"), "--format", "csv", "-o", str(out), "--no-progress"]) == 0
    assert sorted(r["source"].rsplit("/", 1)[-1] for r in read_csv(out)) == ["deep.jpg", "top.jpg"]
    assert main([str(tmp_path / "session"), "--no-recursive", "--format", "csv", "-o", str(out),
                 "--no-progress"]) == 0
    assert [r["source"].rsplit("/", 1)[-1] for r in read_csv(out)] == ["top.jpg"]


def test_csv_schema_is_fixed_whatever_the_content(tmp_path, folder):
    """The same columns whether faces were found, none were, or nothing could be analysed at all."""
    headers = []
    for name in ("a_astronaut.jpg", "c_blank.png", "d_broken.jpg"):
        out = tmp_path / f"{name}.csv"
        main([str(folder / name), "--format", "csv", "-o", str(out), "--no-progress"])
        with open(out, newline="") as handle:
            headers.append(next(csv.reader(handle)))
    assert headers[0] == headers[1] == headers[2]
    assert headers[0][-1] == "error" and "AU12_p" in headers[0] and "expr_happiness" in headers[0]


def test_missing_optional_dependency_fails_before_any_work(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    video = requires_data(SAMPLES / "single_face.mp4")
    assert main([str(video), "--plot", "plots", "--no-progress"]) == 2
    captured = capsys.readouterr()
    assert "--plot needs matplotlib" in captured.err and captured.out == ""


def test_video_summary_file_and_per_frame_progress(tmp_path, capsys):
    video = requires_data(SAMPLES / "single_face.mp4")
    out = tmp_path / "clip.csv"
    assert main([str(video), "--every", "4", "--format", "csv", "-o", str(out), "--progress"]) == 0
    (row,) = read_csv(tmp_path / "clip.summary.csv")
    assert row["face_id"] == "0" and row["frames"] == "18"
    assert row["dominant_expression"] in EXPRESSION_LABELS
    assert sum(float(row[f"share_{label}"]) for label in EXPRESSION_LABELS) == pytest.approx(1.0, abs=1e-3)
    assert 0.0 <= float(row["AU12_base_rate"]) <= 1.0 and row["AU43_base_rate"] == ""
    err = capsys.readouterr().err
    assert "18/18" in err, "the bar counts the video's analysed frames"
    assert "mostly appears to show" in err


def test_a_video_with_progress_only_runs_its_heads_beside_the_next_frames(tmp_path, monkeypatch):
    """Counting frames does not need a frame's readings at once: the heads may run on the tracker's threads (the
    same rows as when frames are drawn, which needs each frame's own readings)."""
    from app.video.analyze import VideoAnalyzer

    video = requires_data(SAMPLES / "single_face.mp4")
    asked: list = []
    analyze = VideoAnalyzer.analyze

    def spy(self, *args, **kwargs):
        asked.append(kwargs.get("batch_frames"))
        return analyze(self, *args, **kwargs)

    monkeypatch.setattr(VideoAnalyzer, "analyze", spy)
    rows = {}
    for name, extra in (("drawn", ["--render", str(tmp_path / "frames")]), ("counted", [])):
        out = tmp_path / f"{name}.csv"
        assert main([str(video), "--every", "6", "--format", "csv", "-o", str(out), "--no-progress", *extra]) == 0
        rows[name] = read_csv(out)
    assert asked == [None, 1] and len(rows["counted"]) == 12 and rows["counted"] == rows["drawn"]
    assert all(r["AU12_p"] for r in rows["counted"])
