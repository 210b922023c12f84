"""Running sd-scripts as a child process: stream its output, follow its progress, stop it cleanly.

Both of the child's streams go through one pipe so their order is kept; every `\\r`/`\\n` separated segment
is parsed (`kohya_log`), written (secrets redacted) to the run's `train/train.log`, and each new step becomes
a line of `train/metrics.jsonl` and a move of our progress bar.

A step's own duration (`step_seconds`) is the time between the moments its step line and the one before it
(the bar's `0/N` drawing, for the first) reached us; tqdm's `s/it` is sd-scripts' running average and is
kept apart as `avg_step_seconds`. The first step of an epoch also holds the previous epoch's save (and its
sample images): `training/step_time.py` quotes the median, which such a step does not move.

The child runs in its own process group: Ctrl-C reaches only us, and we forward SIGINT to the whole
group (accelerate's launcher and the trainer it starts), keep draining its output while it exits, and
escalate to SIGTERM, then SIGKILL, if it does not.
"""

from __future__ import annotations

import logging
import os
import select
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from zirelia_local.common.console import Advance, progress_bar
from zirelia_local.common.files import append_jsonl
from zirelia_local.common.security import redact
from zirelia_local.training.kohya_log import (
    STEPS_BAR,
    SegmentSplitter,
    StepProgress,
    parse_epoch,
    parse_progress,
    parse_saved,
    split_segments,
)
from zirelia_local.training.messages import info
from zirelia_local.training.step_time import STEP_SECONDS, StepTimes

logger = logging.getLogger(__name__)


#: Seconds to wait after SIGINT, then after SIGTERM, before the next signal.
SIGINT_GRACE_S = 30.0
SIGTERM_GRACE_S = 10.0
TAIL_LINES = 200


@dataclass
class RunOutcome:
    """What a run of sd-scripts came to: exit code, how far it got, the files it saved, its last lines."""

    returncode: int
    interrupted: bool = False
    #: last `epoch N/M` seen (N), and M
    epoch: int | None = None
    epochs_total: int | None = None
    #: steps reached, counted from the start of training (resumed runs add the state's steps)
    step: int | None = None
    total_steps: int | None = None
    last_loss: float | None = None
    saved: list[Path] = field(default_factory=list)
    tail: list[str] = field(default_factory=list)
    #: why the run was ended on purpose before it finished (the `watch` callback's answer), else None
    stopped: str | None = None


