"""Identity cohesion of a generated set: how much its faces agree, whatever made them.

Written to `curation.json` and shown in the report for every run, so a user can compare `[dataset] identity =
"text"` and `"anchor"` on their own persona with the same three figures:

- mean pairwise face distance: over every pair of images whose face passed the face checks, on the
  embedder's own distance scale (dlib: euclidean, same person <= 0.6); lower = one face;
- share in the largest identity cluster: the members of curation's largest cohesive cluster (the same
  clustering `choose_cluster` does without reference photos) over ALL scanned images, so images without a
  usable face count against it;
- top-up rounds: how many rounds of extra generation the run needed to reach its target.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from zirelia_local.curate.verdicts import choose_cluster
from zirelia_local.faces import FaceEmbedder


@dataclass(frozen=True)
class Cohesion:
    """The three figures, and what they were computed on."""

    images: int
    faces: int
    mean_pairwise_distance: float | None
    largest_cluster: int
    largest_cluster_share: float
    top_up_rounds: int
    target_reached: bool

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        if self.mean_pairwise_distance is not None:
            record["mean_pairwise_distance"] = round(self.mean_pairwise_distance, 4)
        record["largest_cluster_share"] = round(self.largest_cluster_share, 4)
        return record


def mean_pairwise_distance(embedder: FaceEmbedder, vectors: Sequence[np.ndarray]) -> float | None:
    """The mean of the embedder's distance over every pair; None with fewer than two faces."""
    if len(vectors) < 2:
        return None
    total, pairs = 0.0, 0
    for i in range(len(vectors)):
        for j in range(i + 1, len(vectors)):
            total += embedder.distance(vectors[i], vectors[j])
            pairs += 1
    return total / pairs


def identity_cohesion(
    embedder: FaceEmbedder,
    faces: Sequence[tuple[str, np.ndarray]],
    images: int,
    threshold: float,
    *,
    top_up_rounds: int = 0,
    target_reached: bool = True,
) -> Cohesion:
    """The figures for `images` scanned images, `faces` being (image id, embedding) of those with a usable face."""
    vectors = [np.asarray(vector, np.float32) for _, vector in faces]
    cluster = choose_cluster(embedder, list(faces), threshold)
    members = cluster.count if cluster is not None else 0
    return Cohesion(
        images=images,
        faces=len(vectors),
        mean_pairwise_distance=mean_pairwise_distance(embedder, vectors),
        largest_cluster=members,
        largest_cluster_share=members / images if images else 0.0,
        top_up_rounds=top_up_rounds,
        target_reached=target_reached,
    )
