"""Epoch selection: which epoch's LoRA is the persona.

Every epoch is scored on the same evaluation prompts and seeds (the first attempts; retries differ per epoch
and would make the comparison unfair). The pick is the epoch with the highest mean identity similarity,
among the epochs whose prompt adherence did not collapse: overfitting shows as the CLIP score falling
while the similarity keeps rising, so an epoch whose mean CLIP score is more than `max_clip_drop` below the
best epoch's is excluded. A missing face counts as similarity 0 (an epoch that stops drawing faces is bad).
Ties go to the epoch with more accepted images, then to the earlier epoch (less trained, less overfit).

The LoRA scale to draw the chosen epoch with (`chosen_lora_scale`, recorded in selection.json for `zirelia
generate`) is the one its images were accepted at most often: a retry raises the scale when the identity was too
weak, so when most accepted images needed the raise, drawing at it from the start saves those retries.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any


@dataclass
class EpochScore:
    epoch: int
    #: evaluation images (prompts x seeds)
    images: int
    #: first attempts with a face found
    faces: int
    #: mean identity similarity of the first attempts, no face counting as 0; None: nothing to compare with
    identity: float | None
    #: mean identity similarity over the first attempts that had a face
    identity_with_face: float | None
    #: mean CLIP score of the first attempts; None: not scored
    clip: float | None
    accepted_first_try: int
    #: images accepted after retries
    accepted: int
    attempts: int

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Selection:
    #: None only when there is no epoch at all
    epoch: int | None
    #: "identity": chosen on the scores; "default_last": no identity evidence, the last epoch by default
    basis: str
    reason: str
    #: epoch -> why it could not be chosen
    excluded: dict[int, str] = field(default_factory=dict)
    reference_clip: float | None = None

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["excluded"] = {str(epoch): why for epoch, why in self.excluded.items()}
        return record


def _mean(values: Iterable[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return round(fmean(present), 4) if present else None


def summarize_epoch(epoch: int, attempts: Sequence[dict[str, Any]]) -> EpochScore:
    """Scores of one epoch from its attempt records (scores.jsonl lines: item, attempt, accepted, scores)."""
    first = [record for record in attempts if record["attempt"] == 0]
    scores = [record["scores"] for record in first]
    similarities = [score.get("identity_similarity") for score in scores]
    has_evidence = any(value is not None for value in similarities)
    items = {record["item"] for record in attempts}
    accepted_items = {record["item"] for record in attempts if record["accepted"]}
    return EpochScore(
        epoch=epoch,
        images=len(first),
        faces=sum(1 for score in scores if score.get("faces")),
        identity=_mean(value if value is not None else 0.0 for value in similarities) if has_evidence else None,
        identity_with_face=_mean(similarities),
        clip=_mean(score.get("clip_score") for score in scores),
        accepted_first_try=sum(1 for record in first if record["accepted"]),
        accepted=len(accepted_items & items),
        attempts=len(attempts),
    )


def select_epoch(table: Sequence[EpochScore], *, max_clip_drop: float) -> Selection:
    """Pick the best epoch from the score table, and say why."""
    if not table:
        return Selection(epoch=None, basis="none", reason="no epoch was scored")
    table = sorted(table, key=lambda row: row.epoch)
    last = table[-1]
    if all(row.identity is None for row in table):
        faces = sum(row.faces for row in table)
        why = (
            "no evaluation image showed a face"
            if faces == 0
            else "faces were found but there is no reference identity to compare them with"
        )
        return Selection(
            epoch=last.epoch,
            basis="default_last",
            reason=f"no identity evidence ({why}), so the critic could not rank the epochs; epoch {last.epoch} "
            "(the last) is kept by default. This is not a quality judgement: the critic accepted "
            f"{sum(row.accepted for row in table)} of {sum(row.images for row in table)} evaluation images.",
        )
    clips = [row.clip for row in table if row.clip is not None]
    reference_clip = max(clips) if clips else None
    excluded: dict[int, str] = {}
    candidates = []
    for row in table:
        if row.identity is None:
            excluded[row.epoch] = "no identity evidence"
            continue
        if reference_clip is not None and row.clip is not None and row.clip < reference_clip - max_clip_drop:
            excluded[row.epoch] = (
                f"prompt adherence collapsed (overfitting): mean CLIP {row.clip:.3f} is more than {max_clip_drop:g} "
                f"below the best epoch's {reference_clip:.3f}, while identity similarity was {row.identity:.3f}"
            )
            continue
        candidates.append(row)
    if not candidates:  # every scored epoch collapsed against the best one: impossible, the best one stays
        candidates = [row for row in table if row.identity is not None]
    best = max(candidates, key=lambda row: (row.identity, row.accepted, -row.epoch))
    parts = [
        f"epoch {best.epoch} has the highest mean identity similarity ({best.identity:.3f}; "
        f"{best.faces}/{best.images} first attempts with a face, {best.accepted}/{best.images} images accepted "
        "after retries)"
    ]
    if reference_clip is None:
        parts.append("prompt adherence was not scored (no CLIP weights), so overfitting could not be checked")
    else:
        parts.append(
            f"among the epochs whose prompt adherence held (mean CLIP within {max_clip_drop:g} of the best, "
            f"{reference_clip:.3f}; epoch {best.epoch}: {best.clip:.3f})"
            if best.clip is not None
            else f"(prompt adherence not scored for epoch {best.epoch})"
        )
    if excluded:
        parts.append("not chosen: " + "; ".join(f"epoch {epoch}: {why}" for epoch, why in excluded.items()))
    if best.accepted == 0:
        parts.append("warning: the critic accepted none of this epoch's images")
    return Selection(
        epoch=best.epoch, basis="identity", reason="; ".join(parts), excluded=excluded, reference_clip=reference_clip
    )


def chosen_lora_scale(attempts: Sequence[dict[str, Any]], default: float) -> tuple[float, str]:
    """The scale to draw an epoch's LoRA with, and why: the scale most of its accepted attempts were drawn at
    (ties: the lower one), or `default` (the first attempts' `[critic] lora_scale`) when none was accepted."""
    counts: dict[float, int] = {}
    for record in attempts:
        if record["accepted"]:
            scale = float(record["lora_scale"])
            counts[scale] = counts.get(scale, 0) + 1
    if not counts:
        return default, f"no image of this epoch was accepted, so the evaluation scale {default:g} is kept"
    scale = max(counts, key=lambda value: (counts[value], -value))
    total = sum(counts.values())
    if scale == default:
        return scale, f"{counts[scale]} of {total} accepted images were drawn at the evaluation scale {default:g}"
    return scale, (
        f"{counts[scale]} of {total} accepted images were drawn at {scale:g} (raised from {default:g} by retries "
        "after a weak identity)"
    )
