"""`zirelia`: one subcommand per stage. Thin: parse arguments, load the config, call the stage."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from zirelia_local import __version__
from zirelia_local.common.errors import ConfigError, ZireliaError


def configure_logging(verbose: bool = False) -> None:
    """Our messages through rich; the libraries' own progress bars and chatter kept quiet."""
    from rich.logging import RichHandler

    from zirelia_local.common.console import console

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False, show_time=False)],
        force=True,
    )
    for name in ("diffusers", "transformers", "accelerate", "huggingface_hub", "PIL", "matplotlib", "urllib3", "httpx"):
        logging.getLogger(name).setLevel(logging.DEBUG if verbose else logging.WARNING)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Through the environment, so commands that never load a model do not pay for importing diffusers.
    level = "info" if verbose else "error"
    os.environ.setdefault("DIFFUSERS_VERBOSITY", level)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", level)
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("ZIRELIA_QUIET_LIBRARIES", "1")


def run_guarded(action: Callable[[], int | None]) -> int:
    """Run a command: user-facing errors become a message and an exit code, never a traceback."""
    from rich.markup import escape

    from zirelia_local.common.console import console

    try:
        code = action()
    except ZireliaError as error:
        label = "config error" if isinstance(error, ConfigError) else "error"
        # Messages name config sections ("[curate] threshold"): escape them, or rich takes them for markup.
        console.print(f"[bold red]{label}:[/bold red] {escape(error.message)}", markup=True, highlight=False)
        if error.hint:
            console.print(f"[cyan]hint:[/cyan] {escape(error.hint)}", highlight=False)
        return error.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: everything finished so far is saved; rerun to resume")
        return 130
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            raise
        where = f" while writing {error.filename}" if error.filename else ""
        console.print(
            f"[bold red]error:[/bold red] the disk is full{where} ({error.strerror}). Every file is written "
            "atomically, so nothing was left half-written.",
            highlight=False,
        )
        console.print(
            "[cyan]hint:[/cyan] free some space (or use --run-dir on another disk) and rerun: finished work is kept",
            highlight=False,
        )
        return 1
    return int(code or 0)


