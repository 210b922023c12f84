"""The stages in order. Each reads and writes files in the run directory, so each can also run alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:  # cli.py reads PIPELINE_STAGES while building its parser: `zirelia --help` stays light
    from zirelia_local.common.config import ZireliaConfig

# Every stage of the whole job, in the doctor's names (its pre-flight checks all of them).
PIPELINE_STAGES = ("dataset", "curate", "train", "critic", "report")
Result = TypeVar("Result")


def run_checked(
    config: ZireliaConfig,
    stages: Sequence[str],
    action: Callable[[ZireliaConfig], Result],
    *,
    skip_checks: bool = False,
    command: str,
) -> Result:
    """The pre-flight for `stages` (doctor/preflight.py), then the run lock, then `action(config)`.

    The checks come before the lock, so a failed pre-flight leaves no trace in the run directory (it is not
    even created); their result is recorded under the lock, where the report finds it. A child that a launch's
    main process starts under its lock (the training stage, scale.py) was checked by that launch's pre-flight:
    it neither checks again nor records a skip.
    """
    from zirelia_local.common.processes import is_main_process
    from zirelia_local.common.rundir import lock_held_by_parent, require_usable_run_dir, run_lock
    from zirelia_local.doctor.preflight import record_preflight, run_preflight

    require_usable_run_dir(config.run_dir)  # a run directory that cannot be one is a usage error (exit 2)
    if lock_held_by_parent(config.run_dir):
        with run_lock(config.run_dir):
            return action(config)
    result = run_preflight(config, stages, skip=skip_checks)
    with run_lock(config.run_dir):
        if is_main_process():  # under a launch of several processes, one record for them all
            record_preflight(config.run_dir, result, command)
        return action(config)


def run_pipeline(config: ZireliaConfig) -> Path:
    """dataset -> curate -> train -> critic -> report; returns the report's path."""
    from zirelia_local.common.console import heading, info
    from zirelia_local.common.processes import is_main_process
    from zirelia_local.critic import run_critic
    from zirelia_local.curate import check_reference_images, run_curate
    from zirelia_local.dataset import run_dataset
    from zirelia_local.dataset.flux import release_pipeline_memory
    from zirelia_local.report import write_report
    from zirelia_local.scale import train_once

    heading(f"[bold]{config.persona.name}[/bold] ({config.persona.trigger_word}) -> {config.run_dir}")
    # Paths the config names, checked now rather than after the hours the dataset takes.
    check_reference_images(config.curate.reference_images)
    heading("1/5 dataset: plan, generate, caption")
    dataset = run_dataset(config)
    heading(f"2/5 curate: one identity ({config.curate.mode})")
    run_curate(config, pipe=dataset.generation.pipe)  # top-up rounds draw with the pipeline already loaded
    # Training loads its own models (sd-scripts in another process): free the generator's memory first.
    del dataset
    release_pipeline_memory()
    heading(f"3/5 train: LoRA ({config.train.backend} backend)")
    train_once(config)  # the critic's checks judge each epoch's samples as they appear; once per launch
    heading("4/5 critic: score the epochs, pick the best")
    run_critic(config)
    heading("5/5 report")
    if not is_main_process():  # the main process writes the report, and says it is done
        return config.run_dir / "report" / "index.html"
    report = write_report(config)
    info(f"[bold]done.[/bold] report: {report}")
    return report
