"""The persona's reference identity on disk: `identity.safetensors` in the run directory.

Written by curation (the centroid of the kept cluster, or of the user's reference photos), read by the
critic. One tensor `embedding` (float32, 1-D) and metadata naming the embedder, so an identity made by one
model is never compared with vectors of another.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zirelia_local.common.errors import ZireliaError

IDENTITY_NAME = "identity.safetensors"


@dataclass(frozen=True)
class ReferenceIdentity:
    embedding: np.ndarray
    embedder: str
    source: str  # "cluster" or "reference_images"
    count: int  # how many faces the centroid averages


def save_identity(run_dir: Path, identity: ReferenceIdentity) -> Path:
    from safetensors.numpy import save

    from zirelia_local.common.files import atomic_write_bytes

    data = save(
        {"embedding": np.asarray(identity.embedding, np.float32)},
        metadata={"embedder": identity.embedder, "source": identity.source, "count": str(identity.count)},
    )
    return atomic_write_bytes(Path(run_dir) / IDENTITY_NAME, data)


def load_identity(run_dir: Path, *, embedder: str | None = None) -> ReferenceIdentity:
    from safetensors import safe_open

    path = Path(run_dir) / IDENTITY_NAME
    if not path.is_file():
        raise ZireliaError(
            f"no reference identity in {run_dir} ({IDENTITY_NAME} is missing)",
            hint="run `zirelia curate CONFIG` first (it writes the persona's identity)",
        )
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        embedding = handle.get_tensor("embedding")
    identity = ReferenceIdentity(
        embedding=embedding,
        embedder=metadata.get("embedder", "unknown"),
        source=metadata.get("source", "unknown"),
        count=int(metadata.get("count", "0")),
    )
    if embedder is not None and identity.embedder != embedder:
        raise ZireliaError(
            f"{path} was made with the {identity.embedder} embedder, but the config uses {embedder}",
            hint="rerun `zirelia curate CONFIG` with the current embedder",
        )
    return identity
