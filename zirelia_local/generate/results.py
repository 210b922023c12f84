"""What a request produced: the accepted images with their records, the rejections, and the summary the
command prints (one line per failure kind)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.console import info
from zirelia_local.critic import FAILURE_LABELS


@dataclass(frozen=True)
class GeneratedImage:
    """An accepted image: its file, what it shows and how it was drawn, and its attempt record."""

    path: Path
    #: the user's prompt (the scene)
    prompt: str
    #: what was drawn: trigger word, class phrase, framing words of retries, the scene
    drawn_prompt: str
    seed: int
    scale: float
    attempt: int
    #: False when there was no reference identity to compare the face with
    identity_judged: bool
    record: dict[str, Any] = field(repr=False)

    def open(self) -> Any:
        """The image as an RGB PIL image (through the one image opener)."""
        from zirelia_local.common.images import open_image

        return open_image(self.path)


@dataclass
class GenerateResult:
    out_dir: Path
    gallery: Path
    results_file: Path
    requested: int
    accepted: list[GeneratedImage]
    #: the last attempt of every requested image that could not be accepted
    rejected: list[dict[str, Any]]
    #: attempts drawn by this call (a rerun of a finished request draws none)
    drawn: int
    #: attempts recorded in all, this call's and earlier ones'
    attempts: int
    seconds: float
    #: one line per failure kind of the images that could not be accepted
    failure_lines: list[str]
    #: requested images this call finished (accepted, or rejected with no retry left)
    finished: int = 0

    @property
    def complete(self) -> bool:
        return len(self.accepted) == self.requested

    @property
    def exit_code(self) -> int:
        """0 when every requested image was accepted, 1 when some could not be."""
        return 0 if self.complete else 1


def failure_lines(rejected: Sequence[dict[str, Any]], requested: int) -> list[str]:
    """One line per failure kind: how many images still failed with it, and after how many retries."""
    kinds: dict[str, list[dict[str, Any]]] = {}
    for record in rejected:
        for kind in record["failures"] or ["not drawn"]:
            kinds.setdefault(kind, []).append(record)
    lines = []
    for kind, records in sorted(kinds.items(), key=lambda entry: -len(entry[1])):
        tries = sorted({record["attempt"] for record in records})
        if all(record["outcome"].startswith("rejected: no retry can help") for record in records):
            after = "no retry can help"
        elif tries == [0]:
            after = "on the first try (no retries allowed)"
        else:
            span = str(tries[0]) if len(tries) == 1 else f"{tries[0]}-{tries[-1]}"
            after = f"after {span} {'retry' if span == '1' else 'retries'} each"
        label = FAILURE_LABELS.get(kind, kind)
        lines.append(f"{label}: {len(records)} of {requested} images still rejected {after}")
    return lines


def print_summary(result: GenerateResult) -> None:
    if result.drawn:
        rate = f", {result.finished / result.seconds:.2f} images/s" if result.seconds > 0 else ""
        drew = f"drew {result.drawn} attempt(s) for {result.finished} image(s) in {result.seconds:.1f} s{rate}"
    else:
        drew = "nothing left to draw"
    unjudged = sum(1 for image in result.accepted if not image.identity_judged)
    info(
        escape(f"generate: {len(result.accepted)} of {result.requested} images accepted ({drew})")
        + (f" [yellow]({unjudged} without an identity check)[/yellow]" if unjudged else "")
    )
    for line in result.failure_lines:
        info(f"  [red]{escape(line)}[/red]")
    info(escape(f"gallery: {result.gallery}"))
