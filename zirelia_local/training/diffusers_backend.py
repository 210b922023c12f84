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
6. at the end of every `sample_every_n_epochs`-th epoch, draw the sample prompts with the model in memory and
   judge them (`live_samples`, the live identity curve), which may stop training there (`[train] early_stop`).

A rerun resumes from the newest state; with more `epochs` in the config it trains on from there.
Everything random (shuffling, noise, timesteps) is drawn from generators seeded by (seed, epoch), so a run
stopped and resumed at an epoch boundary gives the same weights as one that never stopped.

This module holds the loop; `diffusers_plan` resolves the settings and holds the flow-matching formulas,
`diffusers_data` reads and encodes the training set, `diffusers_save` writes the LoRA files.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar, warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import append_jsonl, read_jsonl, write_jsonl
from zirelia_local.training.diffusers_data import batch_tensors, load_component, load_encoder, read_examples
from zirelia_local.training.diffusers_plan import (
    MAX_GRAD_NORM,
    DiffusersTrainPlan,
    describe_plan,
    flow_matching_loss,
    plan_training,
    sample_sigmas,
    selected_count,
)
from zirelia_local.training.diffusers_save import (
    check_fingerprint,
    clear_old_outputs,
    keep_last_epoch_file,
    lora_path,
    save_lora,
    state_fingerprint,
    training_result,
)
from zirelia_local.training.flux_cache import CACHE_DIR, Example, FluxEncoder, encode_with_cache
from zirelia_local.training.live_identity import EpochJudge, finished_early, start_live_curve
from zirelia_local.training.live_samples import LiveSamples
from zirelia_local.training.outputs import TrainingResult, train_dir
from zirelia_local.training.step_time import STEP_SECONDS, StepTimes

if TYPE_CHECKING:
    import torch

    from zirelia_local.training.train_state import TrainState

METRICS_FILE = "metrics.jsonl"


def _make_optimizer(name: str, params: list[Any], lr: float, device: torch.device) -> Any:
    """The plan's optimizer over `params`; AdamW8bit only where bitsandbytes runs (CUDA)."""
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
    """A generator for one epoch's draws (`purpose` 0: shuffling, 1: noise and timesteps).

    Seeded by (seed, epoch) alone, so a run resumed at an epoch boundary draws what an unbroken run would.
    """
    import torch

    return torch.Generator().manual_seed((seed * 1_000_003 + epoch * 101 + purpose) % (2**63))


def train_diffusers(config: ZireliaConfig, dry_run: bool = False, live: EpochJudge | None = None) -> TrainingResult:
    """Train the persona LoRA with diffusers + peft; see the module docstring. `live` judges each sampled
    epoch's images (the live identity curve and its early stop, `live_identity`)."""
    out_dir = train_dir(config)
    name = config.lora_name
    if config.train.model_type != "flux":
        raise ZireliaError(
            f"the diffusers backend trains FLUX only, but [train] model_type is {config.train.model_type!r}",
            hint='use backend = "kohya" for SDXL / SD 1.5',
        )

    if dry_run:
        plan = plan_training(config, selected_count(config))
        info(describe_plan(plan))
        info(f"would write {out_dir}/{name}-000001.safetensors ... {name}.safetensors, cache in {out_dir / CACHE_DIR}")
        return TrainingResult(backend="diffusers", output_dir=out_dir, dry_run=True)

    from zirelia_local.dataset.captions import write_training_set
    from zirelia_local.training.train_state import find_states

    plan_probe = plan_training(config, 0)
    training_set = write_training_set(
        config, config.run_dir, batch_size=plan_probe.batch_size, resolution=plan_probe.resolution
    )
    examples = read_examples(training_set.folder, training_set.image_ids)
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
        return training_result(out_dir, name)
    if finished_early(config, out_dir) is not None:
        return training_result(out_dir, name)
    return _train(config, plan, examples, out_dir, name, resume, live)


