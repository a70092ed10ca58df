"""Box arithmetic on (x0, y0, x1, y1) arrays, shared by the detectors."""
from __future__ import annotations

import numpy as np


def box_areas(box: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """Intersection of ``box`` with each of ``boxes``, the area of ``box``, and the areas of ``boxes``."""
    x0 = np.maximum(box[0], boxes[:, 0])
    y0 = np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[2], boxes[:, 2])
    y1 = np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter, area, areas


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    inter, area, areas = box_areas(box, boxes)
    return inter / np.maximum(area + areas - inter, 1e-9)


def overlap_of_smaller(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    inter, area, areas = box_areas(box, boxes)
    return inter / np.maximum(np.minimum(area, areas), 1e-9)