def process_count(text: str) -> int:
    """The value of a --num-processes flag: a whole number of at least 1 (else argparse's exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}: must be at least 1")
    return value


def _add_common(parser: argparse.ArgumentParser, *, config_required: bool = True) -> None:
    if config_required:
        parser.add_argument("config", type=Path, help="the run's TOML config, e.g. configs/sienna.toml")
    else:
        parser.add_argument("config", type=Path, nargs="?", help="the run's TOML config (optional)")
    parser.add_argument(
        "--run-dir", type=Path, default=None, help="run directory (default: [run] dir or runs/<trigger_word>)"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logs of zirelia and the libraries")


def add_skip_checks(parser: argparse.ArgumentParser) -> None:
    """--skip-checks: start without the pre-flight (doctor/preflight.py); the report records that it was skipped."""
    parser.add_argument(
        "--skip-checks",
        action="store_true",
        help="start without checking first what the stages need (models, sd-scripts, disk...); recorded in the report",
    )


def _load(args: argparse.Namespace):
    from zirelia_local.common.config import load_config

    return load_config(args.config, run_dir=args.run_dir)


def _locked(args: argparse.Namespace, stage: Callable, checks: tuple[str, ...]) -> int | None:
    """Load the config; check what `checks` (stage names) need; take the run lock; run the stage."""
    from zirelia_local.common.rundir import run_lock
    from zirelia_local.pipeline import run_checked

    config = _load(args)
    # A dry run launches nothing (it prints the command, warning about each missing part), and caption only
    # rewrites text files: neither has a requirement to check first.
    if not checks or getattr(args, "dry_run", False):
        with run_lock(config.run_dir):
            return stage(config, args)
    return run_checked(
        config,
        checks,
        lambda checked: stage(checked, args),
        skip_checks=args.skip_checks,
        command=f"zirelia {args.command}",
    )


def _cmd_dataset(config, args) -> int:
    from zirelia_local.dataset import run_dataset

    run_dataset(config)
    return 0


def _cmd_caption(config, args) -> int:
    from zirelia_local.common.console import info
    from zirelia_local.dataset import run_caption

    training_set = run_caption(config)
    info(f"{len(training_set.image_ids)} captioned image(s) in {training_set.folder}; {training_set.dataset_toml}")
    return 0


def _cmd_curate(config, args) -> int:
    from zirelia_local.curate import run_curate

    run_curate(config, images_dir=args.images)
    return 0


def _cmd_train(config, args) -> int:
    from zirelia_local.critic import live_judge
    from zirelia_local.training import run_training

    if args.num_processes is not None:
        config.train.num_processes = args.num_processes

    run_training(config, dry_run=args.dry_run, live=None if args.dry_run else live_judge(config))
    return 0


def _cmd_critic(config, args) -> int:
    from zirelia_local.critic import run_critic

    run_critic(config)
    return 0


def _cmd_report(config, args) -> int:
    from zirelia_local.common.console import info
    from zirelia_local.report import write_report

    info(f"report: {write_report(config)}")
    return 0


def _cmd_generate(config, args) -> int:
    from zirelia_local.generate import read_prompts_file, run_generate, with_overrides

    config = with_overrides(
        config,
        count=args.count,
        seed=args.seed,
        lora=args.lora,
        lora_scale=args.scale,
        max_retries=args.max_retries,
        keep_rejected=args.keep_rejected or None,
    )
    prompts = [*args.prompt, *(read_prompts_file(args.prompts) if args.prompts else [])]
    name = args.prompts.stem if args.prompts else None
    from zirelia_local.scale import finished_exit_code

    return finished_exit_code(run_generate(config, prompts, out=args.out, name=name).exit_code)


def _cmd_run(args: argparse.Namespace) -> int:
    """One persona (here, or under `accelerate launch` with --num-processes), or several in turn."""
    from zirelia_local.scale import run_launched, run_many

    if len(args.config) > 1:
        if args.run_dir is not None:
            raise ConfigError(
                "--run-dir names one run directory, not one per persona", hint="set [run] dir in each config"
            )
        return run_many(args.config, num_processes=args.num_processes, verbose=args.verbose)
    args.config = args.config[0]
    if args.num_processes > 1:
        extra = (["--run-dir", str(args.run_dir)] if args.run_dir else []) + (["-v"] if args.verbose else [])
        extra += ["--skip-checks"] if args.skip_checks else []
        return run_launched(_load(args), args.num_processes, extra)

    def whole_job(config, args) -> int:
        from zirelia_local.pipeline import run_pipeline

        run_pipeline(config)
        return 0

    from zirelia_local.pipeline import PIPELINE_STAGES

    return _locked(args, whole_job, PIPELINE_STAGES)


def _cmd_doctor(args: argparse.Namespace) -> int:
    from zirelia_local.doctor import run_doctor

    config = _load(args) if args.config is not None else None
    return run_doctor(config)


def _cmd_config_reference(args: argparse.Namespace) -> int:
    from zirelia_local.common.config_reference import config_reference_markdown

    sys.stdout.write(config_reference_markdown())
    return 0


def _add_generate(command: argparse.ArgumentParser) -> None:
    """The flags of `zirelia generate`; each overrides its `[generate]` key (exit 2 when invalid)."""
    command.epilog = "exit status: 0 every image accepted, 1 some could not be (one line per failure kind), 2 bad input"
    add = command.add_argument
    add(
        "--prompt",
        action="append",
        default=[],
        metavar="TEXT",
        help="a scene to draw (repeatable); the trigger word is added",
    )
    add(
        "--prompts",
        type=Path,
        metavar="FILE",
        help="one prompt a line (# comments), or JSON Lines with prompt, seed, count, name",
    )
    add("--count", type=int, metavar="N", help="images per prompt ([generate] count, 1)")
    add("--seed", type=int, help="base seed: image n uses seed + n (default: derived from the prompt)")
    add("--lora", type=Path, metavar="PATH", help="LoRA file (default: the run's best.safetensors)")
    add("--scale", type=float, help="LoRA scale (default: the one the critic chose for the best epoch)")
    add("--out", type=Path, metavar="DIR", help="output folder (default: <run_dir>/generated/<prompt>-<hash>/)")
    add("--max-retries", type=int, metavar="N", help="retries of a rejected image ([critic] max_retries, 3)")
    add("--keep-rejected", action="store_true", help="keep rejected attempts' images under rejected/")
    add(
        "--num-processes",
        type=process_count,
        default=1,
        metavar="N",
        help="processes (GPUs) to split the images across: runs the command under accelerate launch",
    )


def _generate_flags(args: argparse.Namespace) -> list[str]:
    """The command line of `zirelia generate` again, for each process of the launch `--num-processes` starts."""
    # --flag=value: a value that starts with "-" (a prompt, a path) is not taken for a flag
    flags = [f"--prompt={text}" for text in args.prompt]
    for flag, value in (
        ("--prompts", args.prompts),
        ("--count", args.count),
        ("--seed", args.seed),
        ("--lora", args.lora),
        ("--scale", args.scale),
        ("--out", args.out),
        ("--max-retries", args.max_retries),
        ("--run-dir", args.run_dir),
    ):
        if value is not None:
            flags.append(f"{flag}={value}")
    for flag, on in (
        ("--keep-rejected", args.keep_rejected),
        ("--skip-checks", args.skip_checks),
        ("-v", args.verbose),
    ):
        flags += [flag] if on else []
    return flags


def _generate_action(args: argparse.Namespace) -> int | None:
    """`zirelia generate`: here, or under `accelerate launch` of `--num-processes` processes."""
    if args.num_processes > 1:
        from zirelia_local.scale import run_launched

        return run_launched(_load(args), args.num_processes, _generate_flags(args), command="generate")
    return _locked(args, _cmd_generate, ("critic",))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zirelia",
        description="Turn a written persona into a FLUX LoRA that draws the same face every time.",
    )
    parser.add_argument("--version", action="version", version=f"zirelia-local {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(
        name: str, help_text: str, handler: Callable, checks: tuple[str, ...] | None = None
    ) -> argparse.ArgumentParser:
        """A stage command; `checks`: the stages its pre-flight checks (default: its own; () for none)."""
        command = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(command)
        checked = (name,) if checks is None else checks
        if checked:
            add_skip_checks(command)
        command.set_defaults(action=lambda args: _locked(args, handler, checked))
        return command

    run_help = "run the whole pipeline (same as python -m zirelia_local.train); several configs run in turn"
    run = sub.add_parser("run", help=run_help, description=run_help)
    run.add_argument("config", type=Path, nargs="+", help="the persona's TOML config(s), e.g. configs/sienna.toml")
    run.add_argument("--run-dir", type=Path, default=None, help="run directory (one config only)")
    run.add_argument("-v", "--verbose", action="store_true", help="show debug logs of zirelia and the libraries")
    run.add_argument(
        "--num-processes",
        type=process_count,
        default=1,
        help="processes (GPUs) to split the images across: runs the job under accelerate launch (docs/scaling.md)",
    )
    add_skip_checks(run)
    run.set_defaults(action=_cmd_run)
    stage("dataset", "plan the dataset, generate the images, write captions", _cmd_dataset)
    curate = stage("curate", "keep the one consistent identity, top up to the target count", _cmd_curate)
    curate.add_argument(
        "--images",
        type=Path,
        default=None,
        help="curate this folder of existing images instead of the generated set (no top-up)",
    )
    stage("caption", "rewrite train_data/, dataset.toml and sample_prompts.txt from the manifest", _cmd_caption, ())
    train = stage("train", "train the LoRA (kohya sd-scripts or the diffusers backend)", _cmd_train)
    train.add_argument("--dry-run", action="store_true", help="print the training command and exit")
    train.add_argument(
        "--num-processes",
        type=process_count,
        default=None,
        help="override [train] num_processes (accelerate --num_processes)",
    )
    stage("critic", "score every saved epoch, retry failures, pick the best", _cmd_critic)
    stage("report", "write the HTML report of the run", _cmd_report)
    # generate needs what the critic needs: the base model, the face embedder, the CLIP weights
    generate = stage(
        "generate",
        "draw new images of the persona with the LoRA, each passed by the critic",
        _cmd_generate,
        ("critic",),
    )
    _add_generate(generate)
    generate.set_defaults(action=_generate_action)

    doctor = sub.add_parser(
        "doctor", help="check what a run needs on this machine", description="check what a run needs"
    )
    _add_common(doctor, config_required=False)
    doctor.set_defaults(action=_cmd_doctor)
    reference = sub.add_parser("config-reference", help="print the config reference (Markdown)")
    reference.set_defaults(action=_cmd_config_reference, verbose=False)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "verbose", False))
    return run_guarded(lambda: args.action(args))


if __name__ == "__main__":
    raise SystemExit(main())
