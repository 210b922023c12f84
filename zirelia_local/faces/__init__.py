"""Face detection and identity embeddings (dlib offline default, insightface ArcFace)."""

from __future__ import annotations

from zirelia_local.common.config import CurateConfig
from zirelia_local.faces.base import DetectedFace, FaceEmbedder

__all__ = ["DetectedFace", "FaceEmbedder", "load_embedder"]


def load_embedder(curate: CurateConfig) -> FaceEmbedder:
    """The embedder the config names, ready to use."""
    if curate.embedder == "dlib":
        from zirelia_local.faces.dlib_embedder import DlibEmbedder

        return DlibEmbedder()
    from zirelia_local.faces.insightface_embedder import InsightFaceEmbedder

    return InsightFaceEmbedder(
        root=curate.insightface_root.expanduser(), model=curate.insightface_model, device=curate.device
    )
