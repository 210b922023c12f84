"""The critic's cheap, explainable checks: each one measures a number and compares it with a named threshold.

- sharpness: variance of the Laplacian of the grey image (a blurred image has few edges, so a low variance),
  measured on the main face when there is one (a portrait's blurred background is wanted, a blurred face
  is not), else on the whole image; the region is scaled so its long side is at most 512 px first, so the
  figure does not depend on the output resolution;
- exposure: mean luma (Rec. 601) in 0..1, too low = underexposed, too high = overexposed (these two
  measures live in common/images.py, so the dataset stage ranks its anchor portraits by the same numbers);
- face geometry: the main face's size (shorter box side, px) and whether its box touches the frame;
- faces: how many faces count as main faces (at least `second_face_ratio` of the largest one's size).
"""

from __future__ import annotations

from collections.abc import Sequence

from zirelia_local.common.config import CriticConfig
from zirelia_local.critic.verdict import (
    BLURRY,
    FACE_CUT_OFF,
    FACE_TOO_SMALL,
    FAIL,
    MULTIPLE_FACES,
    NO_FACE,
    OVEREXPOSED,
    PASS,
    SKIPPED,
    UNDEREXPOSED,
    Check,
)
from zirelia_local.faces.base import DetectedFace


def main_faces(faces: Sequence[DetectedFace], ratio: float) -> list[DetectedFace]:
    """Faces at least `ratio` of the largest face's size (largest first); smaller ones are background."""
    if not faces:
        return []
    ordered = sorted(faces, key=lambda face: face.size, reverse=True)
    largest = ordered[0].size
    return [face for face in ordered if face.size >= ratio * largest]


def edges_touched(box: tuple[int, int, int, int], width: int, height: int, margin: int) -> list[str]:
    """Which image borders the box comes within `margin` px of."""
    left, top, right, bottom = box
    touched = []
    if left <= margin:
        touched.append("left")
    if top <= margin:
        touched.append("top")
    if right >= width - margin:
        touched.append("right")
    if bottom >= height - margin:
        touched.append("bottom")
    return touched


def check_face_found(faces: Sequence[DetectedFace]) -> Check:
    if not faces:
        return Check("face", FAIL, "no face found", value=0, threshold=">= 1 face", failure=NO_FACE)
    return Check("face", PASS, f"{len(faces)} face(s) found", value=len(faces), threshold=">= 1 face")


def check_single_face(faces: Sequence[DetectedFace], critic: CriticConfig) -> Check:
    ratio = critic.second_face_ratio
    threshold = f"1 face at >= {ratio:g} x the largest face's size"
    if not faces:
        return Check("single_face", SKIPPED, "no face to count", value=0, threshold=threshold)
    main = main_faces(faces, ratio)
    if len(main) > 1:
        sizes = ", ".join(f"{face.size} px" for face in main)
        return Check(
            "single_face",
            FAIL,
            f"{len(main)} main faces ({sizes}); the persona should be alone",
            value=len(main),
            threshold=threshold,
            failure=MULTIPLE_FACES,
        )
    background = len(faces) - 1
    note = f" ({background} small background face(s) ignored)" if background else ""
    return Check("single_face", PASS, f"exactly one main face{note}", value=1, threshold=threshold)


def check_face_size(face: DetectedFace | None, critic: CriticConfig) -> Check:
    threshold = critic.min_face_size
    if face is None:
        return Check("face_size", SKIPPED, "no face to measure", threshold=threshold)
    if face.size < threshold:
        return Check(
            "face_size",
            FAIL,
            f"face too small: {face.size} px < min_face_size {threshold} px",
            value=face.size,
            threshold=threshold,
            failure=FACE_TOO_SMALL,
        )
    return Check("face_size", PASS, f"face {face.size} px >= {threshold} px", value=face.size, threshold=threshold)


def check_face_in_frame(face: DetectedFace | None, width: int, height: int, critic: CriticConfig) -> Check:
    margin = critic.face_edge_margin
    threshold = f"face box > {margin} px from every border"
    if face is None:
        return Check("face_in_frame", SKIPPED, "no face to place", threshold=threshold)
    touched = edges_touched(face.box, width, height, margin)
    if touched:
        return Check(
            "face_in_frame",
            FAIL,
            f"face cut off by the frame ({', '.join(touched)} border)",
            value=len(touched),
            threshold=threshold,
            failure=FACE_CUT_OFF,
        )
    return Check("face_in_frame", PASS, "face inside the frame", value=0, threshold=threshold)


def check_sharpness(value: float, region: str, critic: CriticConfig) -> Check:
    threshold = critic.blur_threshold
    if value < threshold:
        return Check(
            "sharpness",
            FAIL,
            f"blurry {region}: Laplacian variance {value:.1f} < blur_threshold {threshold:g}",
            value=round(value, 2),
            threshold=threshold,
            failure=BLURRY,
        )
    return Check(
        "sharpness",
        PASS,
        f"sharp {region}: Laplacian variance {value:.1f} >= {threshold:g}",
        value=round(value, 2),
        threshold=threshold,
    )


def check_exposure(brightness: float, critic: CriticConfig) -> Check:
    low, high = critic.dark_threshold, critic.bright_threshold
    threshold = f"{low:g}..{high:g}"
    value = round(brightness, 4)
    if brightness < low:
        return Check(
            "exposure",
            FAIL,
            f"underexposed: mean brightness {brightness:.3f} < dark_threshold {low:g}",
            value=value,
            threshold=threshold,
            failure=UNDEREXPOSED,
        )
    if brightness > high:
        return Check(
            "exposure",
            FAIL,
            f"overexposed: mean brightness {brightness:.3f} > bright_threshold {high:g}",
            value=value,
            threshold=threshold,
            failure=OVEREXPOSED,
        )
    return Check("exposure", PASS, f"exposure fine: mean brightness {brightness:.3f}", value=value, threshold=threshold)
