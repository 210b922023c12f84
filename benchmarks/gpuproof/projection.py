"""(e) The whole `configs/sienna.toml` job on this GPU, in minutes, from the figures measured above.

Nothing here is measured: each stage's minutes are a measured rate times a count the config fixes, plus the
stated assumptions (the share of images curation's top-up rounds draw again, the mean number of retries of an
evaluation image). A stage whose rate was not measured is left out and said so, never guessed.
Published anchors are printed beside the total, as the issue that asked for this projection gives them:
about 30 minutes on an A100, hosted, and 59 minutes for a hosted trainer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuproof.cases import Case

ANCHORS = (
    ("hosted, on an A100", "about 30 min"),
    ("a hosted trainer", "59 min"),
)


@dataclass
class Stage:
    name: str
    minutes: float | None
    basis: str


def _first(cases: list[Case], section: str, **wanted: Any) -> Case | None:
    for case in cases:
        if case.section == section and case.ok and all(case.params.get(k) == v for k, v in wanted.items()):
            return case
    return None


def project(
    cases: list[Case],
    *,
    sienna: Path,
    total_gib: float | None,
    topup: float,
    retries: float,
    scale: Callable[[int], int] = lambda pixels: pixels,
) -> list[Stage]:
    """The stages' minutes; `scale` maps a real size to the size the cases ran at (an eighth with --tiny)."""
    import torch

    from zirelia_local.common.config import load_config
    from zirelia_local.dataset.flux import plan_memory
    from zirelia_local.training.presets import get_preset, preset_name_for_memory

    config = load_config(sienna)
    gib = total_gib or 0.0
    stages: list[Stage] = []

    # Dataset: the images auto's memory mode draws on this card, at the config's batch size.
    device = torch.device("cuda", 0) if gib else torch.device("cpu")
    plan = plan_memory(config.generator, device, total_memory=int(gib * 1024**3))
    batch = config.generator.batch_size
    images = config.dataset.count * (1 + topup)
    generation = _first(cases, "generation", memory=plan.memory, quantization=plan.quantization, batch=batch)
    generation = generation or _first(cases, "generation", batch=batch) or _first(cases, "generation")
    if generation:
        rate = generation.figures["s_per_image"]
        stages.append(
            Stage(
                "dataset",
                images * rate / 60,
                f"{images:g} images ({config.dataset.count} + {topup:.0%} top-up) x {rate:g} s/image "
                f"({generation.name}; auto picks {plan.memory} / {plan.quantization}: {plan.reason})",
            )
        )
    else:
        stages.append(Stage("dataset", None, "no generation figure measured"))

    critic = _first(cases, "critic")
    judge = critic.figures.get("judge_s_per_image") if critic else None
    if judge is not None:
        stages.append(Stage("curation", images * judge / 60, f"{images:g} images x {judge:g} s (the critic's judge)"))
    else:
        stages.append(Stage("curation", None, "no judge time measured (the critic's --quick case times it alone)"))

    # Training: sienna trains with sd-scripts at the preset auto picks for this card.
    preset_name = preset_name_for_memory(gib)
    preset = get_preset("flux", preset_name)
    kohya = _first(cases, "kohya", presets=[preset_name], dry_run=False)
    train = config.train
    if kohya:
        batch, rate, basis = preset.batch_size, kohya.figures["s_per_step"], f"sd-scripts, preset {preset_name}"
    else:
        diffusers = _first(cases, "training", resolution=scale(min(preset.resolution, config.dataset.resolution)))
        batch = 1
        rate = diffusers.figures["s_per_step"] if diffusers else None
        basis = f"the diffusers backend ({diffusers.name}; sd-scripts not measured)" if diffusers else ""
    if rate is not None:
        steps = train.epochs * math.ceil(config.dataset.count * train.num_repeats / batch)
        stages.append(
            Stage(
                "training",
                steps * rate / 60,
                f"{train.epochs} epochs x {math.ceil(config.dataset.count * train.num_repeats / batch)} steps "
                f"(batch {batch}) x {rate:g} s/step, {basis}; model loading and caching not included",
            )
        )
    else:
        stages.append(Stage("training", None, "no training figure measured"))

    if critic:
        per_epoch = len(config.critic.prompts) * len(config.critic.seeds) * (1 + retries)
        rate = critic.figures["s_per_image"]
        lora_s = critic.figures.get("lora_load_s", 0.0)
        stages.append(
            Stage(
                "critic",
                train.epochs * (per_epoch * rate + lora_s) / 60,
                f"{train.epochs} epochs x {per_epoch:g} images ({retries:g} retries per image on average) x "
                f"{rate:g} s/image, plus {lora_s:g} s per LoRA load",
            )
        )
    else:
        stages.append(Stage("critic", None, "no critic figure measured"))
    return stages


def total(stages: list[Stage]) -> float | None:
    known = [stage.minutes for stage in stages if stage.minutes is not None]
    return sum(known) if known else None
