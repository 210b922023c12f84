"""What a diffusers-backend run will do, and the rectified-flow objective it trains.

`plan_training` resolves the config into a `DiffusersTrainPlan` (device, dtypes, sizes, step counts) that
`--dry-run` prints and the training loop follows. `sample_sigmas` and `flow_matching_loss` are sd-scripts'
FLUX formulas (timestep sampling, velocity target), kept next to the plan settings that choose between them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import warn
from zirelia_local.common.errors import ZireliaError

if TYPE_CHECKING:
    import torch

MAX_GRAD_NORM = 1.0  # sd-scripts' default --max_grad_norm
SIGMOID_SCALE = 1.0  # sd-scripts' default --sigmoid_scale
NUM_TRAIN_TIMESTEPS = 1000
OPTIMIZERS = ("AdamW", "AdamW8bit", "Adafactor")


@dataclass(frozen=True)
class DiffusersTrainPlan:
    """Everything a run will do, resolved from the config (printed by --dry-run)."""

    model: str
    model_source: str
    model_id: str
    device: str
    mixed_precision: str
    weight_dtype: str
    images: int
    num_repeats: int
    batch_size: int
    resolution: int
    epochs: int
    steps_per_epoch: int
    total_steps: int
    network_dim: int
    network_alpha: float
    learning_rate: float
    optimizer: str
    timestep_sampling: str
    discrete_flow_shift: float
    model_prediction_type: str
    guidance_scale: float
    gradient_checkpointing: bool
    cache_latents: bool
    cache_text_encoder_outputs: bool
    max_sequence_length: int
    fp8_base: bool
    gpu_memory_gib: float | None


# --------------------------------------------------------------------------------------------- planning


def optimizer_name(value: str | None) -> str:
    """sd-scripts' optimizer_type spelling, any case (`adamw8bit`, `AdamW`, `adafactor`)."""
    if value is None:
        return "AdamW"
    wanted = value.lower().replace("_", "").replace("-", "")
    for name in OPTIMIZERS:
        if wanted == name.lower():
            return name
    raise ZireliaError(
        f"[train] optimizer {value!r} is not supported by the diffusers backend",
        hint=f'use one of {", ".join(OPTIMIZERS)} (or backend = "kohya" for sd-scripts\' full list)',
    )


def selected_count(config: ZireliaConfig) -> int:
    """How many images the manifest selects for training (a dry run plans with these, writing nothing)."""
    from zirelia_local.common.manifest import Manifest
    from zirelia_local.dataset.captions import selected_records

    return len(selected_records(Manifest(config.run_dir)))


def plan_training(config: ZireliaConfig, images: int) -> DiffusersTrainPlan:
    """Resolve devices, dtypes, sizes and step counts for `images` training images."""
    import torch

    from zirelia_local.dataset.flux import gpu_total_memory, resolve_device, resolve_model_source

    train = config.train
    device = resolve_device(config.generator.device)
    if device.type == "cuda":
        mixed_precision = train.mixed_precision
        if mixed_precision == "bf16" and not torch.cuda.is_bf16_supported():
            warn("this GPU has no bfloat16: training in float16 mixed precision instead")
            mixed_precision = "fp16"
    else:
        mixed_precision = "no"  # CPU / MPS autocast gives no speed here; float32 is exact and portable
    weight_dtype = {"bf16": "bfloat16", "fp16": "float16"}.get(mixed_precision, "float32")
    total = gpu_total_memory(device)
    fp8_base = bool(
        device.type == "cuda"
        and (train.vram in ("12gb", "16gb", "24gb") or (train.vram == "auto" and (total or 0) < 39 * 1024**3))
    )
    batch_size = train.batch_size or 1
    resolution = min(train.resolution or config.dataset.resolution, config.dataset.resolution)
    steps_per_epoch = math.ceil(images * train.num_repeats / batch_size) if images else 0
    source = resolve_model_source(config.generator.model)
    revision = config.generator.revision
    return DiffusersTrainPlan(
        model=config.generator.model,
        model_source=source,
        model_id=source if revision is None else f"{source}@{revision}",
        device=str(device),
        mixed_precision=mixed_precision,
        weight_dtype=weight_dtype,
        images=images,
        num_repeats=train.num_repeats,
        batch_size=batch_size,
        resolution=resolution,
        epochs=train.epochs,
        steps_per_epoch=steps_per_epoch,
        total_steps=steps_per_epoch * train.epochs,
        network_dim=train.network_dim,
        network_alpha=train.network_alpha,
        learning_rate=train.learning_rate,
        optimizer=optimizer_name(train.optimizer),
        timestep_sampling=train.timestep_sampling,
        discrete_flow_shift=train.discrete_flow_shift,
        model_prediction_type=train.model_prediction_type,
        guidance_scale=train.guidance_scale,
        gradient_checkpointing=train.gradient_checkpointing,
        cache_latents=train.cache_latents,
        cache_text_encoder_outputs=train.cache_text_encoder_outputs,
        max_sequence_length=config.generator.max_sequence_length,
        fp8_base=fp8_base,
        gpu_memory_gib=round(total / 1024**3, 1) if total else None,
    )


