"""The pre-flight: before a command does any work or loads a model, the doctor's checks for the stages it will
run (`collect_checks(config, stages=...)`, the same rows `zirelia doctor` prints, not a copy of them).

The whole job (`python -m zirelia_local.train`, `zirelia run`) checks every stage; a stage run alone checks its
own. Every failure is listed together, each with its fix, and the command stops with exit 1 before anything
is created in the run directory; warnings are printed once and the command goes on. `--skip-checks` skips it.

What the checks found (or that they were skipped) is kept per stage in `<run_dir>/preflight.json`, which the
report shows: a stage run alone replaces only its own entry.

Cost: the checks read files and metadata, import torch (the stages import it anyway), and for the kohya
backend run sd-scripts' interpreter on its own imports, in its own process beside the other checks (seconds:
torch and more; see doctor/kohya.py). That wait is worth it when the run is about to start: the alternative is
learning of a broken venv after the whole dataset stage. When another check has failed, the run cannot start
anyway and the import is cut short to a look-up of the modules (`stop_early`), so a typo is reported in a few
seconds. The one network call (hub access of an uncached generator, with a token) gives up after a few
seconds and is not made under HF_HUB_OFFLINE.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import announce, info
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_json, read_json_object
from zirelia_local.common.rundir import PREFLIGHT_NAME
from zirelia_local.doctor.check import STAGES, Check, selected_stages
from zirelia_local.doctor.table import collect_checks

SKIP_FLAG = "--skip-checks"


@dataclass(frozen=True)
class Preflight:
    """What a command's pre-flight came to: the stages it covered, and its checks (none when skipped)."""

    stages: tuple[str, ...]
    skipped: bool
    checks: tuple[Check, ...] = ()
    seconds: float = 0.0
    at: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status == "warn"]

    @property
    def status(self) -> str:
        """`skipped`, `passed` or `passed with warnings` (a failed pre-flight stops before it is recorded)."""
        if self.skipped:
            return "skipped"
        return "passed with warnings" if self.warnings else "passed"


def failure_message(failed: Sequence[Check], stages: Sequence[str], seconds: float) -> str:
    """Every failed check on its lines: the check, what is wrong, and its fix."""
    lines = [
        f"{len(failed)} pre-flight check(s) failed for {', '.join(stages)} (checked in {seconds:.1f} s); "
        "nothing was started:"
    ]
    for check in failed:
        lines.append(f"  {check.name}: {check.detail}")
        lines.append(f"    fix: {check.fix}")
    return "\n".join(lines)


def run_preflight(config: ZireliaConfig, stages: Sequence[str], *, skip: bool = False) -> Preflight:
    """Check what `stages` of `config`'s run need, before any work: raise a ZireliaError listing every failure
    (each with its fix), print the warnings, and return the result for `record_preflight`.

    `skip` (the user's --skip-checks) checks nothing and says so; the record then tells the report.
    """
    named = selected_stages(stages)  # a typo in a stage name is a bug here, not a silent empty check
    chosen = tuple(stage for stage in STAGES if stage in named)
    if skip:
        info(f"pre-flight checks skipped ({SKIP_FLAG}); the report will say so")
        return Preflight(chosen, skipped=True)
    started = time.perf_counter()
    checks = tuple(collect_checks(config, stages=chosen, stop_early=True))
    seconds = time.perf_counter() - started
    result = Preflight(chosen, skipped=False, checks=checks, seconds=seconds)
    # Warnings first, also when something failed (one round of fixes can then take care of everything), and
    # once: a stage that would find the same thing later does not repeat it (`announced`).
    for check in result.warnings:
        announce(check.name, escape(f"{check.name}: {check.detail}" + (f" (fix: {check.fix})" if check.fix else "")))
    failed = [check for check in checks if check.failed]
    if failed:
        raise ZireliaError(
            failure_message(failed, chosen, seconds),
            hint=f"fix each one and run again (`zirelia doctor CONFIG` prints every check); {SKIP_FLAG} starts "
            "anyway, at your own risk",
        )
    tail = f", {len(result.warnings)} warning(s)" if result.warnings else ""
    # every process checks its own device; a machine's first one says it passed (`info`)
    info(f"pre-flight: {len(checks)} checks for {', '.join(chosen)} passed in {seconds:.1f} s{tail}")
    return result


def record_preflight(run_dir: Path, result: Preflight, command: str) -> Path:
    """Keep `result` in `<run_dir>/preflight.json`, as the entry of each stage it covered (other stages'
    entries stay). Called under the run lock."""
    path = run_dir / PREFLIGHT_NAME
    stages: dict[str, Any] = dict((read_json_object(path) or {}).get("stages") or {})
    entry = {
        "status": result.status,
        "at": result.at,
        "command": command,
        "checked_with": list(result.stages),
        "seconds": round(result.seconds, 2),
        "warnings": [asdict(check) for check in result.warnings],
        "checks": [asdict(check) for check in result.checks],
    }
    for stage in result.stages:
        stages[stage] = entry
    return atomic_write_json(path, {"stages": stages})