class OutputTracker:
    """Turns sd-scripts' output segments into a log file, metrics records and progress-bar moves."""

    def __init__(
        self,
        log: TextIO,
        metrics_path: Path,
        *,
        step_offset: int = 0,
        open_bar: Callable[[int], Advance] | None = None,
        on_saved: Callable[[Path], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.metrics_path = metrics_path
        self.step_offset = step_offset
        self.open_bar = open_bar
        self.on_saved = on_saved
        self.outcome = RunOutcome(returncode=0)
        self._tail: deque[str] = deque(maxlen=TAIL_LINES)
        #: the latest drawing of the current step, and when the step was first drawn (= when it ended)
        self._pending: tuple[StepProgress, str, float] | None = None
        self._recorded_step = 0
        #: (step, when its line first reached us) of the last step line, the bar's `0/N` drawing included
        self._last_step_line: tuple[int, float] | None = None
        self.step_times = StepTimes()
        self._bar: Advance | None = None
        self._bar_position = 0
        self._clock = clock
        self._started = clock()

    def feed(self, segment: str) -> None:
        segment = redact(segment.rstrip())
        match = STEPS_BAR.match(segment.lstrip())
        if match is not None:
            bar = segment.lstrip()[: match.end()]
            rest = segment.lstrip()[match.end() :]
            progress = parse_progress(bar)
            if progress is not None:
                self._on_progress(progress, bar)
            if rest.strip():
                # tqdm ends its line with no newline: a log line printed next is glued to the bar.
                self.feed(rest)
            return
        self._flush_step()
        self._write(segment)
        logger.debug("sd-scripts: %s", segment)
        epoch = parse_epoch(segment)
        if epoch is not None:
            self.outcome.epoch, self.outcome.epochs_total = epoch
            self._move_bar(0)
            return
        saved = parse_saved(segment)
        if saved is not None:
            self.outcome.saved.append(saved)
            if self.on_saved is not None:
                self.on_saved(saved)

    def feed_partial(self, text: str) -> None:
        """Show a bar that is drawn but not yet ended (tqdm ends a drawing only when it starts the next)."""
        match = STEPS_BAR.match(text.lstrip())
        if match is not None:
            progress = parse_progress(match.group(0))
            if progress is not None:
                self._on_progress(progress, match.group(0))

    def finish(self) -> RunOutcome:
        self._flush_step()
        self.outcome.tail = list(self._tail)
        return self.outcome

    def _write(self, line: str) -> None:
        self._tail.append(line)
        self.log.write(line + "\n")
        self.log.flush()

    def _on_progress(self, progress: StepProgress, segment: str) -> None:
        # tqdm draws each step twice: at update() with the previous postfix, then at set_postfix() with
        # this step's avr_loss. The last drawing of a step is the one recorded, once the next one starts.
        if self._pending is not None and self._pending[0].step != progress.step:
            self._flush_step()
        ended = self._pending[2] if self._pending is not None else self._clock()
        self._pending = (progress, segment, ended)
        step = self.step_offset + progress.step
        self.outcome.step = step
        # tqdm's total is always the whole run's; a resumed run's count restarts at 0 (train_network.py).
        self.outcome.total_steps = progress.total
        if progress.avr_loss is not None:
            self.outcome.last_loss = progress.avr_loss
        if self._bar is None and self.open_bar is not None:
            # Ours shows the steps this launch will run (a resumed run skips the saved ones).
            self._bar = self.open_bar(max(progress.total - self.step_offset, progress.step, 1))
        self._move_bar(progress.step - self._bar_position)

    def _flush_step(self) -> None:
        if self._pending is None:
            return
        progress, segment, ended = self._pending
        self._pending = None
        self._write(segment)
        if progress.step == 0:
            self._last_step_line = (0, ended)  # the bar is drawn as the training loop starts
        if progress.step <= self._recorded_step:
            return  # step 0, or tqdm's closing redraw of the last step
        self._recorded_step = progress.step
        step_seconds = None
        if self._last_step_line is not None and progress.step > self._last_step_line[0]:
            # tqdm skips drawings less than 0.1 s apart: a gap of several steps shares its time evenly.
            previous_step, previous_time = self._last_step_line
            step_seconds = round((ended - previous_time) / (progress.step - previous_step), 4)
        self._last_step_line = (progress.step, ended)
        self.step_times.add(step_seconds)
        record: dict[str, object] = {
            "step": self.step_offset + progress.step,
            "total_steps": progress.total,
            "epoch": self.outcome.epoch,
            "avr_loss": progress.avr_loss,
            STEP_SECONDS: step_seconds,
            "avg_step_seconds": progress.avg_seconds_per_step,
            "elapsed_s": round(ended - self._started, 3),
        }
        append_jsonl(self.metrics_path, record)

    def _move_bar(self, amount: int) -> None:
        if self._bar is None:
            return
        self._bar_position += max(amount, 0)
        parts = []
        if self.outcome.epoch is not None:
            parts.append(f"epoch {self.outcome.epoch}/{self.outcome.epochs_total}")
        if self.outcome.last_loss is not None:
            parts.append(f"loss {self.outcome.last_loss:.4f}")
        if self.step_times.durations:
            parts.append(self.step_times.text())
        self._bar(max(amount, 0), status="  ".join(parts))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM/SIGHUP) stopped the run; the child has been stopped."""


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """SIGTERM and SIGHUP stop the child as Ctrl-C does (the child is in its own session: it would
    otherwise outlive us)."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = {}
    try:
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not the main thread: leave signals alone
        pass
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_streaming(
    command: Sequence[str],
    *,
    cwd: Path,
    env: dict[str, str],
    log_path: Path,
    metrics_path: Path,
    step_offset: int = 0,
    description: str = "training",
    shown_command: str | None = None,
    on_saved: Callable[[Path], None] | None = None,
    watch: Callable[[], str | None] | None = None,
    sigint_grace_s: float = SIGINT_GRACE_S,
    sigterm_grace_s: float = SIGTERM_GRACE_S,
) -> RunOutcome:
    """Run `command`, streaming its output into `log_path` and `metrics_path` and a progress bar.

    Returns when the child exits. On Ctrl-C the child is stopped and `Interrupted` is raised with the
    outcome (saved checkpoints, last epoch) in its `outcome` attribute. `watch` is called after every chunk
    of output and at least every half second; once it returns a reason, the child is stopped as on Ctrl-C and
    the outcome returned with that reason in `stopped` (the live identity curve's early stop).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with ExitStack() as stack:
        log = stack.enter_context(open(log_path, "a", encoding="utf-8"))
        shown = shown_command if shown_command is not None else " ".join(command)
        log.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} {redact(shown)}\n")

        def open_bar(total: int) -> Advance:
            # The bar quotes the median step time (training/step_time.py), not rich's own rate.
            return stack.enter_context(progress_bar(description, total, unit="step", show_rate=False))

        tracker = OutputTracker(log, metrics_path, step_offset=step_offset, open_bar=open_bar, on_saved=on_saved)
        process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        fd = process.stdout.fileno()
        stopped = None
        try:
            with _signals_as_interrupt():
                splitter = SegmentSplitter()
                for chunk in _read_chunks(fd, ticks=watch is not None):
                    for segment in splitter.feed(chunk):
                        tracker.feed(segment)
                    tracker.feed_partial(splitter.pending)
                    stopped = watch() if watch is not None else None
                    if stopped is not None:
                        break
                if stopped is None:
                    for segment in splitter.flush():
                        tracker.feed(segment)
                    returncode = process.wait()
                else:
                    info(f"stopping sd-scripts: {stopped}")
                    log.write(f"===== {stopped}: stopping sd-scripts\n")
                    returncode = _stop(process, fd, tracker, sigint_grace_s, sigterm_grace_s)
        except KeyboardInterrupt:
            info("stopping sd-scripts (it saves at epoch ends: steps since the newest saved state are lost)...")
            log.write("===== interrupted: stopping sd-scripts\n")
            returncode = _stop(process, fd, tracker, sigint_grace_s, sigterm_grace_s)
            outcome = tracker.finish()
            outcome.returncode = returncode
            outcome.interrupted = True
            error = Interrupted()
            error.outcome = outcome  # type: ignore[attr-defined]
            raise error from None
        finally:
            process.stdout.close()
        outcome = tracker.finish()
        outcome.returncode = returncode
        outcome.stopped = stopped
        log.write(f"===== sd-scripts exited with code {returncode}\n")
        return outcome


def _read_chunks(fd: int, deadline: float | None = None, *, ticks: bool = False) -> Iterator[bytes]:
    """Bytes from `fd` until EOF (or until `deadline`, a time.monotonic() value); with `ticks`, also an empty
    chunk after every half second without output, so the caller can look around."""
    while True:
        timeout = 0.5 if deadline is None else max(0.0, min(0.5, deadline - time.monotonic()))
        ready, _, _ = select.select([fd], [], [], timeout)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return
            yield chunk
        elif deadline is not None and time.monotonic() >= deadline:
            return
        elif ticks:
            yield b""


def _group_alive(process: subprocess.Popen) -> bool:
    process.poll()  # reap the leader, or its zombie keeps the group "alive"
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop(process: subprocess.Popen, fd: int, tracker: OutputTracker, sigint_s: float, sigterm_s: float) -> int:
    """SIGINT to the child's group, then SIGTERM, then SIGKILL, until the whole group is gone; output is
    drained meanwhile (a child blocked on a full pipe could not exit). Returns the launcher's exit code."""
    for sig, grace in ((signal.SIGINT, sigint_s), (signal.SIGTERM, sigterm_s), (signal.SIGKILL, 5.0)):
        if not _group_alive(process):
            break
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        try:
            for segment in split_segments(_read_chunks(fd, deadline)):
                tracker.feed(segment)
        except OSError:
            pass
        while _group_alive(process) and time.monotonic() < deadline:
            time.sleep(0.05)
    return process.wait()
