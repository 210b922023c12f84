"""The stages in order. Each reads and writes files in the run directory, so each can also run alone."""

from __future__ import annotations

from zirelia_local.config import ZireliaConfig
from zirelia_local.console import console, info


def run_pipeline(config: ZireliaConfig) -> None:
    from zirelia_local.curate import run_curate
    from zirelia_local.dataset import run_dataset

    console.rule(f"[bold]{config.persona.name}[/bold] ({config.persona.trigger_word}) -> {config.run_dir}")
    console.rule("1/2 dataset: plan, generate, caption")
    run_dataset(config)
    console.rule(f"2/2 curate: one identity ({config.curate.mode})")
    run_curate(config)
    info(
        "[bold]done.[/bold] Only the dataset and curation stages exist so far: training and the critic are not "
        "built yet, so no LoRA was trained."
    )
