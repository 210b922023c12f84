"""Reading sd-scripts' training output: its progress bar, epoch and checkpoint lines, split into segments.

sd-scripts prints `epoch N/M` and `saving checkpoint: PATH` on stdout and a tqdm bar on stderr, redrawn
with carriage returns: `steps:  33%|███▎      | 6/18 [00:17<00:35,  2.96s/it, avr_loss=1.16]`
(train_network.py). `runner` sends both streams through one pipe, so their order is kept, and cuts it into
`\\r`/`\\n` separated segments with `SegmentSplitter`; the parsers here turn a segment into what it says.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: One drawing of the `steps` bar, at the start of a segment (a log line may be glued after it).
STEPS_BAR = re.compile(r"^steps:\s*(?P<percent>\d+)%\|[^|]*\|\s*(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<info>[^\]]*)\]")
_EPOCH = re.compile(r"^epoch (?P<epoch>\d+)/(?P<total>\d+)\s*$")
_SAVED = re.compile(r"^saving checkpoint: (?P<path>.+?)\s*$")
_RATE = re.compile(r"^\s*(?P<value>[\d.]+)(?P<unit>s/it|it/s)$")


@dataclass(frozen=True)
class StepProgress:
    """One redraw of sd-scripts' `steps` tqdm bar."""

    step: int
    total: int
    percent: int
    elapsed: str | None = None
    remaining: str | None = None
    #: tqdm's rate as seconds per step: sd-scripts makes its bar with smoothing=0, so this is the running
    #: average since the bar started (elapsed / steps), not the last step's own time
    avg_seconds_per_step: float | None = None
    postfix: dict[str, str] = field(default_factory=dict)

    @property
    def avr_loss(self) -> float | None:
        value = self.postfix.get("avr_loss")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


def parse_progress(segment: str) -> StepProgress | None:
    """Parse a `steps:` tqdm segment; None for anything else (other bars, log lines)."""
    match = STEPS_BAR.match(segment.strip())
    if not match:
        return None
    parts = [part.strip() for part in match.group("info").split(",")]
    elapsed = remaining = None
    avg_seconds_per_step = None
    postfix: dict[str, str] = {}
    if parts and "<" in parts[0]:
        elapsed, remaining = (piece.strip() for piece in parts[0].split("<", 1))
    for part in parts[1:]:
        rate = _RATE.match(part)
        if rate:
            value = float(rate.group("value"))
            if value > 0:
                avg_seconds_per_step = value if rate.group("unit") == "s/it" else 1.0 / value
        elif "=" in part:
            key, value = part.split("=", 1)
            postfix[key.strip()] = value.strip()
    return StepProgress(
        step=int(match.group("n")),
        total=int(match.group("total")),
        percent=int(match.group("percent")),
        elapsed=elapsed,
        remaining=None if remaining in (None, "?") else remaining,
        avg_seconds_per_step=avg_seconds_per_step,
        postfix=postfix,
    )


def parse_epoch(segment: str) -> tuple[int, int] | None:
    """`epoch 3/20` -> (3, 20)."""
    match = _EPOCH.match(segment.strip())
    return (int(match.group("epoch")), int(match.group("total"))) if match else None


def parse_saved(segment: str) -> Path | None:
    """`saving checkpoint: /x/name-000001.safetensors` -> the path."""
    match = _SAVED.match(segment.strip())
    return Path(match.group("path")) if match else None


class SegmentSplitter:
    """Splits a byte stream (UTF-8, cut anywhere) into `\\r`/`\\n` separated text segments."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        #: text after the last separator: tqdm's current bar, until its next redraw starts with `\\r`
        self.pending = ""

    def feed(self, chunk: bytes) -> list[str]:
        """The segments `chunk` completes; the text after its last separator waits in `pending`."""
        self.pending += self._decoder.decode(chunk)
        *complete, self.pending = re.split(r"\r\n|\r|\n", self.pending)
        return [segment for segment in complete if segment.strip()]

    def flush(self) -> list[str]:
        """The last segment (the stream has ended, so `pending` is complete), if it is not blank."""
        rest = self.pending + self._decoder.decode(b"", final=True)
        self.pending = ""
        return [rest] if rest.strip() else []


def split_segments(chunks: Iterable[bytes]) -> Iterator[str]:
    """Decode a byte stream (UTF-8, split anywhere) into `\\r`/`\\n` separated segments, empty ones dropped."""
    splitter = SegmentSplitter()
    for chunk in chunks:
        yield from splitter.feed(chunk)
    yield from splitter.flush()
