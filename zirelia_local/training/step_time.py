"""The one training speed figure zirelia quotes: the median of each step's own duration, first step excluded.

Both backends write a step's own duration into `train/metrics.jsonl` as `step_seconds` (the diffusers backend
times the step itself; for sd-scripts it is the time between two of its step lines). The progress bar, the
report and benchmarks/bench_train.py all quote the median of those (`median_step_seconds`), never a running
average: sd-scripts' own `s/it` is its elapsed time divided by the steps so far, kept as `avg_step_seconds`.
The first step is left out because it also pays for warm-up (CUDA kernels, the first batch, caches).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from typing import Any

STEP_SECONDS = "step_seconds"


def median_step_seconds(durations: Iterable[float | None]) -> float | None:
    """The median of the step durations in order, without the first; the only one when there is one; None
    when there is none."""
    known = [float(value) for value in durations if value is not None]
    if not known:
        return None
    return statistics.median(known[1:] or known)


def median_from_metrics(records: Iterable[Mapping[str, Any]]) -> float | None:
    """`median_step_seconds` of the step records of a metrics.jsonl (event lines and older runs' lines without
    `step_seconds` are left out)."""
    return median_step_seconds(
        record.get(STEP_SECONDS) for record in records if "event" not in record and record.get("step") is not None
    )


def step_time_text(median: float | None) -> str:
    """The figure as the progress bar and the report print it."""
    if median is None:
        return ""
    return f"{median:.2f} s/step (median)" if median >= 0.01 else f"{median * 1000:.1f} ms/step (median)"


class StepTimes:
    """Step durations as they come, for the progress bar's figure."""

    def __init__(self) -> None:
        self.durations: list[float] = []

    def add(self, seconds: float | None) -> None:
        if seconds is not None:
            self.durations.append(seconds)

    @property
    def median(self) -> float | None:
        return median_step_seconds(self.durations)

    def text(self) -> str:
        return step_time_text(self.median)
