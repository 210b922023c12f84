"""`zirelia critic CONFIG`: draw the evaluation images with the saved epochs' LoRAs, judge them, retry the
rejected ones with adjusted prompts, pick the best epoch and write `best.safetensors`. Which epochs are drawn
is `[critic] epochs`: by default a search that starts from the live identity curve training left
(`search.py`) and scores only the epochs near the best one; or all of them, the last, or a list.

The base pipeline is loaded once (FLUX, or the SD1.5/SDXL model training used: `renderers.py`); each epoch's
LoRA is loaded with `load_lora_weights` as its own adapter, its scale set with `set_adapters`, and deleted
after the epoch. Files, in `<run_dir>/critic/`:

- `epoch_<NNNNNN>/p<prompt>_s<seed>_a<attempt>.png`: every attempt (the PNG records prompt, seed, scale);
- `epoch_<NNNNNN>/results.json`: that epoch's attempt records and the key they were made under (LoRA file
  hash + settings); a rerun reuses an epoch whose key still matches, so a crash loses at most one epoch;
- `scores.jsonl`: one line per attempt (epoch, prompt, seed, attempt, adjusted prompt, LoRA scale, scores,
  reasons, verdict), rewritten whole at the end;
- `selection.json`: the score table, the chosen epoch and why, which epochs were scored and what that cost
  against scoring all (`search`); and `<run_dir>/best.safetensors`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.console import console, info, warn
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import (
    atomic_write_bytes,
    atomic_write_json,
    link_or_copy,
    png_bytes,
    read_json_object,
    sha256_file,
    write_jsonl,
)
from zirelia_local.common.processes import broadcast_json, gather_json, is_main_process, share_of, wait_for_everyone
from zirelia_local.common.security import redact
from zirelia_local.critic.attempts import EvaluationItem, draw_and_judge, in_item_order
from zirelia_local.critic.judge import Critic
from zirelia_local.critic.renderers import (
    EvaluationRenderer,
    evaluation_base_model,
    evaluation_generation_config,
    evaluation_size,
    renderer_for,
)
from zirelia_local.critic.retry import Attempt
from zirelia_local.critic.search import cost, search_start
from zirelia_local.critic.selection import (
    EpochScore,
    Selection,
    chosen_lora_scale,
    search_epochs,
    select_epoch,
    summarize_epoch,
)
from zirelia_local.critic.verdict import Verdict

CRITIC_DIR = "critic"
SCORES_NAME = "scores.jsonl"
SELECTION_NAME = "selection.json"
RESULTS_NAME = "results.json"
BEST_NAME = "best.safetensors"


@dataclass
class CriticResult:
    selection: Selection
    table: list[EpochScore]
    best_file: Path | None
    scores_file: Path
    selection_file: Path


def epoch_dir(run_dir: Path, epoch: int) -> Path:
    return Path(run_dir) / CRITIC_DIR / f"epoch_{epoch:06d}"


def evaluation_items(config: ZireliaConfig) -> list[EvaluationItem]:
    return [
        EvaluationItem(index, scene, seed)
        for index, scene in enumerate(config.critic.prompts)
        for seed in config.critic.seeds
    ]


def epochs_to_score(files: dict[int, Path], wanted: str | list[int]) -> dict[int, Path]:
    """The epochs a fixed choice names ("all", "last" or a list); the search picks its own as it goes."""
    if wanted in ("all", "search"):
        return files
    if wanted == "last":
        last = max(files)
        return {last: files[last]}
    missing = sorted(set(wanted) - set(files))
    if missing:
        raise ZireliaError(
            f"[critic] epochs lists {missing}, but only epochs {sorted(files)} were saved",
            hint='use epochs = "search", "all", "last", or a list of saved epochs',
        )
    return {epoch: files[epoch] for epoch in sorted(set(wanted))}


def invocation() -> str:
    """The command line of this process, as the user typed it (tokens redacted)."""
    import shlex

    argv = list(sys.argv)
    program = Path(argv[0]).name if argv else ""
    parts = Path(argv[0]).parts if argv else ()
    if program == "train.py" and "zirelia_local" in parts:
        command = ["python", "-m", "zirelia_local.train", *argv[1:]]
    elif program == "__main__.py" and "zirelia_local" in parts:
        command = ["python", "-m", "zirelia_local", *argv[1:]]
    elif program == "zirelia":
        command = ["zirelia", *argv[1:]]
    else:
        command = [Path(sys.executable).name, *argv]
    return redact(shlex.join(command))


def _settings(config: ZireliaConfig) -> dict[str, Any]:
    critic = config.critic
    generation = evaluation_generation_config(config)
    return {
        "model_type": config.train.model_type,
        "model": evaluation_base_model(config),
        "steps": generation.generator.steps,
        "guidance": generation.generator.guidance,
        "max_sequence_length": config.generator.max_sequence_length,
        "size": evaluation_size(config),
        "prompts": list(critic.prompts),
        "seeds": list(critic.seeds),
        "lora_scale": critic.lora_scale,
        "max_retries": critic.max_retries,
        "trigger_word": config.persona.trigger_word,
        "caption_phrase": config.persona.caption_phrase,
    }


def _epoch_key(config: ZireliaConfig, lora: Path, critic: Critic) -> str:
    """What an epoch's results depend on: the LoRA's bytes, the critic settings, the reference, the models."""
    identity = config.run_dir / "identity.safetensors"
    parts = {
        "lora": sha256_file(lora),
        # which epochs are scored does not change an epoch's images: switching search <-> all reuses them
        "critic": config.critic.model_dump(mode="json", exclude={"epochs"}),
        "settings": _settings(config),
        "embedder": critic.embedder.name,
        "identity": sha256_file(identity) if identity.is_file() else None,
        "clip": critic.clip.source,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def _cached_records(folder: Path, key: str, run_dir: Path) -> list[dict[str, Any]] | None:
    saved = read_json_object(folder / RESULTS_NAME)
    if saved is None:
        return None
    records = saved.get("attempts")
    if saved.get("key") != key or not isinstance(records, list):
        return None
    if not all((run_dir / record["image"]).is_file() for record in records):
        return None
    return records


def evaluate_epoch(
    renderer: EvaluationRenderer,
    critic: Critic,
    config: ZireliaConfig,
    epoch: int,
    lora: Path,
    items: list[EvaluationItem],
) -> list[dict[str, Any]]:
    """Draw and judge every evaluation item with this epoch's LoRA, retrying rejected ones; attempt records."""
    run_dir = config.run_dir
    folder = epoch_dir(run_dir, epoch)
    if is_main_process():
        if folder.exists():
            shutil.rmtree(folder)  # stale attempts of an older LoRA or other settings
        folder.mkdir(parents=True)
    wait_for_everyone()
    lora_name = os.path.relpath(lora, run_dir)

    def save(item: EvaluationItem, attempt: Attempt, prompt: str, image: Any, scale: float, verdict: Verdict) -> str:
        relative = f"{CRITIC_DIR}/{folder.name}/{item.key}_a{attempt.number}.png"
        metadata = {"prompt": prompt, "seed": str(attempt.seed), "lora": lora_name, "scale": f"{scale:g}"}
        atomic_write_bytes(run_dir / relative, png_bytes(image, metadata))
        return relative

    renderer.load_lora(lora, epoch)
    try:
        fields = {"epoch": epoch, "lora": lora_name}
        # Under a launch each process draws and judges its share (whole batches of first attempts) and its
        # retries; every process then holds all records, in the order one process makes them.
        mine = share_of(items, unit=config.generator.batch_size)
        records = draw_and_judge(
            renderer, critic, config, mine, save, label=f"critic epoch {epoch}", record_fields=fields
        )
        return in_item_order([record for part in gather_json(records) for record in part], items)
    finally:
        renderer.unload_lora()


