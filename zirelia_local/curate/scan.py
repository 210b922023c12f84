"""The face scan: faces per image, detected in batches and cached by sha256 in `faces.safetensors`, so reruns
and top-up rounds only embed new images."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from zirelia_local.common.console import progress_bar, warn
from zirelia_local.common.files import atomic_write_bytes
from zirelia_local.common.images import ImageRefused, load_rgb
from zirelia_local.faces import DetectedFace, FaceEmbedder

FACE_CACHE = "faces.safetensors"
EMBED_BATCH = 8


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
        """The faces cached for an image, or None when it was never scanned."""
        return self._faces.get(sha256)

    def put(self, sha256: str, faces: list[DetectedFace]) -> None:
        """Remember an image's faces (in memory until `save`)."""
        self._faces[sha256] = list(faces)

    def save(self) -> None:
        """Write every cached face to `faces.safetensors`, atomically."""
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
    embedder: FaceEmbedder,
    images: Sequence[tuple[str, Path]],
    cache: FaceCache,
    refused: dict[str, str] | None = None,
) -> dict[str, list[DetectedFace] | None]:
    """Faces per sha256 for (sha256, path) pairs: cached ones as they are, the rest detected in batches.

    An image the image opener refuses maps to None (and is not cached, so a repaired file is read again);
    its reason goes into `refused` (by sha256) when given.
    """
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
                except ImageRefused as refusal:
                    found[sha] = None
                    if refused is not None:
                        refused[sha] = refusal.reason
            for sha, faces in zip(owners, embedder.detect_batch(arrays) if arrays else [], strict=True):
                found[sha] = faces
                cache.put(sha, faces)
            cache.save()  # after each batch: a kill loses at most one batch of work
            advance(len(batch))
    return found
