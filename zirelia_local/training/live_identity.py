"""The live identity curve: each epoch's sample images, judged as they appear, and the early stop it drives.

sd-scripts draws `sample_prompts.txt` at the end of every `sample_every_n_epochs`-th epoch, after that epoch's
LoRA and state are saved (train_network.py), into `<output_dir>/sample/` as
`<output_name>_e<epoch:06d>_<prompt:02d>_<YYYYmmddHHMMSS>_<seed>.png`; the diffusers backend draws the same
prompts with the model in memory and writes the same names (`live_samples.py`). `LiveCurve` watches that
folder. Once every prompt of an epoch has a readable image written during this launch, it hands them to the
judge, appends the epoch's scores to `train/metrics.jsonl` as an `{"event": "identity", ...}` line (so the
metrics keep the whole curve), prints them, and keeps the judge's stop request, if any.

The judge comes from above: training is stage 3 and cannot import the critic (stage 4), whose checks (face
found, one main face, distance to `identity.safetensors`) and decision rules (`critic/selection.py`) the
curve needs. `zirelia train` and the pipeline pass `critic.live_judge(config)`, which satisfies `EpochJudge`;
training only moves files and follows the answer. Without a judge there is no curve and no early stop.

A stop is carried out only once the newest saved epoch (LoRA and complete state) has reached the epoch the
request was made at: for sd-scripts that is immediate (samples come after the save), and `--resume` continues
from that state. `train/early_stop.json` records where and why; a rerun with the same config does not train
on, a rerun with more `epochs` (or `early_stop = "off"`) resumes from the saved state.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.files import append_jsonl, atomic_write_json, read_json_object
from zirelia_local.common.images import ImageRefused, open_image
from zirelia_local.training.messages import info, warn

SAMPLE_DIR = "sample"
EARLY_STOP_FILE = "early_stop.json"
IDENTITY_EVENT = "identity"
EARLY_STOP_EVENT = "early_stop"
#: Seconds between two looks at the sample folder while sd-scripts runs.
POLL_INTERVAL_S = 1.0
#: A sample written this long before the launch started still counts (file systems round mtimes).
MTIME_SLACK_S = 2.0


@dataclass
class JudgedEpoch:
    """The judge's answer about one epoch's sample images."""

    #: the epoch's scores (the critic's EpochScore record), written to metrics.jsonl and read back as history
    record: dict[str, Any]
    #: one line for the console, e.g. "identity 0.612 (4/4 faces, 0 with defects)"
    summary: str
    #: None: go on; else the stop request (keys "epoch", "best_epoch", "rule", "reason")
    stop: dict[str, Any] | None = None


class EpochJudge(Protocol):
    """Judges one epoch's sample images, given the curve so far (records of earlier epochs)."""

    def judge_epoch(
        self, epoch: int, images: Sequence[Path], history: Sequence[dict[str, Any]], *, since_epoch: int
    ) -> JudgedEpoch: ...


def sample_file_pattern(name: str) -> re.Pattern[str]:
    """sd-scripts' epoch sample names (flux_train_utils.sample_image_inference), for `name`."""
    return re.compile(rf"^{re.escape(name)}_e(?P<epoch>\d{{6}})_(?P<index>\d{{2}})_\d{{14}}(?:_\d+)?\.png$")


def sample_file_name(name: str, epoch: int, index: int, seed: int) -> str:
    """The name sd-scripts gives a sample of `epoch` (the diffusers backend writes the same)."""
    return f"{name}_e{epoch:06d}_{index:02d}_{time.strftime('%Y%m%d%H%M%S')}_{seed}.png"


def _readable_image(path: Path) -> bool:
    """True when the PNG decodes whole (sd-scripts writes samples in place: one may still be growing)."""
    try:
        open_image(path)
    except ImageRefused:
        return False
    return True


def read_curve(metrics_path: Path) -> list[dict[str, Any]]:
    """The identity records in metrics.jsonl, the newest per epoch, by epoch (a torn last line is skipped)."""
    by_epoch: dict[int, dict[str, Any]] = {}
    try:
        lines = metrics_path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == IDENTITY_EVENT and isinstance(record.get("epoch"), int):
            by_epoch[record["epoch"]] = record
    return [by_epoch[epoch] for epoch in sorted(by_epoch)]


