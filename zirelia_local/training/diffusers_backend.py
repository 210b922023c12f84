"""The built-in FLUX LoRA trainer: diffusers + peft + accelerate, no sd-scripts needed.

What one run does, in order:

1. rebuild `train_data/` from the manifest (`captions.write_training_set`) and read its images + captions;
2. encode every image (VAE latents, packed 2x2) and caption (T5 + CLIP pooled) once into `train/cache/`
   (`flux_cache`), then free the encoders; later runs reuse the cache;
3. load the transformer alone, add a peft LoRA (rank `network_dim`, alpha `network_alpha`) on its attention
   and MLP projections (`lora_format.lora_target_modules`), gradient checkpointing on request;
4. train with rectified-flow matching as sd-scripts' FLUX trainer does: x_t = (1 - t) x0 + t noise, target
   noise - x0, t drawn by `timestep_sampling` (sd-scripts' `shift`: sigmoid of a normal, shifted by
   `discrete_flow_shift`), FLUX's guidance embedding set to `guidance_scale`, MSE loss, AdamW, grad-norm 1;
5. every `save_every_n_epochs` epochs and at the end, save the LoRA in kohya's FLUX format
   (`<name>-000001.safetensors`, last `<name>.safetensors`, `ss_*` metadata) and a resumable state.

A rerun resumes from the newest state; with more `epochs` in the config it trains on from there.
Everything random (shuffling, noise, timesteps) is drawn from generators seeded by (seed, epoch), so a run
stopped and resumed at an epoch boundary gives the same weights as one that never stopped.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar, warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import append_jsonl, atomic_write_bytes, read_jsonl, sha256_file, write_jsonl
from zirelia_local.training.flux_cache import CACHE_DIR, Example, FluxEncoder, encode_with_cache
from zirelia_local.training.outputs import epoch_lora_files, train_dir
from zirelia_local.training.stage import TrainingResult

if TYPE_CHECKING:
    import torch

METRICS_FILE = "metrics.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
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


def _optimizer_name(value: str | None) -> str:
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


def _selected_count(config: ZireliaConfig) -> int:
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
        optimizer=_optimizer_name(train.optimizer),
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


def _describe(plan: DiffusersTrainPlan) -> str:
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


# --------------------------------------------------------------------------------------------- data


def _read_examples(folder: Path, image_ids: list[str]) -> list[Example]:
    examples: list[Example] = []
    for image_id in image_ids:
        image = next(
            (folder / f"{image_id}{suffix}" for suffix in IMAGE_SUFFIXES if (folder / f"{image_id}{suffix}").is_file()),
            None,
        )
        caption_path = folder / f"{image_id}.txt"
        if image is None or not caption_path.is_file():
            raise ZireliaError(
                f"{folder} lacks the image or caption of {image_id}",
                hint="rerun `zirelia caption CONFIG` to rebuild the training set",
            )
        caption = (
            caption_path.read_text(encoding="utf-8").splitlines()[0].strip() if caption_path.stat().st_size else ""
        )
        if not caption:
            raise ZireliaError(f"caption {caption_path} is empty", hint="rerun `zirelia caption CONFIG`")
        examples.append(Example(image=image, caption=caption, image_sha256=sha256_file(image)))
    return examples


def _load_component(loader: Any, source: str, config: ZireliaConfig, **kwargs: Any) -> Any:
    """`loader(source, **kwargs)` (a `from_pretrained`), with the hub's failures explained as in generation."""
    from zirelia_local.common.console import quiet_library_progress
    from zirelia_local.dataset.flux import _explain_load_failure, _hub_token

    quiet_library_progress()
    # Safetensors only, unless the user opted in to pickled weights ([run] allow_pickle).
    kwargs.setdefault("use_safetensors", None if config.run.allow_pickle else True)
    if not Path(source).exists():
        kwargs.setdefault("revision", config.generator.revision)
        kwargs.setdefault("token", _hub_token())
    try:
        return loader(source, **kwargs)
    except (OSError, ValueError) as error:
        if Path(source).exists():
            raise ZireliaError(f"could not load the model from {source}: {error}") from error
        raise _explain_load_failure(source, error) from error


