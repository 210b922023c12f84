"""Each critic check on real photos (and images derived from them) that should pass and fail.

The identity checks use the real dlib embedder and a reference identity built from real embeddings of two
other photos of the same person; prompt adherence uses a tiny randomly initialised open_clip model, whose
scores mean nothing, so its tests pin the mechanics (threshold, unavailable), not the semantics."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.critic_support import build_tiny_clip
from tests.photos import blurred, brightened, cut_off, darkened, noise, photo, side_by_side, small_face
from zirelia_local.common.config import CriticConfig
from zirelia_local.common.images import laplacian_variance, mean_brightness
from zirelia_local.critic.checks import edges_touched, main_faces
from zirelia_local.critic.clip_score import ClipAvailability, load_clip_scorer
from zirelia_local.critic.judge import Critic
from zirelia_local.faces.base import DetectedFace
from zirelia_local.faces.identity import ReferenceIdentity


@pytest.fixture(scope="module")
def embedder():
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    return DlibEmbedder()


@pytest.fixture(scope="module")
def reference(embedder):
    embeddings = [embedder.detect(photo(name))[0].embedding for name in ("obama2", "obama3")]
    return ReferenceIdentity(embedder.centroid(embeddings), embedder.name, "reference_images", 2)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = build_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip")
    return load_clip_scorer(CriticConfig(clip_model=str(folder)))


NO_CLIP = ClipAvailability(None, "no CLIP weights configured (test)")


def make_critic(embedder, reference, clip=NO_CLIP, **settings) -> Critic:
    return Critic(CriticConfig(**settings), embedder, reference, clip, reference_missing_reason="no reference (test)")


def statuses(verdict) -> dict[str, str]:
    return {check.name: check.status for check in verdict.checks}


def test_same_person_is_accepted_with_every_score_recorded(embedder, reference):
    verdict = make_critic(embedder, reference).judge(photo("obama"), "a photo of a man")
    assert verdict.accepted, verdict.reasons
    assert statuses(verdict) == {
        "face": "pass",
        "single_face": "pass",
        "identity": "pass",
        "face_size": "pass",
        "face_in_frame": "pass",
        "prompt_adherence": "unavailable",
        "sharpness": "pass",
        "exposure": "pass",
    }
    scores = verdict.scores
    assert scores["faces"] == 1 and scores["main_faces"] == 1 and scores["face_size"] > 150
    assert scores["identity_distance"] < 0.45 < scores["identity_similarity"]
    assert scores["identity_threshold"] == 0.6
    assert scores["clip_score"] is None
    assert scores["sharpness"] > 100 and 0.2 < scores["brightness"] < 0.8
    record = json.loads(json.dumps(verdict.to_record()))  # every number and reason is JSON, not only a boolean
    assert record["accepted"] is True and len(record["checks"]) == 8
    assert any("distance" in reason for reason in record["reasons"])
    unavailable = verdict.check("prompt_adherence")
    assert unavailable.failure is None and "not scored" in unavailable.reason


def test_other_person_is_rejected_as_weak_identity(embedder, reference):
    verdict = make_critic(embedder, reference).judge(photo("biden"), "a photo of a man")
    assert not verdict.accepted
    assert verdict.failures == ["identity_weak"]
    check = verdict.check("identity")
    assert check.status == "fail" and check.value > 0.6 and "not the persona" in check.reason
    assert verdict.summary == "rejected: not the persona's face"


def test_identity_threshold_is_configurable(embedder, reference):
    strict = make_critic(embedder, reference, identity_threshold=0.1).judge(photo("obama"), "x")
    assert strict.failures == ["identity_weak"]
    assert strict.scores["identity_threshold"] == 0.1


def test_no_face_fails_and_skips_what_needs_a_face(embedder, reference):
    verdict = make_critic(embedder, reference).judge(noise(128), "a photo")
    assert verdict.failures == ["no_face"]
    assert statuses(verdict) == {
        "face": "fail",
        "single_face": "skipped",
        "identity": "skipped",
        "face_size": "skipped",
        "face_in_frame": "skipped",
        "prompt_adherence": "unavailable",
        "sharpness": "pass",
        "exposure": "pass",
    }
    assert verdict.scores["sharpness_region"] == "image"
    assert verdict.reasons[0] == "no face found"


def test_two_faces_fail_exactly_one_main_face(embedder, reference):
    verdict = make_critic(embedder, reference).judge(side_by_side(photo("obama"), photo("biden")), "x")
    assert "multiple_faces" in verdict.failures
    assert verdict.scores["main_faces"] == 2
    # A much smaller second face is background, not a second main face.
    biden = photo("biden")
    background = biden.resize((biden.width * 2 // 5, biden.height * 2 // 5))  # its face ~1/3 of the main one
    verdict = make_critic(embedder, reference).judge(side_by_side(photo("obama"), background), "x")
    assert verdict.scores["faces"] == 2 and verdict.scores["main_faces"] == 1
    assert "multiple_faces" not in verdict.failures


def test_tiny_face_fails_face_size(embedder, reference):
    verdict = make_critic(embedder, reference).judge(small_face(photo("obama")), "x")
    assert verdict.scores["faces"] == 1, "dlib must still find the small face"
    assert "face_too_small" in verdict.failures
    assert verdict.check("face_size").value < 64
    assert (
        make_critic(embedder, reference, min_face_size=32)
        .judge(small_face(photo("obama")), "x")
        .check("face_size")
        .status
        == "pass"
    )


def test_face_cut_off_by_the_frame_fails(embedder, reference):
    verdict = make_critic(embedder, reference).judge(cut_off(photo("obama")), "x")
    assert verdict.scores["faces"] == 1
    assert "face_cut_off" in verdict.failures
    assert "left border" in verdict.check("face_in_frame").reason


def test_blurred_face_fails_sharpness(embedder, reference):
    verdict = make_critic(embedder, reference).judge(blurred(photo("obama")), "x")
    assert verdict.scores["sharpness_region"] == "face"
    assert verdict.failures == ["blurry"], verdict.reasons
    assert verdict.check("identity").status == "pass"  # still the right person, only blurred
    assert verdict.check("sharpness").value < 60


@pytest.mark.parametrize(("transform", "failure"), [(darkened, "underexposed"), (brightened, "overexposed")])
def test_exposure_failures(embedder, reference, transform, failure):
    verdict = make_critic(embedder, reference).judge(transform(photo("obama")), "x")
    assert failure in verdict.failures
    check = verdict.check("exposure")
    assert check.status == "fail" and check.threshold == "0.08..0.92"


def test_no_reference_identity_is_reported_not_guessed(embedder):
    verdict = make_critic(embedder, None).judge(photo("obama"), "x")
    assert not verdict.accepted
    check = verdict.check("identity")
    assert check.status == "unavailable" and check.failure == "no_reference"
    assert verdict.scores["identity_distance"] is None
    assert "no reference (test)" in verdict.reasons


def test_prompt_adherence_with_a_real_open_clip_model(embedder, reference, tiny_clip):
    assert tiny_clip.scorer is not None, tiny_clip.reason
    image = photo("obama")
    passing = make_critic(embedder, reference, tiny_clip, min_clip_score=-1.0).judge(image, "a photo of a man")
    failing = make_critic(embedder, reference, tiny_clip, min_clip_score=1.0).judge(image, "a photo of a man")
    score = passing.scores["clip_score"]
    assert -1.0 <= score <= 1.0 and failing.scores["clip_score"] == score
    assert passing.accepted and passing.check("prompt_adherence").status == "pass"
    assert failing.failures == ["prompt_adherence"]
    assert "CLIP score" in failing.check("prompt_adherence").reason


def test_batch_judging_equals_one_by_one(embedder, reference, tiny_clip):
    critic = make_critic(embedder, reference, tiny_clip, min_clip_score=-1.0)
    images = [photo("obama"), photo("biden"), noise(96)]
    texts = ["a photo of a man", "a man in a suit", "noise"]
    batch = critic.judge_batch(images, texts)
    alone = [critic.judge(image, text) for image, text in zip(images, texts, strict=True)]
    assert [v.failures for v in batch] == [v.failures for v in alone] == [[], ["identity_weak"], ["no_face"]]
    for one, other in zip(batch, alone, strict=True):
        assert one.scores["clip_score"] == pytest.approx(other.scores["clip_score"], abs=1e-4)


def test_measurements():
    flat = np.full((32, 32), 120.0)
    checker = (np.indices((32, 32)).sum(axis=0) % 2) * 255.0
    assert laplacian_variance(flat) == 0.0
    assert laplacian_variance(checker) > 10_000
    assert mean_brightness(np.zeros((4, 4, 3), np.uint8)) == 0.0
    assert mean_brightness(np.full((4, 4, 3), 255, np.uint8)) == pytest.approx(1.0)
    assert edges_touched((0, 10, 50, 60), 100, 100, 2) == ["left"]
    assert edges_touched((10, 10, 98, 99), 100, 100, 2) == ["right", "bottom"]
    assert edges_touched((10, 10, 50, 60), 100, 100, 2) == []
    empty = np.zeros(128, np.float32)
    faces = [DetectedFace((0, 0, 40, 40), 0.9, empty), DetectedFace((50, 0, 150, 100), 0.9, empty)]
    assert [face.size for face in main_faces(faces, 0.5)] == [100]
    assert [face.size for face in main_faces(faces, 0.4)] == [100, 40]
