"""Epoch selection on score tables: the best identity wins unless its prompt adherence collapsed."""

from __future__ import annotations

import pytest

from zirelia_local.critic.selection import EpochScore, select_epoch, summarize_epoch


def row(epoch, identity, clip, accepted=4, faces=4, images=4) -> EpochScore:
    return EpochScore(
        epoch=epoch,
        images=images,
        faces=faces,
        identity=identity,
        identity_with_face=identity,
        clip=clip,
        accepted_first_try=accepted,
        accepted=accepted,
        attempts=images,
    )


def test_best_identity_wins_when_adherence_holds():
    table = [row(1, 0.40, 0.30), row(2, 0.55, 0.31), row(3, 0.52, 0.30)]
    selection = select_epoch(table, max_clip_drop=0.03)
    assert selection.epoch == 2 and selection.basis == "identity"
    assert "highest mean identity similarity (0.550" in selection.reason
    assert selection.excluded == {}


def test_overfitting_epochs_are_excluded_even_with_higher_similarity():
    # Similarity keeps rising while prompt adherence falls: epochs 4 and 5 memorised the training images.
    table = [
        row(1, 0.40, 0.300),
        row(2, 0.50, 0.305),
        row(3, 0.58, 0.290),
        row(4, 0.62, 0.240),
        row(5, 0.66, 0.200),
    ]
    selection = select_epoch(table, max_clip_drop=0.03)
    assert selection.epoch == 3
    assert set(selection.excluded) == {4, 5}
    assert "overfitting" in selection.excluded[5] and "0.200" in selection.excluded[5]
    assert selection.reference_clip == pytest.approx(0.305)
    assert "not chosen: epoch 4" in selection.reason
    # A looser tolerance lets epoch 4 in.
    assert select_epoch(table, max_clip_drop=0.07).epoch == 4


def test_without_clip_the_best_identity_wins_and_the_reason_says_overfitting_was_not_checked():
    table = [row(1, 0.40, None), row(2, 0.66, None), row(3, 0.50, None)]
    selection = select_epoch(table, max_clip_drop=0.03)
    assert selection.epoch == 2 and "could not be checked" in selection.reason


def test_ties_go_to_more_accepted_images_then_the_earlier_epoch():
    assert select_epoch([row(1, 0.5, 0.3, accepted=2), row(2, 0.5, 0.3, accepted=3)], max_clip_drop=0.03).epoch == 2
    assert select_epoch([row(1, 0.5, 0.3), row(2, 0.5, 0.3)], max_clip_drop=0.03).epoch == 1


def test_no_identity_evidence_keeps_the_last_epoch_and_says_it_is_no_judgement():
    table = [row(1, None, None, accepted=0, faces=0), row(2, None, None, accepted=0, faces=0)]
    selection = select_epoch(table, max_clip_drop=0.03)
    assert selection.epoch == 2 and selection.basis == "default_last"
    assert "no evaluation image showed a face" in selection.reason
    assert "not a quality judgement" in selection.reason and "accepted 0 of 8" in selection.reason
    assert select_epoch([], max_clip_drop=0.03).epoch is None


def attempt(item, number, accepted, similarity, clip=None, faces=1):
    return {
        "item": item,
        "attempt": number,
        "accepted": accepted,
        "scores": {"identity_similarity": similarity, "clip_score": clip, "faces": faces},
    }


def test_summary_uses_first_attempts_and_counts_a_missing_face_as_zero():
    records = [
        attempt("a", 0, False, None, 0.2, faces=0),
        attempt("a", 1, True, 0.8, 0.3),  # a retry: counts for acceptance, not for the comparison
        attempt("b", 0, True, 0.6, 0.4),
    ]
    score = summarize_epoch(3, records)
    assert score.images == 2 and score.faces == 1 and score.attempts == 3
    assert score.identity == pytest.approx(0.3)  # (0 + 0.6) / 2
    assert score.identity_with_face == pytest.approx(0.6)
    assert score.clip == pytest.approx(0.3)
    assert score.accepted_first_try == 1 and score.accepted == 2
    no_evidence = summarize_epoch(1, [attempt("a", 0, False, None, faces=0)])
    assert no_evidence.identity is None and no_evidence.clip is None
