"""Epoch selection: which epoch's LoRA is the persona.

Every epoch is scored on the same evaluation prompts and seeds (the first attempts; retries differ per epoch
and would make the comparison unfair). The pick is the epoch with the highest mean identity similarity,
among the epochs whose prompt adherence did not collapse: overfitting shows as the CLIP score falling
while the similarity keeps rising, so an epoch whose mean CLIP score is more than `max_clip_drop` below the
best epoch's is excluded. A missing face counts as similarity 0 (an epoch that stops drawing faces is bad).
Ties go to the epoch with more accepted images, then to the earlier epoch (less trained, less overfit).

This module is the one home of the per-epoch decisions, all on the same `EpochScore` rows: the choice of the
best epoch (`select_epoch`), the early stop on the live identity curve that training draws from its sample
images (`early_stop_decision`), and the critic's epoch search (`search_epochs`). Training cannot import the
critic; the critic's live judge (`critic/live.py`) applies these to the samples and hands training its answer.

The LoRA scale to draw the chosen epoch with (`chosen_lora_scale`, recorded in selection.json for `zirelia
generate`) is the one its images were accepted at most often: a retry raises the scale when the identity was too
weak, so when most accepted images needed the raise, drawing at it from the start saves those retries.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from statistics import fmean
from typing import Any

from zirelia_local.critic.verdict import IDENTITY_WEAK, NO_REFERENCE, PROMPT_ADHERENCE

#: Failures that say who the face is or what the prompt asked, not what is wrong with the picture itself.
NOT_DEFECTS = (IDENTITY_WEAK, NO_REFERENCE, PROMPT_ADHERENCE)
#: The search scores the saved epochs up to this many places on either side of the best one. On simulated
#: noisy curves (benchmarks/bench_epoch_search.py) 3 finds the epoch scoring all would pick more often than
#: 2 does from the coarse start, at a lower cost when it starts from the live curve; 1 is often fooled by noise.
SEARCH_RADIUS = 3
#: Without a live curve, the search starts from every COARSE_STEP-th saved epoch and the last.
COARSE_STEP = 4
#: The early stop compares each epoch's live identity averaged with the epoch before it.
STOP_WINDOW = 2


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
    #: first attempts with a defect (no face, several faces, blur, exposure, face too small or cut off)
    defects: int = 0

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EpochScore:
        """The row `to_record` wrote (keys it does not know are ignored)."""
        known = {name: record[name] for name in cls.__dataclass_fields__ if name in record}
        return cls(**known)


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
        defects=sum(1 for record in first if any(f not in NOT_DEFECTS for f in record.get("failures", ()))),
    )


def rank_key(row: EpochScore) -> tuple[float, int, int]:
    """What makes an epoch better: higher identity, then more accepted images, then earlier (less overfit)."""
    return (row.identity if row.identity is not None else float("-inf"), row.accepted, -row.epoch)


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
    best = max(candidates, key=rank_key)
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


# --------------------------------------------------------------------------------------------- early stop


@dataclass
class StopDecision:
    """Why training should stop after `epoch` (the latest epoch of the live curve)."""

    epoch: int
    best_epoch: int
    best_identity: float
    #: "patience" (no improvement) or "falling" (identity down while the defects rose)
    rule: str
    reason: str

    def to_record(self) -> dict[str, Any]:
        return asdict(self)


def _defect_share(row: EpochScore) -> float:
    return row.defects / max(row.images, 1)


def smoothed_identity(curve: Sequence[EpochScore], window: int = STOP_WINDOW) -> list[float | None]:
    """Each epoch's identity averaged with the `window - 1` epochs before it (an epoch without any face counts
    as 0 once some epoch had one); all None when no epoch has identity evidence."""
    values = [row.identity for row in curve]
    if all(value is None for value in values):
        return values
    filled = [0.0 if value is None else value for value in values]
    return [round(fmean(filled[max(0, index - window + 1) : index + 1]), 4) for index in range(len(filled))]


def early_stop_decision(
    curve: Sequence[EpochScore], *, patience: int, min_delta: float, min_epochs: int, since_epoch: int = 0
) -> StopDecision | None:
    """Whether training should stop after the latest epoch of the live identity curve, and why; None: go on.

    The curve is compared smoothed (`smoothed_identity`: an epoch with the one before it, as many images as the
    critic's evaluation; one epoch's four samples alone are too noisy). An epoch improves on the best so far
    when its smoothed identity beats the best by more than `min_delta`. Training stops once `patience` judged
    epochs after the best brought no improvement, or once the last two of them both fell more than
    `min_delta` below the best while more of their images had defects than the best epoch's. Never before
    epoch `min_epochs`, and never without identity evidence (no face yet, or no reference identity): then
    nothing can be compared. Epochs up to `since_epoch` count for the best but not for patience (a run that was
    stopped early and that the user trains on).
    """
    rows = sorted(curve, key=lambda row: row.epoch)
    values = smoothed_identity(rows)
    best: int | None = None
    for index, value in enumerate(values):
        if value is not None and (best is None or value > values[best] + min_delta):  # type: ignore[operator]
            best = index
    if best is None or rows[-1].epoch < min_epochs:
        return None
    best_row, best_value = rows[best], float(values[best])  # type: ignore[arg-type]
    latest = rows[-1]
    after = [index for index, row in enumerate(rows) if row.epoch > max(best_row.epoch, since_epoch)]
    where = f"best {best_value:.3f} at epoch {best_row.epoch}, latest {values[-1]:.3f}"
    if len(after) >= patience:
        return StopDecision(
            epoch=latest.epoch,
            best_epoch=best_row.epoch,
            best_identity=best_value,
            rule="patience",
            reason=f"the identity (mean of {STOP_WINDOW} sampled epochs) has not improved by more than "
            f"{min_delta:g} for {len(after)} sampled epoch(s) (epochs {rows[after[0]].epoch}-{latest.epoch}): {where}",
        )
    if len(after) >= 2:
        first, second = after[-2:]
        fell = all(values[index] < best_value - min_delta for index in (first, second))  # type: ignore[operator]
        worse = all(_defect_share(rows[index]) > _defect_share(best_row) for index in (first, second))
        if fell and worse:
            one, two = rows[first], rows[second]
            return StopDecision(
                epoch=latest.epoch,
                best_epoch=best_row.epoch,
                best_identity=best_value,
                rule="falling",
                reason=f"the identity fell for two sampled epochs (epoch {one.epoch}: {values[first]:.3f}, epoch "
                f"{two.epoch}: {values[second]:.3f}; best {best_value:.3f} at epoch {best_row.epoch}) while the "
                f"defects rose ({one.defects}/{one.images} and {two.defects}/{two.images} images with defects, "
                f"against {best_row.defects}/{best_row.images} at epoch {best_row.epoch})",
            )
    return None


# --------------------------------------------------------------------------------------------- epoch search


def coarse_start(saved: Sequence[int], step: int = COARSE_STEP) -> list[int]:
    """Every `step`-th saved epoch from the first, and the last: where a search without a live curve starts."""
    ordered = sorted(set(saved))
    picks = ordered[::step]
    if ordered and ordered[-1] not in picks:
        picks.append(ordered[-1])
    return picks


def live_start(saved: Sequence[int], curve: Sequence[EpochScore], *, max_clip_drop: float, count: int = 2) -> list[int]:
    """The live curve's `count` best saved epochs, ranked as `select_epoch` ranks (none without identity evidence)."""
    rows = [row for row in curve if row.epoch in set(saved) and row.identity is not None]
    if not rows:
        return []
    excluded = select_epoch(rows, max_clip_drop=max_clip_drop).excluded
    ranked = sorted((row for row in rows if row.epoch not in excluded), key=rank_key, reverse=True)
    return sorted(row.epoch for row in ranked[:count])


def search_epochs(
    saved: Sequence[int],
    score: Callable[[int], EpochScore],
    *,
    start: Sequence[int],
    max_clip_drop: float,
    radius: int = SEARCH_RADIUS,
) -> list[EpochScore]:
    """Score the `start` epochs, then the saved epochs within `radius` of the best one (`select_epoch`), again
    around each new best, until every epoch that near the best is scored. Returns the rows in the order scored;
    `select_epoch` on them gives the choice. `score(epoch)` draws and judges one epoch."""
    ordered = sorted(set(saved))
    table: dict[int, EpochScore] = {}
    order: list[int] = []

    def visit(epochs: Iterable[int]) -> None:
        for epoch in sorted(set(epochs) - set(table)):
            table[epoch] = score(epoch)
            order.append(epoch)

    visit([epoch for epoch in start if epoch in ordered] or coarse_start(ordered))
    while True:
        best = select_epoch(list(table.values()), max_clip_drop=max_clip_drop).epoch
        if best is None:
            break
        index = ordered.index(best)
        new = [epoch for epoch in ordered[max(0, index - radius) : index + radius + 1] if epoch not in table]
        if not new:
            break
        visit(new)
    return [table[epoch] for epoch in order]


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
