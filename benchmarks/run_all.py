"""Run every benchmark of the project and write one table to docs/benchmarks.md.

    python benchmarks/run_all.py                  # all benchmarks/bench_*.py, then docs/benchmarks.md
    python benchmarks/run_all.py --only dataset   # just bench_dataset.py (the page lists only what ran)
    python benchmarks/run_all.py --record-gpu     # on a CUDA machine: also store the figures as GPU figures

Each `benchmarks/bench_<topic>.py` runs in its own process with this Python and prints, besides its
human-readable output, one line per figure:
    BENCH {"benchmark": "<topic>", "metric": "<what, with unit>", "value": <number>, "params": "<short>"}
The page holds the machine the figures were measured on, one table of them with the command that produced
each, and the GPU figures kept in benchmarks/gpu_results.json (measured on a GPU machine, by hand or with
--record-gpu there), each with its command and device.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BENCH_PREFIX = "BENCH "
DEFAULT_TIMEOUT_S = 15 * 60
VERSIONED_PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate")


@dataclass
class BenchRun:
    """One benchmark script's run: its figures and how it ended."""

    script: Path
    command: str
    seconds: float = 0.0
    returncode: int | None = None  # None: timed out
    figures: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    output_tail: str = ""

    @property
    def status(self) -> str:
        if self.returncode is None:
            return "timed out"
        return "ok" if self.returncode == 0 else f"failed (exit {self.returncode})"


def discover(bench_dir: Path, only: Sequence[str] = ()) -> list[Path]:
    """`bench_*.py` in `bench_dir`, sorted; `only` keeps the named topics (`dataset` or `bench_dataset.py`)."""
    scripts = sorted(bench_dir.glob("bench_*.py"))
    if only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in only}
        scripts = [script for script in scripts if script.stem.removeprefix("bench_") in wanted]
    return scripts


def parse_bench_lines(output: str) -> tuple[list[dict], list[str]]:
    """The figures a benchmark printed, and a note for each BENCH line that is not a valid figure."""
    figures, problems = [], []
    for line in output.splitlines():
        if not line.startswith(BENCH_PREFIX):
            continue
        try:
            figure = json.loads(line[len(BENCH_PREFIX) :])
        except json.JSONDecodeError as error:
            problems.append(f"unreadable BENCH line ({error.msg}): {line[:120]}")
            continue
        missing = [key for key in ("benchmark", "metric", "value") if key not in figure]
        if missing or not isinstance(figure.get("value"), int | float):
            problems.append(f"BENCH line without {', '.join(missing) or 'a numeric value'}: {line[:120]}")
            continue
        figure.setdefault("params", "")
        figures.append(figure)
    return figures, problems


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def run_benchmark(script: Path, timeout: float) -> BenchRun:
    command = f"python {display_path(script)}"
    run = BenchRun(script=script, command=command)
    env = {**os.environ, "ZIRELIA_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            [sys.executable, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
        )
        run.returncode = completed.returncode
        output = completed.stdout + completed.stderr
    except subprocess.TimeoutExpired as error:
        output = _text(error.stdout) + _text(error.stderr)
        run.problems.append(f"stopped after {timeout:.0f} s")
    run.seconds = time.perf_counter() - started
    run.figures, problems = parse_bench_lines(output)
    run.problems += problems
    run.output_tail = "\n".join(output.strip().splitlines()[-15:])
    if run.returncode == 0 and not run.figures:
        run.problems.append("printed no BENCH line")
    return run


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3
    except (ValueError, OSError, AttributeError):
        return None


def _gpus() -> list[str]:
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    names = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        names.append(f"{properties.name} ({properties.total_memory / 1024**3:.0f} GiB)")
    return names


def _git_commit() -> str | None:
    try:
        completed = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return completed.stdout.strip() or None


