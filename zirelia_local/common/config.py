"""The one typed config of a run, loaded from TOML.

Every stage reads the same `ZireliaConfig`. Unknown keys, wrong types and out-of-range values are
rejected with a `ConfigError` that names the file and the dotted key, so a typo never silently falls
back to a default. Relative paths in the file are resolved against the current working directory,
as sd-scripts and most command-line tools do.

This module is longer than the house's ~400 lines on purpose: the sections are one schema, read side by
side (defaults, limits and the cross-section checks of `ZireliaConfig` refer to each other), and
`docs/config.md` is generated from them in this order. Splitting them across files would scatter that one
picture; the loading code at the end is the only other part, and it is short.
"""

from __future__ import annotations

import os
import re
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator

from zirelia_local.common.errors import ConfigError
from zirelia_local.common.paths import describe_os_error, display_path

TRIGGER_WORD_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{2,39}$"
# A config is a few KB; anything past this is the wrong file (a device such as /dev/zero would never end).
MAX_CONFIG_BYTES = 2**20

NonEmptyStr = Annotated[str, Field(min_length=1)]
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]


class _Section(BaseModel):
    """Base of every section: unknown keys are errors, values are checked on assignment too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PersonaConfig(_Section):
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


class DatasetConfig(_Section):
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


class GeneratorConfig(_Section):
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


class CurateConfig(_Section):
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


ExtraArgValue = str | int | float | bool | list[str | int | float] | None
VramPreset = Literal["auto", "12gb", "16gb", "24gb", "40gb", "80gb"]


class TrainConfig(_Section):
    """LoRA training."""

    backend: Literal["kohya", "diffusers"] = Field(
        default="kohya",
        description="`kohya` launches sd-scripts (the reference trainer); `diffusers` runs the built-in "
        "diffusers+peft FLUX trainer (no sd-scripts needed).",
    )
    model_type: Literal["flux", "sdxl", "sd15"] = Field(default="flux", description="Base model family.")
    sd_scripts: Path | None = Field(
        default=None, description="sd-scripts checkout (default: the ZIRELIA_SD_SCRIPTS environment variable)."
    )
    python: Path | None = Field(
        default=None,
        description="Python with sd-scripts' requirements (default: <sd_scripts>/venv/bin/python if present, "
        "else the current one).",
    )
    pretrained_model: str | None = Field(
        default="auto",
        description="kohya: base model file (flux1-dev.safetensors, an SDXL/SD1.5 checkpoint or diffusers folder). "
        "FLUX `auto`: from [generator] model's repository (Hugging Face cache or folder): flux1-dev.safetensors "
        "where it is there, else its diffusers transformer. SDXL/SD1.5 need a path.",
    )
    clip_l: Literal["auto"] | Path | None = Field(
        default="auto",
        description="kohya FLUX: CLIP-L text encoder file; `auto`: text_encoder/model.safetensors of [generator] "
        "model's repository.",
    )
    t5xxl: Literal["auto"] | Path | None = Field(
        default="auto",
        description="kohya FLUX: T5-XXL text encoder file; `auto`: text_encoder_2/ of [generator] model's "
        "repository, its shards merged once into one file in the zirelia cache (ZIRELIA_CACHE; 9.5 GB for FLUX.1-dev).",
    )
    ae: Literal["auto"] | Path | None = Field(
        default="auto",
        description="kohya FLUX: autoencoder file; `auto`: ae.safetensors of [generator] model's repository.",
    )
    tokenizer_cache_dir: Path | None = Field(
        default=None, description="kohya: local tokenizer copies for offline machines (--tokenizer_cache_dir)."
    )
    vram: VramPreset = Field(
        default="auto", description="Memory preset; `auto` picks from the detected GPU's memory and says which."
    )
    network_dim: int = Field(default=32, ge=1, le=1024, description="LoRA rank.")
    network_alpha: float = Field(default=16.0, gt=0, description="LoRA alpha (scale = alpha / dim).")
    epochs: int = Field(default=20, ge=1, le=1000, description="Training epochs.")
    learning_rate: float = Field(default=1e-4, gt=0, lt=1, description="Learning rate.")
    optimizer: str | None = Field(default=None, description="Optimizer type (default: from the VRAM preset).")
    batch_size: int | None = Field(default=None, ge=1, description="Batch size (default: from the VRAM preset).")
    resolution: int | None = Field(
        default=None, ge=64, multiple_of=16, description="Training resolution (default: preset, capped by dataset)."
    )
    num_repeats: int = Field(default=1, ge=1, le=1000, description="Times each image is seen per epoch.")
    mixed_precision: Literal["bf16", "fp16", "no"] = Field(default="bf16", description="accelerate mixed precision.")
    num_processes: int = Field(default=1, ge=1, description="GPUs to train on (accelerate --num_processes).")
    gpu_ids: str | None = Field(default=None, description="accelerate --gpu_ids, e.g. '0,1'.")
    save_every_n_epochs: int = Field(default=1, ge=1, description="Save a LoRA (and state) every N epochs.")
    sample_every_n_epochs: int = Field(
        default=1,
        ge=0,
        description="Every N epochs, draw the sample prompts (`sample_prompts.txt`: a few varied prompts with the "
        "trigger word, seeds fixed across epochs) with the model already in memory and judge them: the live "
        "identity curve, printed with the training progress and kept in `train/metrics.jsonl`. 0: never (then "
        "no early stop, and the critic's epoch search starts from a coarse subset).",
    )
    sample_resolution: int = Field(
        default=512,
        ge=64,
        multiple_of=16,
        description="Side of the sample images in pixels (at most dataset.resolution): 512 px shows the face to "
        "the embedder at about a quarter of the cost of 1024 px.",
    )
    early_stop: Literal["off", "identity"] = Field(
        default="off",
        description="`identity`: stop training once the live identity curve has not improved for "
        "`early_stop_patience` sampled epochs, or has fallen for two while the defects rose; it stops after an "
        "epoch's LoRA and state are saved, so a rerun with more `epochs` resumes from there.",
    )
    early_stop_patience: int = Field(
        default=3, ge=1, le=100, description="Sampled epochs without an identity improvement before an early stop."
    )
    early_stop_min_delta: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="Smallest rise of the live curve's mean identity similarity that counts as an improvement.",
    )
    early_stop_min_epochs: int = Field(default=4, ge=1, le=1000, description="Never stop early before this epoch.")
    seed: Seed = Field(default=42, description="Training seed.")
    timestep_sampling: Literal["sigma", "uniform", "sigmoid", "shift", "flux_shift"] = Field(
        default="shift", description="FLUX timestep sampling (sd-scripts' docs recommend shift)."
    )
    discrete_flow_shift: float = Field(default=3.1582, gt=0, description="Shift for timestep_sampling = shift.")
    model_prediction_type: Literal["raw", "additive", "sigma_scaled"] = Field(
        default="raw", description="FLUX model prediction type."
    )
    guidance_scale: float = Field(default=1.0, ge=0, description="FLUX guidance embedding value during training.")
    gradient_checkpointing: bool = Field(default=True, description="Trade compute for memory.")
    cache_latents: bool = Field(default=True, description="Encode images once and reuse the latents.")
    cache_text_encoder_outputs: bool = Field(default=True, description="Encode captions once and reuse them.")
    output_name: str | None = Field(
        default=None, description="LoRA file stem (default: the trigger word). Letters, digits, `-` and `_`."
    )
    extra_args: dict[str, ExtraArgValue] = Field(
        default_factory=dict,
        description="kohya: extra or overriding sd-scripts flags, e.g. `{ max_grad_norm = 1.0 }`; `false`/`null` "
        "removes a flag.",
    )

    @field_validator("output_name")
    @classmethod
    def _safe_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,79}", value):
            raise ValueError("must be 1-80 letters, digits, '-' or '_' (it becomes a file name)")
        return value

    @model_validator(mode="after")
    def _early_stop_needs_samples(self) -> TrainConfig:
        if self.early_stop != "off" and self.sample_every_n_epochs == 0:
            raise ValueError(
                "early_stop = 'identity' judges the sample images of each epoch, but sample_every_n_epochs = 0 "
                "draws none: set sample_every_n_epochs = 1 (or early_stop = 'off')"
            )
        return self


DEFAULT_CRITIC_PROMPTS = [
    "reading a book in a sunlit library",
    "walking along a rainy city street at night, neon reflections",
    "sitting at a wooden table in a mountain cabin, warm lamp light",
    "standing on a beach at sunrise, wind in the hair",
]


class CriticConfig(_Section):
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


class GenerateConfig(_Section):
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


class RunConfig(_Section):
    """Where the run's files go."""

    dir: Path | None = Field(default=None, description="Run directory (default: runs/<trigger_word>).")
    allow_pickle: bool = Field(
        default=False,
        description="Allow pickled weights (.ckpt/.pt/.bin) from user paths. Unpickling can run code hidden in "
        "the file: leave off unless you trust the source; safetensors files are always accepted.",
    )


