"""The verdict on each image: the face checks, the persona's identity (a cluster or the user's photos), and
the decision that keeps or rejects the image."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from zirelia_local.common.config import CurateConfig
from zirelia_local.common.console import warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.images import ImageRefused, load_rgb, read_header
from zirelia_local.common.paths import display_path
from zirelia_local.faces import DetectedFace, FaceEmbedder
from zirelia_local.faces.verdict import face_verdict

CLUSTER_MAX_ITERATIONS = 20

REASON_OK = "ok"  # faces.verdict.FACE_OK: the face checks passed
REASON_TEXT = {
    "ok": "same identity",
    "no_face": "no face",
    "low_detection_score": "low detection score",
    "multiple_faces": "more than one face",
    "face_too_small": "face too small",
    "wrong_identity": "wrong identity",
    "unreadable": "unreadable file",
}


@dataclass
class Decision:
    """The verdict on one input image."""

    id: str | None
    file: str  # relative to the run directory (or the original path of a file that could not be imported)
    round: int
    reason: str
    kept: bool = False
    distance: float | None = None
    face: DetectedFace | None = None
    faces: int = 0
    source: str | None = None
    #: why an unreadable image was refused ("too large: 400 MP, limit 179 MP"), from the image opener
    detail: str | None = None

    def to_record(self, mode: str) -> dict[str, Any]:
        """The decision as a `curation.jsonl` line, `mode` being the [curate] mode it was made in."""
        record: dict[str, Any] = {
            "id": self.id,
            "file": self.file,
            "round": self.round,
            "kept": self.kept,
            "reason": self.reason,
            "distance": None if self.distance is None else round(self.distance, 4),
            "faces": self.faces,
            "face_size": self.face.size if self.face else None,
            "detection_score": round(float(self.face.score), 4) if self.face else None,
            "box": list(self.face.box) if self.face else None,
            "mode": mode,
        }
        if self.source is not None:
            record["source"] = self.source
        if self.detail is not None:
            record["detail"] = self.detail
        return record


@dataclass
class IdentityChoice:
    """The identity the images are judged by: a centroid embedding and where it came from."""

    embedding: np.ndarray
    source: str  # "cluster" or "reference_images"
    count: int
    seed: str | None = None  # the cluster's seed image
    iterations: int = 0


def choose_cluster(
    embedder: FaceEmbedder, candidates: Sequence[tuple[str, np.ndarray]], threshold: float
) -> IdentityChoice | None:
    """The largest cohesive cluster of embeddings and its centroid, deterministically.

    Seed: the embedding with the most others within `threshold` (ties: the smaller mean distance to those
    neighbours, then the earlier image). The cluster starts as the seed's neighbourhood; its centroid is then
    recomputed from the members and the members from the centroid (all within `threshold` of it) until the
    set stops changing.
    """
    if not candidates:
        return None
    vectors = [np.asarray(vector, np.float32) for _, vector in candidates]
    count = len(vectors)
    distances = np.zeros((count, count), np.float64)
    for i in range(count):
        for j in range(i + 1, count):
            distances[i, j] = distances[j, i] = embedder.distance(vectors[i], vectors[j])
    neighbours = distances <= threshold

    def seed_rank(i: int) -> tuple[int, float, int]:
        members = np.flatnonzero(neighbours[i])
        others = [j for j in members if j != i]
        mean = float(distances[i, others].mean()) if others else math.inf
        return (-len(members), mean, i)

    seed = min(range(count), key=seed_rank)
    members = frozenset(np.flatnonzero(neighbours[seed]).tolist())
    centroid = embedder.centroid([vectors[i] for i in sorted(members)])
    iterations = 0
    while iterations < CLUSTER_MAX_ITERATIONS:
        iterations += 1
        updated = frozenset(i for i in range(count) if embedder.distance(vectors[i], centroid) <= threshold)
        if not updated or updated == members:
            break
        members = updated
        centroid = embedder.centroid([vectors[i] for i in sorted(members)])
    return IdentityChoice(
        embedding=centroid, source="cluster", count=len(members), seed=candidates[seed][0], iterations=iterations
    )


def reference_identity(
    embedder: FaceEmbedder,
    paths: Sequence[Path],
    curate: CurateConfig,
    threshold: float,
    *,
    source: str = "reference_images",
) -> IdentityChoice:
    """The centroid of the user's reference photos (each must show exactly one clear face); `source` is what
    the identity records as its origin ("reference_images", or "anchor" for the anchor portrait)."""
    label = "anchor portrait" if source == "anchor" else "reference photo"
    arrays = []
    for path in check_reference_images(paths):
        try:
            arrays.append(load_rgb(path))
        except ImageRefused as refused:  # the header was fine, the pixels are not (truncated, damaged)
            where = "[curate] reference_images" if source == "reference_images" else label
            raise ZireliaError(f"{where}: {display_path(path)}: {refused.reason}", hint=refused.hint) from None
    vectors = []
    # A reference face may be small (a phone photo): only detection, a single face and the identity matter.
    lenient = curate.model_copy(update={"min_face_size": 8})
    for path, faces in zip(paths, embedder.detect_batch(arrays), strict=True):
        reason, face = face_verdict(faces, lenient)
        if face is None or reason in ("multiple_faces", "low_detection_score"):
            raise ZireliaError(
                f"{label} {path}: {REASON_TEXT[reason]} ({len(faces)} face(s) found by {embedder.name})",
                hint="use photos that show the persona's face alone, frontal and well lit; crop group photos",
            )
        vectors.append((str(path), face.embedding))
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            distance = embedder.distance(vectors[i][1], vectors[j][1])
            if distance > threshold:
                warn(
                    f"reference photos {vectors[i][0]} and {vectors[j][0]} are {distance:.2f} apart (threshold "
                    f"{threshold:.2f}): they may not show the same person"
                )
    centroid = embedder.centroid([vector for _, vector in vectors])
    return IdentityChoice(embedding=centroid, source=source, count=len(vectors))


def anchor_identity(
    embedder: FaceEmbedder, anchor: Path, curate: CurateConfig, threshold: float
) -> IdentityChoice | None:
    """The anchor portrait's face as the persona's identity. In record mode an anchor with no usable face
    (the random demo model draws none) gives None, so the largest cluster is used, as without an anchor."""
    try:
        return reference_identity(embedder, [anchor], curate, threshold, source="anchor")
    except ZireliaError as error:
        if curate.mode == "record":
            warn(escape(f"{error.message}: no identity to judge by, so the largest face cluster is used"))
            return None
        raise ZireliaError(
            f"{error.message}: the anchor gives curation no identity to judge by",
            hint="rerun `zirelia dataset CONFIG` with another [dataset] anchor_image (or more anchor_candidates), "
            "or set [curate] reference_images",
        ) from None


def check_reference_images(paths: Sequence[Path]) -> list[Path]:
    """The reference photos as paths to read (`~` expanded), after checking that each is an image file the
    image opener accepts (header only: cheap enough to run before any stage starts); a ZireliaError naming
    every photo that is not, and why."""
    expanded = [Path(path).expanduser() for path in paths]
    problems = []
    for path in expanded:
        try:
            read_header(path)
        except ImageRefused as refused:
            problems.append(f"{display_path(path)}: {refused.reason}")
    if problems:
        raise ZireliaError(
            "[curate] reference_images: " + "; ".join(problems),
            hint="list image files (PNG, JPEG, WebP, BMP) of the persona; relative paths are read from the folder "
            "you run zirelia from, so absolute paths are safest",
        )
    return expanded


def decide(
    embedder: FaceEmbedder,
    items: Sequence[dict[str, Any]],
    faces_by_sha: dict[str, list[DetectedFace] | None],
    curate: CurateConfig,
    threshold: float,
    anchor: IdentityChoice | None,
    refused: dict[str, str] | None = None,
) -> tuple[list[Decision], IdentityChoice | None]:
    """Decisions for manifest-like records (id, file, sha256, round) and the identity they were judged by;
    `refused` gives the image opener's reason for each unreadable image (by sha256), recorded as its detail."""
    decisions = []
    for record in items:
        faces = faces_by_sha.get(record["sha256"])
        reason, face = face_verdict(faces, curate)
        detail = (refused or {}).get(record["sha256"]) if reason == "unreadable" else None
        decisions.append(
            Decision(
                id=record["id"],
                file=record["file"],
                round=int(record.get("round", 0)),
                reason=reason,
                face=face,
                faces=len(faces or []),
                source=record.get("source"),
                detail=detail,
            )
        )
    candidates = [(d.id, d.face.embedding) for d in decisions if d.reason == REASON_OK and d.face is not None]
    identity = anchor if anchor is not None else choose_cluster(embedder, candidates, threshold)
    for decision in decisions:
        if identity is not None and decision.face is not None:
            decision.distance = embedder.distance(decision.face.embedding, identity.embedding)
        if decision.reason == REASON_OK and (decision.distance is None or decision.distance > threshold):
            decision.reason = "wrong_identity"
    if identity is not None and identity.source == "cluster":
        identity.count = sum(1 for d in decisions if d.reason == REASON_OK)
    for decision in decisions:
        # record mode keeps every image it could read; enforce keeps the identity only
        decision.kept = decision.reason == REASON_OK or (curate.mode == "record" and decision.reason != "unreadable")
    return decisions, identity


def count_reasons(decisions: Sequence[Decision]) -> dict[str, int]:
    """How many decisions have each reason, every reason listed (zero included), in REASON_TEXT's order."""
    counter = Counter(decision.reason for decision in decisions)
    return {reason: counter.get(reason, 0) for reason in REASON_TEXT}
