"""What the critic says about one image: every check with its value, threshold, status and reason.

A verdict is never only a boolean. Each `Check` records what was measured (`value`), the limit it was held
to (`threshold`), the outcome (`status`), a sentence a person can read (`reason`) and, when the check
blocks the image, the kind of failure (`failure`) that decides how a retry adjusts the prompt.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from zirelia_local.common.paths import display_path

PASS = "pass"
FAIL = "fail"
#: the check could not be made (no CLIP weights, no reference identity): recorded as such, never guessed
UNAVAILABLE = "unavailable"
#: the check did not apply (no face, so no face size)
SKIPPED = "skipped"

# Failure kinds: what went wrong, in the words the retry logic reads.
NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
IDENTITY_WEAK = "identity_weak"
NO_REFERENCE = "no_reference"
PROMPT_ADHERENCE = "prompt_adherence"
BLURRY = "blurry"
UNDEREXPOSED = "underexposed"
OVEREXPOSED = "overexposed"
FACE_TOO_SMALL = "face_too_small"
FACE_CUT_OFF = "face_cut_off"
UNREADABLE = "unreadable"

FAILURE_LABELS = {
    NO_FACE: "no face found",
    MULTIPLE_FACES: "more than one main face",
    IDENTITY_WEAK: "not the persona's face",
    NO_REFERENCE: "no reference identity",
    PROMPT_ADHERENCE: "prompt not followed",
    BLURRY: "blurry",
    UNDEREXPOSED: "underexposed",
    OVEREXPOSED: "overexposed",
    FACE_TOO_SMALL: "face too small",
    FACE_CUT_OFF: "face cut off by the frame",
    UNREADABLE: "unreadable image",
}


@dataclass
class Check:
    name: str
    status: str
    reason: str
    value: float | int | None = None
    threshold: float | int | str | None = None
    failure: str | None = None

    @property
    def blocks(self) -> bool:
        """Whether this check keeps the image from being accepted."""
        return self.failure is not None


@dataclass
class Verdict:
    checks: list[Check] = field(default_factory=list)
    #: every measured number (face count, box, distance, similarity, CLIP score, sharpness, brightness)
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        """Accepted when nothing blocks it and the identity check positively passed, or, where there is no
        reference identity and the caller chose to go on without one, could not be made (`identity_judged`
        then says so)."""
        identity = self.check("identity")
        if self.failures or identity is None:
            return False
        return identity.status == PASS or (identity.status == UNAVAILABLE and identity.failure is None)

    @property
    def identity_judged(self) -> bool:
        identity = self.check("identity")
        return identity is not None and identity.status in (PASS, FAIL)

    @property
    def failures(self) -> list[str]:
        return [check.failure for check in self.checks if check.failure is not None]

    @property
    def reasons(self) -> list[str]:
        """One sentence per check that failed or could not be made; when accepted, every check that ran."""
        if self.accepted:
            return [check.reason for check in self.checks if check.status in (PASS, UNAVAILABLE)]
        return [check.reason for check in self.checks if check.status in (FAIL, UNAVAILABLE) or check.blocks]

    @property
    def summary(self) -> str:
        if self.accepted:
            return "accepted" if self.identity_judged else "accepted (identity not judged)"
        return "rejected: " + ", ".join(FAILURE_LABELS.get(kind, kind) for kind in self.failures)

    def check(self, name: str) -> Check | None:
        return next((check for check in self.checks if check.name == name), None)

    def to_record(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "summary": self.summary,
            "failures": self.failures,
            "reasons": self.reasons,
            "scores": self.scores,
            "checks": [asdict(check) for check in self.checks],
        }


def unreadable_verdict(refused: Any) -> Verdict:
    """The verdict on an image file the image opener refused (`refused`: its ImageRefused): rejected, and why."""
    reason = f"unreadable image {display_path(refused.path.name)}: {refused.reason}"
    return Verdict(checks=[Check("image", FAIL, reason, failure=UNREADABLE)], scores={"unreadable": refused.reason})
