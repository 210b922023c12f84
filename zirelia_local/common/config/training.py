"""[train]: the LoRA training, with kohya sd-scripts or the built-in diffusers backend."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from zirelia_local.common.config.base import Section, Seed

ExtraArgValue = str | int | float | bool | list[str | int | float] | None
VramPreset = Literal["auto", "12gb", "16gb", "24gb", "40gb", "80gb"]


class TrainConfig(Section):
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
