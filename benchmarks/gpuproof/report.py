"""The page of a GPU proof run (docs/benchmarks-gpu.md): the machine, the command, the date, one table per
section. A cell shows only what its case measured; anything else is "-", and a case that failed or was
skipped says so with its error or reason."""

from __future__ import annotations

from typing import Any

from gpuproof.cases import Case
from gpuproof.projection import ANCHORS, Stage, total

DASH = "-"


def _value(figures: dict[str, Any], key: str, unit: str = "") -> str:
    value = figures.get(key)
    if value is None:
        return DASH
    if isinstance(value, float):
        value = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{value}{unit}"


def _status(case: Case) -> str:
    if case.status == "ok":
        return "ok"
    detail = case.skip_reason if case.status == "skipped" else case.error
    return f"{case.status}: {(detail or '').replace('|', '/')}"


def _memory(figures: dict[str, Any]) -> list[str]:
    return [_value(figures, key) for key in ("peak_allocated_gib", "peak_reserved_gib", "device_peak_gib")]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _section(title: str, note: str, header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"## {title}", "", note, "", *(_table(header, rows) if rows else ["(no case)"]), ""]


MEMORY_HEADER = ["peak allocated GiB", "peak reserved GiB", "device used peak GiB"]


def page(info: dict[str, str], cases: list[Case], stages: list[Stage], notes: list[str], *, tiny: bool) -> str:
    title = (
        "the builtin tiny model on the CPU (--tiny: code paths, not GPU figures)"
        if tiny
        else ("FLUX.1-dev-shaped random weights")
    )
    about = (
        "The builtin tiny model; sizes are an eighth of the GPU run's."
        if tiny
        else (
            "Random weights of FLUX.1-dev's real shapes (speed and memory do not depend on the values), built on "
            "the GPU."
        )
    )
    lines = [f"# GPU proof: {title}", ""]
    lines += [
        "<!-- Written by `python benchmarks/gpu_proof.py`; do not edit by hand. -->",
        "",
        f"{about} Each case ran in its own process. `-` marks a figure the case did not measure.",
        "",
        *_table(["", ""], [[key, value] for key, value in info.items()]),
        "",
    ]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    by = {
        section: [case for case in cases if case.section == section]
        for section in ("build", "generation", "training", "kohya", "critic")
    }

    lines += _section(
        "Weights",
        "The models every case loads: built once and saved as a diffusers folder (reused by a rerun).",
        ["case", "how", "s", "disk GiB", "transformer parameters", "rank-32 LoRA MiB", "status"],
        [
            [
                c.name,
                c.figures.get("how", DASH),
                _value(c.figures, "total_s"),
                _value(c.figures, "disk_gib"),
                _value(c.figures, "transformer_params"),
                _value(c.figures, "lora_mib"),
                _status(c),
            ]
            for c in by["build"]
        ],
    )
    lines += _section(
        "(a) Generation",
        "28 steps, `load_flux_pipeline` + `render_batch`. *extrapolated*: the 28-step figure comes "
        "from timed 4- and 8-step calls (per-step time and fixed part on a straight line).",
        ["mode", "px", "batch", "s/image", "s/step", "load s", *MEMORY_HEADER, "why", "status"],
        [
            [
                f"{c.params['memory']} / {c.params['quantization']}",
                str(c.params["resolution"]),
                str(c.params["batch"]),
                _value(c.figures, "s_per_image") + (" (extrapolated)" if c.figures.get("extrapolated") else ""),
                _value(c.figures, "s_per_step"),
                _value(c.figures, "load_s"),
                *_memory(c.figures),
                c.params.get("why", ""),
                _status(c),
            ]
            for c in by["generation"]
        ],
    )
    lines += _section(
        "(b) Training, diffusers backend",
        "LoRA rank 32, batch 1, `run_training` with backend `diffusers`; s/step is the median of the steps "
        "after the first. Peaks cover the whole run (encoding, then training).",
        ["preset", "px", "s/step", "steps timed", "wall s", *MEMORY_HEADER, "status"],
        [
            [
                c.params["vram"],
                str(c.params["resolution"]),
                _value(c.figures, "s_per_step"),
                _value(c.figures, "steps_timed"),
                _value(c.figures, "wall_s"),
                *_memory(c.figures),
                _status(c),
            ]
            for c in by["training"]
        ],
    )
    lines += _section(
        "(c) Training, sd-scripts through the kohya launcher",
        "LoRA rank 32, 1024 px dataset, the preset's batch and resolution; s/step is the median of each step's own duration (step_seconds). "
        "sd-scripts' peak is the device's used memory while it ran, less this process's own.",
        ["preset", "s/step", "wall s", "sd-scripts peak GiB", "fits the preset's card", "status"],
        [_kohya_row(c) for c in by["kohya"]],
    )
    lines += _section(
        "(d) Critic",
        "Defaults: 4 prompts x 2 seeds, batch 2, 28 steps, rank-32 LoRA adapter; judge = dlib + ViT-B-32 CLIP "
        "on the CPU.",
        ["case", "images", "s/image", "draw s/image", "judge s/image", "LoRA load s", *MEMORY_HEADER, "status"],
        [
            [
                c.name,
                _value(c.figures, "images") if "images" in c.figures else _value(c.figures, "batch"),
                _value(c.figures, "s_per_image") + (" (extrapolated)" if c.figures.get("extrapolated") else ""),
                _value(c.figures, "draw_s_per_image"),
                _value(c.figures, "judge_s_per_image"),
                _value(c.figures, "lora_load_s"),
                *_memory(c.figures),
                _status(c),
            ]
            for c in by["critic"]
        ],
    )
    known = total(stages)
    lines += _section(
        "(e) Projection: configs/sienna.toml on this GPU",
        "Derived from the figures above and the stated assumptions; not measured as a whole.",
        ["stage", "minutes", "basis"],
        [[s.name, DASH if s.minutes is None else f"{s.minutes:.1f}", s.basis] for s in stages]
        + [["total", DASH if known is None else f"**{known:.0f}**", "stages with a measured rate"]]
        + [[f"anchor: {name}", value, "published"] for name, value in ANCHORS],
    )
    return "\n".join(lines).rstrip() + "\n"


def _kohya_row(case: Case) -> list[str]:
    from zirelia_local.training.presets import MIN_GIB

    figures = case.figures
    peak = fits = DASH
    if "device_peak_gib" in figures and not figures.get("dry_run"):
        used = figures["device_peak_gib"] - figures.get("device_baseline_gib", 0.0)
        peak = f"{used:.2f}"
        preset = case.params["presets"][0]
        fits = f"{'yes' if used <= MIN_GIB[preset] else 'NO'} (<= {MIN_GIB[preset]:g} GiB)"
    label = ", ".join(figures.get("presets", case.params["presets"]))
    return [label, _value(figures, "s_per_step"), _value(figures, "wall_s"), peak, fits, _status(case)]


def summary_line(case: Case) -> str:
    """One console line per case."""
    figures = case.figures
    parts = [f"[{case.section}] {case.name}: {case.status}"]
    for key, unit in (("s_per_image", " s/image"), ("s_per_step", " s/step"), ("device_peak_gib", " GiB peak")):
        if key in figures and figures[key] is not None:
            parts.append(f"{figures[key]}{unit}")
    if case.status != "ok":
        parts.append(case.skip_reason or case.error or "")
    return "  ".join(parts) + (f"  ({case.seconds:.0f} s)" if case.seconds else "")
