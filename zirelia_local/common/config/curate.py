"""[curate]: keeping one identity in the training set."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from zirelia_local.common.config.base import NonEmptyStr, Section


class CurateConfig(Section):
    """Identity curation of the generated set."""

    mode: Literal["enforce", "record"] = Field(
        default="enforce",
        description="`enforce` drops images that are not the persona; `record` scores and logs every image "
        "but drops nothing (for the embedded demo, whose random model draws no faces).",
    )
    embedder: Literal["dlib", "insightface"] = Field(
        default="dlib", description="Face embedder: `dlib` (offline default) or `insightface` (ArcFace buffalo_l)."
    )
    insightface_root: Path = Field(
        default=Path("~/.insightface"),
        description="insightface model root: the files must be in `<root>/models/<insightface_model>/*.onnx`.",
    )
    insightface_model: NonEmptyStr = Field(default="buffalo_l", description="insightface model pack name.")
    threshold: float | None = Field(
        default=None,
        gt=0,
        le=2,
        description="Same-person limit on the embedder's distance scale (lower = more alike); default: the model's "
        "documented value (dlib: euclidean distance 0.6; insightface: 1 - cosine = 0.6, i.e. cosine similarity 0.4).",
    )
    min_face_size: int = Field(default=64, ge=8, description="Smallest face box side, in pixels, kept for training.")
    min_detection_score: float = Field(default=0.5, ge=0.0, le=1.0, description="Lowest detector score accepted.")
    target_count: int | None = Field(
        default=None, ge=1, description="Images wanted after curation (default: dataset.count)."
    )
    min_count: int | None = Field(
        default=None,
        ge=1,
        description="Fewest images allowed to go on to training (default: target_count). Below it the run stops.",
    )
    top_up_rounds: int = Field(default=3, ge=0, le=20, description="Rounds of extra generation to reach the target.")
    reference_images: list[Path] = Field(
        default_factory=list,
        description="Photos of the persona to judge identity by, instead of the largest cluster (or, with "
        "[dataset] identity = anchor, instead of the anchor's face).",
    )
    device: str = Field(
        default="auto", description="`auto`, `cpu`, `cuda` or `cuda:N` (insightface's onnxruntime provider)."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError("must be 'auto', 'cpu', 'cuda' or 'cuda:N'")
        return value

    @model_validator(mode="after")
    def _min_below_target(self) -> CurateConfig:
        if self.min_count is not None and self.target_count is not None and self.min_count > self.target_count:
            raise ValueError(f"min_count ({self.min_count}) cannot exceed target_count ({self.target_count})")
        return self
