"""Terminal output: one rich console on stderr, and a progress bar for long work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from zirelia_local.common.processes import is_local_main_process

console = Console(stderr=True, highlight=False)


def info(message: str) -> None:
    """Say how the work goes. Under a launch of several processes every process of a machine does the same
    steps (each on its share of the images): its first process speaks for them. Warnings and errors are each
    process's own and always printed."""
    if is_local_main_process():
        console.print(message)


def warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {message}")


def heading(title: str) -> None:
    """A rule across the terminal that names a step of the job. Under a launch of several processes every
    process goes through the same steps: the machine's first one says so, once."""
    if is_local_main_process():
        console.rule(title)


# Keys of what has been warned about up front in this process (the pre-flight's warnings, by check name).
_announced: set[str] = set()


def announce(key: str, message: str) -> None:
    """Warn now and remember `key`, so that a stage which would find the same thing later need not say it
    again (`announced`): the pre-flight warns at the start of the run, once. Under a launch of several
    processes, once a machine: its other processes find the same thing and keep quiet."""
    _announced.add(key)
    if is_local_main_process():
        warn(message)


def announced(key: str) -> bool:
    """Whether `announce(key, ...)` warned about it already in this process."""
    return key in _announced


class Advance(Protocol):
    def __call__(self, amount: float = 1, *, status: str | None = None) -> None: ...


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second), as the unit names them.

    The mean since the bar started, not rich's windowed estimate: work done in batches completes items in
    bursts, and the window would divide a whole batch by the microseconds between its last items.
    """

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed
        speed = task.completed / elapsed if elapsed and task.completed else None
        if not speed:
            return Text(f"-- {self.unit}/s", style="progress.data.speed")
        if speed >= 1:
            return Text(f"{speed:.2f} {self.unit}/s", style="progress.data.speed")
        return Text(f"{1 / speed:.1f} s/{self.unit}", style="progress.data.speed")


@contextmanager
def progress_bar(
    description: str, total: float | None, unit: str = "it", *, show_rate: bool = True
) -> Iterator[Advance]:
    """A bar with count, rate, elapsed and remaining time; `advance(n, status=...)` moves it.

    `show_rate=False` leaves out rich's own rate (a recent average), for a caller that quotes its own figure
    in the status (training: the median step time). Disabled (silent) when ZIRELIA_NO_PROGRESS is set, e.g. in
    logs of batch jobs, and on the other processes of a launch.
    """
    # Under a launch, one bar a machine (its first process's share): bars of several processes would overwrite
    # each other's lines.
    disabled = bool(os.environ.get("ZIRELIA_NO_PROGRESS")) or not is_local_main_process()
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        *([RateColumn(unit)] if show_rate else []),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    ]
    with Progress(*columns, console=console, disable=disabled, transient=False) as progress:
        task = progress.add_task(description, total=total, status="")

        def advance(amount: float = 1, *, status: str | None = None) -> None:
            if status is None:
                progress.advance(task, amount)
            else:
                progress.update(task, advance=amount, status=status)

        yield advance


def quiet_library_progress() -> None:
    """Hide diffusers' and transformers' own progress bars (loading shards...) behind ours, unless verbose.

    Called by the code that imports those libraries anyway, so light commands never import them.
    """
    if not os.environ.get("ZIRELIA_QUIET_LIBRARIES"):
        return
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
