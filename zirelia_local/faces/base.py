"""The face-identity interface shared by curation and the critic.

An embedder finds faces in an image and returns, per face, its box, the detector's score and an identity
embedding. Each model has its own geometry (dlib: euclidean distance, 0.6 = same person; ArcFace: cosine,
0.4 = same person), so comparisons go through the embedder, never through a raw cosine:

- `distance(a, b)`: the model's native dissimilarity (lower = more alike);
- `similarity(a, b)`: a score where higher = more alike, on the model's own scale;
- `threshold`: the same-person limit on the `distance` scale, documented per model;
- `is_same(a, b)`: `distance(a, b) <= threshold`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class DetectedFace:
    """One face in one image. `box` is (left, top, right, bottom) in pixels of the input image."""

    box: tuple[int, int, int, int]
    score: float
    embedding: np.ndarray = field(repr=False)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def size(self) -> int:
        """The shorter side of the box: what `min_face_size` limits."""
        return min(self.width, self.height)

    @property
    def area(self) -> int:
        return max(self.width, 0) * max(self.height, 0)

    def to_record(self) -> dict[str, Any]:
        return {"box": list(self.box), "score": round(float(self.score), 4), "size": self.size}


class FaceEmbedder(ABC):
    """Detect + embed faces; compare embeddings on the model's own scale."""

    #: short model name recorded in files ("dlib", "insightface")
    name: str
    #: same-person limit on the `distance` scale
    threshold: float

    @abstractmethod
    def detect(self, image: Any) -> list[DetectedFace]:
        """Faces in one image (PIL image, path, or RGB uint8 array), largest first."""

    @property
    def model_id(self) -> str:
        """Names the exact model, so cached embeddings of another model are never reused."""
        return self.name

    def detect_batch(self, images: Sequence[Any]) -> list[list[DetectedFace]]:
        """Faces in several images; models that can batch override this."""
        return [self.detect(image) for image in images]

    @abstractmethod
    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """The model's native dissimilarity between two embeddings (lower = more alike)."""

    @abstractmethod
    def similarity(self, a: np.ndarray, b: np.ndarray) -> float:
        """A score where higher = more alike, on this model's scale."""

    def is_same(self, a: np.ndarray, b: np.ndarray, threshold: float | None = None) -> bool:
        return self.distance(a, b) <= (self.threshold if threshold is None else threshold)

    def centroid(self, embeddings: Sequence[np.ndarray]) -> np.ndarray:
        """The reference identity of a set of embeddings (mean; models with normalised vectors renormalise)."""
        return np.mean(np.stack(embeddings), axis=0).astype(np.float32)
