"""[critic] and [generate]: judging images of the persona, and drawing new ones with the LoRA."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from zirelia_local.common.config.base import NonEmptyStr, Section, Seed

DEFAULT_CRITIC_PROMPTS = [
    "reading a book in a sunlit library",
    "walking along a rainy city street at night, neon reflections",
    "sitting at a wooden table in a mountain cabin, warm lamp light",
    "standing on a beach at sunrise, wind in the hair",
]


class CriticConfig(Section):
    """Evaluation of the trained LoRA and choice of the best epoch."""

    prompts: list[NonEmptyStr] = Field(
        default_factory=lambda: list(DEFAULT_CRITIC_PROMPTS),
        min_length=1,
        description="Evaluation scenes, not in the training set; the trigger word is inserted automatically.",
    )
    seeds: list[Seed] = Field(default_factory=lambda: [1001, 1002], min_length=1, description="Seeds per prompt.")
    epochs: Literal["search", "all", "last"] | list[int] = Field(
        default="search",
        description="Epochs to score: `search` starts from the live identity curve's best epochs (or every 4th "
        "and the last, without one) and scores neighbours until none is better; `all`, `last`, or a list.",
    )
    lora_scale: float = Field(default=1.0, gt=0, le=2.0, description="LoRA strength for evaluation images.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries of a failed image with an adjusted prompt.")
    identity_threshold: float | None = Field(
        default=None, description="Same-person threshold (default: the embedder's documented value)."
    )
    clip_model: NonEmptyStr = Field(default="ViT-B-32", description="open_clip model name for prompt adherence.")
    clip_pretrained: str | None = Field(
        default=None,
        description="open_clip weights: a local .safetensors file or an open_clip pretrained tag (needs the hub).",
    )
    min_clip_score: float = Field(default=0.18, description="Lowest CLIP image-text cosine accepted.")
    blur_threshold: float = Field(default=60.0, ge=0, description="Lowest Laplacian variance accepted (sharpness).")
    dark_threshold: float = Field(default=0.08, ge=0, le=1, description="Mean brightness below this: underexposed.")
    bright_threshold: float = Field(default=0.92, ge=0, le=1, description="Mean brightness above this: overexposed.")
    min_face_size: int = Field(default=64, ge=8, description="Smallest face box side in evaluation images.")
    second_face_ratio: float = Field(
        default=0.5,
        gt=0,
        le=1.0,
        description="A second face at least this fraction of the main face's size counts as another main face "
        "(the image then fails `exactly one main face`); smaller ones are background faces and are ignored.",
    )
    face_edge_margin: int = Field(
        default=2,
        ge=0,
        description="A face box closer than this many pixels to the image border counts as cut off by the frame.",
    )
    retry_lora_scale_step: float = Field(
        default=0.15,
        ge=0,
        le=1.0,
        description="How much a retry raises the LoRA scale when the identity was too weak.",
    )
    max_retry_lora_scale: float = Field(
        default=1.5, gt=0, le=2.0, description="Highest LoRA scale a retry may raise it to."
    )
    max_clip_drop: float = Field(
        default=0.03,
        ge=0,
        le=1.0,
        description="Epoch selection: an epoch whose mean CLIP score falls more than this below the best epoch's "
        "has collapsed prompt adherence (overfitting) and is not chosen.",
    )
    steps: int | None = Field(default=None, ge=1, description="Denoising steps (default: generator.steps).")
    guidance: float | None = Field(
        default=None, ge=0, description="Guidance (default: generator.guidance for FLUX; CFG 7.0 for sd15/sdxl)."
    )
    resolution: int | None = Field(
        default=None,
        ge=64,
        multiple_of=16,
        description="Evaluation image size (default: dataset.resolution; for sd15/sdxl at most their native 512/1024).",
    )


class GenerateConfig(Section):
    """`zirelia generate`: new persona images with the trained LoRA, each passed by the critic (flags override)."""

    prompts: list[NonEmptyStr] = Field(default_factory=list, description="Scenes drawn when no prompt is passed.")
    count: int = Field(default=1, ge=1, le=10_000, description="Images per prompt (--count).")
    seed: Seed | None = Field(default=None, description="Image n of a prompt uses seed + n; default: from its text.")
    lora: Path | None = Field(default=None, description="LoRA file (--lora); default: the run's best.safetensors.")
    lora_scale: float | None = Field(
        default=None, gt=0, le=2.0, description="LoRA scale (--scale); default: the critic's for the best epoch."
    )
    max_retries: int | None = Field(
        default=None, ge=0, le=10, description="Retries of a rejected image; default: [critic] max_retries."
    )
    keep_rejected: bool = Field(default=False, description="Keep rejected attempts under rejected/.")
    steps: int | None = Field(default=None, ge=1, description="Denoising steps (default: as the critic draws).")
    guidance: float | None = Field(default=None, ge=0, description="Guidance (default: as the critic draws).")
    resolution: int | None = Field(default=None, ge=64, multiple_of=16, description="Size (default: the critic's).")
