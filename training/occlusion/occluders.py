"""Synthetic occluders drawn onto aligned grey face crops, with per-region occlusion labels.

Regions (the order of the occlusion model's outputs) are masks built per image from the cached
MediaPipe mesh landmarks in crop pixels:

* ``eyes``  - both eye contours, enlarged 1.4x (2x vertically, to include the lids) about their centres
* ``nose``  - hull of the nose from below the bridge (197) to the alae and subnasale
* ``mouth`` - outer lip contour, enlarged 1.25x
* ``brows`` - both brow hulls, enlarged 1.3x (1.8x vertically: brow plus the skin just above/below)

Label rule: a pixel is *covered* where the occluders' combined alpha is > 0.5; a region is occluded
when >= ``POSITIVE_FRACTION`` (0.30) of its mask is covered and clean when < ``NEGATIVE_FRACTION``
(0.15); between the two the label is ambiguous and the trainer ignores it (weight 0). Evaluation uses
the plain >= 0.30 rule.

Occluder families (``TRAIN_FAMILIES``): hand (skin-toned palm + finger bars), bar, scarf (lower-face
band), sunglasses, mask (surgical/cloth), texture (noise, stripes, checks, flat) and real_patch
(patches of scikit-image photos ``TRAIN_IMAGES`` and of other FER+ crops, rotated so no face part
lands in its own place). ``heldout_patch`` (irregular polygons cut from ``HELDOUT_IMAGES``, which no
training sample sees) exists only for evaluation.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

REGIONS = ("eyes", "nose", "mouth", "brows")
POSITIVE_FRACTION = 0.30
NEGATIVE_FRACTION = 0.15
COVER_ALPHA = 0.5

RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_BROW = [70, 63, 105, 66, 107, 55, 65, 52, 53, 46]
LEFT_BROW = [300, 293, 334, 296, 336, 285, 295, 282, 283, 276]
NOSE = [197, 195, 5, 4, 1, 19, 94, 2, 98, 327, 64, 294, 129, 358, 48, 278, 102, 331]
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
CHIN = 152

TRAIN_IMAGES = ("coffee", "chelsea", "rocket", "brick", "grass", "immunohistochemistry", "colorwheel")
HELDOUT_IMAGES = ("camera", "coins", "moon", "page", "text", "clock", "gravel", "hubble_deep_field",
                  "horse", "cell", "retina")


# ----------------------------------------------------------------------------------------- regions
def _scaled_hull(points: np.ndarray, sx: float, sy: float) -> np.ndarray:
    centre = points.mean(0)
    scaled = (points - centre) * np.array([sx, sy]) + centre
    return cv2.convexHull(np.round(scaled * 16).astype(np.int32))


def region_masks(landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """(4, size, size) bool masks in ``REGIONS`` order from (468, 2) crop-pixel landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    masks = np.zeros((len(REGIONS), size, size), np.uint8)
    shapes = {
        "eyes": [_scaled_hull(lm[RIGHT_EYE], 1.4, 2.0), _scaled_hull(lm[LEFT_EYE], 1.4, 2.0)],
        "nose": [_scaled_hull(lm[NOSE], 1.0, 1.0)],
        "mouth": [_scaled_hull(lm[LIPS], 1.25, 1.25)],
        "brows": [_scaled_hull(lm[RIGHT_BROW], 1.3, 1.8), _scaled_hull(lm[LEFT_BROW], 1.3, 1.8)],
    }
    for k, name in enumerate(REGIONS):
        for hull in shapes[name]:
            cv2.fillConvexPoly(masks[k], hull, 1, lineType=cv2.LINE_8, shift=4)
    return masks.astype(bool)


