"""(d) The critic at its defaults: s/image to draw an evaluation image with a LoRA and judge it.

The renderer is the critic's own (`FluxLoraRenderer`: the `[generator]` pipeline, memory mode `auto`, a
rank-32 LoRA in kohya format loaded as an adapter through diffusers' kohya reader); the judge is the critic's
own `Critic` with the default embedder (dlib) and a ViT-B-32 CLIP on the CPU, as `load_clip_scorer` places it
(random weights: speed does not depend on them). `--quick` times one batch of `generator.batch_size` images
(steps extrapolated as in the generation section) and judges it; `--full` runs `evaluate_epoch` for one
epoch as the critic stage does: every evaluation image, with its retries (random weights draw no face, so
every image fails and is retried up to `max_retries`), and divides the wall time by the images drawn.
"""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

from gpuproof.cases import Case
from gpuproof.generation import timed
from gpuproof.setup import proof_config


def plan(options: Any) -> list[Case]:
    missing = [name for name in ("dlib", "open_clip") if importlib.util.find_spec(name) is None]
    reason = f"{', '.join(missing)} not importable (the critic's default judge needs them)" if missing else None
    params = {
        **options.case_params(),
        "lora": options.lora,
        "resolution": options.resolution(1024),
        "batch": 2,
        "steps": 28,
        "timed_steps": [4, 8],
        "whole_epoch": options.full,
    }
    label = "one epoch, every image and retry" if options.full else "one batch, steps extrapolated"
    return [Case("critic", f"defaults, {label}", params, skip_reason=reason)]


def _critic(config: Any) -> Any:
    import open_clip

    from zirelia_local.critic.clip_score import ClipAvailability, ClipScorer
    from zirelia_local.critic.judge import Critic
    from zirelia_local.faces import load_embedder

    name = config.critic.clip_model
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=None, device="cpu")
    scorer = ClipScorer(model, preprocess, open_clip.get_tokenizer(name), device="cpu", name=f"{name} (random)")
    clip = ClipAvailability(scorer, None, f"{name} (random weights)")
    return Critic(
        config.critic, load_embedder(config.curate), None, clip, reference_missing_reason="gpu proof: no reference"
    )


def measure(params: dict[str, Any]) -> dict[str, Any]:
    from zirelia_local.critic.attempts import clip_text
    from zirelia_local.critic.renderers import FluxLoraRenderer
    from zirelia_local.critic.retry import first_attempt
    from zirelia_local.critic.stage import evaluate_epoch, evaluation_items

    batch = params["batch"]
    config = proof_config(
        Path(params["workdir"]) / "run-critic",
        model=params["model"],
        device=params["device"],
        resolution=params["resolution"],
        generator={"dtype": params["dtype"], "batch_size": batch, "steps": params["steps"]},
    )
    critic = _critic(config)
    renderer = FluxLoraRenderer(config)
    started = time.perf_counter()
    renderer.pipe  # noqa: B018  (loads the pipeline)
    load_s = time.perf_counter() - started
    lora = Path(params["lora"])
    started = time.perf_counter()
    renderer.load_lora(lora, 1)
    lora_s = time.perf_counter() - started
    figures: dict[str, Any] = {"load_s": round(load_s, 2), "lora_load_s": round(lora_s, 2), "batch": batch}

    if params["whole_epoch"]:
        renderer.unload_lora()
        started = time.perf_counter()
        records = evaluate_epoch(renderer, critic, config, 1, lora, evaluation_items(config))
        wall = time.perf_counter() - started
        retried = sum(1 for record in records if record["attempt"] > 0)
        return figures | {
            "images": len(records),
            "retries": retried,
            "s_per_image": round(wall / len(records), 3),
            "epoch_s": round(wall, 1),
            "extrapolated": False,
        }

    items = evaluation_items(config)[:batch]
    attempts = [first_attempt(item.scene, item.seed, config.critic) for item in items]
    prompts = [attempt.prompt(config) for attempt in attempts]
    seeds = [attempt.seed for attempt in attempts]

    def draw(steps: int) -> float:
        renderer.generation.generator.steps = steps  # the critic's own copy of the config
        started = time.perf_counter()
        renderer.render(prompts, seeds, config.critic.lora_scale)
        return time.perf_counter() - started

    draw_figures = timed(draw, params, batch)
    renderer.generation.generator.steps = params["steps"]
    images = renderer.render(prompts, seeds, config.critic.lora_scale)
    started = time.perf_counter()
    verdicts = critic.judge_batch(images, [clip_text(config, item.scene) for item in items])
    judge_s = (time.perf_counter() - started) / len(verdicts)
    renderer.unload_lora()
    draw_per_image = draw_figures["s_per_image"]
    return figures | {
        "draw_s_per_image": draw_per_image,
        "judge_s_per_image": round(judge_s, 3),
        "s_per_image": round(draw_per_image + judge_s, 3),
        "extrapolated": draw_figures["extrapolated"],
        "judge_accepted": sum(1 for verdict in verdicts if verdict.accepted),
    }
