"""[persona], [dataset] and [generator]: who is drawn, the plan of the dataset, and the FLUX generator."""

from __future__ import annotations

import re
import string
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from zirelia_local.common.config.base import TRIGGER_WORD_PATTERN, NonEmptyStr, Section, Seed


class PersonaConfig(Section):
    """Who the LoRA should draw."""

    name: NonEmptyStr = Field(description="Display name of the persona, used in reports.")
    trigger_word: str = Field(
        description="The token that summons the persona in prompts: one word of 3-40 letters, digits or "
        "underscores, starting with a letter, unlikely to mean anything already (e.g. `siennafox23`).",
    )
    description: NonEmptyStr = Field(
        description="Full look of the persona, written into every generation prompt "
        "(age, hair, eyes, distinctive features)."
    )
    caption_class: str | None = Field(
        default=None,
        description="Short class phrase used in training captions after the trigger word "
        "(e.g. `a 23-year-old woman`). Traits left out of captions are what the trigger word learns. "
        "Default: the description.",
    )

    @field_validator("trigger_word")
    @classmethod
    def _one_safe_token(cls, value: str) -> str:
        if not re.fullmatch(TRIGGER_WORD_PATTERN, value):
            raise ValueError(
                "must be one token of 3-40 letters, digits or underscores starting with a letter "
                "(no spaces or punctuation), e.g. 'siennafox23'"
            )
        return value

    @property
    def caption_phrase(self) -> str:
        return self.caption_class or self.description


DEFAULT_ANGLES = [
    "close-up portrait facing the camera",
    "head and shoulders, three-quarter view",
    "waist-up shot, looking slightly away",
    "profile view",
    "full body shot",
]

PROMPT_FIELDS = {"description", "lighting", "expression", "setting", "outfit", "angle"}
CAPTION_FIELDS = PROMPT_FIELDS | {"trigger_word", "caption_class"}


def _template_fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


class DatasetConfig(Section):
    """The synthetic dataset: how many images, at what size, varied along which axes."""

    count: int = Field(default=40, ge=1, le=100_000, description="Number of images to plan and generate.")
    resolution: int = Field(
        default=1024, ge=64, le=4096, multiple_of=16, description="Square image size in pixels (multiple of 16)."
    )
    seed: Seed = Field(default=0, description="Base seed: the fixed-seed images use it, the rest derive from it.")
    fixed_seed_images: int = Field(
        default=4,
        ge=0,
        description="identity = text: the first N images share the base seed (and a front-facing angle) so the "
        "identity starts from one face; the rest get distinct derived seeds and varied angles. identity = anchor "
        "ignores it: the anchor is that shared start, and every image has its own seed.",
    )
    lighting: list[NonEmptyStr] = Field(min_length=1, description="Lighting variations.")
    expressions: list[NonEmptyStr] = Field(min_length=1, description="Facial expressions.")
    settings: list[NonEmptyStr] = Field(min_length=1, description="Places / backgrounds.")
    outfits: list[NonEmptyStr] = Field(min_length=1, description="Clothing.")
    angles: list[NonEmptyStr] = Field(
        default_factory=lambda: list(DEFAULT_ANGLES),
        min_length=1,
        description="Camera angles / framings. The first is used for the fixed-seed images.",
    )
    prompt_template: NonEmptyStr = Field(
        default="a photo of {description}, {expression}, wearing {outfit}, {setting}, {lighting}, {angle}",
        description="Generation prompt. Fields: {description} {expression} {outfit} {setting} {lighting} {angle}.",
    )
    caption_template: NonEmptyStr = Field(
        default="{trigger_word}, a photo of {caption_class}, {expression}, wearing {outfit}, {setting}, "
        "{lighting}, {angle}",
        description="Training caption (kohya puts the first comma-separated part first; keep the trigger word "
        "there). Fields: those of prompt_template plus {trigger_word} and {caption_class}.",
    )

    identity: Literal["text", "anchor"] = Field(
        default="text",
        description="How the images get one face. `text`: FLUX.1-dev draws every image from the prompt and "
        "curation keeps the largest identity cluster. `anchor`: one portrait (`anchor_image`, or one the "
        "generator draws) and FLUX.1 Kontext puts that person into every planned scene (docs/dataset.md).",
    )
    anchor_image: Path | None = Field(
        default=None,
        description="identity = anchor: a photo of the persona (one face, at least [curate] min_face_size px). "
        "It is checked before anything is drawn, cropped square around the face and copied into the run "
        "directory. Unset: the generator draws `anchor_candidates` portraits and the best one is kept.",
    )
    anchor_candidates: int = Field(
        default=4,
        ge=1,
        le=32,
        description="identity = anchor without anchor_image: portraits drawn (base seed first, then derived "
        "seeds); the one with a single, large, sharp, well-exposed face is the anchor.",
    )
    anchor_prompt: NonEmptyStr = Field(
        default="a photo of {description}, close-up portrait facing the camera, neutral expression, plain light "
        "grey background, soft even studio lighting",
        description="Prompt of the drawn anchor portrait. Field: {description}.",
    )
    instruction_template: NonEmptyStr = Field(
        default="Show this same person with the face and identity unchanged ({description}): {expression}, "
        "wearing {outfit}, {setting}, {lighting}, {angle}",
        description="identity = anchor: the FLUX.1 Kontext instruction for each planned image, applied to the "
        "anchor. Fields: those of prompt_template.",
    )

    @field_validator("prompt_template", "instruction_template")
    @classmethod
    def _known_prompt_fields(cls, value: str) -> str:
        unknown = _template_fields(value) - PROMPT_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(PROMPT_FIELDS)}")
        return value

    @field_validator("anchor_prompt")
    @classmethod
    def _anchor_prompt_fields(cls, value: str) -> str:
        unknown = _template_fields(value) - {"description"}
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: ['description']")
        return value

    @field_validator("caption_template")
    @classmethod
    def _caption_has_trigger(cls, value: str) -> str:
        unknown = _template_fields(value) - CAPTION_FIELDS
        if unknown:
            raise ValueError(f"unknown field(s) {sorted(unknown)}; allowed: {sorted(CAPTION_FIELDS)}")
        if "{trigger_word}" not in value:
            raise ValueError("must contain {trigger_word}: the caption is what binds the trigger word to the face")
        return value

    @model_validator(mode="after")
    def _fixed_within_count(self) -> DatasetConfig:
        if self.identity == "text" and self.fixed_seed_images > self.count:  # anchor ignores fixed seeds
            raise ValueError(f"fixed_seed_images ({self.fixed_seed_images}) cannot exceed count ({self.count})")
        if self.anchor_image is not None and self.identity != "anchor":
            raise ValueError('anchor_image is set but identity = "text": set identity = "anchor" to use the photo')
        return self


