"""What `zirelia generate` draws with and judges against: the LoRA file, its scale, the reference identity, and
the settings the images depend on.

- LoRA: `--lora` / `[generate] lora`, else the run's `best.safetensors` (the epoch the critic chose).
- Scale: `--scale` / `[generate] lora_scale`, else the scale the critic chose for that epoch
  (`critic/selection.json`, `lora_scale`) when the LoRA is `best.safetensors`, else `[critic] lora_scale`.
- Identity: `identity.safetensors` from curation; in curation's `record` mode it may be missing (the demo's
  random model draws no face), and then images are judged on everything else and say identity was not judged.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import UsageError, ZireliaError
from zirelia_local.common.files import read_json_object, sha256_file
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.common.security import require_safetensors
from zirelia_local.critic import (
    BEST_NAME,
    CRITIC_DIR,
    SELECTION_NAME,
    evaluation_base_model,
    evaluation_generation_config,
    evaluation_size,
)
from zirelia_local.faces.identity import IDENTITY_NAME

WHOLE_JOB = "python -m zirelia_local.train CONFIG"


@dataclass(frozen=True)
class LoraChoice:
    """The LoRA to draw with: its file, sha256, scale and where the scale came from."""

    path: Path
    sha256: str
    scale: float
    scale_source: str


def draw_config(config: ZireliaConfig) -> ZireliaConfig:
    """A copy of the config in which the critic's keys say how to draw and judge the generated images: the
    retries of `[generate] max_retries` and its steps, guidance and size (the critic's renderer reads those)."""
    copy = config.model_copy(deep=True)
    copy._source = config.source
    generate = config.generate
    if generate.max_retries is not None:
        copy.critic.max_retries = generate.max_retries
    for key in ("steps", "guidance", "resolution"):
        value = getattr(generate, key)
        if value is not None:
            setattr(copy.critic, key, value)
    return copy


def check_trained_run(config: ZireliaConfig) -> Path:
    """The LoRA file to use; a clear error naming every file that is missing and the command that makes it."""
    run_dir = config.run_dir
    missing: list[str] = []
    lora = config.generate.lora
    if lora is None:
        lora = run_dir / BEST_NAME
        if not lora.is_file():
            missing.append(f"{BEST_NAME} is missing (the critic links the chosen epoch's LoRA there)")
    else:
        lora = lora.expanduser()
        problem = path_problem(lora, "file")
        if problem is not None:
            raise UsageError(
                f"--lora {display_path(lora)} {problem}",
                hint="pass a kohya-format .safetensors LoRA trained for this config's base model (--lora FILE, "
                f"[generate] lora), or leave it out to use the run's {BEST_NAME}",
            )
    identity_needed = config.curate.mode != "record"
    if identity_needed and not (run_dir / IDENTITY_NAME).is_file():
        missing.append(f"{IDENTITY_NAME} is missing (curation writes the persona's reference identity there)")
    if missing:
        raise ZireliaError(
            f"no trained persona in {display_path(run_dir)}: " + "; ".join(missing),
            hint=f"run the whole job first: `{WHOLE_JOB}` (or the missing stages: `zirelia curate CONFIG`, "
            "`zirelia train CONFIG`, `zirelia critic CONFIG`); check --run-dir if the run is elsewhere",
        )
    require_safetensors(lora, "LoRA file", allow_pickle=config.run.allow_pickle)
    return lora


def choose_lora(config: ZireliaConfig) -> LoraChoice:
    """The LoRA file and the scale to draw it at (see the module's docstring)."""
    lora = check_trained_run(config)
    digest = sha256_file(lora)
    if config.generate.lora_scale is not None:
        return LoraChoice(lora, digest, config.generate.lora_scale, "--scale / [generate] lora_scale")
    best = config.run_dir / BEST_NAME
    selection = read_json_object(config.run_dir / CRITIC_DIR / SELECTION_NAME) or {}
    chosen = selection.get("lora_scale")
    if best.is_file() and _same_file(lora, best) and isinstance(chosen, int | float) and chosen > 0:
        epoch = selection.get("epoch")
        return LoraChoice(
            lora, digest, float(chosen), f"chosen by the critic for epoch {epoch}, {CRITIC_DIR}/{SELECTION_NAME}"
        )
    return LoraChoice(lora, digest, config.critic.lora_scale, "[critic] lora_scale")


def _same_file(first: Path, second: Path) -> bool:
    try:
        return os.path.samefile(first, second)
    except OSError:
        return False


def identity_digest(config: ZireliaConfig) -> str | None:
    path = config.run_dir / IDENTITY_NAME
    return sha256_file(path) if path.is_file() else None


def settings(config: ZireliaConfig, lora: LoraChoice) -> dict[str, Any]:
    """Everything an image and its verdict depend on, besides its prompt and seed. `config` is `draw_config`'s."""
    generation = evaluation_generation_config(config)
    critic = config.critic.model_dump(mode="json")
    for key in ("prompts", "seeds", "epochs", "max_retries", "lora_scale"):
        critic.pop(key)  # the critic's evaluation set, and the retries (more retries extend a request)
    return {
        "lora_sha256": lora.sha256,
        "lora_scale": lora.scale,
        "model_type": config.train.model_type,
        "model": evaluation_base_model(config),
        "steps": generation.generator.steps,
        "guidance": generation.generator.guidance,
        "max_sequence_length": config.generator.max_sequence_length,
        "size": evaluation_size(config),
        "trigger_word": config.persona.trigger_word,
        "caption_phrase": config.persona.caption_phrase,
        "critic": critic,
        "embedder": config.curate.embedder,
        "insightface_model": config.curate.insightface_model if config.curate.embedder == "insightface" else None,
        "identity_sha256": identity_digest(config),
    }


def settings_key(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()
