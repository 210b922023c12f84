"""The kohya backend: train the persona LoRA by launching kohya-ss sd-scripts in its own interpreter.

Order of work: find sd-scripts and its Python, check them and the model files (each problem is an error
naming the key to fix; a dry run only warns), pick the VRAM preset, rewrite the training set for the
preset's batch size and resolution, find the newest saved state to resume from, build the command, then
run it with `runner.run_streaming` and turn a failure into a diagnosis. Files, all in `<run_dir>/train/`:
sd-scripts' LoRAs and states (see `outputs.py`), `train.log`, `metrics.jsonl`, `command.sh` (the exact
command, secrets redacted) and `launch.json` (what a resume must not change).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_json, atomic_write_text
from zirelia_local.common.paths import display_path, path_problem
from zirelia_local.training.diagnose import FailureContext, diagnose_failure
from zirelia_local.training.kohya_command import (
    PLACEHOLDER_SD_SCRIPTS,
    LaunchPlan,
    absolute,
    build_command,
    redact_argv,
    shell_command,
    train_settings,
)
from zirelia_local.training.kohya_env import (
    INSTALL_HINT,
    OPTIONAL_MODULES,
    REQUIRED_MODULES,
    Probe,
    find_python,
    find_sd_scripts,
    model_file_problems,
    probe_problems,
    probe_python,
    sd_scripts_problem,
)
from zirelia_local.training.kohya_flags import NETWORK_MODULES, SCRIPTS
from zirelia_local.training.live_identity import (
    EpochJudge,
    finish_early_stop,
    finished_early,
    saved_state_epoch,
    start_live_curve,
)
from zirelia_local.training.messages import info, warn
from zirelia_local.training.model_files import merge_pending_files, resolve_model_files
from zirelia_local.training.outputs import TrainingResult, epoch_lora_files, train_dir
from zirelia_local.training.presets import PresetChoice, choose_preset, detect_local_gpus, report_choice
from zirelia_local.training.resume import SavedState, completed_epoch, list_states, newest_state, preserve_final_epoch
from zirelia_local.training.runner import Interrupted, run_streaming

LOG_FILE = "train.log"
METRICS_FILE = "metrics.jsonl"
COMMAND_FILE = "command.sh"
LAUNCH_FILE = "launch.json"
#: launch.json keys a resume cannot change: the saved optimizer state and LoRA shapes depend on them.
RESUME_INVARIANTS = ("model_type", "network_module", "network_dim", "pretrained_model")


@dataclass
class Setup:
    """The checked environment of a run (paths may be placeholders in a dry run)."""

    sd_scripts: Path
    python: Path
    script: Path
    choice: PresetChoice
    problems: list[str]
    probe: Probe | None = None


def train_kohya(
    config: ZireliaConfig, *, dry_run: bool = False, script: Path | None = None, live: EpochJudge | None = None
) -> TrainingResult:
    """Train the LoRA with sd-scripts (or, with `dry_run`, print the command and change nothing but the
    training set files). `script` replaces the trainer script of the model type (a wrapper that runs it);
    `live` judges each epoch's sample images (the live identity curve and its early stop)."""
    name = config.lora_name
    output_dir = absolute(train_dir(config))
    if not dry_run and finished_early(config, output_dir) is not None:
        return TrainingResult(backend="kohya", output_dir=output_dir, epoch_files=epoch_lora_files(output_dir, name))
    completed = completed_epoch(output_dir, name)
    if completed is not None and completed >= config.train.epochs and not dry_run:
        # Nothing to launch, so nothing to check: a finished run needs no sd-scripts (e.g. rerun for the critic).
        files = epoch_lora_files(output_dir, name)
        info(
            f"training is already complete: {name}.safetensors holds epoch {completed} of {config.train.epochs}; "
            f"{len(files)} LoRA file(s) in {output_dir}. Raise [train] epochs to train on, or move that folder "
            "away to train again."
        )
        return TrainingResult(backend="kohya", output_dir=output_dir, epoch_files=files)

    setup = _check_setup(config, dry_run=dry_run, script=script)
    model_files = resolve_model_files(config)
    for file in model_files.values():
        if file.auto and file.problem is None:
            info(f'[train] {file.key} = "auto": {file.detail}')
    batch_size, resolution, optimizer = train_settings(config, setup.choice.preset)
    report_choice(setup.choice, batch_size=batch_size, resolution=resolution, optimizer=optimizer)
    if setup.choice.preset.fp8_base and config.train.mixed_precision == "no":
        warn("the preset's fp8 base is off: sd-scripts allows --fp8_base only with mixed_precision fp16 or bf16")
    _check_optimizer(optimizer, setup, dry_run=dry_run)

    training_set = _write_training_set(config, batch_size=batch_size, resolution=resolution, dry_run=dry_run)
    state = None if "resume" in _extra_keys(config) else newest_state(output_dir, name)

    plan = LaunchPlan(
        python=setup.python,
        sd_scripts=setup.sd_scripts,
        script=setup.script,
        preset=setup.choice.preset,
        dataset_toml=absolute(training_set[0]),
        sample_prompts=absolute(training_set[1]),
        output_dir=output_dir,
        output_name=name,
        resume=state.path if state is not None else None,
    )
    argv, warnings = build_command(config, plan)
    for message in warnings:
        warn(message)
    record = _launch_record(config, plan, argv, batch_size=batch_size, resolution=resolution)
    if state is not None:
        _check_resume_compatible(output_dir, record, state)
    shown = shell_command(redact_argv(argv), setup.sd_scripts, setup.script)

    if dry_run:
        for problem in setup.problems:
            warn(problem)
        if state is not None:
            info(f"the command resumes from {state.label}")
        sys.stdout.write(shown + "\n")
        sys.stdout.flush()
        return TrainingResult(
            backend="kohya", output_dir=output_dir, epoch_files=epoch_lora_files(output_dir, name), dry_run=True
        )

    output_dir.mkdir(parents=True, exist_ok=True)
    preserve_final_epoch(output_dir, name, state)
    if state is not None:
        info(f"resuming from {state.label} (rerun after a stop): epochs {(state.epoch or 0) + 1}-{config.train.epochs}")
    elif epoch_lora_files(output_dir, name):
        warn(f"no complete saved state in {output_dir}: training starts at epoch 1 and overwrites the LoRA files there")
    atomic_write_text(
        output_dir / COMMAND_FILE, "#!/bin/sh\n# written by zirelia-local; secrets redacted\n" + shown + "\n"
    )
    atomic_write_json(output_dir / LAUNCH_FILE, record)
    merge_pending_files(model_files)  # T5-XXL from text_encoder_2/'s shards, once; last, as it takes minutes
    return _launch(config, setup, plan, argv, shown, state, live)


