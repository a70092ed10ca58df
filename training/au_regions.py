"""The FACS region map moved to ``app/au_regions.py``: the open profile's AU head draws its boxes from it at
serving time, and ``app/`` never imports ``training/``. Re-exported here for the trainers."""
from __future__ import annotations

from app.au_regions import AU_REGIONS, FACS_NAMES, MARGIN, au_boxes, face_box, inter_ocular, region_box

__all__ = ["AU_REGIONS", "FACS_NAMES", "MARGIN", "au_boxes", "face_box", "inter_ocular", "region_box"]
