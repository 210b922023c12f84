"""Curation: keep one consistent identity in the training set.

FLUX.1-dev draws a different face each time, even with the same descriptors, so the raw synthetic set is a
crowd of lookalikes. This stage, run after the dataset stage:

1. finds the faces in every image (one embedder call per batch, embeddings cached by sha256 in
   `faces.safetensors`, so reruns and top-up rounds only embed new images);
2. rejects images with no face, a face the detector is unsure of, more than one face, or a face too small;
3. finds the persona's identity among the rest: the largest cohesive cluster (in the spirit of "The Chosen
   One", Avrahami et al. 2024) -- the image with the most neighbours within the same-person threshold seeds
   it, its neighbourhood's centroid is refined until the set within the threshold stops changing -- or, when
   `[curate] reference_images` is set, the centroid of the user's photos;
4. keeps the images within the threshold of that reference identity, saved as `identity.safetensors`;
5. if fewer than the target remain, generates more with new seeds (the next entries of the same plan) and
   repeats, up to `top_up_rounds` rounds per run directory; below the minimum it stops with the numbers.

Every decision goes to `curation.jsonl` (one line per input image) and into the image's manifest record
(`curation`), with a summary in `curation.json` and a contact sheet `contact_sheet.png`; then `train_data/`
is rebuilt from the kept images. In `mode = "record"` every image is scored and logged but none is dropped.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape

from zirelia_local.common.config import CurateConfig, ZireliaConfig
from zirelia_local.common.console import info, progress_bar, warn
from zirelia_local.common.contact_sheet import SheetItem, contact_sheet
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import (
    atomic_write_bytes,
    atomic_write_json,
    link_or_copy,
    png_bytes,
    read_json_object,
    read_jsonl,
    sha256_file,
    write_jsonl,
)
from zirelia_local.common.images import IMAGE_SUFFIXES, load_rgb
from zirelia_local.common.manifest import MANIFEST_NAME, Manifest
from zirelia_local.common.rundir import prepare_run_dir
from zirelia_local.dataset.captions import TrainingSet, write_training_set
from zirelia_local.faces import DetectedFace, FaceEmbedder, load_embedder
from zirelia_local.faces.identity import IDENTITY_NAME, ReferenceIdentity, save_identity

CURATION_LOG = "curation.jsonl"
CURATION_SUMMARY = "curation.json"
CONTACT_SHEET = "contact_sheet.png"
FACE_CACHE = "faces.safetensors"
INPUT_DIR = "input"
INPUT_ORIGIN = "images_dir"
EMBED_BATCH = 8
# A top-up round asks for (missing / acceptance rate so far) images, the rate floored at 25% so a run that
# has kept nothing yet asks for 4x the missing count, plus 20% for the images the next round loses too.
TOP_UP_MIN_RATE = 0.25
TOP_UP_MARGIN = 1.2
CLUSTER_MAX_ITERATIONS = 20

REASON_OK = "ok"
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

    def to_record(self, mode: str) -> dict[str, Any]:
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
        return record


@dataclass
class IdentityChoice:
    embedding: np.ndarray
    source: str  # "cluster" or "reference_images"
    count: int
    seed: str | None = None  # the cluster's seed image
    iterations: int = 0


@dataclass
class CurateResult:
    run_dir: Path
    mode: str
    embedder: str
    threshold: float
    decisions: list[Decision]
    identity: IdentityChoice | None
    target: int
    minimum: int
    rounds: int
    counts: dict[str, int] = field(default_factory=dict)
    contact_sheet: Path | None = None
    training_set: TrainingSet | None = None

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.kept]

    @property
    def passing(self) -> list[Decision]:
        """Images enforce mode keeps (in record mode: the ones it would keep)."""
        return [d for d in self.decisions if d.reason == REASON_OK]


# ----------------------------------------------------------------------------------------------- face cache


class FaceCache:
    """Faces per image sha256 for one model, in `faces.safetensors` (embeddings + JSON index in metadata)."""

    def __init__(self, run_dir: Path, model_id: str) -> None:
        self.path = Path(run_dir) / FACE_CACHE
        self.model_id = model_id
        self._faces: dict[str, list[DetectedFace]] = {}
        if self.path.is_file():
            self._load()

    def _load(self) -> None:
        import json

        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(self.path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("model_id") != self.model_id:
                    return  # made by another model: start over
                embeddings = handle.get_tensor("embeddings")
            index = json.loads(metadata.get("index", "{}"))
        except (SafetensorError, OSError, ValueError):
            warn(f"{self.path} is unreadable; faces will be detected again")
            return
        for sha, faces in index.items():
            self._faces[sha] = [
                DetectedFace(box=tuple(face["box"]), score=float(face["score"]), embedding=embeddings[face["row"]])
                for face in faces
            ]

    def get(self, sha256: str) -> list[DetectedFace] | None:
        return self._faces.get(sha256)

    def put(self, sha256: str, faces: list[DetectedFace]) -> None:
        self._faces[sha256] = list(faces)

    def save(self) -> None:
        import json

        from safetensors.numpy import save

        rows: list[np.ndarray] = []
        index: dict[str, list[dict[str, Any]]] = {}
        for sha, faces in self._faces.items():
            index[sha] = []
            for face in faces:
                index[sha].append({"box": list(face.box), "score": float(face.score), "row": len(rows)})
                rows.append(np.asarray(face.embedding, np.float32).ravel())
        dim = rows[0].shape[0] if rows else 1
        embeddings = np.stack(rows) if rows else np.zeros((0, dim), np.float32)
        data = save({"embeddings": embeddings}, metadata={"model_id": self.model_id, "index": json.dumps(index)})
        atomic_write_bytes(self.path, data)


def scan_faces(
    embedder: FaceEmbedder, images: Sequence[tuple[str, Path]], cache: FaceCache
) -> dict[str, list[DetectedFace] | None]:
    """Faces per sha256 for (sha256, path) pairs: cached ones as they are, the rest detected in batches.

    An image that cannot be decoded maps to None (and is not cached, so a repaired file is read again).
    """
    from PIL import Image

    found: dict[str, list[DetectedFace] | None] = {}
    pending: dict[str, Path] = {}
    for sha, path in images:
        cached = cache.get(sha)
        if cached is not None:
            found[sha] = cached
        else:
            pending.setdefault(sha, path)
    if not pending:
        return found
    with progress_bar(f"faces ({embedder.name})", total=len(pending), unit="img") as advance:
        queue = list(pending.items())
        for offset in range(0, len(queue), EMBED_BATCH):
            batch = queue[offset : offset + EMBED_BATCH]
            arrays, owners = [], []
            for sha, path in batch:
                try:
                    arrays.append(load_rgb(path))
                    owners.append(sha)
                except (OSError, ValueError, Image.DecompressionBombError):
                    found[sha] = None
            for sha, faces in zip(owners, embedder.detect_batch(arrays) if arrays else [], strict=True):
                found[sha] = faces
                cache.put(sha, faces)
            cache.save()  # after each batch: a kill loses at most one batch of work
            advance(len(batch))
    return found


# -------------------------------------------------------------------------------------------------- verdicts


def face_verdict(faces: list[DetectedFace] | None, curate: CurateConfig) -> tuple[str, DetectedFace | None]:
    """(reason, main face) from the face checks alone; reason "ok" means: go on to the identity check.

    A second face counts when it passes the score limit and is at least half of `min_face_size`: smaller
    detections are detector noise or far-away people, too small to be learnt as the persona.
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
    return REASON_OK, main


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


