"""Where the datasets live and how their label files read. Path from MICROFACS_DATA or ../shared/data."""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
RUNS_DIR = REPO_ROOT / "runs"
FERPLUS_CLASSES = ["neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"]
FERPLUS_SPLITS = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}
# CK+ folder names -> FER+ class names
CKPLUS_TO_FERPLUS = {
    "neutral": "neutral", "happy": "happiness", "happiness": "happiness", "surprise": "surprise",
    "sadness": "sadness", "sad": "sadness", "anger": "anger", "angry": "anger", "disgust": "disgust",
    "fear": "fear", "contempt": "contempt",
}


def data_root() -> Path:
    return Path(os.environ.get("MICROFACS_DATA", REPO_ROOT.parent / "shared" / "data")).resolve()


@dataclass(frozen=True)
class FerPlusRow:
    path: Path
    votes: tuple[int, ...]  # 10 numbers: the 8 classes, unknown, not-a-face

    @property
    def majority(self) -> int | None:
        """Index into FERPLUS_CLASSES of the strict plurality, None when unknown/NF win or on a tie."""
        top = max(self.votes)
        winners = [i for i, v in enumerate(self.votes) if v == top]
        if len(winners) != 1 or winners[0] >= len(FERPLUS_CLASSES):
            return None
        return winners[0]


def ferplus_rows(split: str, root: Path | None = None) -> list[FerPlusRow]:
    folder = (root or data_root()) / "ferplus" / FERPLUS_SPLITS[split]
    rows = []
    with (folder / "label.csv").open() as handle:
        for record in csv.reader(handle):
            if len(record) < 12:
                continue
            rows.append(FerPlusRow(folder / record[0], tuple(int(v) for v in record[2:12])))
    return rows


@dataclass(frozen=True)
class CkPlusRow:
    path: Path
    sequence: str
    subject: str
    emotion: str
    is_peak: bool
    aus: dict[str, int]


def ckplus_rows(root: Path | None = None) -> list[CkPlusRow]:
    folder = (root or data_root()) / "ckplus48"
    rows = []
    with (folder / "au_labels.csv").open() as handle:
        for record in csv.DictReader(handle):
            aus = {k: int(v) for k, v in record.items() if k.startswith("AU")}
            rows.append(
                CkPlusRow(folder / record["path"], record["sequence"], record["subject"], record["emotion"],
                          record["is_peak_frame"] == "1", aus)
            )
    return rows

# taiwanese_dev label -> FER+ class (the same expressions under other names; the database has no contempt).
TW_TO_FERPLUS = {"neutral": "neutral", "happy": "happiness", "sad": "sadness", "angry": "anger",
                 "disgust": "disgust", "fear": "fear", "surprise": "surprise"}


@dataclass(frozen=True)
class TaiwaneseRow:
    """One taiwanese_dev photo (VALIDATION ONLY: read to report numbers, never fitted to)."""

    path: Path
    performer: str
    neutral: bool  # performance_type 0: the performer's neutral face
    intended: str  # what the performer was asked to show (the database's names: happy, sad, angry, ...)
    top_vote: str  # what most observers saw


def taiwanese_rows(root: Path | None = None) -> list[TaiwaneseRow]:
    folder = root or data_root() / "taiwanese_dev"
    with (folder / "labels.csv").open(newline="") as handle:
        return [TaiwaneseRow(folder / "images" / r["file"], r["performer"], r["performance_type"] == "0",
                             r["intended"], r["top_vote"]) for r in csv.DictReader(handle)]