def coverage_fractions(masks: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    covered = alpha > COVER_ALPHA
    return np.array([covered[m].mean() if m.any() else 0.0 for m in masks], np.float32)


def labels_from_fractions(fractions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(labels, weights): 1 where >= 0.30 covered, 0 where < 0.15, weight 0 in between."""
    labels = (fractions >= POSITIVE_FRACTION).astype(np.float32)
    weights = ((fractions >= POSITIVE_FRACTION) | (fractions < NEGATIVE_FRACTION)).astype(np.float32)
    return labels, weights


# ------------------------------------------------------------------------------------ geometry
@dataclass
class FaceGeometry:
    landmarks: np.ndarray
    size: int
    eye_r: np.ndarray
    eye_l: np.ndarray
    eye_width: float
    iod: float
    nose: np.ndarray
    mouth: np.ndarray
    brows: np.ndarray
    chin: np.ndarray
    face_grey: float

    @classmethod
    def from_landmarks(cls, landmarks: np.ndarray, crop: np.ndarray) -> FaceGeometry:
        lm = np.asarray(landmarks, dtype=np.float64)
        eye_r, eye_l = lm[RIGHT_EYE].mean(0), lm[LEFT_EYE].mean(0)
        eye_width = float(np.linalg.norm(lm[33] - lm[133]) + np.linalg.norm(lm[362] - lm[263])) / 2
        hull = cv2.convexHull(np.round(lm[FACE_OVAL]).astype(np.int32))
        face = np.zeros(crop.shape[:2], np.uint8)
        cv2.fillConvexPoly(face, hull, 1)
        grey = float(np.median(crop[face > 0])) if face.any() else float(np.median(crop))
        return cls(lm, crop.shape[0], eye_r, eye_l, max(eye_width, 4.0), float(np.linalg.norm(eye_l - eye_r)),
                   lm[NOSE].mean(0), lm[LIPS].mean(0), np.vstack([lm[RIGHT_BROW], lm[LEFT_BROW]]).mean(0),
                   lm[CHIN], grey)

    def anchor(self, rng: np.random.Generator) -> np.ndarray:
        """A point to centre an occluder on: a region centre (mostly) or anywhere on the face."""
        choice = rng.integers(0, 7)
        if choice < 5:
            base = [self.eye_r, self.eye_l, self.nose, self.mouth, self.brows][choice]
        elif choice == 5:
            base = (self.eye_r + self.eye_l) / 2
        else:
            base = rng.uniform(0.05, 0.95, 2) * self.size
        return base + rng.normal(0, 0.12 * self.iod, 2)


# ----------------------------------------------------------------------------------- helpers
def _between(rng: np.random.Generator, a: float, b: float) -> float:
    """Uniform between a and b in either order (odd landmarks can swap the ends)."""
    return float(rng.uniform(min(a, b), max(a, b)))


def _soft(mask: np.ndarray, rng: np.random.Generator, lo: float = 0.4, hi: float = 2.0) -> np.ndarray:
    alpha: np.ndarray = mask.astype(np.float32)
    sigma = rng.uniform(lo, hi)
    if sigma > 0.3:
        alpha = cv2.GaussianBlur(alpha, (0, 0), sigma)
    return alpha


def _lowfreq(rng: np.random.Generator, size: int, amp: float, scale: float) -> np.ndarray:
    small = max(2, int(size / scale))
    noise = rng.normal(0, 1, (small, small)).astype(np.float32)
    return cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC) * amp


def _gradient(rng: np.random.Generator, size: int, amp: float) -> np.ndarray:
    theta = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    return (np.cos(theta) * xx + np.sin(theta) * yy) * 2 * amp


def _random_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    kind = rng.integers(0, 5)
    base = rng.uniform(0, 255)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 0:  # fine or coarse noise
        tex = base + _lowfreq(rng, size, rng.uniform(10, 60), rng.uniform(1, 12))
    elif kind == 1:  # stripes
        theta, period = rng.uniform(0, np.pi), rng.uniform(3, 16)
        phase = (np.cos(theta) * xx + np.sin(theta) * yy) * 2 * np.pi / period
        tex = base + rng.uniform(20, 90) * np.sign(np.sin(phase)) * (rng.random() < 0.5) \
            + rng.uniform(20, 90) * np.sin(phase) * (rng.random() < 0.5)
    elif kind == 2:  # checks
        period = rng.uniform(4, 16)
        tex = base + rng.uniform(30, 100) * (((xx // period) + (yy // period)) % 2 - 0.5)
    elif kind == 3:  # flat
        tex = np.full((size, size), base, np.float32)
    else:  # salt and pepper-ish
        tex = np.where(rng.random((size, size)) < 0.5, rng.uniform(0, 90), rng.uniform(150, 255)).astype(np.float32)
    return np.clip(tex + _gradient(rng, size, rng.uniform(0, 30)), 0, 255).astype(np.float32)


def _random_shape(rng: np.random.Generator, size: int, centre: np.ndarray, scale: float,
                  irregular: bool = False) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    kind = 3 if irregular else rng.integers(0, 3)
    c = tuple(int(v) for v in np.round(centre))
    if kind == 0:
        axes = (max(2, int(scale * rng.uniform(0.3, 0.9))), max(2, int(scale * rng.uniform(0.2, 0.8))))
        cv2.ellipse(mask, c, axes, rng.uniform(0, 180), 0, 360, 1, -1)
    elif kind == 1:
        box = ((float(centre[0]), float(centre[1])), (scale * rng.uniform(0.5, 1.8), scale * rng.uniform(0.4, 1.4)),
               float(rng.uniform(-30, 30) if rng.random() < 0.7 else rng.uniform(0, 180)))
        cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    elif kind == 2:
        n = rng.integers(3, 7)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = scale * rng.uniform(0.3, 0.9, n)
        pts = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
        cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    else:  # irregular (non-convex) polygon, held-out family
        n = rng.integers(5, 11)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = scale * rng.uniform(0.25, 1.0, n)
        pts = centre + np.stack([np.cos(angles) * radii, np.sin(angles) * radii], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    return mask


# ---------------------------------------------------------------------------------- families
def hand(rng, geo: FaceGeometry, ctx):
    size = geo.size
    centre = geo.anchor(rng)
    theta = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-direction[1], direction[0]])
    iod = geo.iod
    a, b = iod * rng.uniform(0.4, 0.75), iod * rng.uniform(0.3, 0.55)  # palm half-axes
    palm_c = centre - direction * a * rng.uniform(0.2, 0.9)
    mask = np.zeros((size, size), np.uint8)
    cv2.ellipse(mask, tuple(int(v) for v in np.round(palm_c)), (int(a), int(b)), np.degrees(theta), 0, 360, 1, -1)
    fingers = rng.integers(2, 6)
    thick = max(2, int(iod * rng.uniform(0.13, 0.22)))
    spread = np.linspace(-1, 1, fingers) * b * rng.uniform(0.5, 0.9)
    for k, off in enumerate(spread):
        length = iod * rng.uniform(0.45, 1.0) * (0.8 if k in (0, fingers - 1) else 1.0)
        bend = rng.normal(0, 0.15)
        d = direction * np.cos(bend) + normal * np.sin(bend)
        start = palm_c + normal * off + direction * a * 0.5
        end = start + d * length
        cv2.line(mask, tuple(int(v) for v in start), tuple(int(v) for v in end), 1, thick, cv2.LINE_8)
    if rng.random() < 0.5:  # the arm or wrist leaving the crop
        end = palm_c - direction * size
        cv2.line(mask, tuple(int(v) for v in palm_c), tuple(int(v) for v in end), 1, int(b * 1.4), cv2.LINE_8)
    tone = np.clip(geo.face_grey * rng.uniform(0.75, 1.3) + rng.normal(0, 12), 30, 240)
    content = tone + _gradient(rng, size, rng.uniform(5, 30)) + _lowfreq(rng, size, rng.uniform(2, 8), 8)
    shade = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(1.5, 3.0))
    content = content * (0.8 + 0.2 * shade)  # darker rims and finger gaps
    return _soft(mask, rng, 0.5, 1.8), content


def bar(rng, geo: FaceGeometry, ctx):
    size = geo.size
    centre = geo.anchor(rng)
    angle = rng.normal(0, 8) if rng.random() < 0.7 else rng.uniform(0, 180)
    length = geo.iod * rng.uniform(0.6, 3.0)
    thick = geo.iod * rng.uniform(0.15, 0.6)
    box = ((float(centre[0]), float(centre[1])), (length, thick), float(angle))
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    if rng.random() < 0.6:
        level = rng.uniform(0, 50) if rng.random() < 0.6 else rng.uniform(0, 255)
        content = np.full((size, size), level, np.float32) + _lowfreq(rng, size, rng.uniform(0, 6), 6)
    else:
        content = _random_texture(rng, size)
    return _soft(mask, rng, 0.0, 1.2), content


def scarf(rng, geo: FaceGeometry, ctx):
    size = geo.size
    # top edge anywhere between the nose middle and the lower lip
    top = _between(rng, geo.nose[1] - 0.1 * geo.iod, geo.mouth[1] + 0.25 * geo.iod)
    xs = np.linspace(-5, size + 5, 12)
    tilt = rng.normal(0, 0.12)
    ys = top + tilt * (xs - size / 2) + np.cumsum(rng.normal(0, 1.2, xs.size)) \
        + rng.uniform(0, 8) * (np.abs(xs - size / 2) / (size / 2)) ** 2 * rng.choice([-1, 1])
    pts = np.vstack([np.stack([xs, ys], 1), [[size + 5, size + 5], [-5, size + 5]]])
    mask = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    content = _random_texture(rng, size) if rng.random() < 0.6 else \
        np.full((size, size), rng.uniform(0, 255), np.float32)
    content = content + _lowfreq(rng, size, rng.uniform(5, 25), rng.uniform(10, 30))  # folds
    return _soft(mask, rng, 0.3, 1.5), content


def sunglasses(rng, geo: FaceGeometry, ctx):
    size = geo.size
    mask = np.zeros((size, size), np.uint8)
    jitter = rng.normal(0, 0.04 * geo.iod, 2)
    w = geo.eye_width * rng.uniform(0.6, 0.9)
    h = w * rng.uniform(0.55, 0.85)
    angle = float(np.degrees(np.arctan2(*(geo.eye_l - geo.eye_r)[::-1])) + rng.normal(0, 3))
    lens_shape = rng.integers(0, 2)
    centres = [geo.eye_r + jitter, geo.eye_l + jitter]
    if rng.random() < 0.08:  # one lens only (e.g. an eye patch)
        centres = [centres[rng.integers(0, 2)]]
    for c in centres:
        c = c + np.array([0, rng.uniform(-0.05, 0.15) * h])
        if lens_shape == 0:
            cv2.ellipse(mask, tuple(int(v) for v in np.round(c)), (int(w), int(h)), angle, 0, 360, 1, -1)
        else:
            box = ((float(c[0]), float(c[1])), (2 * w, 2 * h), angle)
            cv2.fillPoly(mask, [np.round(cv2.boxPoints(box)).astype(np.int32)], 1)
    thick = int(rng.integers(1, 4))
    if len(centres) == 2:
        cv2.line(mask, tuple(int(v) for v in centres[0]), tuple(int(v) for v in centres[1]), 1, thick)
        if rng.random() < 0.7:  # temple arms
            y = int((centres[0][1] + centres[1][1]) / 2)
            cv2.line(mask, (0, y), tuple(int(v) for v in centres[0]), 1, thick)
            cv2.line(mask, tuple(int(v) for v in centres[1]), (size - 1, y), 1, thick)
    level = rng.uniform(0, 60) if rng.random() < 0.85 else rng.uniform(60, 200)  # mostly dark, some mirrored
    content = level + _gradient(rng, size, rng.uniform(0, 25)) + _lowfreq(rng, size, rng.uniform(0, 10), 10)
    alpha = _soft(mask, rng, 0.3, 1.2) * rng.uniform(0.85, 1.0)
    return alpha, content


def face_mask(rng, geo: FaceGeometry, ctx):
    size = geo.size
    lm = geo.landmarks
    below_nose = rng.random() < 0.25
    top = (_between(rng, geo.nose[1] + 0.15 * geo.iod, geo.mouth[1] - 0.1 * geo.iod) if below_nose
           else _between(rng, lm[197][1], geo.nose[1]))
    oval = lm[FACE_OVAL]
    lower = oval[oval[:, 1] > top]
    if len(lower) < 3:
        lower = oval[np.argsort(oval[:, 1])[-12:]]
    widen = rng.uniform(1.0, 1.1)
    cx = lm[FACE_OVAL][:, 0].mean()
    lower = np.stack([(lower[:, 0] - cx) * widen + cx, lower[:, 1] + rng.uniform(0, 0.1) * geo.iod], 1)
    left_x, right_x = lower[:, 0].min(), lower[:, 0].max()
    peak = top - rng.uniform(0, 0.12) * geo.iod
    top_edge = np.array([[left_x, top + 0.1 * geo.iod], [cx, peak], [right_x, top + 0.1 * geo.iod]])
    pts = np.vstack([top_edge, lower])
    mask = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(mask, cv2.convexHull(np.round(pts).astype(np.int32)), 1)
    level = rng.choice([rng.uniform(170, 250), rng.uniform(10, 80), rng.uniform(80, 170)])
    content = level + _gradient(rng, size, rng.uniform(3, 20))
    yy = np.mgrid[0:size, 0:size][0].astype(np.float32)
    if rng.random() < 0.6:  # pleats
        content = content - rng.uniform(5, 25) * (np.sin(yy * 2 * np.pi / rng.uniform(5, 10)) > 0.7)
    if rng.random() < 0.5:  # ear loops
        loops = np.zeros((size, size), np.uint8)
        y0 = int(top + 0.2 * geo.iod)
        cv2.line(loops, (0, y0 - 10), (int(left_x), y0), 1, 1)
        cv2.line(loops, (int(right_x), y0), (size - 1, y0 - 10), 1, 1)
        mask = np.maximum(mask, loops)
    return _soft(mask, rng, 0.3, 1.2), content


def texture(rng, geo: FaceGeometry, ctx):
    mask = _random_shape(rng, geo.size, geo.anchor(rng), geo.iod * rng.uniform(0.5, 1.6))
    return _soft(mask, rng, 0.0, 1.5), _random_texture(rng, geo.size)


def _patch_from(rng, image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[:2]
    side = int(min(h, w) * rng.uniform(0.15, 0.7))
    side = max(8, min(side, h, w))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    patch = cv2.resize(image[y:y + side, x:x + side], (size, size), interpolation=cv2.INTER_AREA)
    return np.rot90(patch, rng.integers(0, 4)).astype(np.float32)


def real_patch(rng, geo: FaceGeometry, ctx):
    mask = _random_shape(rng, geo.size, geo.anchor(rng), geo.iod * rng.uniform(0.5, 1.6))
    other = ctx.get("other_crop")
    if other is not None and rng.random() < 0.35:
        # another FER+ crop, shifted and rotated so that no face part sits in its own place
        patch = np.rot90(other(rng), rng.integers(1, 4)).astype(np.float32)
        patch = np.roll(patch, tuple(rng.integers(20, 92, 2)), axis=(0, 1))
    else:
        pool = ctx["images"]
        patch = _patch_from(rng, pool[rng.integers(0, len(pool))], geo.size)
    if rng.random() < 0.3:
        patch = np.clip((patch - patch.mean()) * rng.uniform(0.5, 1.5) + rng.uniform(30, 220), 0, 255)
    return _soft(mask, rng, 0.0, 1.5), patch


def heldout_patch(rng, geo: FaceGeometry, ctx):
    """Evaluation only: irregular polygons cut from photos the trainer never sees."""
    mask = _random_shape(rng, geo.size, geo.anchor(rng), geo.iod * rng.uniform(0.5, 1.6), irregular=True)
    pool = ctx["heldout_images"]
    return _soft(mask, rng, 0.0, 1.5), _patch_from(rng, pool[rng.integers(0, len(pool))], geo.size)



# ------------------------------------------------------------------------ v2 families (issue 10)
def _skin_level(rng, geo: FaceGeometry) -> float:
    """Grey level of a hand: near the face's own tone (same person) or any skin tone, dark to pale."""
    if rng.random() < 0.5:
        return float(np.clip(geo.face_grey * rng.uniform(0.75, 1.3), 35, 235))
    return float(rng.uniform(45, 225))


def _capsules(size: int, starts: np.ndarray, ends: np.ndarray, widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of rounded bars (fingers, strands): a 0/1 mask and a cylinder shading 0..1 (1 on each axis, 0 at
    the rims, so touching fingers show a dark gap between them)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    best = np.full((size, size), np.inf, np.float32)
    for a, b, w in zip(starts, ends, widths):
        ab = b - a
        t = np.clip(((xx - a[0]) * ab[0] + (yy - a[1]) * ab[1]) / max(float(ab @ ab), 1e-6), 0, 1)
        d = np.hypot(xx - (a[0] + t * ab[0]), yy - (a[1] + t * ab[1])) / (w / 2)
        best = np.minimum(best, d)
    mask = (best < 1).astype(np.uint8)
    shade = np.sqrt(np.clip(1 - best ** 2, 0, 1))
    return mask, shade


def _unit(theta: float) -> tuple[np.ndarray, np.ndarray]:
    d = np.array([np.cos(theta), np.sin(theta)])
    return d, np.array([-d[1], d[0]])


def fingers(rng, geo: FaceGeometry, ctx):
    """A hand drawn as fingers: 2-5 shaded cylinders side by side (dark gaps between them), a palm at their
    base and sometimes a thumb; laid across the forehead/brows, over an eye, pressed over the mouth or nose,
    or anywhere. Skin tones from dark to pale."""
    size, iod = geo.size, geo.iod
    mode = rng.choice(["brows", "eyes", "mouth", "nose", "any"], p=[0.28, 0.2, 0.28, 0.12, 0.12])
    side = rng.choice([-1.0, 1.0])
    if mode == "brows":  # fingers roughly horizontal, lowest finger near the brow line
        theta = (0.0 if side > 0 else np.pi) + rng.normal(0, 0.25)
        target = np.array([geo.brows[0] + rng.normal(0, 0.3 * iod), geo.brows[1] + rng.uniform(-0.45, 0.25) * iod])
    elif mode == "eyes":
        theta = (0.0 if side > 0 else np.pi) + rng.normal(0, 0.5)
        target = ([geo.eye_r, geo.eye_l, (geo.eye_r + geo.eye_l) / 2][rng.integers(0, 3)]
                  + rng.normal(0, 0.15 * iod, 2))
    elif mode == "mouth":  # from below (fingers up) or from the side
        theta = (-np.pi / 2 + rng.normal(0, 0.45) if rng.random() < 0.6 else (0.0 if side > 0 else np.pi)
                 + rng.normal(0, 0.4))
        target = geo.mouth + rng.normal(0, 0.2 * iod, 2)
    elif mode == "nose":
        theta = -np.pi / 2 + rng.normal(0, 0.6)
        target = geo.nose + rng.normal(0, 0.2 * iod, 2)
    else:
        theta = rng.uniform(0, 2 * np.pi)
        target = geo.anchor(rng)
    direction, normal = _unit(theta)
    n = int(rng.integers(2, 6))
    width = iod * rng.uniform(0.16, 0.27)
    length = iod * rng.uniform(0.7, 1.25)
    base = target - direction * length * rng.uniform(0.3, 1.0)  # the target lies somewhere along the fingers
    offsets = (np.arange(n) - (n - 1) / 2) * width * rng.uniform(0.85, 1.0)
    if mode == "brows" and rng.random() < 0.7:  # stacked fingers grow upwards from the target line
        offsets = offsets - offsets.max() * np.sign(normal[1] if abs(normal[1]) > 1e-3 else 1.0)
    starts, ends, widths = [], [], []
    for k, off in enumerate(offsets):
        bend = rng.normal(0, 0.08)
        d = direction * np.cos(bend) + normal * np.sin(bend)
        scale = 1.0 - 0.25 * abs(k - (n - 1) / 2) / max((n - 1) / 2, 1) + rng.normal(0, 0.05)
        start = base + normal * off
        starts.append(start)
        ends.append(start + d * length * scale)
        widths.append(width * rng.uniform(0.9, 1.1))
    if rng.random() < 0.4:  # thumb
        d = (-normal if rng.random() < 0.5 else normal) * 0.8 + direction * 0.6
        start = base + normal * (offsets[0] if d @ normal < 0 else offsets[-1]) - direction * width
        starts.append(start)
        ends.append(start + d / np.linalg.norm(d) * length * 0.7)
        widths.append(width * 1.15)
    mask, shade = _capsules(size, np.array(starts), np.array(ends), np.array(widths))
    palm_c = base - direction * iod * rng.uniform(0.35, 0.6)
    palm = np.zeros((size, size), np.uint8)
    cv2.ellipse(palm, tuple(int(v) for v in np.round(palm_c)),
                (int(iod * rng.uniform(0.45, 0.7)), int(max(abs(offsets).max() + width / 2, width))),
                float(np.degrees(theta)), 0, 360, 1, -1)
    if rng.random() < 0.5:  # the wrist leaving the crop
        cv2.line(palm, tuple(int(v) for v in palm_c), tuple(int(v) for v in palm_c - direction * size), 1,
                 int(iod * rng.uniform(0.5, 0.8)))
    shade = np.where(mask > 0, shade, np.where(palm > 0, 0.85, 0))
    mask = np.maximum(mask, palm)
    level = _skin_level(rng, geo)
    crop = ctx.get("_crop")
    if crop is not None and rng.random() < 0.6:  # the face's own skin (cheek / forehead), same tone and light
        point = geo.landmarks[[50, 280, 151, 9][rng.integers(0, 4)]]
        half = max(3, int(geo.iod * rng.uniform(0.12, 0.25)))
        x0, y0 = (int(np.clip(v - half, 0, size - 2 * half - 1)) for v in point)
        skin = cv2.resize(crop[y0:y0 + 2 * half, x0:x0 + 2 * half].astype(np.float32), (size, size),
                          interpolation=cv2.INTER_CUBIC)
        level = skin * rng.uniform(0.85, 1.2)
    light = 0.5 + 0.5 * _gradient(rng, size, 1.0)  # light from one side across the whole hand
    content = level * (rng.uniform(0.55, 0.75) + rng.uniform(0.25, 0.45) * shade) * (0.85 + 0.3 * light) \
        + _lowfreq(rng, size, rng.uniform(1, 6), 8)
    alpha = _soft(mask, rng, 0.3, 1.2)
    if rng.random() < 0.6:  # a soft contact shadow on the face beside the hand (alpha < 0.5: covers nothing)
        shift = tuple(int(v) for v in rng.integers(-3, 4, 2))
        shadow = np.roll(cv2.GaussianBlur(mask.astype(np.float32), (0, 0), rng.uniform(1.5, 4)), shift, (0, 1))
        shadow = np.clip(shadow * rng.uniform(0.2, 0.45), 0, 0.45)
        content = np.where(alpha > shadow, content, np.asarray(level, np.float32) * 0.35)
        alpha = np.maximum(alpha, shadow)
    return alpha, content


def glasses(rng, geo: FaceGeometry, ctx):
    """Clear glasses: rims (thin or heavy, dark or light), bridge and temples; the lenses let the eyes show
    (alpha <= 0.3: a slight tint or a reflection), so the eyes are NOT covered by the label rule."""
    size = geo.size
    w = geo.eye_width * rng.uniform(0.75, 1.05)
    h = w * rng.uniform(0.5, 0.85)
    angle = float(np.degrees(np.arctan2(*(geo.eye_l - geo.eye_r)[::-1])) + rng.normal(0, 2))
    rim = np.zeros((size, size), np.uint8)
    lens = np.zeros((size, size), np.uint8)
    thick = int(rng.choice([1, 1, 2, 2, 3, 4]))
    shape = rng.integers(0, 3)
    centres = []
    for c in (geo.eye_r, geo.eye_l):
        c = c + np.array([0, rng.uniform(-0.05, 0.2) * h]) + rng.normal(0, 0.03 * geo.iod, 2)
        centres.append(c)
        ci = tuple(int(v) for v in np.round(c))
        if shape == 0:
            cv2.ellipse(lens, ci, (int(w), int(h)), angle, 0, 360, 1, -1)
            cv2.ellipse(rim, ci, (int(w), int(h)), angle, 0, 360, 1, thick)
        else:
            box = ((float(c[0]), float(c[1])), (2 * w, 2 * h), angle)
            pts = np.round(cv2.boxPoints(box)).astype(np.int32)
            cv2.fillPoly(lens, [pts], 1)
            cv2.polylines(rim, [pts], True, 1, thick)
            if shape == 2:  # browline frames: a heavy top bar
                cv2.line(rim, tuple(pts[1]), tuple(pts[2]), 1, thick + 2)
    cv2.line(rim, tuple(int(v) for v in centres[0]), tuple(int(v) for v in centres[1]), 1, thick)
    if rng.random() < 0.7:
        y = int((centres[0][1] + centres[1][1]) / 2 - h * 0.5)
        cv2.line(rim, (0, y), (int(centres[0][0] - w), y), 1, thick)
        cv2.line(rim, (int(centres[1][0] + w), y), (size - 1, y), 1, thick)
    # the bridge line runs between the lens centres; keep it out of the lenses
    rim = np.where((lens > 0) & (rim > 0) & (cv2.erode(lens, np.ones((3, 3), np.uint8), iterations=thick + 1) > 0),
                   0, rim).astype(np.uint8)
    frame_level = rng.uniform(0, 60) if rng.random() < 0.75 else rng.uniform(120, 230)
    tint = rng.uniform(0.0, 0.25)
    tint_level = rng.uniform(0, 80) if rng.random() < 0.6 else rng.uniform(150, 255)
    alpha = np.where(rim > 0, 1.0, np.where(lens > 0, tint, 0.0)).astype(np.float32)
    content = np.where(rim > 0, frame_level, tint_level).astype(np.float32)
    if rng.random() < 0.5:  # a reflection streak on the lenses, still see-through
        streak = _soft(_random_shape(rng, size, centres[rng.integers(0, 2)], w * 0.8), rng, 1.0, 3.0)
        alpha = np.where(rim > 0, alpha, np.maximum(alpha, np.minimum(streak * (lens > 0), 0.45)))
        content = np.where(rim > 0, content, np.where(streak > 0.05, 230.0, content))
    return np.clip(cv2.GaussianBlur(alpha, (0, 0), rng.uniform(0.3, 0.8)), 0, 1), content


def hair(rng, geo: FaceGeometry, ctx):
    """Hair over the forehead: a fringe whose lower edge (wavy, often tilted, side-swept over one brow and
    eye) ends anywhere from high on the forehead to below the brows, plus loose strands hanging lower."""
    size, iod = geo.size, geo.iod
    xs = np.linspace(-5, size + 5, 16)
    tilt = rng.normal(0, 0.15) if rng.random() < 0.6 else rng.choice([-1, 1]) * rng.uniform(0.3, 0.8)
    level_y = geo.brows[1] + rng.uniform(-0.5, 0.6) * iod
    edge = level_y + tilt * (xs - geo.brows[0]) + rng.uniform(0, 0.12) * iod * np.sin(
        xs / rng.uniform(4, 12) + rng.uniform(0, 6)) + np.cumsum(rng.normal(0, 0.6, xs.size))
    pts = np.vstack([np.stack([xs, edge], 1), [[size + 5, -5], [-5, -5]]])
    mass = np.zeros((size, size), np.uint8)
    cv2.fillPoly(mass, [np.round(pts).astype(np.int32)], 1)
    strands = np.zeros((size, size), np.uint8)
    for _ in range(int(rng.integers(0, 40))):  # strands hanging below the edge
        x0 = rng.uniform(0, size)
        y0 = float(np.interp(x0, xs, edge)) - rng.uniform(0, 6)
        drop = rng.uniform(0.05, 0.5) * iod
        sway = rng.normal(tilt * drop, 0.15 * iod)
        curve = np.stack([x0 + sway * np.linspace(0, 1, 6) ** 2, y0 + drop * np.linspace(0, 1, 6)], 1)
        cv2.polylines(strands, [np.round(curve).astype(np.int32)], False, 1, int(rng.integers(1, 3)))
    level = rng.uniform(5, 70) if rng.random() < 0.75 else rng.uniform(90, 220)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    flow = np.sin((xx + tilt * yy) * 2 * np.pi / rng.uniform(2.5, 6) + _lowfreq(rng, size, 2.0, 10))
    content = level + rng.uniform(5, 30) * flow + _lowfreq(rng, size, rng.uniform(3, 12), 12)
    alpha = np.maximum(_soft(mass, rng, 0.4, 1.5), strands * rng.uniform(0.6, 1.0))
    return np.clip(alpha, 0, 1), content


def phone(rng, geo: FaceGeometry, ctx):
    """A phone held against the cheek/mouth/eye: a rounded dark slab with a screen or a case, often gripped."""
    size, iod = geo.size, geo.iod
    target = ([geo.mouth, geo.nose, geo.eye_r, geo.eye_l, geo.anchor(rng)][rng.integers(0, 5)]
              + rng.normal(0, 0.25 * iod, 2))
    w, h = iod * rng.uniform(0.55, 0.9), iod * rng.uniform(1.1, 1.8)
    angle = float(rng.normal(0, 25) if rng.random() < 0.7 else rng.uniform(0, 180))
    body: np.ndarray = np.zeros((size, size), np.uint8)
    box = ((float(target[0]), float(target[1])), (w, h), angle)
    pts = np.round(cv2.boxPoints(box)).astype(np.int32)
    cv2.fillPoly(body, [pts], 1)
    r = max(1, int(w * 0.15))
    body = cv2.morphologyEx(body, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    level = rng.uniform(5, 60) if rng.random() < 0.7 else rng.uniform(60, 230)
    inner = cv2.erode(body, np.ones((3, 3), np.uint8), iterations=max(1, int(w * 0.08)))
    screen = rng.uniform(0, 255) if rng.random() < 0.5 else level + rng.uniform(-20, 20)
    content = np.where(inner > 0, screen, level).astype(np.float32) + _gradient(rng, size, rng.uniform(5, 40))
    alpha = _soft(body, rng, 0.2, 1.0)
    if rng.random() < 0.5:  # fingers gripping its edge
        g_alpha, g_content = fingers(rng, geo, ctx)
        near = cv2.dilate(body, np.ones((5, 5), np.uint8), iterations=max(1, int(w * 0.2)))
        g_alpha = g_alpha * near
        content = np.where(g_alpha > 0.5, g_content, content)
        alpha = np.maximum(alpha, g_alpha)
    return alpha, content


def cup(rng, geo: FaceGeometry, ctx):
    """A cup, mug or glass raised to the mouth: a body rising from below the crop up to a rim near the mouth
    (sometimes the nose), an elliptic rim, cylinder shading, sometimes a handle."""
    size, iod = geo.size, geo.iod
    top_y = _between(rng, geo.nose[1] - 0.1 * iod, geo.mouth[1] + 0.35 * iod)
    cx = geo.mouth[0] + rng.normal(0, 0.35 * iod)
    half = iod * rng.uniform(0.35, 0.7)
    taper = rng.uniform(0.75, 1.0)
    tilt = rng.normal(0, 0.15)
    rim_h = max(2, int(half * rng.uniform(0.15, 0.4)))
    mask = np.zeros((size, size), np.uint8)
    bottom = size + 5
    pts = np.array([[cx - half, top_y], [cx + half, top_y], [cx + half * taper + tilt * (bottom - top_y), bottom],
                    [cx - half * taper + tilt * (bottom - top_y), bottom]])
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    cv2.ellipse(mask, (int(cx), int(top_y)), (int(half), rim_h), 0, 0, 360, 1, -1)
    if rng.random() < 0.5:  # handle
        hx = int(cx + rng.choice([-1, 1]) * half * 1.1)
        cv2.ellipse(mask, (hx, int(top_y + 1.2 * half)), (int(half * 0.4), int(half * 0.55)), 0, 0, 360, 1,
                    max(2, int(half * 0.2)))
    level = rng.uniform(20, 240)
    xx = np.mgrid[0:size, 0:size][1].astype(np.float32)
    cyl = np.cos(np.clip((xx - cx) / max(half, 1), -1.5, 1.5))
    content = level * (0.75 + 0.25 * cyl) + _lowfreq(rng, size, rng.uniform(0, 8), 10)
    if rng.random() < 0.3:  # a printed pattern
        content = content * 0.5 + _random_texture(rng, size) * 0.5
    rim = np.zeros((size, size), np.uint8)
    cv2.ellipse(rim, (int(cx), int(top_y)), (int(half), rim_h), 0, 0, 360, 1, max(1, rim_h // 2))
    content = np.where(rim > 0, level * rng.uniform(0.5, 1.3), content)
    alpha = _soft(mask, rng, 0.3, 1.2) * (rng.uniform(0.85, 1.0) if rng.random() < 0.8 else rng.uniform(0.6, 0.8))
    return alpha, content


def half_cover(rng, geo: FaceGeometry, ctx):
    """Something whose edge crosses one region: a disc whose (possibly nearly straight) boundary cuts the
    region's mask at a random fraction 10-90 %, so labels on both sides of the 30 % rule are common.
    Skin (a finger edge), flat, textured or photo content."""
    masks = ctx.get("_masks")
    if masks is None:
        masks = region_masks(geo.landmarks, geo.size)
    size, iod = geo.size, geo.iod
    k = int(rng.integers(0, len(REGIONS)))
    ys, xs = np.nonzero(masks[k])
    if len(xs) == 0:
        return np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    direction, _ = _unit(rng.uniform(0, 2 * np.pi))
    proj = xs * direction[0] + ys * direction[1]
    cut = float(np.quantile(proj, 1 - rng.uniform(0.1, 0.9)))  # that share of the mask lies beyond the cut
    centre = np.array([xs.mean(), ys.mean()])
    on_edge = centre + direction * (cut - float(centre @ direction))
    radius = iod * rng.uniform(0.35, 1.5)
    disc_c = on_edge + direction * radius
    mask = np.zeros((size, size), np.uint8)
    cv2.circle(mask, tuple(int(v) for v in np.round(disc_c)), int(radius), 1, -1)
    r = rng.random()
    if r < 0.4:
        level = _skin_level(rng, geo)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        dist = np.hypot(xx - disc_c[0], yy - disc_c[1]) / max(radius, 1)
        content = level * (0.7 + 0.3 * np.sqrt(np.clip(1 - dist ** 2, 0, 1))) + _lowfreq(rng, size, 3, 8)
    elif r < 0.65:
        content = np.full((size, size), rng.uniform(0, 255), np.float32) + _lowfreq(rng, size, rng.uniform(0, 8), 8)
    elif r < 0.85:
        content = _random_texture(rng, size)
    else:
        pool = ctx["images"]
        content = _patch_from(rng, pool[rng.integers(0, len(pool))], size)
    return _soft(mask, rng, 0.2, 1.2), content

FAMILIES: dict[str, Callable] = {
    "hand": hand, "bar": bar, "scarf": scarf, "sunglasses": sunglasses, "mask": face_mask,
    "texture": texture, "real_patch": real_patch, "fingers": fingers, "glasses": glasses, "hair": hair,
    "phone": phone, "cup": cup, "half_cover": half_cover, "heldout_patch": heldout_patch,
}
# the families of 2.x: 1.x's (hand, bar, scarf, sunglasses, mask, texture, real_patch) + fingers, clear glasses
# (negatives for the eyes), hair, phone, cup, half-region covers
TRAIN_FAMILIES = ("hand", "fingers", "bar", "scarf", "sunglasses", "glasses", "mask", "hair", "phone", "cup",
                  "half_cover", "texture", "real_patch")
TRAIN_WEIGHTS = (0.06, 0.17, 0.06, 0.06, 0.08, 0.06, 0.07, 0.09, 0.05, 0.05, 0.11, 0.06, 0.08)


def load_images(names: tuple[str, ...]) -> list[np.ndarray]:
    """Grey uint8 versions of scikit-image's bundled sample images."""
    import skimage.data  # training-only dependency

    images = []
    for name in names:
        image = np.asarray(getattr(skimage.data, name)())
        if image.dtype != np.uint8:
            image = (255 * (image.astype(np.float64) / max(image.max(), 1))).astype(np.uint8)
        if image.ndim == 3:
            image = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2GRAY)
        images.append(np.ascontiguousarray(image))
    return images


@dataclass
class Occluded:
    image: np.ndarray  # (size, size) uint8
    alpha: np.ndarray  # (size, size) float32, combined occluder opacity
    fractions: np.ndarray  # (4,) covered fraction of each region
    labels: np.ndarray  # (4,) 0/1
    weights: np.ndarray  # (4,) 0 where the label is ambiguous
    families: tuple[str, ...]


def occlude(crop: np.ndarray, landmarks: np.ndarray, rng: np.random.Generator, ctx: dict,
            families: tuple[str, ...] = TRAIN_FAMILIES, weights: tuple[float, ...] | None = TRAIN_WEIGHTS,
            count: int | None = None, masks: np.ndarray | None = None) -> Occluded:
    """Draw ``count`` occluders (1-3 at random when None, 0 allowed) onto a grey crop."""
    geo = FaceGeometry.from_landmarks(landmarks, crop)
    if masks is None:
        masks = region_masks(landmarks, crop.shape[0])
    if count is None:
        count = int(rng.choice([1, 2, 3], p=[0.7, 0.22, 0.08]))
    ctx = {**ctx, "_masks": masks, "_crop": crop}
    p = None
    if weights is not None and len(weights) == len(families):
        p = np.asarray(weights, np.float64) / np.sum(weights)
    image = crop.astype(np.float32)
    total = np.zeros(crop.shape, np.float32)
    chosen = []
    for _ in range(count):
        name = families[rng.choice(len(families), p=p)]
        alpha, content = FAMILIES[name](rng, geo, ctx)
        alpha = np.clip(alpha, 0, 1)
        content = content + rng.normal(0, rng.uniform(0, 6), content.shape).astype(np.float32)
        image = image * (1 - alpha) + np.clip(content, 0, 255) * alpha
        total = 1 - (1 - total) * (1 - alpha)
        chosen.append(name)
    fractions = coverage_fractions(masks, total)
    labels, lw = labels_from_fractions(fractions)
    return Occluded(np.clip(np.round(image), 0, 255).astype(np.uint8), total, fractions, labels, lw, tuple(chosen))
