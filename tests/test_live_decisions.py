"""The per-epoch decisions of critic/selection.py on recorded score tables of 20-epoch runs: the early stop on
the live identity curve (what the sample images showed while training ran) and the critic's epoch search
(what the full critic measures), which must pick what scoring every epoch picks while scoring fewer.

Each table has, per epoch: the critic's mean identity similarity (8 evaluation images), its mean CLIP score,
the number of images with defects, and the live curve's identity (4 sample images: noisier).
- rising: the likeness still improves at the last epoch, more slowly towards the end;
- peak: the likeness peaks at epoch 8, then overfitting sets in: identity and prompt adherence fall, defects rise;
- flat: the likeness is learned at once and stays the same;
- noisy: a rise to a plateau around epochs 9-14, with the critic's measurement noise (about 0.015).
"""

from __future__ import annotations

import pytest

from zirelia_local.critic.selection import (
    EpochScore,
    coarse_start,
    early_stop_decision,
    live_start,
    search_epochs,
    select_epoch,
)

EPOCHS = 20
MAX_CLIP_DROP = 0.03
STOP = {"patience": 3, "min_delta": 0.01, "min_epochs": 4}

CRITIC = {
    "rising": [0.356, 0.406, 0.448, 0.48, 0.51, 0.541, 0.564, 0.589, 0.605, 0.62,
               0.633, 0.646, 0.652, 0.663, 0.668, 0.681, 0.679, 0.69, 0.689, 0.697],
    "peak": [0.479, 0.538, 0.587, 0.628, 0.659, 0.682, 0.696, 0.7, 0.691, 0.682,
             0.673, 0.664, 0.655, 0.646, 0.637, 0.628, 0.619, 0.61, 0.601, 0.592],
    "flat": [0.62] * EPOCHS,
    "noisy": [0.415, 0.493, 0.526, 0.556, 0.616, 0.619, 0.616, 0.635, 0.681, 0.65,
              0.671, 0.674, 0.67, 0.668, 0.648, 0.644, 0.644, 0.636, 0.648, 0.654],
}  # fmt: skip
CLIP = {
    "rising": [0.30] * EPOCHS,
    "peak": [0.31] * 10 + [round(0.31 - 0.009 * n, 3) for n in range(1, 11)],
    "flat": [0.29] * EPOCHS,
    "noisy": [0.297, 0.302, 0.296, 0.297, 0.299, 0.301, 0.298, 0.29, 0.306, 0.299,
              0.298, 0.303, 0.298, 0.294, 0.302, 0.302, 0.297, 0.304, 0.302, 0.296],
}  # fmt: skip
DEFECTS = {name: [0] * EPOCHS for name in CRITIC} | {"peak": [0] * 9 + [min(n, 8) for n in range(1, 12)]}
LIVE = {
    "rising": [0.345, 0.414, 0.455, 0.494, 0.511, 0.526, 0.541, 0.609, 0.559, 0.609,
               0.612, 0.647, 0.641, 0.654, 0.684, 0.67, 0.656, 0.71, 0.706, 0.721],
    "peak": [0.49, 0.523, 0.61, 0.62, 0.662, 0.66, 0.683, 0.709, 0.704, 0.683,
             0.698, 0.662, 0.613, 0.656, 0.594, 0.594, 0.61, 0.621, 0.611, 0.586],
    "flat": [0.62] * EPOCHS,
    "noisy": [0.43, 0.454, 0.572, 0.553, 0.583, 0.602, 0.645, 0.639, 0.649, 0.645,
              0.651, 0.667, 0.66, 0.66, 0.643, 0.671, 0.656, 0.674, 0.648, 0.634],
}  # fmt: skip


def rows(identities, clips, defects, images) -> list[EpochScore]:
    table = []
    for epoch, (identity, clip, defective) in enumerate(zip(identities, clips, defects, strict=True), start=1):
        accepted = images - round(defective * images / 8) if identity >= 0.5 else 0
        table.append(
            EpochScore(
                epoch=epoch,
                images=images,
                faces=images,
                identity=identity,
                identity_with_face=identity,
                clip=clip,
                accepted_first_try=accepted,
                accepted=accepted,
                attempts=images,
                defects=round(defective * images / 8),
            )
        )
    return table


def critic_table(name: str) -> list[EpochScore]:
    return rows(CRITIC[name], CLIP[name], DEFECTS[name], images=8)


def live_curve(name: str) -> list[EpochScore]:
    return rows(LIVE[name], CLIP[name], DEFECTS[name], images=4)


def first_stop(curve: list[EpochScore], **settings):
    """Replay training: the decision after each epoch, as the live judge makes it; the first stop."""
    for end in range(1, len(curve) + 1):
        decision = early_stop_decision(curve[:end], **(STOP | settings))
        if decision is not None:
            return decision
    return None


def searched(table: list[EpochScore], start: list[int]) -> list[EpochScore]:
    by_epoch = {row.epoch: row for row in table}
    return search_epochs(sorted(by_epoch), by_epoch.__getitem__, start=start, max_clip_drop=MAX_CLIP_DROP)


# What scoring all 20 epochs picks, and what the search scores, in order: from the coarse start (every 4th
# epoch and the last), and from the live curve's two best epochs.
EXPECTED = {
    "rising": (20, [1, 5, 9, 13, 17, 20, 18, 19], [18, 20], [18, 20, 17, 19]),
    "peak": (8, [1, 5, 9, 13, 17, 20, 6, 7, 8, 10, 11, 12], [8, 9], [8, 9, 5, 6, 7, 10, 11]),
    "flat": (1, [1, 5, 9, 13, 17, 20, 2, 3, 4], [1, 2], [1, 2, 3, 4]),
    # The live curve's best (16, 18) lies at the far end of the plateau: the search walks back to epoch 9.
    "noisy": (
        9,
        [1, 5, 9, 13, 17, 20, 6, 7, 8, 10, 11, 12],
        [16, 18],
        [16, 18, 13, 14, 15, 17, 19, 10, 11, 12, 9, 6, 7, 8],
    ),
}