MemoryMode = Literal["auto", "none", "model_offload", "sequential_offload"]
Quantization = Literal["auto", "none", "fp8_storage", "bnb_nf4", "bnb_int8"]
DType = Literal["auto", "bfloat16", "float16", "float32"]


class GeneratorConfig(Section):
    """The FLUX pipeline that draws the dataset (and the critic's evaluation images)."""

    model: NonEmptyStr = Field(
        default="black-forest-labs/FLUX.1-dev",
        description="Hub id, local diffusers folder, or `builtin:tiny-flux` (the embedded random test model).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    steps: int = Field(default=28, ge=1, le=200, description="Denoising steps per image.")
    guidance: float = Field(default=3.5, ge=0.0, le=30.0, description="FLUX guidance (distilled CFG).")
    max_sequence_length: int = Field(default=512, ge=16, le=512, description="T5 prompt length in tokens.")
    dtype: DType = Field(default="auto", description="Weights dtype: auto = bfloat16 on GPU, float32 on CPU.")
    device: str = Field(default="auto", description="`auto`, `cpu`, `cuda`, `cuda:N` or `mps`.")
    memory: MemoryMode = Field(
        default="auto",
        description="`none` keeps everything on the GPU (40 GB+); `model_offload` moves whole models to the GPU "
        "in turn (16-24 GB); `sequential_offload` streams layers (under 12 GB, slow); `auto` picks from the "
        "GPU's memory and prints its choice.",
    )
    vae_tiling: bool = Field(default=False, description="Decode the VAE in tiles (saves memory at 1024 px+).")
    quantization: Quantization = Field(
        default="auto",
        description="Transformer weights: `none`; `fp8_storage` (fp8 storage, bf16 compute, half the memory); "
        "`bnb_nf4` / `bnb_int8` (bitsandbytes, CUDA only); `auto` picks with `memory = auto`, else `none`.",
    )
    batch_size: int = Field(default=1, ge=1, le=64, description="Images per pipeline call.")
    kontext_model: NonEmptyStr = Field(
        default="black-forest-labs/FLUX.1-Kontext-dev",
        description="[dataset] identity = anchor: the FluxKontextPipeline that draws every image from the anchor. "
        "Hub id, local diffusers folder, or `builtin:tiny-flux-kontext` (the embedded random test model). "
        "Loaded with this section's device, dtype, memory and quantization.",
    )
    kontext_revision: str | None = Field(default=None, description="Hub revision of kontext_model.")
    kontext_guidance: float = Field(
        default=2.5, ge=0.0, le=30.0, description="FLUX.1 Kontext guidance (distilled CFG; 2.5 in its model card)."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            raise ValueError("must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N'")
        return value
