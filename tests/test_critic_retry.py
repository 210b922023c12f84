"""Retry adjustments: each failure kind changes the next attempt in its own way, and it is written down."""

from __future__ import annotations

import pytest

from zirelia_local.common.config import CriticConfig, parse_config
from zirelia_local.critic.retry import FRAMING_WORDS, first_attempt, next_attempt, retry_seed
from zirelia_local.critic.verdict import FAIL, FAILURE_LABELS, PASS, Check, Verdict

CONFIG = parse_config(
    {
        "persona": {"name": "T", "trigger_word": "tperson7", "description": "a man", "caption_class": "a man"},
        "dataset": {"lighting": ["l"], "expressions": ["e"], "settings": ["s"], "outfits": ["o"]},
    }
)


def rejected(*failures: str, identity_passes: bool = True) -> Verdict:
    checks = [Check("identity", PASS if identity_passes else FAIL, "identity")]
    checks += [Check(kind, FAIL, f"{kind} reason", failure=kind) for kind in failures]
    return Verdict(checks=checks)


def accepted() -> Verdict:
    return Verdict(checks=[Check("identity", PASS, "the persona")])


CRITIC = CriticConfig(max_retries=3, lora_scale=1.0, retry_lora_scale_step=0.2, max_retry_lora_scale=1.3)


def test_first_attempt_is_the_plain_evaluation_prompt():
    attempt = first_attempt("reading a book", 1001, CRITIC)
    assert attempt.prompt(CONFIG) == "tperson7, a photo of a man, reading a book"
    assert attempt.seed == 1001 and attempt.lora_scale == 1.0 and attempt.adjustments == ()


def test_weak_identity_strengthens_the_trigger_and_raises_the_scale_up_to_the_limit():
    attempt = first_attempt("reading a book", 1001, CRITIC)
    retry = next_attempt(attempt, rejected("identity_weak", identity_passes=False), CRITIC, 1001)
    assert retry.prompt(CONFIG) == "tperson7, a photo of tperson7, a man, reading a book"
    assert retry.lora_scale == pytest.approx(1.2)
    assert retry.seed == retry_seed(1001, 1) != 1001
    assert any("stronger trigger" in change for change in retry.adjustments)
    assert any("LoRA scale 1 -> 1.2" in change for change in retry.adjustments)
    second = next_attempt(retry, rejected("identity_weak", identity_passes=False), CRITIC, 1001)
    assert second.lora_scale == pytest.approx(1.3)  # capped by max_retry_lora_scale
    third = next_attempt(second, rejected("identity_weak", identity_passes=False), CRITIC, 1001)
    assert third.lora_scale == pytest.approx(1.3) and any("at its limit" in c for c in third.adjustments)
    assert len({attempt.seed, retry.seed, second.seed, third.seed}) == 4


@pytest.mark.parametrize("kind", ["no_face", "face_too_small", "face_cut_off", "multiple_faces"])
def test_framing_failures_add_framing_words_and_keep_the_scale(kind):
    attempt = first_attempt("on a beach", 7, CRITIC)
    retry = next_attempt(attempt, rejected(kind), CRITIC, 7)
    words = FRAMING_WORDS[kind]
    assert retry.prompt(CONFIG) == f"tperson7, a photo of a man, {words}, on a beach"
    assert retry.lora_scale == 1.0 and not retry.strong_trigger
    assert retry.adjustments[0].endswith(f"added framing words '{words}'")
    # The framing stays for the next retry, once.
    again = next_attempt(retry, rejected(kind), CRITIC, 7)
    assert again.prompt(CONFIG).count(words) == 1 and "already in the prompt" in again.adjustments[0]


@pytest.mark.parametrize("kind", ["blurry", "underexposed", "overexposed", "prompt_adherence"])
def test_defects_get_only_a_new_seed(kind):
    attempt = first_attempt("on a beach", 7, CRITIC)
    retry = next_attempt(attempt, rejected(kind), CRITIC, 7)
    assert retry.prompt(CONFIG) == attempt.prompt(CONFIG)
    assert retry.lora_scale == attempt.lora_scale
    assert retry.seed != attempt.seed
    assert retry.adjustments == (f"{FAILURE_LABELS[kind]}: new seed only", f"seed 7 -> {retry.seed}")


def test_several_failures_combine_their_adjustments():
    attempt = first_attempt("on a beach", 7, CRITIC)
    retry = next_attempt(
        attempt, rejected("identity_weak", "face_too_small", "blurry", identity_passes=False), CRITIC, 7
    )
    assert retry.strong_trigger and retry.lora_scale > 1.0
    assert FRAMING_WORDS["face_too_small"] in retry.prompt(CONFIG)
    assert len(retry.adjustments) == 5  # trigger, scale, framing, new seed only, the seed change


def test_no_retry_when_accepted_out_of_retries_or_nothing_can_help():
    attempt = first_attempt("on a beach", 7, CRITIC)
    assert next_attempt(attempt, accepted(), CRITIC, 7) is None
    assert next_attempt(attempt, rejected("no_reference", identity_passes=False), CRITIC, 7) is None
    last = attempt
    for _ in range(3):
        last = next_attempt(last, rejected("no_face"), CRITIC, 7)
    assert last.number == 3
    assert next_attempt(last, rejected("no_face"), CRITIC, 7) is None
    assert next_attempt(attempt, rejected("no_face"), CriticConfig(max_retries=0), 7) is None