def _open_encoder(config: ZireliaConfig, plan: DiffusersTrainPlan) -> FluxEncoder:
    import torch
    from diffusers import FluxPipeline

    info("loading the VAE and text encoders to encode the training set")
    dtype = getattr(torch, plan.weight_dtype)
    pipe = _load_component(FluxPipeline.from_pretrained, plan.model_source, config, transformer=None, dtype=dtype)
    pipe.to(plan.device)
    pipe.set_progress_bar_config(disable=True)
    return FluxEncoder(pipe, device=torch.device(plan.device), max_sequence_length=plan.max_sequence_length)


# --------------------------------------------------------------------------------------------- output


def _fingerprint(plan: DiffusersTrainPlan, targets: list[str]) -> dict[str, Any]:
    """Settings a resumed run must share with the state it resumes (else the weights do not fit)."""
    return {
        "model": plan.model_id,
        "network_dim": plan.network_dim,
        "network_alpha": plan.network_alpha,
        "optimizer": plan.optimizer,
        "target_modules": targets,
    }


def _training_metadata(plan: DiffusersTrainPlan, config: ZireliaConfig) -> dict[str, Any]:
    train = config.train
    return {
        "ss_learning_rate": plan.learning_rate,
        "ss_unet_lr": plan.learning_rate,
        "ss_num_train_images": plan.images * plan.num_repeats,
        "ss_num_batches_per_epoch": plan.steps_per_epoch,
        "ss_num_epochs": plan.epochs,
        "ss_batch_size_per_device": plan.batch_size,
        "ss_total_batch_size": plan.batch_size,
        "ss_max_train_steps": plan.total_steps,
        "ss_lr_scheduler": "constant",
        "ss_optimizer": plan.optimizer,
        "ss_max_grad_norm": MAX_GRAD_NORM,
        "ss_mixed_precision": plan.mixed_precision,
        "ss_gradient_checkpointing": plan.gradient_checkpointing,
        "ss_cache_latents": plan.cache_latents,
        "ss_seed": train.seed,
        "ss_guidance_scale": plan.guidance_scale,
        "ss_timestep_sampling": plan.timestep_sampling,
        "ss_sigmoid_scale": SIGMOID_SCALE,
        "ss_discrete_flow_shift": plan.discrete_flow_shift,
        "ss_model_prediction_type": plan.model_prediction_type,
        "ss_weighting_scheme": "uniform",
        "ss_loss_type": "l2",
        "ss_training_comment": f"zirelia-local diffusers backend, persona {config.persona.trigger_word}",
        "zirelia_backend": "diffusers",
    }


def _save_lora(
    path: Path,
    lora_state: dict[str, torch.Tensor],
    *,
    plan: DiffusersTrainPlan,
    config: ZireliaConfig,
    epoch: int,
    step: int,
    started: datetime,
    save_dtype: torch.dtype,
) -> None:
    from safetensors.torch import save

    from zirelia_local.training.lora_format import kohya_metadata, kohya_network_hashes, peft_to_kohya

    tensors = peft_to_kohya(lora_state, alpha=plan.network_alpha, dtype=save_dtype)
    metadata = kohya_metadata(
        output_name=config.lora_name,
        network_dim=plan.network_dim,
        network_alpha=plan.network_alpha,
        epoch=epoch,
        steps=step,
        resolution=plan.resolution,
        base_model=plan.model,
        training=_training_metadata(plan, config),
        trigger_phrase=config.persona.trigger_word,
        started_at=started,
    )
    metadata.update(kohya_network_hashes(tensors, metadata))
    atomic_write_bytes(path, save(tensors, metadata))


def _lora_path(out_dir: Path, name: str, epoch: int, *, last: bool) -> Path:
    return out_dir / (f"{name}.safetensors" if last else f"{name}-{epoch:06d}.safetensors")


def _result(out_dir: Path, name: str) -> TrainingResult:
    return TrainingResult(backend="diffusers", output_dir=out_dir, epoch_files=epoch_lora_files(out_dir, name))


# --------------------------------------------------------------------------------------------- training


def _make_optimizer(name: str, params: list[Any], lr: float, device: torch.device) -> Any:
    import torch

    if name == "AdamW8bit":
        try:
            import bitsandbytes as bnb  # type: ignore[import-not-found]
        except ImportError:
            raise ZireliaError(
                "[train] optimizer AdamW8bit needs the bitsandbytes package",
                hint='`pip install bitsandbytes` (CUDA only), or set optimizer = "AdamW"',
            ) from None
        if device.type != "cuda":
            raise ZireliaError("[train] optimizer AdamW8bit needs a CUDA GPU", hint='set optimizer = "AdamW"')
        return bnb.optim.AdamW8bit(params, lr=lr)
    if name == "Adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, scale_parameter=False, relative_step=False, warmup_init=False)
    return torch.optim.AdamW(params, lr=lr)


