"""`zirelia generate CONFIG`: new images of the persona with the trained LoRA, each one passed by the critic.

The base model training used is loaded once (FLUX through the dataset generator's pipeline, SD1.5/SDXL through
the critic's renderer) with the LoRA as an adapter; every image goes through the critic's own loop
(`critic.draw_and_judge`): drawn in batches, judged (identity, one main face, face size and framing, sharpness,
exposure, CLIP prompt adherence when CLIP weights are set), and a rejected one retried with the critic's retry
rules (prompt adjusted per failure kind, new seed, LoRA scale raised after a weak identity) at most
`max_retries` times. Files: `store.py`; the gallery: `gallery.py`; what to draw: `prompts.py`; the LoRA, its
scale and the settings: `sources.py`.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, warn
from zirelia_local.common.errors import ConfigError
from zirelia_local.common.files import atomic_write_bytes, png_bytes, sha256_bytes
from zirelia_local.common.processes import (
    gather_json,
    is_distributed,
    is_main_process,
    launched_processes,
    share_of,
    wait_for_everyone,
)
from zirelia_local.critic import (
    Attempt,
    Critic,
    EvaluationItem,
    EvaluationRenderer,
    Verdict,
    draw_and_judge,
    invocation,
    renderer_for,
)
from zirelia_local.generate.gallery import image_thumbnail_uri, write_gallery
from zirelia_local.generate.prompts import GenerationItem, PromptSpec, expand_items, prompt_specs, short_hash, slug
from zirelia_local.generate.results import GeneratedImage, GenerateResult, failure_lines, print_summary
from zirelia_local.generate.sources import LoraChoice, choose_lora, draw_config, settings, settings_key
from zirelia_local.generate.store import (
    GALLERY_NAME,
    RESULTS_NAME,
    accepted_path,
    claim_folder,
    dumps_scores,
    ensure_out_dir,
    rejected_path,
    remove_orphan_images,
    resume_state,
    write_attempt,
    write_results,
)

GENERATED_DIR = "generated"


def default_out(config: ZireliaConfig, specs: Sequence[PromptSpec], key: str, name: str | None) -> Path:
    """`<run_dir>/generated/<name>-<hash>/`: named after the prompts (or the prompts file), with a hash of the
    prompts, seeds and settings, so the same command finds its folder again (and resumes) and other settings
    get their own."""
    base = name or slug(specs[0].prompt) + (f"-and-{len(specs) - 1}-more" if len(specs) > 1 else "")
    request = [[spec.prompt, spec.seed, spec.name] for spec in specs]
    digest = short_hash(json.dumps([key, request, config.generate.seed]), 8)
    return config.run_dir / GENERATED_DIR / f"{slug(base)}-{digest}"


def _lora_name(lora: LoraChoice, run_dir: Path) -> str:
    try:
        return (
            os.path.relpath(lora.path, run_dir)
            if lora.path.resolve().is_relative_to(run_dir.resolve())
            else str(lora.path)
        )
    except (OSError, ValueError):
        return str(lora.path)


def _quiet(message: str) -> None:
    """What the main process says for every process of a launch."""


def run_generate(
    config: ZireliaConfig,
    prompts: Sequence[str | PromptSpec] | None = None,
    *,
    out: Path | None = None,
    name: str | None = None,
    renderer: EvaluationRenderer | None = None,
) -> GenerateResult:
    """Draw `[generate] count` images of each prompt (default: `[generate] prompts`), each judged by the critic
    and retried by its rules; write them, `results.jsonl` and `index.html` to `out` (default
    `<run_dir>/generated/<name>-<hash>/`). Resumable: a rerun draws only what is missing. The caller holds the
    run lock. `renderer` defaults to the trained model family's base pipeline (`critic.renderer_for`)."""
    specs = prompt_specs(prompts if prompts else config.generate.prompts)
    if not specs:
        raise ConfigError(
            "no prompt to draw", hint="pass --prompt TEXT (repeatable) or --prompts FILE, or set [generate] prompts"
        )
    if out is not None:
        ensure_out_dir(Path(out).expanduser())  # a bad --out is said before any model is touched
    draw = draw_config(config)
    lora = choose_lora(config)
    draw.critic.lora_scale = lora.scale
    items, repeats = expand_items(specs, count=config.generate.count, seed=config.generate.seed)
    if repeats:
        warn(f"{repeats} requested image(s) repeat another's prompt and seed: each is drawn once")
    values = settings(draw, lora)
    key = settings_key(values)
    out = Path(out).expanduser() if out is not None else default_out(config, specs, key, name)
    # Under a launch of several processes the main process claims the folder and sweeps what a killed run
    # left; then every process replays the same records (a pure read once swept) and draws its share.
    if is_main_process():
        claim_folder(out, key, values)
        state = resume_state(out, items, draw)
        remove_orphan_images(out)
    wait_for_everyone()
    if not is_main_process():
        state = resume_state(out, items, draw)
    pending = [item for item in items if item.key not in state.done]
    lora_name = _lora_name(lora, config.run_dir)
    say = info if is_main_process() else _quiet  # one announcement for the whole launch
    say(
        escape(
            f"generate: {len(items)} image(s) of {len(specs)} prompt(s) -> {out}; LoRA {lora_name} at scale "
            f"{lora.scale:g} ({lora.scale_source}); at most {draw.critic.max_retries} "
            f"{'retry' if draw.critic.max_retries == 1 else 'retries'} per image"
        )
        + (f"; {len(items) - len(pending)} already done" if len(pending) < len(items) else "")
        + (f"; split across {launched_processes()} processes" if is_distributed() and pending else "")
    )
    # Whole batches per process: each image is the one a single process draws for the same seed.
    mine = share_of(pending, unit=draw.generator.batch_size)
    drawn, seconds = _draw(draw, renderer, lora, lora_name, out, mine, state) if mine else (0, 0.0)
    if is_distributed():
        counts = gather_json([drawn, seconds])  # every process has written its attempts when this returns
        drawn, seconds = sum(count for count, _ in counts), max(elapsed for _, elapsed in counts)
        state = resume_state(out, items, draw)  # every process's records, read back from their files
    collected = _collect(items, state.records, out)
    if is_main_process():
        _write(draw, items, state.records, out, lora, lora_name, values, collected)
    wait_for_everyone()  # no process returns before the gallery and results.jsonl are written
    result = GenerateResult(
        out,
        out / GALLERY_NAME,
        out / RESULTS_NAME,
        len(items),
        collected.accepted,
        collected.rejected,
        drawn,
        len(collected.ordered),
        seconds,
        collected.lines,
        finished=len(pending),
    )
    if is_main_process():
        print_summary(result)
    return result