class ZireliaConfig(_Section):
    """A whole run: persona -> dataset -> curation -> training -> critic (-> generate)."""

    persona: PersonaConfig
    dataset: DatasetConfig
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    # Not part of the file: where it was read from (for messages and the report).
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def run_dir(self) -> Path:
        return self.run.dir if self.run.dir is not None else Path("runs") / self.persona.trigger_word

    @property
    def curate_target(self) -> int:
        return self.curate.target_count or self.dataset.count

    @property
    def curate_minimum(self) -> int:
        return self.curate.min_count or self.curate_target

    @property
    def lora_name(self) -> str:
        return self.train.output_name or self.persona.trigger_word

    def sd_scripts_dir(self) -> Path | None:
        if self.train.sd_scripts is not None:
            return self.train.sd_scripts.expanduser()
        env = os.environ.get("ZIRELIA_SD_SCRIPTS")
        return Path(env).expanduser() if env else None


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors(include_url=False):
        key = _format_location(tuple(part for part in item["loc"] if not _is_union_tag(part)))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `zirelia config-reference` lists every key)"
        elif item["type"] == "missing":
            message = "required key is missing"
        got = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tried union member's type name into the location ("literal['all','last']", "list[int]").
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def parse_config(data: dict[str, Any], source: str = "<config>") -> ZireliaConfig:
    """Validate an already-parsed TOML document."""
    try:
        config = ZireliaConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None
    return config