def _extra_keys(config: ZireliaConfig) -> set[str]:
    return {key.lstrip("-") for key in config.train.extra_args}


def _check_setup(config: ZireliaConfig, *, dry_run: bool, script: Path | None) -> Setup:
    """Locate and check sd-scripts, its Python and the model files, cheapest check first; raise on the first
    problem (a dry run collects them all as warnings instead)."""
    model_type = config.train.model_type
    problems: list[str] = []

    def problem(message: str, hint: str) -> None:
        if not dry_run:
            raise ZireliaError(message, hint=hint)
        problems.append(message)

    sd_scripts = find_sd_scripts(config)
    checkout_problem = sd_scripts_problem(sd_scripts, model_type)
    if checkout_problem is not None:
        problem(checkout_problem, INSTALL_HINT)
    folder = sd_scripts if sd_scripts is not None else PLACEHOLDER_SD_SCRIPTS
    python = find_python(config, sd_scripts)
    trainer = absolute(script) if script is not None else folder / SCRIPTS[model_type]
    python_problem = path_problem(python, "file")
    if python_problem is not None:
        problem(
            f"sd-scripts' Python {display_path(python)} {python_problem}",
            "set [train] python to sd-scripts' venv interpreter",
        )

    missing = model_file_problems(config)
    if missing and dry_run:
        problems.extend(missing)  # one warning per file
    elif missing:
        problem(
            "missing model file(s) for kohya training:\n  " + "\n  ".join(missing),
            'run the download each "auto" line names, or set the paths in [train] (relative paths are read '
            "from the current folder)",
        )

    probe = None
    gpus = None
    if python.is_file() and checkout_problem is None:
        probe = probe_python(python, folder, [*REQUIRED_MODULES, *OPTIONAL_MODULES])
        for found in probe_problems(probe, python, folder, optional=OPTIONAL_MODULES):
            problem(
                found,
                f"set [train] python to sd-scripts' venv interpreter, or install its requirements: {INSTALL_HINT}",
            )
        gpus = probe.gpus
    elif checkout_problem is not None:
        gpus = detect_local_gpus()  # no sd-scripts to ask: our own torch is the best guess for a dry run
    choice = choose_preset(
        model_type, config.train.vram, gpus, gpu_ids=config.train.gpu_ids, num_processes=config.train.num_processes
    )
    if not dry_run:
        _check_devices(config, gpus)
    return Setup(sd_scripts=folder, python=python, script=trainer, choice=choice, problems=problems, probe=probe)