def _draw(
    config: ZireliaConfig,
    renderer: EvaluationRenderer | None,
    lora: LoraChoice,
    lora_name: str,
    out: Path,
    pending: list[GenerationItem],
    state: Any,
) -> tuple[int, float]:
    """Draw and judge the pending items, storing each attempt as it comes; how many attempts were drawn, and in
    how many seconds (once the models were loaded)."""
    critic = Critic.from_config(config, identity_required=False)
    if critic.reference is None and is_main_process():
        warn(
            "identity will not be judged (no reference identity): an image that passes every other check is "
            "accepted and marked 'identity not judged'"
        )
    keep_rejected = config.generate.keep_rejected
    by_key = {item.key: item for item in pending}
    extras: dict[tuple[str, int], dict[str, Any]] = {}

    def save(
        item: EvaluationItem, attempt: Attempt, prompt: str, image: Any, scale: float, verdict: Verdict
    ) -> str | None:
        if not verdict.accepted and not keep_rejected:
            extras[(item.key, attempt.number)] = {"sha256": None, "thumbnail": image_thumbnail_uri(image)}
            return None
        relative = accepted_path(item.key) if verdict.accepted else rejected_path(item.key, attempt.number)
        metadata = {
            "prompt": prompt,
            "scene": item.scene,
            "seed": str(attempt.seed),
            "scale": f"{scale:g}",
            "lora": lora_name,
            "attempt": str(attempt.number),
            "verdict": verdict.summary,
            "scores": dumps_scores(verdict.scores),
            "reasons": json.dumps(verdict.reasons),
        }
        data = png_bytes(image, metadata)
        atomic_write_bytes(out / relative, data)
        extras[(item.key, attempt.number)] = {"sha256": sha256_bytes(data)}
        return relative

    drawn = 0

    def on_record(record: dict[str, Any]) -> None:
        nonlocal drawn
        item = by_key[record["item"]]
        record.update(name=item.name, index=item.index, **extras.pop((item.key, record["attempt"])))
        write_attempt(out, record)
        state.records.setdefault(item.key, []).append(record)
        drawn += 1

    renderer = renderer if renderer is not None else renderer_for(config, purpose="to generate")
    renderer.load_lora(lora.path, 0)  # loads the base pipeline on first use
    started = time.perf_counter()
    try:
        draw_and_judge(
            renderer,
            critic,
            config,
            list(pending),
            save,
            label="generate",
            record_fields={"lora": lora_name},
            start=state.start,
            on_record=on_record,
        )
    finally:
        renderer.unload_lora()
    return drawn, time.perf_counter() - started


@dataclass
class _Collected:
    """What the records of a request add up to (nothing written)."""

    ordered: list[dict[str, Any]]
    accepted: list[GeneratedImage]
    rejected: list[dict[str, Any]]
    lines: list[str]


def _collect(items: list[GenerationItem], records: dict[str, list[dict[str, Any]]], out: Path) -> _Collected:
    ordered = [record for item in items for record in sorted(records.get(item.key, []), key=lambda r: r["attempt"])]
    accepted: list[GeneratedImage] = []
    rejected: list[dict[str, Any]] = []
    for item in items:
        attempts = sorted(records.get(item.key, []), key=lambda r: r["attempt"])
        final = next((record for record in attempts if record["accepted"]), None)
        if final is not None:
            accepted.append(
                GeneratedImage(
                    path=out / final["image"],
                    prompt=item.scene,
                    drawn_prompt=final["adjusted_prompt"],
                    seed=final["attempt_seed"],
                    scale=final["lora_scale"],
                    attempt=final["attempt"],
                    identity_judged=final["verdict"] == "accepted",
                    record={k: v for k, v in final.items() if k != "thumbnail"},
                )
            )
        else:
            rejected.append(
                attempts[-1] if attempts else {"item": item.key, "failures": [], "attempt": 0, "outcome": "not drawn"}
            )
    return _Collected(ordered, accepted, rejected, failure_lines(rejected, len(items)))


def _write(
    config: ZireliaConfig,
    items: list[GenerationItem],
    records: dict[str, list[dict[str, Any]]],
    out: Path,
    lora: LoraChoice,
    lora_name: str,
    values: dict[str, Any],
    collected: _Collected,
) -> None:
    """results.jsonl and the gallery."""
    write_results(out, collected.ordered)
    summary = {
        "requested": len(items),
        "accepted": len(collected.accepted),
        "attempts": len(collected.ordered),
        "max_retries": config.critic.max_retries,
        "failures": collected.lines,
    }
    write_gallery(
        out,
        config,
        items,
        records,
        settings={**values, "lora": lora_name, "scale": lora.scale, "scale_source": lora.scale_source},
        summary=summary,
        command=invocation(),
        keep_rejected=config.generate.keep_rejected,
    )