def describe_plan(plan: DiffusersTrainPlan) -> str:
    """One line saying what the run will do, for the console (dry run and real run alike)."""
    return (
        f"diffusers backend: {plan.model} on {plan.device} ({plan.weight_dtype}"
        f"{', fp8 base weights' if plan.fp8_base else ''}, mixed precision {plan.mixed_precision}); "
        f"{plan.images} image(s) x {plan.num_repeats} repeat(s) at {plan.resolution} px, batch {plan.batch_size}: "
        f"{plan.steps_per_epoch} step(s)/epoch x {plan.epochs} epoch(s) = {plan.total_steps} steps; "
        f"LoRA rank {plan.network_dim} alpha {plan.network_alpha:g}, {plan.optimizer} lr {plan.learning_rate:g}; "
        f"timesteps {plan.timestep_sampling} (shift {plan.discrete_flow_shift:g}), prediction "
        f"{plan.model_prediction_type}, guidance {plan.guidance_scale:g}; cache latents "
        f"{'on' if plan.cache_latents else 'off'}, text encoders {'on' if plan.cache_text_encoder_outputs else 'off'}"
    )


# --------------------------------------------------------------------------------------------- sampling


def sample_sigmas(plan: DiffusersTrainPlan, batch: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """Noise levels t in (0, 1) for one batch, as sd-scripts' `get_noisy_model_input_and_timesteps` draws them.

    `seq_len` is the packed latent length ((H/16) * (W/16)), used by `flux_shift`.
    """
    import torch

    mode = plan.timestep_sampling
    if mode == "uniform":
        return torch.rand(batch, generator=generator)
    if mode == "sigmoid":
        return torch.sigmoid(SIGMOID_SCALE * torch.randn(batch, generator=generator))
    if mode == "shift":
        shift = plan.discrete_flow_shift
        sigmas = torch.sigmoid(SIGMOID_SCALE * torch.randn(batch, generator=generator))
        return (sigmas * shift) / (1 + (shift - 1) * sigmas)
    if mode == "flux_shift":
        # FLUX's resolution-dependent shift: mu linear in the sequence length, 0.5 at 256 tokens, 1.15 at 4096.
        mu = 0.5 + (1.15 - 0.5) / (4096 - 256) * (seq_len - 256)
        sigmas = torch.sigmoid(SIGMOID_SCALE * torch.randn(batch, generator=generator))
        return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))
    # "sigma": a uniform pick among the 1000 training noise levels of a FlowMatch scheduler shifted by
    # discrete_flow_shift (sd-scripts' weighting_scheme uniform).
    shift = plan.discrete_flow_shift
    levels = torch.linspace(1, NUM_TRAIN_TIMESTEPS, NUM_TRAIN_TIMESTEPS).flip(0) / NUM_TRAIN_TIMESTEPS
    levels = shift * levels / (1 + (shift - 1) * levels)
    indices = (torch.rand(batch, generator=generator) * NUM_TRAIN_TIMESTEPS).long()
    return levels[indices]


def flow_matching_loss(
    model_pred: torch.Tensor,
    noisy: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    kind: str,
) -> torch.Tensor:
    """MSE between the (post-processed) prediction and the velocity noise - x0, as sd-scripts computes it."""
    sig = sigmas.view(-1, *([1] * (noisy.ndim - 1)))
    if kind == "additive":
        model_pred = model_pred + noisy
    elif kind == "sigma_scaled":
        model_pred = model_pred * (-sig) + noisy
    target = noise - x0
    per_sample = (model_pred.float() - target.float()).pow(2).flatten(1).mean(dim=1)
    return per_sample.mean()