def load_config(path: str | os.PathLike[str], *, run_dir: str | os.PathLike[str] | None = None) -> ZireliaConfig:
    """Read and validate a TOML config; `run_dir` overrides `[run] dir` (the CLI's --run-dir)."""
    path = Path(path)
    raw = _read_config_bytes(path)
    shown = display_path(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {shown} is not valid TOML: {error}") from None
    config = parse_config(data, shown)
    config._source = path
    if run_dir is not None:
        config.run.dir = Path(run_dir)
    return config


def _read_config_bytes(path: Path) -> bytes:
    """The config file's bytes; a ConfigError naming the path when it is missing, a folder, unreadable or far
    too large to be a config (a device such as /dev/zero would otherwise be read forever)."""
    shown = display_path(path)
    if path.is_dir():
        tomls = sorted(child.name for child in path.glob("*.toml"))[:3]
        raise ConfigError(
            f"config file {shown} is a folder, not a file",
            hint=f"pass one of its .toml files, e.g. {display_path(path / tomls[0])}"
            if tomls
            else "pass the path of a .toml file, e.g. configs/demo.toml",
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {shown}", hint="pass the path of a .toml file, e.g. configs/demo.toml"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read config file {shown}: {describe_os_error(error)}",
            hint="check that it is a file you may read (ls -l), or copy it somewhere readable",
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {shown} is larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a zirelia config",
            hint="pass the path of a .toml file, e.g. configs/demo.toml",
        )
    return raw
