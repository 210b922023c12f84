"""The critic: judge an image against the prompt and the persona's reference identity.

Identity (face found, exactly one main face, similarity to the reference within the embedder's same-person
threshold), prompt adherence (CLIP), and cheap defects (sharpness, exposure, face size, face cut off).
Faces of a whole batch are detected and embedded together, and CLIP scores a batch in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from rich.markup import escape

from zirelia_local.common.config import CriticConfig, ZireliaConfig
from zirelia_local.common.console import announce, announced, warn
from zirelia_local.common.images import ImageRefused, laplacian_variance, load_rgb, mean_brightness, sharpness_region
from zirelia_local.critic.checks import (
    check_exposure,
    check_face_found,
    check_face_in_frame,
    check_face_size,
    check_sharpness,
    check_single_face,
    main_faces,
)
from zirelia_local.critic.clip_score import CLIP_CHECK_NAME, ClipAvailability, load_clip_scorer
from zirelia_local.critic.verdict import (
    FAIL,
    IDENTITY_WEAK,
    NO_REFERENCE,
    PASS,
    PROMPT_ADHERENCE,
    SKIPPED,
    UNAVAILABLE,
    Check,
    Verdict,
    unreadable_verdict,
)
from zirelia_local.faces.base import DetectedFace, FaceEmbedder
from zirelia_local.faces.identity import IDENTITY_NAME, ReferenceIdentity


class Critic:
    """Judges images; holds the embedder, the reference identity and the CLIP scorer (or why there is none)."""

    def __init__(
        self,
        critic: CriticConfig,
        embedder: FaceEmbedder,
        reference: ReferenceIdentity | None,
        clip: ClipAvailability,
        *,
        reference_missing_reason: str | None = None,
        identity_required: bool = True,
    ) -> None:
        self.config = critic
        self.embedder = embedder
        self.reference = reference
        self.clip = clip
        self.reference_missing_reason = reference_missing_reason or "no reference identity given"
        #: False: without a reference identity an image can still be accepted, its identity recorded as not
        #: judged (`zirelia generate` on a record-mode run); True: nothing unconfirmed is accepted (epoch scoring)
        self.identity_required = identity_required
        self.threshold = critic.identity_threshold if critic.identity_threshold is not None else embedder.threshold

    @classmethod
    def from_config(
        cls, config: ZireliaConfig, *, clip: ClipAvailability | None = None, identity_required: bool = True
    ) -> Critic:
        """The critic a run's config describes: its embedder, `identity.safetensors`, its CLIP model.

        A missing identity file is an error, except in curation's `record` mode (the embedded demo), where
        curation may have found no face at all: then every verdict says so instead of crashing, and rejects
        the image unless `identity_required` is False.
        """
        from zirelia_local.faces import load_embedder
        from zirelia_local.faces.identity import load_identity

        embedder = load_embedder(config.curate)
        reference, missing = None, None
        if (config.run_dir / IDENTITY_NAME).is_file() or config.curate.mode != "record":
            reference = load_identity(config.run_dir, embedder=embedder.name)
        else:
            missing = (
                f"no reference identity: {IDENTITY_NAME} is missing from {config.run_dir} (curation in record mode "
                "found no face to build it from), so no image can be confirmed as the persona"
            )
            if not announced(missing):  # the live judge during training and the critic build one each: say it once
                announce(missing, escape(missing))
        if clip is None:
            clip = load_clip_scorer(config.critic, allow_pickle=config.run.allow_pickle)
            if clip.scorer is None and not announced(CLIP_CHECK_NAME):  # the pre-flight said it at the start
                warn(escape(f"prompt adherence will not be scored: {clip.reason}"))
        return cls(
            config.critic,
            embedder,
            reference,
            clip,
            reference_missing_reason=missing,
            identity_required=identity_required,
        )

    def judge(self, image: Any, clip_text: str) -> Verdict:
        return self.judge_batch([image], [clip_text])[0]

    def judge_batch(self, images: Sequence[Any], clip_texts: Sequence[str]) -> list[Verdict]:
        """One verdict per image; `clip_texts` are what each image should show (for prompt adherence).

        An image file the image opener refuses (unreadable, truncated, too large) gets a rejecting verdict that
        says why; the others are judged together.
        """
        loaded: list[np.ndarray | ImageRefused] = []
        for image in images:
            try:
                loaded.append(load_rgb(image))
            except ImageRefused as refused:
                loaded.append(refused)
        readable = [index for index, item in enumerate(loaded) if not isinstance(item, ImageRefused)]
        rgbs = [loaded[index] for index in readable]
        faces_per_image = self.embedder.detect_batch(rgbs) if rgbs else []
        clip_scores: list[float | None] = [None] * len(rgbs)
        if self.clip.scorer is not None and rgbs:
            clip_scores = list(self.clip.scorer.score(rgbs, [clip_texts[index] for index in readable]))
        judged = iter(
            [
                self._verdict(rgb, faces, clip_score)
                for rgb, faces, clip_score in zip(rgbs, faces_per_image, clip_scores, strict=True)
            ]
        )
        return [unreadable_verdict(item) if isinstance(item, ImageRefused) else next(judged) for item in loaded]

    def _verdict(self, rgb: Any, faces: list[DetectedFace], clip_score: float | None) -> Verdict:
        critic = self.config
        height, width = rgb.shape[:2]
        main = main_faces(faces, critic.second_face_ratio)
        face = main[0] if main else None
        scores: dict[str, Any] = {
            "embedder": self.embedder.name,
            "faces": len(faces),
            "main_faces": len(main),
            "face_box": list(face.box) if face else None,
            "face_size": face.size if face else None,
            "face_score": round(float(face.score), 4) if face else None,
        }
        checks = [check_face_found(faces), check_single_face(faces, critic)]
        checks.append(self._identity_check(face, scores))
        checks.append(check_face_size(face, critic))
        checks.append(check_face_in_frame(face, width, height, critic))
        checks.append(self._clip_check(clip_score, scores))
        region = "face" if face is not None else "image"
        sharpness = laplacian_variance(sharpness_region(rgb, face.box if face else None))
        brightness = mean_brightness(rgb)
        scores.update(sharpness=round(sharpness, 2), sharpness_region=region, brightness=round(brightness, 4))
        checks.append(check_sharpness(sharpness, region, critic))
        checks.append(check_exposure(brightness, critic))
        return Verdict(checks=checks, scores=scores)

    def _identity_check(self, face: DetectedFace | None, scores: dict[str, Any]) -> Check:
        threshold = round(float(self.threshold), 4)
        scores.update(identity_distance=None, identity_similarity=None, identity_threshold=threshold)
        if face is None:
            return Check("identity", SKIPPED, "no face to compare with the persona", threshold=threshold)
        if self.reference is None:
            if not self.identity_required:
                return Check("identity", UNAVAILABLE, f"identity not judged: {self.reference_missing_reason}")
            return Check(
                "identity", UNAVAILABLE, self.reference_missing_reason, threshold=threshold, failure=NO_REFERENCE
            )
        distance = self.embedder.distance(face.embedding, self.reference.embedding)
        similarity = self.embedder.similarity(face.embedding, self.reference.embedding)
        scores.update(identity_distance=round(distance, 4), identity_similarity=round(similarity, 4))
        if distance > self.threshold:
            return Check(
                "identity",
                FAIL,
                f"not the persona: {self.embedder.name} distance {distance:.3f} > threshold {self.threshold:g} "
                f"(similarity {similarity:.3f})",
                value=round(distance, 4),
                threshold=threshold,
                failure=IDENTITY_WEAK,
            )
        return Check(
            "identity",
            PASS,
            f"the persona: {self.embedder.name} distance {distance:.3f} <= {self.threshold:g} "
            f"(similarity {similarity:.3f})",
            value=round(distance, 4),
            threshold=threshold,
        )

    def _clip_check(self, clip_score: float | None, scores: dict[str, Any]) -> Check:
        minimum = self.config.min_clip_score
        scores["clip_score"] = None if clip_score is None else round(clip_score, 4)
        if self.clip.scorer is None or clip_score is None:
            return Check(
                "prompt_adherence", UNAVAILABLE, f"prompt adherence not scored: {self.clip.reason}", threshold=minimum
            )
        if clip_score < minimum:
            return Check(
                "prompt_adherence",
                FAIL,
                f"prompt not followed: CLIP score {clip_score:.3f} < min_clip_score {minimum:g}",
                value=round(clip_score, 4),
                threshold=minimum,
                failure=PROMPT_ADHERENCE,
            )
        return Check(
            "prompt_adherence",
            PASS,
            f"prompt followed: CLIP score {clip_score:.3f} >= {minimum:g}",
            value=round(clip_score, 4),
            threshold=minimum,
        )
