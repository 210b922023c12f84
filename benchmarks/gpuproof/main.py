"""The command line of benchmarks/gpu_proof.py: plan the cases, run each in its own process, write the page."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuproof import cases as case_runner
from gpuproof import child
from gpuproof.cases import Case

REPO = Path(__file__).resolve().parent.parent.parent
DEFAULT_OUT = REPO / "docs" / "benchmarks-gpu.md"
QUICK_BUDGET_S = 8 * 60
CASE_LIMIT_S = {"quick": 300, "full": 1800, "tiny": 120}
BUILD_LIMIT_S = 1200
SECTIONS = ("generation", "training", "kohya", "critic")
PACKAGES = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes")


@dataclass
class Options:
    full: bool
    tiny: bool
    workdir: Path
    model: str = ""
    lora: str = ""
    kohya_files: dict[str, str] = field(default_factory=dict)
    total_gib: float | None = None

    @property
    def device(self) -> str:
        return "cpu" if self.tiny else "cuda"

    def case_params(self) -> dict[str, Any]:
        return {
            "workdir": str(self.workdir),
            "model": self.model,
            "device": self.device,
            "dtype": "float32" if self.tiny else "bfloat16",
            "cuda": not self.tiny,
            "tiny": self.tiny,
        }

    def resolution(self, pixels: int) -> int:
        """The real size, or an eighth of it on the tiny model (1024 -> 128, 512 -> 64)."""
        return pixels // 8 if self.tiny else pixels

    def auto_preset(self) -> str:
        from zirelia_local.training.presets import NO_GPU_FALLBACK, preset_name_for_memory

        return preset_name_for_memory(self.total_gib) if self.total_gib else NO_GPU_FALLBACK


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="gpu_proof.py",
        description="Measure every stage on one CUDA GPU with FLUX.1-dev-shaped random weights (no network, no "
        "weights needed); --tiny runs every section on the builtin tiny model on the CPU.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="reduced set, at most 8 minutes on an H100 (default)")
    mode.add_argument("--full", action="store_true", help="every case of every section")
    parser.add_argument("--tiny", action="store_true", help="every section on the builtin tiny model, on CPU")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run ({', '.join(SECTIONS)})")
    parser.add_argument("--out", type=Path, help="page to write (default: docs/benchmarks-gpu.md; --tiny: a temp file)")
    parser.add_argument("--workdir", type=Path, help="models and runs (default: the zirelia cache's gpu-proof/)")
    parser.add_argument("--topup-rate", type=float, default=0.25, help="projection: share of images drawn again")
    parser.add_argument("--retry-rate", type=float, default=0.5, help="projection: mean retries per critic image")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def no_gpu_reason() -> str | None:
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed"
    if not torch.cuda.is_available():
        build = torch.version.cuda or "none"
        return f"no CUDA GPU visible to torch {torch.__version__} (CUDA build: {build})"
    return None


def machine(build: Case | None, command: str) -> dict[str, str]:
    figures = build.figures if build else {}
    versions = []
    for name in PACKAGES:
        try:
            versions.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name} (not installed)")
    info = {
        "GPU": f"{figures['device_name']} ({figures['device_total_gib']} GiB)" if "device_name" in figures else "none",
        "driver": _driver(),
        "CUDA (torch build)": figures.get("cuda_build", "-"),
        "packages": ", ".join(versions),
        "Python": platform.python_version(),
        "CPU cores": str(os.cpu_count()),
        "command": f"`{command}`",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if commit.returncode == 0:
        info["commit"] = commit.stdout.strip()
    return info


def _driver() -> str:
    if shutil.which("nvidia-smi") is None:
        return "- (no nvidia-smi)"
    query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    done = subprocess.run(query, capture_output=True, text=True, timeout=30)
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else "-"


def interleave(groups: list[list[Case]]) -> list[Case]:
    """Round-robin over the sections, so a spent --quick budget costs each section its later cases only."""
    ordered = []
    for index in range(max((len(group) for group in groups), default=0)):
        ordered += [group[index] for group in groups if index < len(group)]
    return ordered


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if args.case:
        return child.child_main(args.case)
    if not args.tiny and (reason := no_gpu_reason()):
        print(
            f"gpu_proof: {reason}: run it on a CUDA machine, or pass --tiny to check the code paths on the CPU",
            file=sys.stderr,
        )
        return 2
    from gpuproof import critic, generation, kohya, projection, report, training
    from zirelia_local.dataset.tiny_flux import cache_root

    mode = "tiny" if args.tiny else "full" if args.full else "quick"
    command = "python benchmarks/gpu_proof.py" + ("" if not argv else " " + shlex.join(argv))
    started = time.monotonic()
    temporary = args.workdir is None and args.tiny
    workdir = args.workdir or (Path(tempfile.mkdtemp(prefix="gpu-proof-")) if args.tiny else cache_root() / "gpu-proof")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "gpu-proof.log"
    options = Options(full=args.full, tiny=args.tiny, workdir=workdir)
    print(f"gpu proof ({mode}): models and runs in {workdir}, every child's output in {log}", flush=True)

    # --tiny: one CPU thread per case. The tiny model gains nothing from more, and a CI machine shared with
    # other processes slows many-thread runs far more than single-thread ones (OpenMP threads wait on each other).
    child_env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"} if args.tiny else None

    def run(case: Case) -> Case:
        limit = CASE_LIMIT_S["full" if args.full else mode]
        if case.section == "build" and not args.tiny:
            limit = BUILD_LIMIT_S  # everything else needs the weights: never cut their first build short
        elif mode == "quick":
            left = QUICK_BUDGET_S - (time.monotonic() - started)
            if left < 30 and not case.skip_reason:
                case.skip_reason = f"the --quick budget ({QUICK_BUDGET_S // 60} min) is spent"
            limit = min(limit, max(left, 1))
        case_runner.run_case(case, timeout=limit, env=child_env, log=log)
        print(report.summary_line(case), flush=True)
        return case

    build_params = {**options.case_params(), "model_dir": str(workdir / "flux-dev-shaped"), "seed": 0}
    build = run(Case("build", "tiny model" if args.tiny else "FLUX.1-dev-shaped, bf16", build_params))
    done: list[Case] = [build]
    if build.ok:
        options.model = build.figures["model_dir"]
        options.lora = build.figures["lora"]
        options.kohya_files = build.figures["kohya_files"]
        options.total_gib = build.figures.get("device_total_gib")
        wanted = [name for name in args.only.split(",") if name] or list(SECTIONS)
        planners = {"generation": generation, "training": training, "kohya": kohya, "critic": critic}
        groups = [planners[name].plan(options) for name in SECTIONS if name in wanted]
        done += [run(case) for case in (interleave(groups) if mode == "quick" else [c for g in groups for c in g])]
    sienna = REPO / "configs" / "sienna.toml"
    stages = projection.project(
        done,
        sienna=sienna,
        total_gib=options.total_gib,
        topup=args.topup_rate,
        retries=args.retry_rate,
        scale=options.resolution,
    )
    notes = [
        f"mode: {mode}"
        + (" (reduced set: one mode per section; quick timings marked extrapolated)" if mode == "quick" else "")
    ]
    if args.tiny:
        notes.append(
            "--tiny: the builtin tiny model on the CPU at an eighth of each size, one CPU thread per case; it "
            "proves the code paths and is not a GPU figure"
        )
    notes.append(
        f"projection assumptions: top-up rate {args.topup_rate:g}, retries per critic image {args.retry_rate:g}"
    )
    text = report.page(machine(build, command), done, stages, notes, tiny=args.tiny)
    out = args.out or (Path(tempfile.gettempdir()) / "zirelia-gpu-proof-tiny.md" if args.tiny else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    print(text)
    print(f"wrote {out} in {time.monotonic() - started:.0f} s", flush=True)
    failed = [case for case in done if case.status in ("failed", "timed out")]
    if temporary and not failed:
        shutil.rmtree(workdir, ignore_errors=True)
    elif failed:
        print(f"{len(failed)} case(s) failed; their output is in {log}", flush=True)
    return 1 if failed else 0
