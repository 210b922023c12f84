"""Retries: a rejected image is drawn again with a prompt adjusted to what went wrong, and a new seed.

| failure                         | adjustment                                                        |
|---------------------------------|-------------------------------------------------------------------|
| identity weak (not the persona) | stronger trigger phrasing (trigger word repeated) + higher LoRA scale |
| no face / too small / cut off   | framing words (close-up, face visible, centred)                   |
| more than one main face         | "alone, a single person"                                          |
| blur, exposure, prompt adherence| new seed only                                                     |
| unreadable image file           | new seed only                                                     |
| no reference identity           | no retry: nothing drawn can be confirmed as the persona           |

Every attempt gets a new seed derived from the original one, so retries are reproducible. Adjustments
accumulate: a retry keeps the framing of the one before and adds to it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from zirelia_local.common.config import CriticConfig, ZireliaConfig
from zirelia_local.critic.verdict import (
    BLURRY,
    FACE_CUT_OFF,
    FACE_TOO_SMALL,
    FAILURE_LABELS,
    IDENTITY_WEAK,
    MULTIPLE_FACES,
    NO_FACE,
    NO_REFERENCE,
    OVEREXPOSED,
    PROMPT_ADHERENCE,
    UNDEREXPOSED,
    UNREADABLE,
    Verdict,
)

FRAMING_WORDS = {
    NO_FACE: "close-up portrait, face clearly visible, looking at the camera",
    FACE_TOO_SMALL: "close-up portrait, head and shoulders",
    FACE_CUT_OFF: "whole head centered in the frame",
    MULTIPLE_FACES: "alone, a single person",
}
NEW_SEED_ONLY = (BLURRY, UNDEREXPOSED, OVEREXPOSED, PROMPT_ADHERENCE, UNREADABLE)
NOT_RETRYABLE = (NO_REFERENCE,)
_SEED_STRIDE = 1_000_003  # a prime, so derived seeds of neighbouring evaluation seeds do not collide


@dataclass(frozen=True)
class Attempt:
    """One try at an evaluation image: attempt 0 is the plain evaluation prompt."""

    number: int
    scene: str
    seed: int
    lora_scale: float
    framing: tuple[str, ...] = ()
    strong_trigger: bool = False
    #: what changed from the previous attempt, and why (empty for attempt 0)
    adjustments: tuple[str, ...] = ()

    def prompt(self, config: ZireliaConfig) -> str:
        """The prompt drawn: trigger word, class phrase, framing words, then the scene."""
        trigger = config.persona.trigger_word
        phrase = config.persona.caption_phrase
        head = (
            f"{trigger}, a photo of {trigger}, {phrase}" if self.strong_trigger else f"{trigger}, a photo of {phrase}"
        )
        return ", ".join([head, *self.framing, self.scene])


def first_attempt(scene: str, seed: int, critic: CriticConfig) -> Attempt:
    return Attempt(number=0, scene=scene, seed=seed, lora_scale=critic.lora_scale)


def retry_seed(seed: int, number: int) -> int:
    """The seed of retry `number` (attempt 0 keeps the evaluation seed)."""
    return (seed + number * _SEED_STRIDE) % 2**32


def next_attempt(previous: Attempt, verdict: Verdict, critic: CriticConfig, original_seed: int) -> Attempt | None:
    """The adjusted retry after a rejected `previous` attempt, or None when no retry is due or can help."""
    failures = verdict.failures
    if verdict.accepted or not failures or previous.number >= critic.max_retries:
        return None
    if any(kind in NOT_RETRYABLE for kind in failures):
        return None
    framing = list(previous.framing)
    strong_trigger = previous.strong_trigger
    scale = previous.lora_scale
    changes: list[str] = []
    for kind in failures:
        label = FAILURE_LABELS.get(kind, kind)
        if kind in FRAMING_WORDS:
            words = FRAMING_WORDS[kind]
            if words not in framing:
                framing.append(words)
                changes.append(f"{label}: added framing words '{words}'")
            else:
                changes.append(f"{label}: framing words already in the prompt")
        elif kind == IDENTITY_WEAK:
            if not strong_trigger:
                strong_trigger = True
                changes.append(f"{label}: stronger trigger phrasing (trigger word repeated)")
            raised = min(round(scale + critic.retry_lora_scale_step, 4), critic.max_retry_lora_scale)
            if raised > scale:
                changes.append(f"{label}: LoRA scale {scale:g} -> {raised:g}")
                scale = raised
            else:
                changes.append(f"{label}: LoRA scale already at its limit {scale:g}")
        elif kind in NEW_SEED_ONLY:
            changes.append(f"{label}: new seed only")
    number = previous.number + 1
    seed = retry_seed(original_seed, number)
    changes.append(f"seed {previous.seed} -> {seed}")
    return replace(
        previous,
        number=number,
        seed=seed,
        lora_scale=scale,
        framing=tuple(framing),
        strong_trigger=strong_trigger,
        adjustments=tuple(changes),
    )
