"""Automatic baselines for a batch of photos: each face read against its own person's most neutral-looking faces
(``app.reference``), as the CLI's ``--baseline auto`` and image-archive jobs (``baseline=auto``) do.

First pass: every unfiltered face's reading (``Analyzer.face_reading``) and its person: the caller's name for the
largest face of each image (``persons``), else identity clustering of all the faces (``app.identity``, the
research profile's face identity model, loaded only then). Then each person's reference is the most
neutral-looking ``settings.baseline_fraction`` of their faces (``app.reference.automatic_references``). The second
pass is the caller's: ``Analyzer.run(image, options, heads, face_references=references[key])``.
"""
from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Any

import numpy as np

from app.analysis import FaceOptions
from app.analyzer import Analyzer
from app.identity import same_person_groups
from app.reference import FaceReading, Reference, automatic_references


def automatic_baselines(
    analyzer: Analyzer,
    images: Iterable[tuple[Hashable, bytes | np.ndarray]],
    options: FaceOptions,
    persons: Mapping[Hashable, str] | None = None,
) -> tuple[dict[Hashable, list[Reference | None]], int]:
    """``images``: (key, encoded bytes or a BGR array). Returns (key -> one reference or None per face, in the
    order ``Analyzer.run`` finds them; the number of people). An image that cannot be read is skipped (its second
    pass reports the error)."""
    from app.errors import ApiError

    keys: list[tuple[Hashable, int]] = []
    readings: list[FaceReading] = []
    groups: list[Any] = []
    embeddings: list[np.ndarray] = []
    for key, image in images:
        try:
            analysis = analyzer.run(image, options)
        except ApiError:
            continue
        for index, face in enumerate(analysis.faces):
            if face.filtered:
                continue
            if persons is not None:
                person = persons.get(key)
                if person is None or index > 0:  # a named image: its largest face is that person
                    continue
                groups.append(person)
            else:
                embeddings.append(analyzer.models.identity().embed(analysis.image, face.landmarks))
            keys.append((key, index))
            readings.append(analyzer.face_reading(analysis.image, face))
    if persons is None and embeddings:
        groups = list(same_person_groups(np.array(embeddings)))
    references = automatic_references(readings, groups, analyzer.settings.baseline_fraction,
                                      analyzer.reference_models())
    out: dict[Hashable, list[Reference | None]] = {}
    for (key, index), group in zip(keys, groups):
        faces = out.setdefault(key, [])
        faces.extend([None] * (index + 1 - len(faces)))
        faces[index] = references[group]
    return out, len(references)