def _epoch_generator(seed: int, epoch: int, purpose: int) -> torch.Generator:
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 101 + purpose) % (2**63))


def train_diffusers(config: ZireliaConfig, dry_run: bool = False) -> TrainingResult:
    """Train the persona LoRA with diffusers + peft; see the module docstring."""
    out_dir = train_dir(config)
    name = config.lora_name
    if config.train.model_type != "flux":
        raise ZireliaError(
            f"the diffusers backend trains FLUX only, but [train] model_type is {config.train.model_type!r}",
            hint='use backend = "kohya" for SDXL / SD 1.5',
        )

    if dry_run:
        plan = plan_training(config, _selected_count(config))
        info(_describe(plan))
        info(f"would write {out_dir}/{name}-000001.safetensors ... {name}.safetensors, cache in {out_dir / CACHE_DIR}")
        return TrainingResult(backend="diffusers", output_dir=out_dir, dry_run=True)

    from zirelia_local.dataset.captions import write_training_set
    from zirelia_local.training.train_state import find_states

    plan_probe = plan_training(config, 0)
    training_set = write_training_set(
        config, config.run_dir, batch_size=plan_probe.batch_size, resolution=plan_probe.resolution
    )
    examples = _read_examples(training_set.folder, training_set.image_ids)
    if not examples:
        raise ZireliaError(
            f"no training images in {training_set.folder}",
            hint="run `zirelia dataset CONFIG` (and `zirelia curate CONFIG`) first",
        )
    plan = plan_training(config, len(examples))
    out_dir.mkdir(parents=True, exist_ok=True)
    if plan.gpu_memory_gib is not None and plan.gpu_memory_gib < 23:
        warn(
            f"this GPU has {plan.gpu_memory_gib:g} GiB: FLUX.1 needs about 24 GiB in the diffusers backend even with "
            'fp8 base weights; backend = "kohya" (block swap) trains on 12-16 GiB cards'
        )
    if config.train.num_processes > 1:
        warn("the diffusers backend trains on one device: [train] num_processes is used by the kohya backend only")

    states = find_states(out_dir, name)
    resume = states[-1] if states else None
    if resume is not None and resume.epoch >= plan.epochs:
        info(f"already trained: the newest state is at epoch {resume.epoch} of {plan.epochs} ({resume.folder.name})")
        return _result(out_dir, name)
    return _train(config, plan, examples, out_dir, name, resume)


