"""The whole table: every check in order (for the whole run, or for some of its stages), printed with rich,
and the exit code `zirelia doctor` returns."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.doctor.check import (
    FACE_STAGES,
    MODEL_STAGES,
    Check,
    Stage,
    generator_stages,
    ok,
    selected_stages,
)
from zirelia_local.doctor.environment import gpu_checks, gpu_inventory, package_checks, python_check, vram_check
from zirelia_local.doctor.kohya import (
    SD_SCRIPTS_IMPORT_TIMEOUT_S,
    kohya_model_file_checks,
    sd_scripts_folder_check,
    sd_scripts_python,
    sd_scripts_python_check,
)
from zirelia_local.doctor.models import (
    HubAccess,
    device_check,
    generator_model_check,
    gpu_requirement,
    hub_access,
    kontext_model_check,
    kontext_stages,
)
from zirelia_local.doctor.resources import (
    critic_clip_check,
    disk_checks,
    embedder_check,
    reference_images_check,
    run_dir_check,
)


def collect_checks(
    config: ZireliaConfig | None,
    *,
    stages: Iterable[str] | None = None,
    access: HubAccess = hub_access,
    import_timeout: float = SD_SCRIPTS_IMPORT_TIMEOUT_S,
    stop_early: bool = False,
) -> list[Check]:
    """Every check for `config` (environment only when None), in table order.

    `stages` (names from `STAGES`; None: the whole run, which is what `zirelia doctor` checks) keeps only the
    rows those stages need, so a command that runs some stages can check just those before loading a model.
    The environment rows (Python, packages, CUDA, VRAM) are always there. Raises ValueError on an unknown stage.

    `stop_early` (the pre-flight): when another row has failed, the run cannot start anyway, so the slow
    import of sd-scripts' libraries is cut short to a look-up of its modules (see `sd_scripts_python_check`).
    """
    chosen = selected_stages(stages)
    stop = threading.Event()
    with ThreadPoolExecutor(max_workers=1) as pool:
        kohya_rows: list[Check] | None = None
        interpreter = None
        if config is not None and "train" in chosen and config.train.backend == "kohya":
            folder = config.sd_scripts_dir()
            kohya_rows = [sd_scripts_folder_check(folder, config.train.model_type)]
            kohya_rows += kohya_model_file_checks(config)  # reads a few file headers: milliseconds
            if stop_early and any(check.failed for check in kohya_rows):
                stop.set()  # already known to fail: the interpreter's modules are looked up, not imported
            if not kohya_rows[0].failed and folder is not None:
                # Importing sd-scripts' libraries in its interpreter takes seconds: it works in its own process
                # while this one reads the other rows (importing torch among them).
                python = sd_scripts_python(folder, config.train.python)
                interpreter = pool.submit(sd_scripts_python_check, folder, python, import_timeout, stop)
        try:
            checks = _checks_in_order(config, chosen, access, kohya_rows)
            if interpreter is not None:
                if stop_early and any(check.failed for check in checks):
                    stop.set()
                after_folder = next(index for index, check in enumerate(checks) if check is kohya_rows[0]) + 1
                checks.insert(after_folder, interpreter.result())
        except BaseException:  # Ctrl-C or a bug: do not wait for the import on the way out
            stop.set()
            raise
    return checks


def _checks_in_order(
    config: ZireliaConfig | None, chosen: frozenset[Stage], access: HubAccess, kohya_rows: list[Check] | None
) -> list[Check]:
    """The rows in table order, but for sd-scripts' interpreter (collect_checks puts it after the folder)."""
    checks = [python_check(), *package_checks(config, chosen)]
    gpus, summary = gpu_inventory()
    required = gpu_requirement(config, chosen) if config is not None else None
    checks += gpu_checks(gpus, summary, gpu_required=required, for_config=config is not None)
    # Without training among the stages, [train] gpu_ids and vram do not apply: say what fits all GPUs.
    checks.append(vram_check(gpus, config.train if config is not None and "train" in chosen else None))
    if config is None:
        return checks
    if not MODEL_STAGES.isdisjoint(chosen):
        device_row = device_check(config, gpus, chosen)
        if device_row is not None:
            checks.append(device_row)
    # Cached (or built in, or local) unless a chosen stage loads it and the model row says otherwise.
    generator_cached = True
    if not generator_stages(config).isdisjoint(chosen):
        model_row = generator_model_check(config.generator, access)
        checks.append(model_row)
        generator_cached = model_row.status == "ok"
    kontext_cached = True
    if not kontext_stages(config).isdisjoint(chosen):
        kontext_row = kontext_model_check(config.generator, access)
        checks.append(kontext_row)
        kontext_cached = kontext_row.status == "ok"
    if "train" in chosen:
        if kohya_rows is not None:
            checks += kohya_rows
        else:
            checks.append(ok("training backend", "diffusers (built in; no sd-scripts needed)"))
    if not FACE_STAGES.isdisjoint(chosen):
        checks.append(embedder_check(config.curate, gpus))
    if "curate" in chosen:
        reference_row = reference_images_check(config)
        if reference_row is not None:
            checks.append(reference_row)
    if "critic" in chosen:
        checks.append(critic_clip_check(config))
    # Every stage writes into the run directory (the report too).
    checks.append(run_dir_check(config.run_dir))
    checks += disk_checks(config, generator_cached, chosen, kontext_cached=kontext_cached)
    return checks


def render_table(checks: Iterable[Check], title: str) -> None:
    """Print `checks` as one table on stdout (rich markup in the texts is escaped: they name [sections])."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, soft_wrap=False)
    table = Table(title=title, title_justify="left", show_lines=False)
    table.add_column("check", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail", overflow="fold")
    table.add_column("fix", overflow="fold")
    style = {"ok": "green", "warn": "yellow", "FAIL": "bold red"}
    for check in checks:
        table.add_row(
            escape(check.name), f"[{style[check.status]}]{check.status}[/]", escape(check.detail), escape(check.fix)
        )
    console.print(table)


def run_doctor(config: ZireliaConfig | None) -> int:
    """Print the table; 1 when a FAIL row means the configured run cannot start, else 0."""
    from zirelia_local.common.console import console

    checks = collect_checks(config)
    title = f"zirelia doctor: {config.source or 'config'}" if config is not None else "zirelia doctor: environment"
    render_table(checks, title)
    failed = [check.name for check in checks if check.failed]
    warned = [check.name for check in checks if check.status == "warn"]
    if failed:
        what = "the configured run cannot start" if config is not None else "this environment is incomplete"
        console.print(f"[bold red]{len(failed)} check(s) failed[/bold red]: {what}: {', '.join(failed)}")
        return 1
    tail = f" ({len(warned)} warning(s): {', '.join(warned)})" if warned else ""
    console.print(f"[green]ready[/green]{tail}")
    return 0
