"""The report's figure: per-epoch critic scores, and the training loss with the live identity curve beside it
(the sample images judged while training ran, on a second axis), drawn with matplotlib (Agg, no display).

`curves_png` returns PNG bytes; the report writes them beside the page (`curves.png`) and inlines them into it.
"""

from __future__ import annotations

import io
from typing import Any


def curves_png(table: list[dict[str, Any]], chosen: int | None, metrics: list[dict[str, Any]]) -> bytes:
    """Per-epoch identity / CLIP / acceptance curves and the training loss, as one PNG (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 7), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(2, 2)
    epochs = [row["epoch"] for row in table]

    def plot(ax: Any, key: str, label: str, style: str = "o-") -> bool:
        points = [(row["epoch"], row[key]) for row in table if row.get(key) is not None]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], style, label=label)
        return bool(points)

    def mark_chosen(ax: Any) -> None:
        if chosen is not None:
            ax.axvline(chosen, color="#2e8b57", linestyle="--", linewidth=1.2, label=f"chosen: epoch {chosen}")

    def empty(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#6b7078", wrap=True)

    live = live_points(metrics)
    ax = axes[0][0]
    ax.set_title("identity similarity (mean of first attempts)")
    if plot(ax, "identity", "critic, no face = 0") | plot(ax, "identity_with_face", "critic, faces only", "s--"):
        if live:
            ax.plot([p[0] for p in live], [p[2] for p in live], ":", color="#8e44ad", label="live (sample images)")
        mark_chosen(ax)
        ax.legend(fontsize=8)
    else:
        empty(ax, "no identity evidence\n(no face found, or no reference identity)")
    ax = axes[0][1]
    ax.set_title("prompt adherence (mean CLIP score)")
    if plot(ax, "clip", "CLIP image-text cosine"):
        mark_chosen(ax)
        ax.legend(fontsize=8)
    else:
        empty(ax, "not scored (no CLIP weights configured)")
    ax = axes[1][0]
    ax.set_title("accepted images")
    if table:
        images = [max(row["images"], 1) for row in table]
        ax.plot(
            epochs,
            [row["accepted_first_try"] / n for row, n in zip(table, images, strict=True)],
            "o-",
            label="first try",
        )
        ax.plot(
            epochs, [row["accepted"] / n for row, n in zip(table, images, strict=True)], "s--", label="after retries"
        )
        ax.set_ylim(-0.05, 1.05)
        mark_chosen(ax)
        ax.legend(fontsize=8)
    else:
        empty(ax, "the critic has not run")
    for ax in (axes[0][0], axes[0][1], axes[1][0]):
        ax.set_xlabel("epoch")
        if epochs:
            ax.set_xticks(epochs)
    ax = axes[1][1]
    ax.set_title("training loss and live identity")
    losses = [(m["step"], _loss(m)) for m in metrics if _loss(m) is not None and m.get("step") is not None]
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], "-", linewidth=1, color="#1f77b4", label="loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss", color="#1f77b4")
        live_axis(ax, metrics, live)
    else:
        empty(ax, "no training metrics (train/metrics.jsonl)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _loss(record: dict[str, Any]) -> float | None:
    # The diffusers backend logs each step's "loss", sd-scripts' bar its running "avr_loss".
    if "event" in record:
        return None
    value = record.get("loss", record.get("avr_loss"))
    return value if isinstance(value, (int, float)) else None


def epoch_end_steps(metrics: list[dict[str, Any]]) -> dict[int, int]:
    """epoch -> the last step logged in it."""
    ends: dict[int, int] = {}
    for record in metrics:
        epoch, step = record.get("epoch"), record.get("step")
        if "event" not in record and isinstance(epoch, int) and isinstance(step, int):
            ends[epoch] = max(step, ends.get(epoch, step))
    return ends


def live_points(metrics: list[dict[str, Any]]) -> list[tuple[int, int | None, float]]:
    """(epoch, its last step, identity) of the live curve's epochs that had a face, newest record per epoch."""
    ends = epoch_end_steps(metrics)
    by_epoch = {m["epoch"]: m for m in metrics if m.get("event") == "identity" and isinstance(m.get("epoch"), int)}
    return [
        (epoch, ends.get(epoch), by_epoch[epoch]["identity"])
        for epoch in sorted(by_epoch)
        if by_epoch[epoch].get("identity") is not None
    ]


def live_axis(ax: Any, metrics: list[dict[str, Any]], live: list[tuple[int, int | None, float]]) -> None:
    """The live identity on a second y axis of the loss plot (at each epoch's last step), and the early stop."""
    judged = [m for m in metrics if m.get("event") == "identity"]
    stop = next((m for m in reversed(metrics) if m.get("event") == "early_stop"), None)
    handles, labels = ax.get_legend_handles_labels()
    if live and any(step is not None for _, step, _ in live):
        twin = ax.twinx()
        points = [(step, value, epoch) for epoch, step, value in live if step is not None]
        (line,) = twin.plot([p[0] for p in points], [p[1] for p in points], "o-", color="#8e44ad", markersize=4)
        for step, value, epoch in points:
            twin.annotate(str(epoch), (step, value), textcoords="offset points", xytext=(0, 5), fontsize=7, ha="center")
        twin.set_ylabel("identity similarity (sample images)", color="#8e44ad")
        handles.append(line)
        labels.append("live identity, by epoch")
    elif judged:
        ax.text(
            0.02,
            0.04,
            f"live curve: no face in the samples of {len(judged)} epoch(s)",
            ha="left",
            va="bottom",
            transform=ax.transAxes,
            color="#8e44ad",
            fontsize=8,
        )
    if stop is not None and epoch_end_steps(metrics).get(stop.get("epoch")) is not None:
        line = ax.axvline(epoch_end_steps(metrics)[stop["epoch"]], color="#c0392b", linestyle="--", linewidth=1.2)
        handles.append(line)
        labels.append(f"early stop after epoch {stop['epoch']}")
    ax.legend(handles, labels, fontsize=8, loc="upper right")
