"""The stages in order. Each reads and writes files in the run directory, so each can also run alone."""

from __future__ import annotations

from zirelia_local.config import ZireliaConfig
from zirelia_local.console import console, info


def run_pipeline(config: ZireliaConfig) -> None:
    from zirelia_local.curate import run_curate
    from zirelia_local.dataset import run_dataset
    from zirelia_local.training import run_training

    console.rule(f"[bold]{config.persona.name}[/bold] ({config.persona.trigger_word}) -> {config.run_dir}")
    console.rule("1/3 dataset: plan, generate, caption")
    run_dataset(config)
    console.rule(f"2/3 curate: one identity ({config.curate.mode})")
    run_curate(config)
    console.rule(f"3/3 train: LoRA ({config.train.backend} backend)")
    result = run_training(config)
    files = ", ".join(f"{epoch}: {path.name}" for epoch, path in result.epoch_files.items())
    info(
        f"[bold]done.[/bold] LoRA epochs in {result.output_dir}: {files or 'none'}. The critic is not built yet: "
        "no epoch was scored."
    )
