"""The report's figure: per-epoch critic scores and the training loss, drawn with matplotlib (Agg, no display).

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

    ax = axes[0][0]
    ax.set_title("identity similarity (mean of first attempts)")
    if plot(ax, "identity", "no face = 0") | plot(ax, "identity_with_face", "faces only", "s--"):
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
    ax.set_title("training loss")
    losses = [
        (m.get("step"), m.get("loss")) for m in metrics if m.get("loss") is not None and m.get("step") is not None
    ]
    if losses:
        ax.plot([s for s, _ in losses], [v for _, v in losses], "-", linewidth=1)
        ax.set_xlabel("step")
    else:
        empty(ax, "no training metrics (train/metrics.jsonl)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