@dataclass
class LiveCurve:
    """Follows the sample folder of one training launch; see the module docstring."""

    out_dir: Path
    name: str
    #: images that make an epoch's samples complete (the lines of sample_prompts.txt)
    samples_per_epoch: int
    judge: EpochJudge
    metrics_path: Path
    #: the epoch this launch starts after (a resumed run's state); the curve's earlier epochs are history
    resumed_epoch: int = 0
    #: patience counts epochs after this one only (set when the user trains on after an early stop)
    since_epoch: int = 0
    started: float = field(default_factory=time.time)
    curve: list[dict[str, Any]] = field(default_factory=list)
    stop_request: dict[str, Any] | None = None
    #: set when judging failed: training goes on without the curve
    broken: bool = False
    _last_poll: float = 0.0

    def __post_init__(self) -> None:
        self.curve = [record for record in read_curve(self.metrics_path) if record["epoch"] <= self.resumed_epoch]

    @property
    def sample_dir(self) -> Path:
        return self.out_dir / SAMPLE_DIR

    def judged_epochs(self) -> set[int]:
        return {record["epoch"] for record in self.curve}

    def complete_epochs(self) -> dict[int, list[Path]]:
        """Epochs of this launch not judged yet whose samples are all written and readable: epoch -> files."""
        if not self.sample_dir.is_dir():
            return {}
        pattern = sample_file_pattern(self.name)
        newest: dict[tuple[int, int], Path] = {}
        for path in self.sample_dir.iterdir():
            match = pattern.match(path.name)
            if match is None:
                continue
            try:
                mtime = path.stat().st_mtime
            except OSError:
                continue
            if mtime < self.started - MTIME_SLACK_S:
                continue  # an earlier launch's sample: its epoch is history (or will be drawn again)
            key = (int(match.group("epoch")), int(match.group("index")))
            if key not in newest or path.name > newest[key].name:
                newest[key] = path
        judged = self.judged_epochs()
        found: dict[int, list[Path]] = {}
        for epoch in sorted({epoch for epoch, _ in newest}):
            if epoch in judged or epoch <= self.resumed_epoch:
                continue
            files = [newest.get((epoch, index)) for index in range(self.samples_per_epoch)]
            if all(path is not None and _readable_image(path) for path in files):
                found[epoch] = [path for path in files if path is not None]
        return found

    def poll(self, *, force: bool = False) -> None:
        """Judge every newly completed epoch (at most once per POLL_INTERVAL_S unless `force`)."""
        now = time.monotonic()
        if not force and now - self._last_poll < POLL_INTERVAL_S:
            return
        self._last_poll = now
        if self.broken:
            return
        for epoch, files in self.complete_epochs().items():
            try:
                judged = self.judge.judge_epoch(epoch, files, list(self.curve), since_epoch=self.since_epoch)
            except Exception as error:  # the curve is a help, not a reason to end hours of training
                self.broken = True
                warn(
                    f"the live identity curve stops here (training goes on): judging epoch {epoch}'s samples "
                    f"failed: {error}"
                )
                return
            record = {**judged.record, "event": IDENTITY_EVENT, "epoch": epoch, "summary": judged.summary}
            record["samples"] = [os.path.relpath(path, self.out_dir) for path in files]
            append_jsonl(self.metrics_path, record)
            self.curve.append(record)
            info(f"epoch {epoch} samples: {judged.summary}")
            if judged.stop is not None and self.stop_request is None:
                self.stop_request = judged.stop
                info(f"early stop requested at epoch {epoch}: {judged.stop['reason']}")

    def stop_epoch(self, saved_epoch: int | None) -> int | None:
        """The saved epoch to stop at, once a stop is requested and that epoch (or a later one) is saved."""
        if self.stop_request is None or saved_epoch is None or saved_epoch < self.stop_request["epoch"]:
            return None
        return saved_epoch

    def watcher(self, saved_epoch: Callable[[], int | None]) -> Callable[[], str | None]:
        """For the sd-scripts runner: look for samples; a reason string once the run should end."""

        def watch() -> str | None:
            self.poll()
            if self.stop_request is None:
                return None
            stop_at = self.stop_epoch(saved_epoch())
            return None if stop_at is None else f"early stop after the saved epoch {stop_at}"

        return watch