def machine_info() -> dict[str, str]:
    """What the figures were measured on."""
    memory = _memory_gib()
    versions = []
    for name in VERSIONED_PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    gpus = _gpus()
    info = {
        "CPU": _cpu_model(),
        "cores": str(os.cpu_count() or "?"),
        "RAM": f"{memory:.0f} GiB" if memory else "?",
        "GPU": ", ".join(gpus) if gpus else "none",
        "OS": platform.platform(),
        "Python": platform.python_version(),
        "packages": ", ".join(versions),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    commit = _git_commit()
    if commit:
        info["commit"] = commit
    return info


def load_gpu_results(path: Path) -> list[dict]:
    """GPU figures kept in the repository: {"results": [{benchmark, metric, value, params, command, device, date}]}."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data.get("results", []))


def record_gpu_results(path: Path, runs: Sequence[BenchRun], device: str, date: str) -> int:
    """Merge this run's figures into the GPU results file (same benchmark, metric, params and device: replaced)."""
    results = load_gpu_results(path)
    new = [{**figure, "command": run.command, "device": device, "date": date} for run in runs for figure in run.figures]
    keys = {(item["benchmark"], item["metric"], item.get("params", ""), item["device"]) for item in new}
    kept = [
        item
        for item in results
        if (item["benchmark"], item["metric"], item.get("params", ""), item["device"]) not in keys
    ]
    path.write_text(json.dumps({"results": kept + new}, indent=2) + "\n")
    return len(new)


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def format_value(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def render_markdown(runs: Sequence[BenchRun], machine: dict[str, str], gpu_results: Sequence[dict]) -> str:
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python benchmarks/run_all.py`; do not edit by hand. GPU figures come from "
        "benchmarks/gpu_results.json. -->",
        "",
        "Every `benchmarks/bench_*.py` run by `python benchmarks/run_all.py`, each in its own process. "
        "Each figure comes with the command that measured it; run that command alone to reproduce it.",
        "",
        "## Machine",
        "",
        "| | |",
        "| --- | --- |",
    ]
    lines += [f"| {key} | {_cell(value)} |" for key, value in machine.items()]
    device = "GPU" if machine.get("GPU", "none") != "none" else "CPU"
    lines += [
        "",
        f"## Figures on this machine ({device})",
        "",
        "| benchmark | metric | value | params | command |",
        "| --- | --- | --- | --- | --- |",
    ]
    for run in runs:
        for figure in run.figures:
            lines.append(
                f"| {_cell(figure['benchmark'])} | {_cell(figure['metric'])} | {format_value(figure['value'])} "
                f"| {_cell(figure.get('params', ''))} | `{run.command}` |"
            )
        if run.returncode != 0 or not run.figures:
            lines.append(f"| {run.script.stem.removeprefix('bench_')} | {run.status} | | | `{run.command}` |")
    lines += ["", "## GPU figures", ""]
    if gpu_results:
        lines += [
            "Measured on a GPU machine (benchmarks/gpu_results.json); the device and date are those of that run.",
            "",
            "| benchmark | metric | value | params | device | date | command |",
            "| --- | --- | --- | --- | --- | --- | --- |",
        ]
        for item in gpu_results:
            lines.append(
                f"| {_cell(item['benchmark'])} | {_cell(item['metric'])} | {format_value(item['value'])} "
                f"| {_cell(item.get('params', ''))} | {_cell(item.get('device', '?'))} | {_cell(item.get('date', ''))} "
                f"| `{item.get('command', '')}` |"
            )
    else:
        lines.append(
            "No GPU figures have been measured yet. On a CUDA machine, `python benchmarks/run_all.py --record-gpu` "
            "stores its figures in benchmarks/gpu_results.json (with the command and the device); they then appear "
            "here beside the CPU figures."
        )
    lines += ["", "## Runs", "", "| script | status | seconds | notes |", "| --- | --- | --- | --- |"]
    for run in runs:
        lines.append(
            f"| `{display_path(run.script)}` | {run.status} | {run.seconds:.1f} | {_cell('; '.join(run.problems))} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench-dir", type=Path, default=REPO / "benchmarks", help="folder of bench_*.py scripts")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md", help="Markdown page to write")
    parser.add_argument(
        "--gpu-results", type=Path, default=REPO / "benchmarks" / "gpu_results.json", help="GPU figures (JSON)"
    )
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per benchmark")
    parser.add_argument("--only", nargs="*", default=[], help="run only these topics (e.g. dataset)")
    parser.add_argument(
        "--record-gpu", action="store_true", help="also store this run's figures as GPU figures (needs CUDA)"
    )
    args = parser.parse_args(argv)

    scripts = discover(args.bench_dir, args.only)
    if not scripts:
        print(f"no bench_*.py in {args.bench_dir}" + (f" matching {args.only}" if args.only else ""), file=sys.stderr)
        return 1
    machine = machine_info()
    if args.record_gpu and machine["GPU"] == "none":
        print("--record-gpu needs a CUDA GPU; none is visible", file=sys.stderr)
        return 1
    runs = []
    for script in scripts:
        print(f"running {display_path(script)} ...", flush=True)
        run = run_benchmark(script, args.timeout)
        print(f"  {run.status}, {run.seconds:.1f} s, {len(run.figures)} figure(s)", flush=True)
        for problem in run.problems:
            print(f"  problem: {problem}", flush=True)
        if run.returncode != 0 and run.output_tail:
            print("  " + run.output_tail.replace("\n", "\n  "), flush=True)
        runs.append(run)
    if args.record_gpu:
        count = record_gpu_results(args.gpu_results, runs, machine["GPU"], machine["date"])
        print(f"recorded {count} GPU figure(s) in {args.gpu_results}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render_markdown(runs, machine, load_gpu_results(args.gpu_results)))
    print(f"wrote {args.out}")
    return 0 if all(run.returncode == 0 and run.figures for run in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