def _train(config, plan, examples, out_dir, name, resume) -> TrainingResult:
    import torch
    from accelerate import Accelerator
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    from zirelia_local.training.lora_format import lora_target_modules, single_linear1_loadable
    from zirelia_local.training.train_state import load_train_state, save_train_state

    train = config.train
    info(_describe(plan))
    started = datetime.now(UTC)
    device = torch.device(plan.device)
    weight_dtype = getattr(torch, plan.weight_dtype)

    # 1. Encodings (cached, or the encoders kept for on-the-fly encoding).
    encoder: FluxEncoder | None = None

    def open_encoder() -> FluxEncoder:
        nonlocal encoder
        if encoder is None:
            encoder = _open_encoder(config, plan)
        return encoder

    encoded, stats = encode_with_cache(
        examples,
        out_dir / CACHE_DIR,
        resolution=plan.resolution,
        max_sequence_length=plan.max_sequence_length,
        model_id=plan.model_id,
        open_encoder=open_encoder,
        cache_latents=plan.cache_latents,
        cache_text=plan.cache_text_encoder_outputs,
    )
    on_the_fly = not (plan.cache_latents and plan.cache_text_encoder_outputs)
    if on_the_fly:
        open_encoder()
    elif encoder is not None:
        encoder.release()
        encoder = None
    info(
        f"cache: {stats.latents_encoded} image(s) encoded, {stats.latents_reused} reused; "
        f"{stats.text_encoded} caption(s) encoded, {stats.text_reused} reused"
    )

    # 2. Transformer + LoRA.
    transformer = _load_component(
        FluxTransformer2DModel.from_pretrained, plan.model_source, config, subfolder="transformer", dtype=weight_dtype
    )
    transformer.requires_grad_(False)
    if plan.fp8_base:
        # Cast on the CPU before the move: the bf16 weights alone (23.8 GB for FLUX.1) would not fit.
        info("storing the frozen transformer weights in fp8 (computed in bf16) to fit this GPU's memory")
        transformer.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=weight_dtype)
    transformer.to(device)
    if plan.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    if not single_linear1_loadable(transformer):
        info(
            "this model's single blocks are not FLUX.1's widths, so diffusers could not reload a LoRA on their "
            "fused linear1 (q/k/v/proj_mlp): training their proj_out (linear2) only"
        )
    targets = lora_target_modules(transformer)
    torch.manual_seed(train.seed)  # LoRA init draws from the global generator
    transformer.add_adapter(
        LoraConfig(r=plan.network_dim, lora_alpha=plan.network_alpha, init_lora_weights=True, target_modules=targets)
    )
    lora_params = [p for p in transformer.parameters() if p.requires_grad]
    for param in lora_params:
        param.data = param.data.float()  # trainable weights in float32, the frozen base in weight_dtype
    fingerprint = _fingerprint(plan, targets)

    optimizer = _make_optimizer(plan.optimizer, lora_params, plan.learning_rate, device)
    start_epoch, step = 0, 0
    metrics_path = out_dir / METRICS_FILE
    if resume is not None:
        _check_fingerprint(resume, fingerprint, out_dir)
        lora_state, optimizer_state = load_train_state(resume)
        result = set_peft_model_state_dict(transformer, lora_state)
        if getattr(result, "unexpected_keys", None):
            raise ZireliaError(f"the LoRA in {resume.folder} does not fit this model", hint=f"delete {out_dir}")
        optimizer.load_state_dict(optimizer_state)
        start_epoch, step = resume.epoch, resume.step
        info(f"resuming from {resume.folder.name}: epoch {start_epoch}, step {step}")
        _keep_last_epoch_file(out_dir, name, start_epoch)
        if metrics_path.is_file():
            write_jsonl(
                metrics_path,
                [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step and r.get("epoch", 0) <= start_epoch],
            )
    else:
        _clear_old_outputs(out_dir, name)
        write_jsonl(metrics_path, [])
    append_jsonl(metrics_path, {"event": "cache", **{k: v for k, v in asdict(stats).items() if k != "removed"}})

    accelerator = Accelerator(mixed_precision=plan.mixed_precision, cpu=device.type == "cpu")
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    transformer.train()

    has_guidance = bool(accelerator.unwrap_model(transformer).config.guidance_embeds)
    save_dtype = weight_dtype if device.type == "cuda" else torch.float32

    total_examples = len(examples) * plan.num_repeats
    try:
        with progress_bar("train", total=plan.total_steps, unit="step") as advance:
            advance(step)
            for epoch in range(start_epoch + 1, plan.epochs + 1):
                order = torch.randperm(total_examples, generator=_epoch_generator(train.seed, epoch, 0))
                noise_gen = _epoch_generator(train.seed, epoch, 1)
                losses: list[float] = []
                for start in range(0, total_examples, plan.batch_size):
                    began = time.perf_counter()
                    batch = [examples[int(i) % len(examples)] for i in order[start : start + plan.batch_size]]
                    indices = [int(i) % len(examples) for i in order[start : start + plan.batch_size]]
                    x0, prompt_embeds, pooled = _batch_tensors(batch, indices, encoded, encoder, plan)
                    x0 = x0.to(device, torch.float32)
                    noise = torch.randn(x0.shape, generator=noise_gen).to(device)
                    sigmas = sample_sigmas(plan, x0.shape[0], x0.shape[1], noise_gen).to(device)
                    noisy = (1.0 - sigmas.view(-1, 1, 1)) * x0 + sigmas.view(-1, 1, 1) * noise
                    # Token positions as FluxPipeline makes them: (row, column) of each 2x2 patch; text at 0.
                    side = math.isqrt(x0.shape[1])
                    img_ids = FluxPipeline._prepare_latent_image_ids(1, side, side, device, weight_dtype)
                    txt_ids = torch.zeros(prompt_embeds.shape[1], 3, device=device, dtype=weight_dtype)
                    guidance = (
                        torch.full((x0.shape[0],), plan.guidance_scale, device=device, dtype=torch.float32)
                        if has_guidance
                        else None
                    )
                    with accelerator.autocast():
                        model_pred = transformer(
                            hidden_states=noisy.to(weight_dtype),
                            encoder_hidden_states=prompt_embeds.to(device, weight_dtype),
                            pooled_projections=pooled.to(device, weight_dtype),
                            timestep=sigmas.to(weight_dtype),
                            img_ids=img_ids,
                            txt_ids=txt_ids,
                            guidance=guidance,
                            return_dict=False,
                        )[0]
                    loss = flow_matching_loss(model_pred, noisy, x0, noise, sigmas, plan.model_prediction_type)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        accelerator.clip_grad_norm_(lora_params, MAX_GRAD_NORM)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    value = float(loss.detach().item())
                    if not math.isfinite(value):
                        raise ZireliaError(
                            f"the training loss became {value} at step {step} (epoch {epoch})",
                            hint='lower [train] learning_rate, or use mixed_precision = "bf16" instead of fp16',
                        )
                    losses.append(value)
                    seconds = time.perf_counter() - began
                    append_jsonl(
                        metrics_path,
                        {
                            "step": step,
                            "epoch": epoch,
                            "loss": round(value, 6),
                            "lr": plan.learning_rate,
                            "s_per_step": round(seconds, 4),
                        },
                    )
                    advance(1, status=f"epoch {epoch}/{plan.epochs} loss {sum(losses) / len(losses):.4f}")

                last = epoch == plan.epochs
                saved = None
                if last or epoch % train.save_every_n_epochs == 0:
                    lora_state = get_peft_model_state_dict(accelerator.unwrap_model(transformer))
                    saved = _lora_path(out_dir, name, epoch, last=last)
                    _save_lora(
                        saved,
                        lora_state,
                        plan=plan,
                        config=config,
                        epoch=epoch,
                        step=step,
                        started=started,
                        save_dtype=save_dtype,
                    )
                    save_train_state(
                        out_dir,
                        name,
                        epoch=epoch,
                        step=step,
                        last=last,
                        lora_state=lora_state,
                        optimizer_state=optimizer.state_dict(),
                        fingerprint=fingerprint,
                    )
                mean = sum(losses) / len(losses)
                append_jsonl(
                    metrics_path,
                    {
                        "event": "epoch",
                        "epoch": epoch,
                        "mean_loss": round(mean, 6),
                        "file": saved.name if saved else None,
                    },
                )
                info(f"epoch {epoch}/{plan.epochs}: mean loss {mean:.4f}" + (f", saved {saved.name}" if saved else ""))
    finally:
        if encoder is not None:
            encoder.release()
    return _result(out_dir, name)


