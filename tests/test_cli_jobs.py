"""``microfacs INPUTS --url URL --job`` against the live server: a video and a folder of images (one zip) as jobs,
written as the CLI's usual CSV (the same rows as without --job), events and summary files, per-job progress on
stderr; a failed job's error row; options POST /jobs does not take are refused before anything is sent."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from microfacs_cli.main import main
from tests.helpers import SAMPLES, encode, requires_data


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def inputs(tmp_path, astronaut, cameraman):
    video = tmp_path / "clip.mp4"
    shutil.copy(requires_data(SAMPLES / "single_face.mp4"), video)
    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "a_astronaut.jpg").write_bytes(encode(astronaut))
    (folder / "sub" / "b_cameraman.png").write_bytes(encode(cameraman, ".png"))
    (folder / "c_broken.jpg").write_bytes(b"\xff\xd8\xff not a jpeg")
    loose = tmp_path / "loose.jpg"
    loose.write_bytes(encode(astronaut))
    return [str(video), str(folder), str(loose)]


def test_video_and_folder_as_jobs_give_the_usual_outputs(live_url, inputs, tmp_path, capsys):
    out = tmp_path / "jobs.csv"
    code = main([*inputs, "--url", live_url, "--job", "--every", "4", "--format", "csv", "-o", str(out),
                 "--progress", "--poll", "0.2"])
    err = capsys.readouterr().err
    assert code == 3, err  # the broken image is an error row
    assert err.count(" submitted") == 3  # the video, the folder (one zip), the loose image (another)
    assert "18/18 frames" in err and "3/3 images" in err and "1/1 images" in err and "done" in err
    rows = read_csv(out)
    video_rows = [r for r in rows if r["source"].endswith("clip.mp4")]
    assert [r["frame"] for r in video_rows] == [str(i) for i in range(0, 72, 4)]
    assert {r["face_id"] for r in video_rows} == {"0"} and all(r["AU12_p"] for r in video_rows)
    images = [r for r in rows if not r["source"].endswith("clip.mp4")]
    assert [r["source"].split("/")[-1] for r in images] == ["a_astronaut.jpg", "c_broken.jpg", "b_cameraman.png",
                                                            "loose.jpg"]
    assert [r["frame"] for r in images] == ["0", "1", "2", "3"]  # as without --job: the input order
    assert images[1]["error"].startswith("invalid_image") and images[0]["expression"] and not images[0]["error"]
    (summary,) = read_csv(tmp_path / "jobs.summary.csv")
    assert summary["source"].endswith("clip.mp4") and summary["analysed_frames"] == "18"
    assert (tmp_path / "jobs.events.csv").read_text().startswith("source,face_id,kind")

    plain = tmp_path / "plain.csv"
    assert main([*inputs, "--url", live_url, "--every", "4", "--format", "csv", "-o", str(plain)]) == 3
    expected = read_csv(plain)
    assert list(expected[0]) == list(rows[0])  # the same columns
    key = lambda r: (r["source"], r["frame"], r["face_id"], r["success"], r["filtered"])  # noqa: E731
    assert [key(r) for r in expected] == [key(r) for r in rows]
    for a, b in zip(expected, rows):
        if a["AU12_p"]:
            assert float(a["AU12_p"]) == pytest.approx(float(b["AU12_p"]), abs=1e-3)


def test_failed_job_is_an_error_line(live_url, tmp_path, capsys):
    data = requires_data(SAMPLES / "single_face.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 3])
    out = tmp_path / "out.jsonl"
    assert main([str(cut), "--url", live_url, "--job", "--poll", "0.2", "-o", str(out)]) == 3
    (line,) = [json.loads(text) for text in out.read_text().splitlines()]
    assert line["source"].endswith("cut.mp4") and line["error"]["code"] and line["error"]["job_id"]
    assert "failed" in capsys.readouterr().err


@pytest.mark.parametrize("extra, says", [([], "give --url"), (["--url", "http://127.0.0.1:9", "--render", "x"],
                                                              "--render is not an option of POST /jobs"),
                                         (["--url", "http://127.0.0.1:9", "--endpoint", "detect-faces"], "--endpoint")])
def test_job_refuses_what_post_jobs_does_not_take(tmp_path, astronaut, capsys, extra, says):
    photo = tmp_path / "a.jpg"
    photo.write_bytes(encode(astronaut))
    assert main([str(photo), "--job", *extra]) == 2
    assert says in capsys.readouterr().err
