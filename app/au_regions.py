"""Our FACS region map: where on the face each Action Unit shows, as MediaPipe 468-mesh landmark sets.
Used by the AU detector's training (its box labels) and, at serving time, by the open profile's AU head
(app/blendshape_aus.py: the box of each AU it reads as present). Pure numpy.

The AU detector is trained as an object detector (patent CN109344744): every AU coded active on a face
gets a rectangle, made AUTOMATICALLY from the mesh landmarks of that face: the bounding box of the
region's landmarks, widened by a margin (a fraction of the inter-ocular distance) so that the skin the
muscle moves (wrinkles, bulges, furrows) is inside the box.

Bilateral AUs whose two sides are far apart (outer brows, lids, cheeks, lip corners) get TWO boxes,
one per side, both with the AU's class; AUs on the midline (or whose two halves touch: inner brows,
glabella, nose, lips, chin) get ONE box. A horizontal flip therefore needs no class bookkeeping: the
boxes are recomputed from the flipped landmarks, and the "right" box simply lands where the left was.

Regions (the appearance changes after Ekman, Friesen & Hager, FACS Manual 2002):

AU1  Inner Brow Raiser    frontalis pars medialis: inner brow corners up, horizontal wrinkles mid-forehead
AU2  Outer Brow Raiser    frontalis pars lateralis: outer brows up and arched, lateral forehead wrinkles
AU4  Brow Lowerer         corrugator/depressor supercilii/procerus: brows down and together, glabella furrows
AU5  Upper Lid Raiser     levator palpebrae: upper lids up, more of the eyeball shows
AU6  Cheek Raiser         orbicularis oculi pars orbitalis: cheeks up, crow's feet, bags below the eyes
AU7  Lid Tightener        orbicularis oculi pars palpebralis: lower lids raised and straightened
AU9  Nose Wrinkler        levator labii superioris alaeque nasi: wrinkles on the nose root and sides
AU10 Upper Lip Raiser     levator labii superioris: upper lip up, nasolabial furrow deepens
AU12 Lip Corner Puller    zygomaticus major: lip corners pulled up and back
AU14 Dimpler              buccinator: lip corners tightened inwards, dimples
AU15 Lip Corner Depressor depressor anguli oris: lip corners pulled down
AU17 Chin Raiser          mentalis: chin boss pushed up, wrinkles on the chin, lower lip pushed up
AU20 Lip Stretcher        risorius: lip corners pulled sideways, lips elongated
AU23 Lip Tightener        orbicularis oris: lips tightened, red parts narrowed
AU24 Lip Pressor          orbicularis oris: lips pressed together
AU25 Lips Part            lips apart
AU26 Jaw Drop             masseter relaxed: mandible lowered, lips apart
AU27 Mouth Stretch        pterygoids/digastric: mouth stretched wide open, jaw pulled down

Rarer CK+ codes (AU11, AU16, AU18, AU21, AU22) and AU28 (lip suck, read by the open profile) also have
regions so that labels can be drawn, but the detector is trained only on AUs with enough positives (see
training/train_au.py).
"""
from __future__ import annotations

import numpy as np

FACS_NAMES = {
    "AU1": "Inner Brow Raiser", "AU2": "Outer Brow Raiser", "AU4": "Brow Lowerer", "AU5": "Upper Lid Raiser",
    "AU6": "Cheek Raiser", "AU7": "Lid Tightener", "AU9": "Nose Wrinkler", "AU10": "Upper Lip Raiser",
    "AU11": "Nasolabial Deepener", "AU12": "Lip Corner Puller", "AU14": "Dimpler", "AU15": "Lip Corner Depressor",
    "AU16": "Lower Lip Depressor", "AU17": "Chin Raiser", "AU18": "Lip Pucker", "AU20": "Lip Stretcher",
    "AU21": "Neck Tightener", "AU22": "Lip Funneler", "AU23": "Lip Tightener", "AU24": "Lip Pressor",
    "AU25": "Lips Part", "AU26": "Jaw Drop", "AU27": "Mouth Stretch", "AU28": "Lip Suck",
}

