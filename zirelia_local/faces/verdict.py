"""The face checks one image must pass to be learnt as the persona: one clear face, large enough.

Curation judges every dataset image by them, and the dataset stage judges its anchor portrait (the user's
photo or a drawn candidate) by the same rules before anything is generated from it.
"""

from __future__ import annotations

from zirelia_local.common.config import CurateConfig
from zirelia_local.faces.base import DetectedFace

FACE_OK = "ok"


def face_verdict(faces: list[DetectedFace] | None, curate: CurateConfig) -> tuple[str, DetectedFace | None]:
    """(reason, main face) from the face checks alone; reason "ok" means: go on to the identity check.

    The reasons: "unreadable" (faces is None), "no_face", "low_detection_score", "multiple_faces",
    "face_too_small", "ok". A second face counts when it passes the score limit and is at least half of
    `min_face_size`: smaller detections are detector noise or far-away people, too small to be learnt as the
    persona.
    """
    if faces is None:
        return "unreadable", None
    if not faces:
        return "no_face", None
    passing = [face for face in faces if face.score >= curate.min_detection_score]
    if not passing:
        return "low_detection_score", max(faces, key=lambda face: face.area)
    main = max(passing, key=lambda face: face.area)
    others = [face for face in passing if face is not main and face.size >= curate.min_face_size / 2]
    if others:
        return "multiple_faces", main
    if main.size < curate.min_face_size:
        return "face_too_small", main
    return FACE_OK, main
