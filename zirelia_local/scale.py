"""Scaling out: the training stage under a launch of several processes, the `--num-processes` shortcut,
and many personas in one command (docs/scaling.md).

Training runs once per launch. The image stages split their images across the processes of an
`accelerate launch` (`common/processes.py`), but a trainer is a job of its own: the main process starts
`zirelia train` as a child, outside the launch (its ranks and rendezvous removed from the environment) and
under the run lock it already holds, while the other processes, their models freed, wait for it. The kohya
backend then starts sd-scripts with `accelerate launch --num_processes` = this machine's processes of the
launch (unless `[train] num_processes` says otherwise), so one launch configuration serves every stage; the
built-in diffusers backend trains on one device.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import console, info
from zirelia_local.common.errors import ConfigError, ZireliaError
from zirelia_local.common.files import read_json_object
from zirelia_local.common.processes import (
    broadcast_json,
    is_distributed,
    is_main_process,
    local_process_count,
    single_process_env,
)
from zirelia_local.common.rundir import lock_passed_to_child


def train_once(config: ZireliaConfig) -> None:
    """The training stage with the critic's live judge: in this process, or once for a whole launch."""
    from zirelia_local.critic import live_judge
    from zirelia_local.training import run_training

    if not is_distributed():
        run_training(config, live=live_judge(config))
        return
    failure = None
    if is_main_process():
        failure = _train_in_child(config)
    failure = broadcast_json(failure)  # the others wait here while the main process's child trains
    if failure:
        raise ZireliaError(failure, hint="see the training output above (and train/train.log)")


def _train_in_child(config: ZireliaConfig) -> str | None:
    if config.source is None or not config.source.is_file():
        return "training under a launch of several processes needs the config as a file"
    # No pre-flight in the child: the launch checked every stage before it began (pipeline.run_checked)
    argv = [sys.executable, "-m", "zirelia_local", "train", str(config.source), "--run-dir", str(config.run_dir)]
    if config.train.backend == "kohya" and config.train.num_processes == 1 and local_process_count() > 1:
        argv += ["--num-processes", str(local_process_count())]
    env = single_process_env() | lock_passed_to_child(config.run_dir)
    info(f"training once for the launch's processes: {' '.join(argv[1:])}")
    code = subprocess.run(argv, env=env, check=False).returncode
    return None if code == 0 else f"training stopped with exit code {code}"


def launch_argv(
    config_path: Path, num_processes: int, *, cpu: bool, extra: Sequence[str] = (), command: str | None = None
) -> list[str]:
    """`accelerate launch` of the whole job (or of one `zirelia` `command`) on `num_processes` processes of this
    machine (the shortcut)."""
    # mixed precision "no": the pipelines set their own dtype ([generator] dtype); accelerate would warn otherwise
    flags = [
        "--num_processes",
        str(num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
    ]
    if num_processes > 1:
        flags.append("--multi_gpu")  # torchrun; on the CPU with ACCELERATE_USE_CPU (run_launched), gloo
    elif cpu:
        flags.append("--cpu")
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        *flags,
        "-m",
        *(["zirelia_local.train"] if command is None else ["zirelia_local", command]),
        str(config_path),
        *extra,
    ]


#: Where the main process of a launch the shortcut started writes the command's own exit code (see
#: `finished_exit_code`).
EXIT_CODE_FILE_ENV = "ZIRELIA_EXIT_CODE_FILE"


def finished_exit_code(code: int) -> int:
    """The exit code of a command that finished its work with `code` (1: some images were not accepted).

    Under a launch of several processes a finished command exits 0 on every process: torchrun takes any other
    code for a crash, stops the other processes and prints a traceback of its own. The code is then written
    for the shortcut that started the launch (`run_launched`), which exits with it; by hand, the summary says
    what the code would have said."""
    if not is_distributed():
        return code
    target = os.environ.get(EXIT_CODE_FILE_ENV)
    if target and is_main_process():
        Path(target).write_text(str(code))
    return 0


