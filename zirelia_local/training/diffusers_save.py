"""What the diffusers backend leaves in `train/`: LoRA files in kohya's FLUX format (sd-scripts' names and
`ss_*` metadata, so every tool that reads sd-scripts' LoRAs reads ours), the settings a resumable state must
share with the run that resumes it, and the housekeeping of earlier runs' files."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes
from zirelia_local.training.diffusers_plan import MAX_GRAD_NORM, SIGMOID_SCALE, DiffusersTrainPlan
from zirelia_local.training.outputs import TrainingResult, epoch_lora_files

if TYPE_CHECKING:
    import torch

    from zirelia_local.training.train_state import TrainState


# --------------------------------------------------------------------------------------------- resuming


def state_fingerprint(plan: DiffusersTrainPlan, targets: list[str]) -> dict[str, Any]:
    """Settings a resumed run must share with the state it resumes (else the weights do not fit)."""
    return {
        "model": plan.model_id,
        "network_dim": plan.network_dim,
        "network_alpha": plan.network_alpha,
        "optimizer": plan.optimizer,
        "target_modules": targets,
    }


def check_fingerprint(state: TrainState, fingerprint: dict[str, Any], out_dir: Path) -> None:
    """Refuse to resume `state` if it was saved with other settings than `fingerprint` (keys it lacks pass)."""
    changed = [key for key in fingerprint if key in state.fingerprint and state.fingerprint[key] != fingerprint[key]]
    if changed:
        details = ", ".join(
            f"{key} {json.dumps(state.fingerprint[key])[:60]} -> {json.dumps(fingerprint[key])[:60]}" for key in changed
        )
        raise ZireliaError(
            f"the training state {state.folder} was made with other settings ({details})",
            hint=f"restore those [train] settings to resume, or delete {out_dir} to train from scratch",
        )


# --------------------------------------------------------------------------------------------- LoRA files


def _training_metadata(plan: DiffusersTrainPlan, config: ZireliaConfig) -> dict[str, Any]:
    """sd-scripts' `ss_*` training keys, as train_network.py writes them, for this run's settings."""
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


def save_lora(
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
    """Write the peft `lora_state` to `path` as a kohya FLUX LoRA in `save_dtype`, with sd-scripts' metadata
    and network hashes; atomically, so a crash mid-write never leaves a half file under the final name."""
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


def lora_path(out_dir: Path, name: str, epoch: int, *, last: bool) -> Path:
    """sd-scripts' file name of an epoch's LoRA: `<name>-000003.safetensors`, the last `<name>.safetensors`."""
    return out_dir / (f"{name}.safetensors" if last else f"{name}-{epoch:06d}.safetensors")


def training_result(out_dir: Path, name: str) -> TrainingResult:
    """The backend's result: the LoRA files found in `out_dir`, by epoch."""
    return TrainingResult(backend="diffusers", output_dir=out_dir, epoch_files=epoch_lora_files(out_dir, name))


# --------------------------------------------------------------------------------------------- housekeeping


def keep_last_epoch_file(out_dir: Path, name: str, epoch: int) -> None:
    """Training on past the old last epoch: its `<name>.safetensors` becomes `<name>-<epoch>.safetensors`."""
    from zirelia_local.training.outputs import read_epoch

    final = out_dir / f"{name}.safetensors"
    if final.is_file() and read_epoch(final) == epoch:
        final.replace(lora_path(out_dir, name, epoch, last=False))


def clear_old_outputs(out_dir: Path, name: str) -> None:
    """A fresh start: LoRA files of an earlier run under the same name would mix into this run's epochs."""
    old = list(epoch_lora_files(out_dir, name).values())
    if old:
        info(f"no training state to resume: removing {len(old)} LoRA file(s) of an earlier run from {out_dir}")
        for path in old:
            path.unlink(missing_ok=True)