def reference_identity(embedder: FaceEmbedder, paths: Sequence[Path], curate: CurateConfig, threshold: float):
    """The centroid of the user's reference photos (each must show exactly one clear face)."""
    missing = [str(path) for path in paths if not Path(path).expanduser().is_file()]
    if missing:
        raise ZireliaError(
            f"[curate] reference_images: file(s) not found: {', '.join(missing)}",
            hint="paths are relative to the directory you run zirelia from; use absolute paths to be sure",
        )
    from PIL import Image

    arrays = []
    for path in paths:
        try:
            arrays.append(load_rgb(Path(path).expanduser()))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise ZireliaError(f"reference photo {path} cannot be read: {error}") from None
    vectors = []
    # A reference face may be small (a phone photo): only detection, a single face and the identity matter.
    lenient = curate.model_copy(update={"min_face_size": 8})
    for path, faces in zip(paths, embedder.detect_batch(arrays), strict=True):
        reason, face = face_verdict(faces, lenient)
        if face is None or reason in ("multiple_faces", "low_detection_score"):
            raise ZireliaError(
                f"reference photo {path}: {REASON_TEXT[reason]} ({len(faces)} face(s) found by {embedder.name})",
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
    return IdentityChoice(embedding=centroid, source="reference_images", count=len(vectors))


def decide(
    embedder: FaceEmbedder,
    items: Sequence[dict[str, Any]],
    faces_by_sha: dict[str, list[DetectedFace] | None],
    curate: CurateConfig,
    threshold: float,
    anchor: IdentityChoice | None,
) -> tuple[list[Decision], IdentityChoice | None]:
    """Decisions for manifest-like records (id, file, sha256, round) and the identity they were judged by."""
    decisions = []
    for record in items:
        faces = faces_by_sha.get(record["sha256"])
        reason, face = face_verdict(faces, curate)
        decisions.append(
            Decision(
                id=record["id"],
                file=record["file"],
                round=int(record.get("round", 0)),
                reason=reason,
                face=face,
                faces=len(faces or []),
                source=record.get("source"),
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


# ------------------------------------------------------------------------------------------------- the inputs


def _generated_records(manifest: Manifest) -> list[dict[str, Any]]:
    return sorted(manifest.generated(), key=lambda record: record.get("index", 0))


def import_images(config: ZireliaConfig, run_dir: Path, folder: Path) -> tuple[Manifest, list[Decision]]:
    """Bring a folder of existing images into the run directory as manifest records (origin `images_dir`).

    Each image becomes `input/input_NNNNN<suffix>`: a hard link (no copy) when it is an upright RGB/grey JPEG
    or PNG, otherwise a normalised PNG (EXIF rotation applied, RGB). Its caption is the trigger word and the
    class phrase, since there are no plan axes. Files that cannot be decoded are skipped, with a decision.
    """
    from PIL import Image, ImageOps

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ZireliaError(f"--images {folder}: no such folder")
    files = sorted(path for path in folder.iterdir() if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ZireliaError(
            f"--images {folder}: no images in it (looked for {', '.join(sorted(IMAGE_SUFFIXES))})",
            hint="sub-folders are not searched; put the photos directly in the folder",
        )
    manifest = Manifest(run_dir)
    planned = [record for record in manifest if record.get("origin") != INPUT_ORIGIN]
    if planned:
        raise ZireliaError(
            f"{run_dir} already holds a generated dataset ({len(planned)} image record(s)); `--images` curates "
            "your own folder in a run directory of its own",
            hint=f"add --run-dir runs/{config.persona.trigger_word}-photos (or any new folder)",
        )
    # A previous --images run is replaced as a whole; the face cache (by sha256) keeps its work.
    input_dir = run_dir / INPUT_DIR
    if input_dir.is_dir():
        for path in input_dir.iterdir():
            if path.is_file():
                path.unlink()
    caption = f"{config.persona.trigger_word}, a photo of {config.persona.caption_phrase}"
    records, skipped = [], []
    for path in files:
        try:
            with Image.open(path) as opened:
                upright = opened.getexif().get(0x0112, 1) == 1  # EXIF orientation
                linkable = opened.format in ("JPEG", "PNG") and opened.mode in ("RGB", "L") and upright
                size = opened.size
                image = None if linkable else ImageOps.exif_transpose(opened).convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError):
            skipped.append(Decision(id=None, file=str(path), round=0, reason="unreadable", source=str(path)))
            continue
        image_id = f"input_{len(records):05d}"
        if image is None:
            target = input_dir / f"{image_id}{path.suffix.lower()}"
            link_or_copy(path, target)
        else:
            target = input_dir / f"{image_id}.png"
            atomic_write_bytes(target, png_bytes(image))
            size = image.size
        records.append(
            {
                "id": image_id,
                "index": len(records),
                "round": 0,
                "file": f"{INPUT_DIR}/{target.name}",
                "source": str(path.resolve()),
                "origin": INPUT_ORIGIN,
                "prompt": None,
                "caption": caption,
                "seed": None,
                "axes": {},
                "width": size[0],
                "height": size[1],
                "status": "generated",
                "sha256": sha256_file(target),
            }
        )
    write_jsonl(run_dir / MANIFEST_NAME, records)
    info(
        f"imported {len(records)} image(s) from {folder} into {input_dir}"
        + (f", {len(skipped)} unreadable" if skipped else "")
    )
    return Manifest(run_dir), skipped


# ------------------------------------------------------------------------------------------------- top-up


def _append_plan(run_dir: Path, entries: Sequence[Any]) -> None:
    from zirelia_local.dataset.plan import PLAN_NAME

    path = run_dir / PLAN_NAME
    existing = list(read_jsonl(path)) if path.is_file() else []
    known = {record["index"] for record in existing}
    write_jsonl(path, existing + [entry.to_record() for entry in entries if entry.index not in known])


def top_up_count(missing: int, passing: int, scanned: int) -> int:
    """How many images a top-up round generates (see TOP_UP_MIN_RATE)."""
    rate = passing / scanned if scanned else 0.0
    return max(1, math.ceil(missing * TOP_UP_MARGIN / max(rate, TOP_UP_MIN_RATE)))


class _Generator:
    """Loads the FLUX pipeline on first use only, and keeps it across top-up rounds."""

    def __init__(self, config: ZireliaConfig, pipe: Any = None) -> None:
        self.config = config
        self.pipe = pipe

    def generate(self, run_dir: Path, manifest: Manifest, entries: Sequence[Any], round_index: int) -> None:
        from zirelia_local.dataset.generation import generate_images

        if self.pipe is None:
            from zirelia_local.dataset.flux import load_generator_pipeline

            self.pipe = load_generator_pipeline(self.config, "for top-up generation")
        _append_plan(run_dir, entries)
        generate_images(self.config, run_dir, entries, manifest, round_index=round_index, pipe=self.pipe)


def _finish_interrupted_top_up(config: ZireliaConfig, run_dir: Path, manifest: Manifest, generator: _Generator) -> None:
    """Generate top-up images a killed run planned but did not draw (same plan entries, same seeds)."""
    from zirelia_local.dataset.plan import plan_images

    leftover = [r for r in manifest if r.get("status") != "generated" and r.get("index", 0) >= config.dataset.count]
    if not leftover:
        return
    first, last = min(r["index"] for r in leftover), max(r["index"] for r in leftover)
    wanted = {r["index"] for r in leftover}
    entries = [
        e for e in plan_images(config.persona, config.dataset, start=first, count=last - first + 1) if e.index in wanted
    ]
    info(f"finishing {len(entries)} top-up image(s) an interrupted run planned")
    generator.generate(run_dir, manifest, entries, max(int(r.get("round", 1)) for r in leftover))


# ------------------------------------------------------------------------------------------------- outputs


def _label(decision: Decision) -> str:
    name = decision.id or Path(decision.file).name
    distance = "" if decision.distance is None else f" d={decision.distance:.2f}"
    verdict = "kept" if decision.kept else "rejected"
    return f"{name}{distance}\n{verdict}: {REASON_TEXT[decision.reason]}"


def _write_contact_sheet(config: ZireliaConfig, run_dir: Path, result: CurateResult) -> Path:
    def order(decision: Decision) -> tuple[int, float, str]:
        return (
            0 if decision.reason == REASON_OK else 1,
            decision.distance if decision.distance is not None else 9.0,
            decision.file,
        )

    items = []
    for decision in sorted(result.decisions, key=order):
        path = Path(decision.file) if decision.id is None else run_dir / decision.file
        items.append(
            SheetItem(
                path=path,
                label=_label(decision),
                ok=decision.reason == REASON_OK,
                box=decision.face.box if decision.face else None,
            )
        )
    title = (
        f"{config.persona.name}: {len(result.passing)} of {len(result.decisions)} image(s) are the identity "
        f"({result.embedder}, distance <= {result.threshold:.2f}; mode {result.mode}; green = same identity)"
    )
    thumb = 160 if len(items) <= 200 else 96
    return contact_sheet(items, run_dir / CONTACT_SHEET, thumb=thumb, columns=8, title=title)


def _counts(decisions: Sequence[Decision]) -> dict[str, int]:
    counter = Counter(decision.reason for decision in decisions)
    return {reason: counter.get(reason, 0) for reason in REASON_TEXT}


def _write_outputs(config: ZireliaConfig, run_dir: Path, manifest: Manifest, result: CurateResult) -> None:
    write_jsonl(run_dir / CURATION_LOG, [decision.to_record(result.mode) for decision in result.decisions])
    for decision in result.decisions:
        if decision.id is not None and decision.id in manifest:
            record = decision.to_record(result.mode)
            mirror = {
                key: record[key]
                for key in ("kept", "reason", "distance", "faces", "face_size", "detection_score", "mode")
            }
            manifest.upsert({"id": decision.id, "curation": mirror})
    manifest.save()
    identity = result.identity
    if identity is not None:
        save_identity(
            run_dir,
            ReferenceIdentity(
                embedding=identity.embedding, embedder=result.embedder, source=identity.source, count=identity.count
            ),
        )
    else:
        (run_dir / IDENTITY_NAME).unlink(missing_ok=True)  # never leave an identity that no longer holds
    result.contact_sheet = _write_contact_sheet(config, run_dir, result)
    atomic_write_json(
        run_dir / CURATION_SUMMARY,
        {
            "mode": result.mode,
            "embedder": result.embedder,
            "threshold": result.threshold,
            "identity": None
            if identity is None
            else {"source": identity.source, "count": identity.count, "seed": identity.seed, "file": IDENTITY_NAME},
            "images": len(result.decisions),
            "kept": len(result.kept),
            "same_identity": len(result.passing),
            "target": result.target,
            "minimum": result.minimum,
            "top_up_rounds": result.rounds,
            "counts": result.counts,
            "ok": result.mode == "record" or len(result.kept) >= result.minimum,
        },
    )
    result.training_set = write_training_set(config, run_dir)


def _shortfall_error(
    config: ZireliaConfig, manifest: Manifest, result: CurateResult, images_dir: Path | None
) -> ZireliaError:
    counts = result.counts
    numbers = (
        f"planned {len(manifest)}, generated {len(manifest.generated())}, no face {counts['no_face']}, "
        f"low detection score {counts['low_detection_score']}, more than one face {counts['multiple_faces']}, "
        f"face too small {counts['face_too_small']}, wrong identity {counts['wrong_identity']}"
        + (f", unreadable {counts['unreadable']}" if counts["unreadable"] else "")
        + f"; kept {len(result.kept)}, needed {result.minimum}"
    )
    if images_dir is not None:
        message = f"curation of {images_dir} kept too few images to train on: {numbers}"
        hint = (
            f"add more photos of the persona to {images_dir}, or lower [curate] min_count; see "
            f"{result.run_dir / CONTACT_SHEET} and {CURATION_LOG} for each image's verdict"
        )
    else:
        message = f"curation kept too few images after {result.rounds} top-up round(s): {numbers}"
        hint = (
            f"see {result.run_dir / CONTACT_SHEET} and {CURATION_LOG} for each verdict. If the images show no "
            "faces, the generator is not drawing people (check [generator] model). Otherwise raise [curate] "
            f"top_up_rounds (now {config.curate.top_up_rounds}) to generate more, loosen [curate] threshold "
            f"(now {result.threshold:.2f}), give [curate] reference_images, or lower [curate] min_count"
        )
    return ZireliaError(message, hint=hint)


def check_curation_for_training(config: ZireliaConfig, *, dry_run: bool = False) -> None:
    """Refuse to train on a set that curation rejected; warn when it was never curated.

    The curation stage raises when it keeps too few images, but `zirelia train` can run alone afterwards,
    and `train_data/` then still holds the few it kept: training on them would quietly make a weak LoRA.
    """
    run_dir = config.run_dir
    path = run_dir / CURATION_SUMMARY
    summary = read_json_object(path)
    if summary is None:
        if config.curate.mode == "enforce":
            warn(
                escape(
                    f"{path.name} not found in {run_dir}: training on the uncurated set (run `zirelia curate "
                    "CONFIG` first to keep one identity)"
                )
            )
        return
    if summary.get("mode") == "record" and config.curate.mode == "enforce":
        message = f'{path} was written in [curate] mode = "record" (nothing dropped), but the config now says "enforce"'
        hint = "rerun `zirelia curate CONFIG` to drop the images that are not the persona"
    elif summary.get("ok", True):
        return
    else:
        message = (
            f"curation kept {summary.get('kept')} image(s) in {run_dir}, fewer than the minimum "
            f"{summary.get('minimum')}: training on them would make a weak LoRA"
        )
        hint = (
            f"see {run_dir / CONTACT_SHEET} and {CURATION_LOG}; rerun `zirelia curate CONFIG` with more "
            "[curate] top_up_rounds, a looser threshold or reference_images, or lower [curate] min_count"
        )
    if dry_run:
        warn(escape(f"{message}; {hint}"))
        return
    raise ZireliaError(message, hint=hint)


# --------------------------------------------------------------------------------------------------- stage


def run_curate(
    config: ZireliaConfig,
    images_dir: Path | None = None,
    *,
    embedder: FaceEmbedder | None = None,
    pipe: Any = None,
) -> CurateResult:
    """Curate the generated set (or the images in `images_dir`) down to one identity; see the module doc.

    `embedder` and `pipe` reuse an already loaded face embedder or FLUX pipeline (tests, notebooks).
    """
    curate = config.curate
    run_dir = prepare_run_dir(config)
    skipped: list[Decision] = []
    if images_dir is not None:
        manifest, skipped = import_images(config, run_dir, Path(images_dir))
    else:
        manifest = Manifest(run_dir)
        if any(record.get("origin") == INPUT_ORIGIN for record in manifest):
            raise ZireliaError(
                f"{run_dir} holds images imported with --images, not a generated dataset",
                hint="rerun with the same --images DIR, or curate the generated set in another run directory",
            )
    generator = _Generator(config, pipe)
    if images_dir is None and curate.mode == "enforce":
        _finish_interrupted_top_up(config, run_dir, manifest, generator)
    records = _generated_records(manifest)
    if not records and not skipped:
        raise ZireliaError(f"no generated images in {run_dir}", hint="run `zirelia dataset CONFIG` first")

    embedder = embedder or load_embedder(curate)
    threshold = curate.threshold if curate.threshold is not None else embedder.threshold
    anchor = (
        reference_identity(embedder, curate.reference_images, curate, threshold) if curate.reference_images else None
    )
    cache = FaceCache(run_dir, embedder.model_id)
    target, minimum = config.curate_target, config.curate_minimum
    can_top_up = images_dir is None and curate.mode == "enforce"
    info(
        f"curating {len(records)} image(s) with {embedder.name} (same person: distance <= {threshold:.2f}), "
        f"mode {curate.mode}, target {target}"
    )
    while True:
        faces = scan_faces(embedder, [(r["sha256"], run_dir / r["file"]) for r in records], cache)
        decisions, identity = decide(embedder, records, faces, curate, threshold, anchor)
        passing = sum(1 for decision in decisions if decision.reason == REASON_OK)
        rounds_done = max((int(r.get("round", 0)) for r in records), default=0)
        if not can_top_up or passing >= target or rounds_done >= curate.top_up_rounds:
            break
        from zirelia_local.dataset.plan import plan_images

        count = top_up_count(target - passing, passing, len(records))
        start = max((int(r.get("index", 0)) for r in manifest), default=-1) + 1
        round_index = rounds_done + 1
        info(
            f"top-up round {round_index}/{curate.top_up_rounds}: {passing} of {target} image(s) kept so far, "
            f"generating {count} more (plan entries {start}-{start + count - 1}, new seeds)"
        )
        entries = plan_images(config.persona, config.dataset, start=start, count=count)
        generator.generate(run_dir, manifest, entries, round_index)
        records = _generated_records(manifest)

    decisions = decisions + skipped
    result = CurateResult(
        run_dir=run_dir,
        mode=curate.mode,
        embedder=embedder.name,
        threshold=threshold,
        decisions=decisions,
        identity=identity,
        target=target,
        minimum=minimum,
        rounds=max((int(r.get("round", 0)) for r in records), default=0),
        counts=_counts(decisions),
    )
    _write_outputs(config, run_dir, manifest, result)
    summary = ", ".join(f"{REASON_TEXT[k]} {v}" for k, v in result.counts.items() if v and k != REASON_OK)
    info(
        f"curation: {len(result.passing)} of {len(decisions)} image(s) are the persona"
        + (f" ({summary})" if summary else "")
        + f"; {len(result.kept)} go on to training ({result.training_set.folder}); contact sheet {result.contact_sheet}"
    )
    if curate.mode == "record":
        if result.passing != result.kept:
            warn(
                escape(
                    f'[curate] mode = "record": nothing was dropped, although {len(result.kept) - len(result.passing)} image(s) failed the checks'
                )
            )
        return result
    if len(result.kept) < minimum:
        raise _shortfall_error(config, manifest, result, Path(images_dir) if images_dir is not None else None)
    if len(result.kept) < target:
        warn(
            f"curation kept {len(result.kept)} image(s), fewer than the target {target} (minimum {minimum}): training goes on"
        )
    return result