def record_early_stop(
    config: ZireliaConfig, out_dir: Path, metrics_path: Path, request: dict[str, Any], epoch: int
) -> dict[str, Any]:
    """Write train/early_stop.json and an early_stop event line; say where and why training stopped."""
    record = {
        **request,
        "decided_at_epoch": request["epoch"],
        "epoch": epoch,
        "epochs": config.train.epochs,
        "backend": config.train.backend,
        "patience": config.train.early_stop_patience,
        "min_delta": config.train.early_stop_min_delta,
        "min_epochs": config.train.early_stop_min_epochs,
    }
    atomic_write_json(out_dir / EARLY_STOP_FILE, record)
    append_jsonl(metrics_path, {"event": EARLY_STOP_EVENT, **record})
    info(
        f"stopped early after epoch {epoch} of {config.train.epochs} (saved, with its state): {request['reason']}. "
        f"The best epoch of the live curve is {request['best_epoch']}; raise [train] epochs (or set early_stop "
        '= "off") and rerun to train on from here.'
    )
    return record


def finished_early(config: ZireliaConfig, out_dir: Path) -> dict[str, Any] | None:
    """The early stop record when it still holds for `config` (same or fewer epochs, early stop on): nothing to
    train. A config that asks for more epochs, or turned the early stop off, trains on."""
    record = read_json_object(out_dir / EARLY_STOP_FILE)
    if record is None or config.train.early_stop == "off" or config.train.epochs > int(record.get("epochs", 0)):
        return None
    info(
        f"training stopped early at epoch {record.get('epoch')} of {record.get('epochs')} ({record.get('reason')}); "
        'nothing to train. Raise [train] epochs, or set early_stop = "off", to train on from there.'
    )
    return record


def resume_after_early_stop(out_dir: Path) -> int:
    """Before training on past an early stop: drop its record and return the epoch it stopped at (patience
    then counts the new epochs only); 0 when the last launch did not stop early."""
    path = out_dir / EARLY_STOP_FILE
    record = read_json_object(path)
    path.unlink(missing_ok=True)
    return int(record.get("epoch", 0)) if record else 0


def drop_files_after(files: dict[int, Path], epoch: int) -> list[Path]:
    """Delete epoch LoRA files past the epoch training stopped at (sd-scripts may have been writing the next
    one when it was ended: a partial file must not reach the critic); returns those deleted."""
    dropped = []
    for number, path in files.items():
        if number > epoch:
            path.unlink(missing_ok=True)
            dropped.append(path)
    return dropped


def start_live_curve(
    config: ZireliaConfig, out_dir: Path, judge: EpochJudge | None, *, resumed_epoch: int
) -> LiveCurve | None:
    """The live curve of a launch that starts after `resumed_epoch` (0: from scratch), or None when there is no
    judge or no sampling; says which, when early stop was asked for and cannot work."""
    from zirelia_local.dataset import sample_prompts

    train = config.train
    since_epoch = resume_after_early_stop(out_dir)
    if judge is None or train.sample_every_n_epochs == 0:
        if train.early_stop != "off":
            warn("early_stop is set, but this launch has no live identity judge: training runs all its epochs")
        return None
    info(
        f"live identity curve: {len(sample_prompts(config))} sample image(s) every {train.sample_every_n_epochs} "
        f"epoch(s); early stop {'on identity' if train.early_stop != 'off' else 'off'}"
    )
    return LiveCurve(
        out_dir=out_dir,
        name=config.lora_name,
        samples_per_epoch=len(sample_prompts(config)),
        judge=judge,
        metrics_path=out_dir / "metrics.jsonl",
        resumed_epoch=resumed_epoch,
        since_epoch=since_epoch,
    )


def saved_state_epoch(out_dir: Path, name: str) -> int | None:
    """The newest epoch sd-scripts has saved whole: a complete state folder and that epoch's LoRA file."""
    from zirelia_local.training.outputs import epoch_lora_files
    from zirelia_local.training.resume import newest_state

    state = newest_state(out_dir, name)
    if state is None or state.epoch is None:
        return None
    return state.epoch if state.epoch in epoch_lora_files(out_dir, name) else None


def finish_early_stop(config: ZireliaConfig, curve: LiveCurve, out_dir: Path, saved_epoch: int | None) -> None:
    """After the trainer was ended at a saved epoch: record why, drop anything written after it."""
    from zirelia_local.training.outputs import epoch_lora_files

    stopped_at = curve.stop_epoch(saved_epoch)
    assert curve.stop_request is not None and stopped_at is not None  # the run is ended only then
    for path in drop_files_after(epoch_lora_files(out_dir, config.lora_name), stopped_at):
        info(f"removed {path.name}: written after the epoch training stopped at (it may be incomplete)")
    record_early_stop(config, out_dir, curve.metrics_path, curve.stop_request, stopped_at)