def run_critic(config: ZireliaConfig, *, renderer: EvaluationRenderer | None = None) -> CriticResult:
    """Score the saved epochs `[critic] epochs` asks for (retrying rejected images), pick the best one, write
    best.safetensors.

    `renderer` defaults to the trained model family's base pipeline with each epoch's LoRA (`renderer_for`).
    """
    from zirelia_local.training.outputs import epoch_lora_files, train_dir

    run_dir = config.run_dir
    folder = train_dir(config)
    files = epoch_lora_files(folder, config.lora_name)
    if not files:
        raise ZireliaError(
            f"no LoRA files to judge: nothing named {config.lora_name}-<epoch>.safetensors or "
            f"{config.lora_name}.safetensors in {folder}",
            hint="run `zirelia train CONFIG` first (the critic scores the epochs it saves)",
        )
    mode = config.critic.epochs
    epochs = epochs_to_score(files, mode)
    critic = Critic.from_config(config)
    items = evaluation_items(config)
    info(
        f"critic: {'a search among ' if mode == 'search' else ''}{len(epochs)} epoch(s) x {len(items)} evaluation "
        f"image(s), up to {config.critic.max_retries} "
        f"retries each; identity by {critic.embedder.name}"
        + ("" if critic.reference is not None else " (no reference identity)")
        + escape(f", prompt adherence {'by CLIP ' + str(critic.clip.source) if critic.clip.scorer else 'not scored'}")
    )
    renderer = renderer if renderer is not None else renderer_for(config)
    records_of: dict[int, list[dict[str, Any]]] = {}

    def score(epoch: int) -> EpochScore:
        lora = files[epoch]
        key = _epoch_key(config, lora, critic)
        folder_of_epoch = epoch_dir(run_dir, epoch)
        # The main process's answer: every process must take the same path through the epochs.
        records = broadcast_json(_cached_records(folder_of_epoch, key, run_dir) if is_main_process() else None)
        if records is not None:
            info(
                escape(f"epoch {epoch}: already judged with these settings ({folder_of_epoch / RESULTS_NAME}), reused")
            )
        else:
            records = evaluate_epoch(renderer, critic, config, epoch, lora, items)
            if is_main_process():
                atomic_write_json(
                    folder_of_epoch / RESULTS_NAME,
                    {"key": key, "epoch": epoch, "lora": os.path.relpath(lora, run_dir), "attempts": records},
                )
        records_of[epoch] = records
        return summarize_epoch(epoch, records)

    if mode == "search":
        start, basis = search_start(config, sorted(files))
        info(escape(f"epoch search: starting from epochs {start} ({basis})"))
        scored = search_epochs(sorted(files), score, start=start, max_clip_drop=config.critic.max_clip_drop)
    else:
        start, basis, scored = [], "", [score(epoch) for epoch in epochs]
    searched = cost(mode, sorted(files), [row.epoch for row in scored], records_of, len(items), start, basis)
    table = sorted(scored, key=lambda row: row.epoch)
    all_records = [record for row in table for record in records_of[row.epoch]]
    critic_dir = run_dir / CRITIC_DIR
    selection = select_epoch(table, max_clip_drop=config.critic.max_clip_drop)
    if not is_main_process():  # the main process of a launch writes the results
        return CriticResult(selection, table, None, critic_dir / SCORES_NAME, critic_dir / SELECTION_NAME)
    scores_file = write_jsonl(critic_dir / SCORES_NAME, all_records)
    best_file = None
    scale, scale_reason = config.critic.lora_scale, "no epoch was chosen"
    if selection.epoch is not None:
        best_file = run_dir / BEST_NAME
        link_or_copy(files[selection.epoch], best_file)
        chosen = [record for record in all_records if record["epoch"] == selection.epoch]
        scale, scale_reason = chosen_lora_scale(chosen, config.critic.lora_scale)
    selection_file = atomic_write_json(
        critic_dir / SELECTION_NAME,
        {
            **selection.to_record(),
            "lora": os.path.relpath(files[selection.epoch], run_dir) if selection.epoch is not None else None,
            "best": BEST_NAME if best_file is not None else None,
            "lora_scale": scale,
            "lora_scale_reason": scale_reason,
            "table": [row.to_record() for row in table],
            "search": searched,
            "identity": _identity_record(critic),
            "clip": {"source": critic.clip.source, "unavailable_reason": critic.clip.reason},
            "settings": _settings(config),
            "command": invocation(),
        },
    )
    _print_table(table, selection)
    if len(table) < len(files):
        info(
            f"scored {len(table)} of {len(files)} saved epochs ({searched['images']} images drawn; scoring all "
            f"would have drawn about {searched['all_images_estimate']})"
        )
    if selection.basis == "identity":
        info(
            f"[bold]best epoch: {selection.epoch}[/bold] -> {escape(str(best_file))}\n  why: {escape(selection.reason)}"
        )
    else:
        warn(escape(f"best.safetensors is epoch {selection.epoch} by default: {selection.reason}"))
    return CriticResult(selection, table, best_file, scores_file, selection_file)


def _identity_record(critic: Critic) -> dict[str, Any]:
    if critic.reference is None:
        return {"embedder": critic.embedder.name, "reference": None, "missing": critic.reference_missing_reason}
    return {
        "embedder": critic.embedder.name,
        "reference": {"source": critic.reference.source, "count": critic.reference.count},
        "threshold": critic.threshold,
    }


def _print_table(table: list[EpochScore], selection: Selection) -> None:
    from rich.table import Table

    def show(value: float | None) -> str:
        return "-" if value is None else f"{value:.3f}"

    view = Table(title="critic: scores per epoch (first attempts)", title_justify="left")
    for column in ("epoch", "faces", "identity", "CLIP", "accepted 1st", "accepted", ""):
        view.add_column(column)
    for row in table:
        mark = "best" if row.epoch == selection.epoch else selection.excluded.get(row.epoch, "")[:40]
        view.add_row(
            str(row.epoch),
            f"{row.faces}/{row.images}",
            show(row.identity),
            show(row.clip),
            f"{row.accepted_first_try}/{row.images}",
            f"{row.accepted}/{row.images}",
            mark,
        )
    console.print(view)