def _check_optimizer(optimizer: str, setup: Setup, *, dry_run: bool) -> None:
    """sd-scripts' 8-bit optimizers import bitsandbytes, which its requirements list but not every venv has."""
    if "8bit" not in optimizer.lower() or setup.probe is None or "bitsandbytes" not in setup.probe.missing:
        return
    message = f"optimizer {optimizer} needs bitsandbytes, which {setup.python} cannot import"
    hint = f'install it ({setup.python} -m pip install bitsandbytes) or set [train] optimizer = "AdamW" or "Adafactor"'
    if not dry_run:
        raise ZireliaError(message + ".", hint=hint)
    setup.problems.append(f"{message} ({hint})")


def _check_devices(config: ZireliaConfig, gpus: list | None) -> None:
    train = config.train
    if gpus is None:
        return
    if not gpus and train.mixed_precision != "no":
        raise ZireliaError(
            "sd-scripts' PyTorch sees no CUDA GPU, so it would train on the CPU, which for FLUX takes weeks.",
            hint="install a CUDA build of torch into sd-scripts' venv (or check CUDA_VISIBLE_DEVICES); to train a "
            'tiny test model on the CPU anyway, set [train] mixed_precision = "no"',
        )
    if not gpus:
        warn("no CUDA GPU visible to sd-scripts: training on the CPU (mixed_precision = 'no')")
    elif train.num_processes > len(gpus):
        raise ZireliaError(
            f"[train] num_processes = {train.num_processes} but sd-scripts' PyTorch sees {len(gpus)} GPU(s)",
            hint="lower num_processes to the number of GPUs (or set gpu_ids)",
        )


def _write_training_set(config: ZireliaConfig, *, batch_size: int, resolution: int, dry_run: bool) -> tuple[Path, Path]:
    """Rewrite train_data/, dataset.toml and sample_prompts.txt for the preset's batch size and resolution."""
    from zirelia_local.common.manifest import Manifest
    from zirelia_local.dataset.captions import DATASET_TOML, SAMPLE_PROMPTS, write_training_set

    run_dir = config.run_dir
    has_images = (run_dir / "manifest.jsonl").is_file() and any(True for _ in Manifest(run_dir).generated())
    if not has_images:
        message = f"no generated images in {run_dir}: run `zirelia dataset` (and `zirelia curate`) first"
        if not dry_run:
            raise ZireliaError(message, hint="or run the whole pipeline: python -m zirelia_local.train CONFIG")
        warn(message + f"; the command reads {run_dir / DATASET_TOML}, written by that stage")
        return run_dir / DATASET_TOML, run_dir / SAMPLE_PROMPTS
    training_set = write_training_set(config, run_dir, batch_size=batch_size, resolution=resolution)
    if not training_set.image_ids:
        raise ZireliaError(
            f"no images left to train on in {run_dir}: curation kept none",
            hint="look at the curation report, or lower [curate] thresholds",
        )
    return training_set.dataset_toml, training_set.sample_prompts


def _launch_record(
    config: ZireliaConfig, plan: LaunchPlan, argv: list[str], *, batch_size: int, resolution: int
) -> dict[str, object]:
    """What this launch trains with; a later resume compares RESUME_INVARIANTS with it."""
    train = config.train
    return {
        "model_type": train.model_type,
        "network_module": _flag_value(argv, "network_module") or NETWORK_MODULES[train.model_type],
        "network_dim": _flag_value(argv, "network_dim"),
        "pretrained_model": _flag_value(argv, "pretrained_model_name_or_path"),
        "preset": plan.preset.name,
        "batch_size": batch_size,
        "resolution": resolution,
        "epochs": train.epochs,
        "resume": str(plan.resume) if plan.resume else None,
    }