def run_launched(
    config: ZireliaConfig, num_processes: int, extra: Sequence[str] = (), *, command: str | None = None
) -> int:
    """`zirelia run CONFIG --num-processes N` (or `zirelia generate ... --num-processes N`): the whole job (or
    that command) under `accelerate launch`; its exit code."""
    if config.source is None:
        raise ZireliaError("--num-processes needs a config file", hint="pass the TOML file's path")
    cpu = config.generator.device == "cpu"
    argv = launch_argv(config.source, num_processes, cpu=cpu, extra=extra, command=command)
    info(f"launching {num_processes} processes: accelerate launch {' '.join(argv[3:])}")
    env = single_process_env() | ({"ACCELERATE_USE_CPU": "true"} if cpu else {})
    with tempfile.TemporaryDirectory(prefix="zirelia-launch-") as folder:
        exit_file = Path(folder) / "exit-code"
        code = subprocess.run(argv, env=env | {EXIT_CODE_FILE_ENV: str(exit_file)}, check=False).returncode
        if code == 0 and exit_file.is_file():
            return int(exit_file.read_text() or 0)
    return code


@dataclass
class PersonaRun:
    """One persona of a many-persona run, as the summary table shows it."""

    config: Path
    persona: str
    exit_code: int
    minutes: float
    best_epoch: int | None = None
    identity: float | None = None
    report: Path | None = None


def run_many(configs: Sequence[Path], *, num_processes: int = 1, verbose: bool = False) -> int:
    """`zirelia run A.toml B.toml ...`: each persona in turn, on every process of the launch; a failure does
    not stop the others. Prints the summary table; 0 when every persona finished, else 1."""
    from zirelia_local.common.config import load_config

    runs: list[PersonaRun] = []
    for path in configs:
        console.rule(f"[bold]persona {len(runs) + 1} of {len(configs)}[/bold]: {path}")
        started = time.monotonic()
        try:
            config = load_config(path)
        except ZireliaError as error:
            label = "config error" if isinstance(error, ConfigError) else "error"
            console.print(f"[bold red]{label}:[/bold red] {error.message}", markup=True, highlight=False)
            runs.append(PersonaRun(path, "?", error.exit_code, (time.monotonic() - started) / 60))
            continue
        extra = ["-v"] if verbose else []
        if num_processes > 1:
            code = run_launched(config, num_processes, extra)
        else:
            argv = [sys.executable, "-m", "zirelia_local.train", str(path), *extra]
            code = subprocess.run(argv, check=False).returncode
        runs.append(_finished(path, config, code, (time.monotonic() - started) / 60))
    print_summary(runs)
    return 0 if all(run.exit_code == 0 for run in runs) else 1


def _finished(path: Path, config: ZireliaConfig, code: int, minutes: float) -> PersonaRun:
    run = PersonaRun(path, config.persona.name, code, minutes)
    selection = read_json_object(config.run_dir / "critic" / "selection.json") or {}
    run.best_epoch = selection.get("epoch")
    for row in selection.get("table", []):
        if row.get("epoch") == run.best_epoch:
            run.identity = row.get("identity")
    report = config.run_dir / "report" / "index.html"
    run.report = report if code == 0 and report.is_file() else None
    return run


def print_summary(runs: Sequence[PersonaRun]) -> None:
    """The table at the end of a many-persona run."""
    from rich.table import Table

    view = Table(title="personas", title_justify="left")
    for column in ("persona", "exit", "best epoch", "identity", "minutes", "report"):
        view.add_column(column)
    for run in runs:
        view.add_row(
            f"{run.persona} ({run.config.name})",
            str(run.exit_code),
            "-" if run.best_epoch is None else str(run.best_epoch),
            "-" if run.identity is None else f"{run.identity:.3f}",
            f"{run.minutes:.1f}",
            str(run.report) if run.report else "-",
        )
    console.print(view)
