"""(a) Generation: s/image at 1024x1024, 28 steps, batch 1 and 2, for each memory / quantization mode.

Every mode the project offers comes from its own config types (`MemoryMode`, `Quantization`) and from what
`plan_memory` picks for `auto` on 80, 24, 12 and 8 GB cards, so a mode added to the project is measured
without a change here. Each case loads the saved folder with `load_flux_pipeline` (the loader the dataset
stage uses) and draws with `render_batch`. Timing: a 2-step warm-up call, then either the full step count
(`--full`) or two short calls (`--quick`: 4 and 8 steps), from which the per-step time and the fixed part
(text encoding, VAE decoding, offload moves) give the 28-step figure by a straight line: that figure is
marked extrapolated.
"""

from __future__ import annotations

import importlib.util
import time
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpuproof.cases import Case
from gpuproof.setup import PROMPT, proof_config

GIB = 1024**3
#: Card sizes whose `auto` choice is measured first (the choices the project makes for real cards).
AUTO_CARDS_GIB = (80, 24, 12, 8)


def modes() -> list[tuple[str, str, str]]:
    """(memory, quantization, why) for every mode: `auto`'s choices first, then every other value once."""
    import torch

    from zirelia_local.common.config import GeneratorConfig, MemoryMode, Quantization
    from zirelia_local.dataset.flux import plan_memory

    found: list[tuple[str, str, str]] = []
    for gib in AUTO_CARDS_GIB:
        plan = plan_memory(GeneratorConfig(), torch.device("cuda", 0), total_memory=gib * GIB)
        pair = (plan.memory, plan.quantization)
        if pair not in [(m, q) for m, q, _ in found]:
            article = "an" if str(gib).startswith("8") else "a"
            found.append((*pair, f"auto on {article} {gib} GB card"))
    memories = [m for m in typing.get_args(MemoryMode) if m != "auto"]
    quantizations = [q for q in typing.get_args(Quantization) if q != "auto"]
    for memory in memories:
        if not any(m == memory for m, _, _ in found):
            found.append((memory, "none", "every memory mode"))
    for quantization in quantizations:
        if not any(q == quantization for _, q, _ in found):
            found.append(("model_offload", quantization, "every quantization"))
    return found


def plan(options: Any) -> list[Case]:
    batches = (1, 2)
    cases = []
    chosen = modes() if options.full else modes()[:1]
    for memory, quantization, why in chosen:
        reason = None
        if options.tiny and memory != "none":
            reason = f"memory = {memory!r} needs a CUDA GPU (the project refuses it on CPU)"
        elif quantization.startswith("bnb_") and (options.tiny or importlib.util.find_spec("bitsandbytes") is None):
            reason = "bitsandbytes is not importable" if not options.tiny else "bitsandbytes needs a CUDA GPU"
        for batch in batches:
            params = {
                **options.case_params(),
                "memory": memory,
                "quantization": quantization,
                "batch": batch,
                "steps": 28,
                "timed_steps": [28] if options.full else [4, 8],
                "resolution": options.resolution(1024),
            }
            name = f"{memory} / {quantization}, batch {batch}"
            cases.append(Case("generation", name, params | {"why": why}, skip_reason=reason))
    return cases


def draw_timer(config: Any, pipe: Any, batch: int, resolution: int) -> Callable[[int], float]:
    """A function that draws one batch with `steps` denoising steps through `render_batch`; returns seconds."""
    from zirelia_local.dataset import render_batch

    def draw(steps: int) -> float:
        config.generator.steps = steps
        started = time.perf_counter()
        images = render_batch(
            pipe, [f"{PROMPT}, {i}" for i in range(batch)], list(range(batch)), config, size=resolution
        )
        seconds = time.perf_counter() - started
        assert len(images) == batch and images[0].size == (resolution, resolution)
        return seconds

    return draw


def timed(draw: Callable[[int], float], params: dict[str, Any], batch: int) -> dict[str, Any]:
    """Warm up, time, and (with two step counts) extrapolate to `params['steps']`."""
    steps = params["steps"]
    draw(2)  # warm-up: first-call allocations and kernel choices
    timings = {s: draw(s) for s in params["timed_steps"]}
    if len(timings) == 1:
        seconds = timings[steps]
        return {"s_per_call": round(seconds, 3), "s_per_image": round(seconds / batch, 3), "extrapolated": False}
    (s1, t1), (s2, t2) = sorted(timings.items())
    per_step = (t2 - t1) / (s2 - s1)
    fixed = t1 - s1 * per_step
    how = "line through both timings"
    if per_step <= 0 or fixed < 0:  # timings too noisy for a line (a busy CPU): scale the longer call instead
        per_step, fixed, how = t2 / s2, 0.0, "longer call scaled by steps (timings too noisy for a line)"
    call = fixed + steps * per_step
    return {
        "s_per_call": round(call, 3),
        "s_per_image": round(call / batch, 3),
        "s_per_step": round(per_step, 4),
        "fixed_s": round(fixed, 3),
        "timed": {str(s): round(t, 3) for s, t in timings.items()},
        "extrapolated": True,
        "extrapolation": how,
    }


def measure(params: dict[str, Any]) -> dict[str, Any]:
    from zirelia_local.dataset.flux import load_flux_pipeline

    config = proof_config(
        Path(params["workdir"]) / "run-generation",
        model=params["model"],
        device=params["device"],
        resolution=params["resolution"],
        generator={
            "memory": params["memory"],
            "quantization": params["quantization"],
            "dtype": params["dtype"],
            "batch_size": params["batch"],
            "steps": params["steps"],
        },
    )
    started = time.perf_counter()
    pipe = load_flux_pipeline(config.generator)
    load_s = time.perf_counter() - started
    draw = draw_timer(config, pipe, params["batch"], params["resolution"])
    return {"load_s": round(load_s, 2), **timed(draw, params, params["batch"])}