def _train(
    config: ZireliaConfig,
    plan: DiffusersTrainPlan,
    examples: list[Example],
    out_dir: Path,
    name: str,
    resume: TrainState | None,
    live: EpochJudge | None = None,
) -> TrainingResult:
    """Steps 2-5 of the module docstring, from `resume` (or from scratch) to the plan's last epoch."""
    import torch
    from accelerate import Accelerator
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict

    from zirelia_local.training.lora_format import lora_target_modules, single_linear1_loadable
    from zirelia_local.training.train_state import load_train_state, save_train_state

    train = config.train
    info(describe_plan(plan))
    started = datetime.now(UTC)
    device = torch.device(plan.device)
    weight_dtype = getattr(torch, plan.weight_dtype)

    # 1. Encodings (cached, or the encoders kept for on-the-fly encoding).
    encoder: FluxEncoder | None = None

    def open_encoder() -> FluxEncoder:
        nonlocal encoder
        if encoder is None:
            encoder = load_encoder(config, plan)
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
    curve = start_live_curve(config, out_dir, live, resumed_epoch=resume.epoch if resume is not None else 0)
    samples = LiveSamples.prepare(config, plan, out_dir, open_encoder, curve)  # encodes while the encoder is here
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
    transformer = load_component(
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
    fingerprint = state_fingerprint(plan, targets)

    optimizer = _make_optimizer(plan.optimizer, lora_params, plan.learning_rate, device)
    start_epoch, step = 0, 0
    metrics_path = out_dir / METRICS_FILE
    if resume is not None:
        check_fingerprint(resume, fingerprint, out_dir)
        lora_state, optimizer_state = load_train_state(resume)
        result = set_peft_model_state_dict(transformer, lora_state)
        if getattr(result, "unexpected_keys", None):
            raise ZireliaError(f"the LoRA in {resume.folder} does not fit this model", hint=f"delete {out_dir}")
        optimizer.load_state_dict(optimizer_state)
        start_epoch, step = resume.epoch, resume.step
        info(f"resuming from {resume.folder.name}: epoch {start_epoch}, step {step}")
        keep_last_epoch_file(out_dir, name, start_epoch)
        if metrics_path.is_file():
            write_jsonl(
                metrics_path,
                [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step and r.get("epoch", 0) <= start_epoch],
            )
    else:
        clear_old_outputs(out_dir, name)
        write_jsonl(metrics_path, [])
    append_jsonl(metrics_path, {"event": "cache", **{k: v for k, v in asdict(stats).items() if k != "removed"}})

    accelerator = Accelerator(mixed_precision=plan.mixed_precision, cpu=device.type == "cpu")
    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    transformer.train()

    has_guidance = bool(accelerator.unwrap_model(transformer).config.guidance_embeds)
    save_dtype = weight_dtype if device.type == "cuda" else torch.float32

    total_examples = len(examples) * plan.num_repeats
    try:
        step_times = StepTimes()
        # The bar quotes the median step time (training/step_time.py), not rich's own rate.
        with progress_bar("train", total=plan.total_steps, unit="step", show_rate=False) as advance:
            advance(step)
            for epoch in range(start_epoch + 1, plan.epochs + 1):
                order = torch.randperm(total_examples, generator=_epoch_generator(train.seed, epoch, 0))
                noise_gen = _epoch_generator(train.seed, epoch, 1)
                losses: list[float] = []
                for start in range(0, total_examples, plan.batch_size):
                    began = time.perf_counter()
                    batch = [examples[int(i) % len(examples)] for i in order[start : start + plan.batch_size]]
                    indices = [int(i) % len(examples) for i in order[start : start + plan.batch_size]]
                    x0, prompt_embeds, pooled = batch_tensors(batch, indices, encoded, encoder, plan)
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
                            STEP_SECONDS: round(seconds, 4),
                        },
                    )
                    step_times.add(seconds)
                    advance(
                        1,
                        status=f"epoch {epoch}/{plan.epochs} loss {sum(losses) / len(losses):.4f} {step_times.text()}",
                    )

                last = epoch == plan.epochs
                saved = None
                if last or epoch % train.save_every_n_epochs == 0:
                    lora_state = get_peft_model_state_dict(accelerator.unwrap_model(transformer))
                    saved = lora_path(out_dir, name, epoch, last=last)
                    save_lora(
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
                model = accelerator.unwrap_model(transformer)
                if samples and samples.after_epoch(
                    model, epoch, saved=saved is not None, autocast=accelerator.autocast
                ):
                    break  # an early stop, after this epoch's LoRA and state were saved
    finally:
        if encoder is not None:
            encoder.release()
    return training_result(out_dir, name)