def _batch_tensors(batch, indices, encoded, encoder, plan):
    import torch

    if plan.cache_latents:
        x0 = torch.stack([encoded[i].latents for i in indices])
    else:
        x0 = encoder.encode_images([example.image for example in batch], plan.resolution)
    if plan.cache_text_encoder_outputs:
        prompt_embeds = torch.stack([encoded[i].prompt_embeds for i in indices])
        pooled = torch.stack([encoded[i].pooled_prompt_embeds for i in indices])
    else:
        prompt_embeds, pooled = encoder.encode_prompts([example.caption for example in batch])
    return x0, prompt_embeds, pooled


def _check_fingerprint(state, fingerprint: dict[str, Any], out_dir: Path) -> None:
    changed = [key for key in fingerprint if key in state.fingerprint and state.fingerprint[key] != fingerprint[key]]
    if changed:
        details = ", ".join(
            f"{key} {json.dumps(state.fingerprint[key])[:60]} -> {json.dumps(fingerprint[key])[:60]}" for key in changed
        )
        raise ZireliaError(
            f"the training state {state.folder} was made with other settings ({details})",
            hint=f"restore those [train] settings to resume, or delete {out_dir} to train from scratch",
        )


def _keep_last_epoch_file(out_dir: Path, name: str, epoch: int) -> None:
    """Training on past the old last epoch: its `<name>.safetensors` becomes `<name>-<epoch>.safetensors`."""
    from zirelia_local.training.outputs import read_epoch

    final = out_dir / f"{name}.safetensors"
    if final.is_file() and read_epoch(final) == epoch:
        final.replace(_lora_path(out_dir, name, epoch, last=False))


def _clear_old_outputs(out_dir: Path, name: str) -> None:
    """A fresh start: LoRA files of an earlier run under the same name would mix into this run's epochs."""
    old = list(epoch_lora_files(out_dir, name).values())
    if old:
        info(f"no training state to resume: removing {len(old)} LoRA file(s) of an earlier run from {out_dir}")
        for path in old:
            path.unlink(missing_ok=True)