def _flag_value(argv: list[str], flag: str) -> str | None:
    option = f"--{flag}"
    for index, item in enumerate(argv):
        if item == option and index + 1 < len(argv):
            return argv[index + 1]
        if item.startswith(option + "="):
            return item.split("=", 1)[1]
    return None


def _check_resume_compatible(output_dir: Path, record: dict[str, object], state: SavedState) -> None:
    try:
        previous = json.loads((output_dir / LAUNCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # no record (an older run, or a state made by hand): sd-scripts itself will complain on a mismatch
    changed = [key for key in RESUME_INVARIANTS if key in previous and previous[key] != record[key]]
    if changed:
        details = ", ".join(f"{key} {previous[key]!r} -> {record[key]!r}" for key in changed)
        raise ZireliaError(
            f"cannot resume from {state.path}: the config changed since it was saved ({details}), and the saved "
            "LoRA and optimizer state only fit the old settings",
            hint=f"restore the old values, or move {output_dir} away to train from scratch",
        )


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # lines arrive as printed, not in 8 KB blocks
    env["PYTHONIOENCODING"] = "utf-8"
    env.setdefault("COLUMNS", "200")  # sd-scripts logs through rich: wide lines stay whole in the log
    return env


def _launch(
    config: ZireliaConfig,
    setup: Setup,
    plan: LaunchPlan,
    argv: list[str],
    shown: str,
    state: SavedState | None,
    live: EpochJudge | None,
) -> TrainingResult:
    output_dir = plan.output_dir
    name = plan.output_name
    log_path = output_dir / LOG_FILE
    curve = start_live_curve(config, output_dir, live, resumed_epoch=(state.epoch or 0) if state is not None else 0)
    info(f"launching sd-scripts ({setup.script.name}); it loads the models and caches latents first. Log: {log_path}")

    def saved(path: Path) -> None:
        info(f"saved {path.name}")

    try:
        outcome = run_streaming(
            argv,
            cwd=setup.sd_scripts,
            env=_child_env(),
            log_path=log_path,
            metrics_path=output_dir / METRICS_FILE,
            step_offset=(state.step or 0) if state is not None else 0,
            description=f"training {name}",
            shown_command=shown.replace(" \\\n  ", " "),
            on_saved=saved,
            watch=curve.watcher(lambda: saved_state_epoch(output_dir, name)) if curve is not None else None,
        )
    except Interrupted:
        newest = newest_state(output_dir, name)
        where = f"newest saved state: {newest.label}" if newest else "no state was saved yet"
        info(f"sd-scripts stopped ({where}); rerun the same command to resume")
        raise
    if curve is not None and outcome.stopped is not None:
        finish_early_stop(config, curve, output_dir, saved_state_epoch(output_dir, name))
        return TrainingResult(backend="kohya", output_dir=output_dir, epoch_files=epoch_lora_files(output_dir, name))
    if curve is not None:
        curve.poll(force=True)  # the last epoch's samples, drawn just before sd-scripts ended
    if outcome.returncode != 0:
        context = FailureContext(
            returncode=outcome.returncode,
            log_path=log_path,
            preset=plan.preset.name,
            model_type=config.train.model_type,
            python=setup.python,
            sd_scripts=setup.sd_scripts,
            blocks_to_swap=plan.preset.blocks_to_swap,
        )
        raise diagnose_failure(outcome.tail, context)

    files = epoch_lora_files(output_dir, name)
    states = list_states(output_dir, name)
    info(
        f"trained {name}: {len(files)} LoRA file(s) "
        f"({', '.join(path.name for path in files.values()) or 'none'}); "
        f"state(s): {', '.join(s.path.name for s in states) or 'none'}"
    )
    if outcome.last_loss is not None:
        info(f"last average loss {outcome.last_loss:.4f}; per-step metrics in {output_dir / METRICS_FILE}")
    return TrainingResult(backend="kohya", output_dir=output_dir, epoch_files=files)