@pytest.mark.parametrize("name", list(CRITIC))
def test_search_picks_what_scoring_all_picks_while_scoring_fewer_epochs(name):
    table = critic_table(name)
    chosen, coarse_scored, start, live_scored = EXPECTED[name]
    assert select_epoch(table, max_clip_drop=MAX_CLIP_DROP).epoch == chosen

    coarse = searched(table, coarse_start(range(1, EPOCHS + 1)))
    assert [row.epoch for row in coarse] == coarse_scored
    assert select_epoch(coarse, max_clip_drop=MAX_CLIP_DROP).epoch == chosen
    assert len(coarse) < EPOCHS

    assert live_start(range(1, EPOCHS + 1), live_curve(name), max_clip_drop=MAX_CLIP_DROP) == start
    live = searched(table, start)
    assert [row.epoch for row in live] == live_scored
    assert select_epoch(live, max_clip_drop=MAX_CLIP_DROP).epoch == chosen
    assert len(live) < EPOCHS


def test_search_without_any_face_scores_the_coarse_subset_and_the_last_epochs_neighbours():
    # No identity evidence (the tiny test model draws no face): the last epoch is kept by default either way.
    blank = [
        EpochScore(epoch, 8, 0, None, None, None, accepted_first_try=0, accepted=0, attempts=16, defects=8)
        for epoch in range(1, EPOCHS + 1)
    ]
    scored = searched(blank, start=[])
    assert [row.epoch for row in scored] == [1, 5, 9, 13, 17, 20, 18, 19]
    assert (
        select_epoch(scored, max_clip_drop=MAX_CLIP_DROP).epoch == 20 == select_epoch(blank, max_clip_drop=0.03).epoch
    )


# Early stop on the live curve: the epoch it stops after, the rule, and what the critic then picks among the
# epochs saved (against its pick among all 20).
STOPS = {
    "rising": (None, None, 20),
    "peak": (12, "patience", 8),
    "flat": (4, "patience", 1),
    "noisy": (11, "patience", 9),
}


@pytest.mark.parametrize("name", list(CRITIC))
def test_early_stop_on_the_live_curve_stops_where_the_face_stopped_improving(name):
    stop_epoch, rule, pick = STOPS[name]
    decision = first_stop(live_curve(name))
    if stop_epoch is None:
        assert decision is None
    else:
        assert (decision.epoch, decision.rule) == (stop_epoch, rule)
        assert decision.best_epoch < decision.epoch
        assert f"best {decision.best_identity:.3f} at epoch {decision.best_epoch}" in decision.reason
    saved = critic_table(name)[: stop_epoch or EPOCHS]
    assert select_epoch(saved, max_clip_drop=MAX_CLIP_DROP).epoch == pick


def test_a_fall_with_rising_defects_stops_before_patience_runs_out():
    # The face collapses after epoch 6: identity down and more broken images (no face, blur) every epoch.
    identities = [0.50, 0.58, 0.63, 0.66, 0.68, 0.69, 0.65, 0.60, 0.55, 0.50]
    defects = [0, 0, 0, 0, 0, 0, 2, 4, 6, 8]
    curve = rows(identities, [0.3] * 10, defects, images=4)
    decision = first_stop(curve, patience=4)
    assert (decision.epoch, decision.rule, decision.best_epoch) == (8, "falling", 6)
    assert "while the defects rose" in decision.reason and "(1/4 and 2/4 images with defects" in decision.reason
    # The same fall without more defects waits for patience.
    assert first_stop(rows(identities, [0.3] * 10, [0] * 10, images=4), patience=4).epoch == 10


def test_an_epoch_without_any_face_counts_as_fallen():
    curve = rows([0.6, 0.7, 0.7, 0.7], [0.3] * 4, [0] * 4, images=4)
    curve.append(EpochScore(5, 4, 0, None, None, None, accepted_first_try=0, accepted=0, attempts=4, defects=4))
    curve.append(EpochScore(6, 4, 0, None, None, None, accepted_first_try=0, accepted=0, attempts=4, defects=4))
    decision = first_stop(curve, patience=5)
    assert (decision.epoch, decision.rule, decision.best_epoch) == (6, "falling", 3)
    assert "epoch 6: 0.000" in decision.reason and "4/4 and 4/4 images with defects" in decision.reason


def test_no_stop_before_the_minimum_epochs_or_without_identity_evidence():
    assert first_stop(live_curve("flat"), min_epochs=9).epoch == 9
    blank = [EpochScore(e, 4, 0, None, None, None, 0, 0, 4, defects=4) for e in range(1, EPOCHS + 1)]
    assert first_stop(blank) is None


def test_training_on_after_an_early_stop_counts_patience_from_where_it_stopped():
    curve = live_curve("peak")
    assert early_stop_decision(curve[:12], **STOP).epoch == 12
    # The user raised the epochs after the stop at 12: epoch 13 alone does not stop it again; at 14 the two
    # epochs after the stop have fallen while their defects rose.
    assert early_stop_decision(curve[:13], **STOP, since_epoch=12) is None
    assert early_stop_decision(curve[:14], **STOP, since_epoch=12).rule == "falling"
