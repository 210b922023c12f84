"""Draw, judge, retry: the loop every image of the persona goes through, whoever asks for it (the critic's
evaluation of an epoch, and any later stage that draws with the LoRA).

Attempts are drawn in batches of `[generator] batch_size`, grouped by LoRA scale (a retry may raise it);
each is judged by the `Critic`, and a rejected one is retried with the adjustment `retry.next_attempt`
chooses, until it is accepted or `[critic] max_retries` is spent. Each attempt becomes one record.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import info, progress_bar
from zirelia_local.common.processes import is_distributed
from zirelia_local.critic.judge import Critic
from zirelia_local.critic.renderers import EvaluationRenderer
from zirelia_local.critic.retry import Attempt, first_attempt, next_attempt
from zirelia_local.critic.verdict import FAILURE_LABELS, Verdict
from zirelia_local.dataset import evaluation_prompt

#: save(item, attempt, prompt, image, scale, verdict) -> the image's path as recorded (relative to the folder the
#: records describe), or None when the image is not kept
SaveImage = Callable[["EvaluationItem", Attempt, str, Any, float, Verdict], "str | None"]
#: on_record(record): called with each attempt's record as soon as it is complete (after its image was saved)
OnRecord = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class EvaluationItem:
    """One evaluation image: a scene and a seed, the same for every epoch."""

    prompt_index: int
    scene: str
    seed: int

    @property
    def key(self) -> str:
        return f"p{self.prompt_index:02d}_s{self.seed}"


def clip_text(config: ZireliaConfig, scene: str) -> str:
    """What CLIP compares the image with: the class phrase and the scene (a trigger word means nothing to CLIP)."""
    return f"a photo of {config.persona.caption_phrase}, {scene}"


def draw_and_judge(
    renderer: EvaluationRenderer,
    critic: Critic,
    config: ZireliaConfig,
    items: list[EvaluationItem],
    save: SaveImage,
    *,
    label: str,
    record_fields: dict[str, Any] | None = None,
    start: Mapping[str, Attempt] | None = None,
    on_record: OnRecord | None = None,
) -> list[dict[str, Any]]:
    """Draw and judge every item with the renderer's current LoRA, retrying rejected ones; attempt records.

    `save` writes each attempt's image and returns its recorded path; `record_fields` are added to every
    record (e.g. the epoch and the LoRA file); `label` names the work in the progress bar and the log.
    `start` maps an item's key to the attempt it starts from (a resumed run's next retry; default: the first
    attempt); `on_record` sees each record as soon as it is complete, so a caller can store it at once.
    The progress bar moves when an item is final (accepted, or rejected with no retry left).
    """
    batch_size = config.generator.batch_size
    records: list[dict[str, Any]] = []
    start = start or {}
    pending: list[tuple[EvaluationItem, Attempt]] = [
        (item, start.get(item.key) or first_attempt(item.scene, item.seed, config.critic)) for item in items
    ]
    accepted = rejected = 0
    with progress_bar(label, total=len(items), unit="img") as advance:
        while pending:
            retries: list[tuple[EvaluationItem, Attempt]] = []
            # Attempts that share a LoRA scale are drawn together, in batches of generator.batch_size.
            by_scale: dict[float, list[tuple[EvaluationItem, Attempt]]] = defaultdict(list)
            for item, attempt in pending:
                by_scale[attempt.lora_scale].append((item, attempt))
            for scale, group in by_scale.items():
                for offset in range(0, len(group), batch_size):
                    batch = group[offset : offset + batch_size]
                    prompts = [attempt.prompt(config) for _, attempt in batch]
                    images = renderer.render(prompts, [attempt.seed for _, attempt in batch], scale)
                    verdicts = critic.judge_batch(images, [clip_text(config, item.scene) for item, _ in batch])
                    for (item, attempt), prompt, image, verdict in zip(batch, prompts, images, verdicts, strict=True):
                        retry = next_attempt(attempt, verdict, config.critic, item.seed)
                        relative = save(item, attempt, prompt, image, scale, verdict)
                        record = (record_fields or {}) | attempt_record(
                            config, item, attempt, prompt, relative, verdict, retry
                        )
                        records.append(record)
                        if on_record is not None:
                            on_record(record)
                        if retry is not None:
                            retries.append((item, retry))
                            continue
                        accepted += verdict.accepted
                        rejected += not verdict.accepted
                        advance(1, status=f"{accepted} accepted, {rejected} rejected")
            _log_round(label, pending, records, retries, config.critic.max_retries)
            pending = retries
    return in_item_order(records, items)


def in_item_order(records: list[dict[str, Any]], items: list[EvaluationItem]) -> list[dict[str, Any]]:
    """Records by attempt number, then in the order of `items`: the same order whichever process drew which
    item (a retry round's batches otherwise follow the LoRA scales it was drawn at)."""
    position = {item.key: index for index, item in enumerate(items)}
    return sorted(records, key=lambda record: (record["attempt"], position.get(record["item"], len(position))))


def attempt_outcome(verdict: Verdict, number: int, retry: Attempt | None, max_retries: int) -> str:
    """What became of attempt `number`: accepted, retried (as `retry`), or rejected for good, and why."""
    if verdict.accepted:
        return "accepted"
    if retry is not None:
        return f"retry {retry.number} of {max_retries}"
    if number >= max_retries:
        return (
            f"rejected after {number} {'retry' if number == 1 else 'retries'}"
            if number
            else "rejected (no retries allowed)"
        )
    return "rejected: no retry can help (" + ", ".join(verdict.failures) + ")"


def attempt_record(
    config: ZireliaConfig,
    item: EvaluationItem,
    attempt: Attempt,
    prompt: str,
    image: str | None,
    verdict: Verdict,
    retry: Attempt | None,
) -> dict[str, Any]:
    """One attempt as a JSON record: what was drawn, how it was judged, and what happens next."""
    verdict_record = verdict.to_record()
    outcome = attempt_outcome(verdict, attempt.number, retry, config.critic.max_retries)
    return {
        "item": item.key,
        "prompt_index": item.prompt_index,
        "scene": item.scene,
        "prompt": evaluation_prompt(config, item.scene),
        "seed": item.seed,
        "attempt": attempt.number,
        "attempt_seed": attempt.seed,
        "adjusted_prompt": prompt,
        "lora_scale": attempt.lora_scale,
        "adjustments": list(attempt.adjustments),
        "clip_text": clip_text(config, item.scene),
        "image": image,
        "accepted": verdict_record["accepted"],
        "verdict": verdict_record["summary"],
        "failures": verdict_record["failures"],
        "reasons": verdict_record["reasons"],
        "scores": verdict_record["scores"],
        "checks": verdict_record["checks"],
        "outcome": outcome,
    }


def _log_round(
    label: str,
    pending: list[tuple[EvaluationItem, Attempt]],
    records: list[dict[str, Any]],
    retries: list[tuple[EvaluationItem, Attempt]],
    max_retries: int,
) -> None:
    numbers = {attempt.number for _, attempt in pending}
    judged = records[-len(pending) :] if pending else []
    rejected = [record for record in judged if not record["accepted"]]
    if len(numbers) > 1:  # a resumed run: items start from different attempts
        round_name = "resumed attempts"
    else:
        number = numbers.pop() if numbers else 0
        round_name = "first attempts" if number == 0 else f"retry {number}/{max_retries}"
    if is_distributed():  # each process judges its share; the first one of the machine speaks (`info`)
        round_name += " (this process's share)"
    if not rejected:
        info(f"{label}, {round_name}: all {len(judged)} accepted")
        return
    counts: dict[str, int] = defaultdict(int)
    for record in rejected:
        for kind in record["failures"]:
            counts[FAILURE_LABELS.get(kind, kind)] += 1
    why = ", ".join(f"{name} x{count}" for name, count in counts.items())
    then = f"; retrying {len(retries)} with adjusted prompts" if retries else ""
    info(f"{label}, {round_name}: {len(rejected)} of {len(judged)} rejected ({escape(why)}){then}")
    for item, attempt in retries:
        info(f"  [dim]{item.key} -> retry {attempt.number}: {escape('; '.join(attempt.adjustments))}[/dim]")