# Landmark sets of the mesh (MediaPipe canonical topology). "R" = the subject's right side (image left).
BROW_INNER = [107, 66, 55, 65, 336, 296, 285, 295, 9]
BROW_OUTER_R = [70, 63, 46, 53, 105, 52, 156]
BROW_OUTER_L = [300, 293, 276, 283, 334, 282, 383]
GLABELLA = [107, 55, 336, 285, 9, 8, 168, 193, 417]
UPPER_LID_R = [33, 246, 161, 160, 159, 158, 157, 173, 133, 27, 28, 29, 56, 190]
UPPER_LID_L = [263, 466, 388, 387, 386, 385, 384, 398, 362, 257, 258, 259, 286, 414]
LOWER_LID_R = [33, 7, 163, 144, 145, 153, 154, 155, 133, 110, 24, 23, 22, 26]
LOWER_LID_L = [263, 249, 390, 373, 374, 380, 381, 382, 362, 339, 254, 253, 252, 256]
CHEEK_R = [130, 226, 31, 228, 229, 230, 117, 118, 119, 100, 50, 101, 36, 205]
CHEEK_L = [359, 446, 261, 448, 449, 450, 346, 347, 348, 329, 280, 330, 266, 425]
NOSE = [168, 6, 197, 195, 5, 122, 351, 196, 419, 3, 248, 236, 456, 198, 420]
UPPER_LIP = [0, 37, 39, 40, 185, 267, 269, 270, 409, 61, 291, 164, 165, 391, 92, 322, 2]
CORNER_R = [61, 146, 91, 185, 40, 57, 43, 186, 92, 216, 206]
CORNER_L = [291, 375, 321, 409, 270, 287, 273, 410, 322, 436, 426]
CHIN = [17, 18, 200, 199, 175, 152, 83, 313, 201, 421, 148, 377, 84, 314]
LIPS = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185]
MOUTH_JAW = LIPS + [152, 148, 377, 175, 199]
NASOLABIAL = [129, 358, 203, 423, 206, 426, 36, 266, 92, 322]

# AU -> list of regions (one box per region), and the margin of each box (fraction of eye distance).
AU_REGIONS: dict[str, list[list[int]]] = {
    "AU1": [BROW_INNER], "AU2": [BROW_OUTER_R, BROW_OUTER_L], "AU4": [GLABELLA],
    "AU5": [UPPER_LID_R, UPPER_LID_L], "AU6": [CHEEK_R, CHEEK_L], "AU7": [LOWER_LID_R, LOWER_LID_L],
    "AU9": [NOSE], "AU10": [UPPER_LIP], "AU11": [NASOLABIAL],
    "AU12": [CORNER_R, CORNER_L], "AU14": [CORNER_R, CORNER_L], "AU15": [CORNER_R, CORNER_L],
    "AU16": [LIPS + [17, 18]], "AU17": [CHIN], "AU18": [LIPS], "AU20": [CORNER_R, CORNER_L],
    "AU21": [[152, 148, 377, 176, 400, 149, 378]], "AU22": [LIPS],
    "AU23": [LIPS], "AU24": [LIPS], "AU25": [LIPS], "AU26": [MOUTH_JAW], "AU27": [MOUTH_JAW], "AU28": [LIPS],
}
MARGIN = 0.08  # of the inter-ocular distance, on every side
FACE_OUTLINE = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
                148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
EYE_CENTRES = ([33, 133], [362, 263])


def inter_ocular(landmarks: np.ndarray) -> float:
    right = landmarks[EYE_CENTRES[0], :2].mean(0)
    left = landmarks[EYE_CENTRES[1], :2].mean(0)
    return float(np.linalg.norm(left - right))


def region_box(landmarks: np.ndarray, indices: list[int], margin: float) -> tuple[float, float, float, float]:
    points = np.asarray(landmarks, dtype=np.float64)[indices, :2]
    lo, hi = points.min(0) - margin, points.max(0) + margin
    return float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])


def face_box(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    return region_box(landmarks, FACE_OUTLINE, 0.0)


def au_boxes(landmarks: np.ndarray, active_aus, clip: float | None = None) -> list[tuple[str, tuple]]:
    """Rectangles ``(au, (x0, y0, x1, y1))`` for the active AUs, in the pixels of ``landmarks`` (468, 2).

    ``clip``: the crop side, to clip the boxes to [0, clip]."""
    landmarks = np.asarray(landmarks, dtype=np.float64)
    margin = MARGIN * inter_ocular(landmarks)
    out = []
    for au in active_aus:
        for indices in AU_REGIONS[au]:
            box: tuple[float, ...] = region_box(landmarks, indices, margin)
            if clip is not None:
                box = tuple(float(np.clip(v, 0.0, clip)) for v in box)
            out.append((au, box))
    return out
