"""`zirelia report CONFIG`: one self-contained HTML page about the run, `<run_dir>/report/index.html`.

It reads only files the stages wrote (so it can be rerun at any time, on a finished run or half of one) and
says plainly which stage has not run yet. Every image is embedded (base64 PNG/JPEG thumbnails), the page has
no script, no external style sheet and no URL outside itself, so it can be mailed or archived as one file;
links to the full-size evaluation images point into the run directory beside it. Sections: summary, dataset
contact sheet and curation, training loss, per-epoch critic scores (matplotlib curves), the evaluation grid of
every epoch (each attempt's image, verdict, scores, reasons, retry adjustments), the chosen epoch and why,
and the commands and config that produced the run.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.files import atomic_write_bytes, atomic_write_text, read_json_object, read_jsonl
from zirelia_local.common.security import redact, redact_toml

REPORT_DIR = "report"
REPORT_NAME = "index.html"
CURVES_NAME = "curves.png"
CONTACT_SHEET = "contact_sheet.png"
CURATION_LOG = "curation.jsonl"
TRAIN_METRICS = "train/metrics.jsonl"
THUMBNAIL_SIDE = 192
MAX_CURATION_ROWS = 300
MAX_COMMAND_FILE = 20_000

_STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px auto;max-width:1200px;
color:#1d1f23;background:#fff;padding:0 16px;line-height:1.45}
h1{font-size:1.7em;margin-bottom:4px} h2{border-bottom:2px solid #e3e5e8;padding-bottom:4px;margin-top:36px}
.muted{color:#6b7078} .note{background:#f4f6f8;border-left:4px solid #9aa3ad;padding:8px 12px;margin:12px 0}
.bad{border-left-color:#c0392b;background:#fdf1ef} .good{border-left-color:#2e8b57;background:#eff8f2}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em} th,td{border:1px solid #dde1e5;padding:4px 8px;
text-align:left;vertical-align:top} th{background:#f4f6f8}
.grid td{width:210px} .grid img{width:192px;height:auto;display:block;image-rendering:pixelated;
border:4px solid #c0392b;border-radius:3px} .grid img.ok{border-color:#2e8b57}
.tag{display:inline-block;padding:1px 6px;border-radius:3px;font-size:0.85em;color:#fff;background:#c0392b}
.tag.ok{background:#2e8b57} .tag.na{background:#7f8c8d}
.small{font-size:0.82em} ul.tight{margin:2px 0;padding-left:18px}
pre{background:#f4f6f8;padding:10px;overflow-x:auto;font-size:0.85em;white-space:pre-wrap}
img.figure{max-width:100%;height:auto;border:1px solid #dde1e5}
details>summary{cursor:pointer;font-weight:600;margin:10px 0}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _thumbnail_uri(path: Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small JPEG of an image file as a data URI (images smaller than `side` are kept as PNG, unscaled)."""
    from PIL import Image

    try:
        with Image.open(path) as opened:
            image = opened.convert("RGB")
    except (OSError, ValueError):
        return None
    buffer = io.BytesIO()
    if max(image.size) <= side:
        image.save(buffer, format="PNG")
        return _data_uri(buffer.getvalue(), "image/png")
    image.thumbnail((side, side))
    image.save(buffer, format="JPEG", quality=85)
    return _data_uri(buffer.getvalue(), "image/jpeg")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return list(read_jsonl(path)) if path.is_file() else []


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --- figures ---------------------------------------------------------------------------------------------


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


# --- sections ------------------------------------------------------------------------------------------


def _summary(config: ZireliaConfig, selection: dict[str, Any] | None, run_dir: Path) -> str:
    if selection is None:
        return '<div class="note">The critic has not run yet: no epoch has been chosen (`zirelia critic CONFIG`).</div>'
    epoch = selection.get("epoch")
    table = selection.get("table", [])
    accepted = sum(row.get("accepted", 0) for row in table)
    images = sum(row.get("images", 0) for row in table)
    chosen_by_scores = selection.get("basis") == "identity"
    css = "good" if chosen_by_scores and accepted else "bad"
    best = run_dir / "best.safetensors"
    lines = [
        f'<div class="note {css}">',
        f"<b>Chosen epoch: {_e(epoch)}</b> ({_e(selection.get('lora'))}"
        + (f" &rarr; {_e(best.name)}" if best.is_file() else "")
        + ")<br>",
        f"<b>Why:</b> {_e(selection.get('reason'))}",
    ]
    if chosen_by_scores:
        lines.append(
            f"<br>The critic accepted <b>{accepted} of {images}</b> evaluation images (all epochs, after retries)."
        )
    else:
        lines.append(
            "<br><b>The critic could not confirm the persona in any image</b>; see the evaluation grids below "
            "for each image's reasons."
        )
    lines.append("</div>")
    return "\n".join(lines)


def _dataset_section(run_dir: Path) -> str:
    parts = ["<h2 id='dataset'>Dataset and curation</h2>"]
    sheet = run_dir / CONTACT_SHEET
    if sheet.is_file():
        parts.append(
            # Record mode keeps red-framed images too: the frame is the identity verdict, the label the decision.
            f'<p class="muted">{CONTACT_SHEET}: framed green when the image passes curation (one face, the '
            "persona's identity), red when it does not; the label under each image says whether it was kept.</p>"
            f'<img class="figure" alt="dataset contact sheet" src="{_data_uri(sheet.read_bytes(), "image/png")}">'
        )
    else:
        parts.append(f'<div class="note">Curation has not run: there is no {CONTACT_SHEET} in the run directory.</div>')
    records = _read_jsonl(run_dir / CURATION_LOG)
    if not records:
        parts.append(f'<p class="muted">No {CURATION_LOG}: no curation decisions to show.</p>')
        return "\n".join(parts)
    kept = [r for r in records if r.get("kept")]
    rejected = [r for r in records if not r.get("kept")]
    reasons: dict[str, int] = defaultdict(int)
    for record in rejected:
        reasons[str(record.get("reason") or "no reason recorded")] += 1
    parts.append(f"<p><b>{len(kept)}</b> kept, <b>{len(rejected)}</b> rejected of {len(records)} images.</p>")
    if reasons:
        parts.append("<table><tr><th>rejection reason</th><th>images</th></tr>")
        parts += [f"<tr><td>{_e(k)}</td><td>{v}</td></tr>" for k, v in sorted(reasons.items(), key=lambda i: -i[1])]
        parts.append("</table>")
    parts.append("<details><summary>every curation decision</summary><table>")
    parts.append("<tr><th>file</th><th>kept</th><th>reason</th><th>distance</th></tr>")
    for record in records[:MAX_CURATION_ROWS]:
        parts.append(
            f"<tr><td>{_e(record.get('file'))}</td><td>{'yes' if record.get('kept') else 'no'}</td>"
            f"<td>{_e(record.get('reason') or '')}</td><td>{_e(_fmt(record.get('distance')))}</td></tr>"
        )
    parts.append("</table>")
    if len(records) > MAX_CURATION_ROWS:
        parts.append(f'<p class="muted">... and {len(records) - MAX_CURATION_ROWS} more in {CURATION_LOG}.</p>')
    parts.append("</details>")
    return "\n".join(parts)


def _training_section(metrics: list[dict[str, Any]]) -> str:
    parts = ["<h2 id='training'>Training</h2>"]
    if not metrics:
        parts.append(f'<div class="note">No {TRAIN_METRICS}: training has not run or logged no metrics.</div>')
        return "\n".join(parts)
    # metrics.jsonl also holds event lines (cache use, epoch ends): count the step lines only
    steps = [m for m in metrics if m.get("step") is not None and "event" not in m]
    losses = [m for m in steps if m.get("loss") is not None]
    last = losses[-1] if losses else metrics[-1]
    epochs = sorted({m.get("epoch") for m in metrics if m.get("epoch") is not None})
    parts.append(
        f"<p>{len(steps)} logged steps, epochs {_e(epochs[0] if epochs else '-')}..{_e(epochs[-1] if epochs else '-')};"
        f" last loss {_e(_fmt(last.get('loss'), 4))} at step {_e(last.get('step'))}. The loss curve is in the "
        "figure below.</p>"
    )
    return "\n".join(parts)


def _scores_section(selection: dict[str, Any] | None, curves: str) -> str:
    parts = ["<h2 id='scores'>Critic scores per epoch</h2>"]
    parts.append(f'<img class="figure" alt="per-epoch score curves" src="{curves}">')
    if selection is None:
        return "\n".join(parts)
    identity = selection.get("identity") or {}
    clip = selection.get("clip") or {}
    parts.append(
        "<p class='small'>Identity: "
        + _e(
            f"{identity.get('embedder')} embedder, reference from {identity['reference'].get('source')} "
            f"({identity['reference'].get('count')} faces), same-person threshold {identity.get('threshold')}"
            if identity.get("reference")
            else f"{identity.get('embedder')} embedder; {identity.get('missing')}"
        )
        + "<br>Prompt adherence: "
        + _e(clip.get("source") or f"not scored: {clip.get('unavailable_reason')}")
        + "</p>"
    )
    excluded = selection.get("excluded") or {}
    parts.append(
        "<table><tr><th>epoch</th><th>faces (1st tries)</th><th>identity (no face = 0)</th><th>identity (faces)"
        "</th><th>CLIP</th><th>accepted 1st try</th><th>accepted after retries</th><th>attempts</th><th></th></tr>"
    )
    for row in selection.get("table", []):
        epoch = row["epoch"]
        note = "chosen" if epoch == selection.get("epoch") else excluded.get(str(epoch), "")
        parts.append(
            f"<tr><td>{epoch}</td><td>{row['faces']}/{row['images']}</td><td>{_fmt(row['identity'])}</td>"
            f"<td>{_fmt(row['identity_with_face'])}</td><td>{_fmt(row['clip'])}</td>"
            f"<td>{row['accepted_first_try']}/{row['images']}</td><td>{row['accepted']}/{row['images']}</td>"
            f"<td>{row['attempts']}</td><td>{_e(note)}</td></tr>"
        )
    parts.append("</table>")
    parts.append(f"<h3>Chosen epoch: {_e(selection.get('epoch'))}</h3><p>{_e(selection.get('reason'))}</p>")
    return "\n".join(parts)


def _cell(record: dict[str, Any], run_dir: Path, report_dir: Path) -> str:
    accepted = bool(record.get("accepted"))
    image_path = run_dir / record["image"]
    uri = _thumbnail_uri(image_path)
    link = os.path.relpath(image_path, report_dir)
    scores = record.get("scores") or {}
    image = (
        f'<a href="{_e(link)}"><img class="{"ok" if accepted else ""}" alt="{_e(record["image"])}" src="{uri}"></a>'
        if uri
        else f'<p class="muted">image missing: {_e(record["image"])}</p>'
    )
    facts = [
        f"faces {scores.get('faces', '-')}",
        f"distance {_fmt(scores.get('identity_distance'))}",
        f"similarity {_fmt(scores.get('identity_similarity'))}",
        f"CLIP {_fmt(scores.get('clip_score'))}",
        f"sharpness {_fmt(scores.get('sharpness'), 1)}",
        f"brightness {_fmt(scores.get('brightness'))}",
        f"face {_fmt(scores.get('face_size'))} px",
    ]
    reasons = "".join(f"<li>{_e(reason)}</li>" for reason in record.get("reasons", []))
    if accepted:  # every check passed: the list is long and the same each time, so it starts folded
        reasons = f"<details><summary class='small'>checks</summary><ul class='tight'>{reasons}</ul></details>"
    else:
        reasons = f'<ul class="tight">{reasons}</ul>'
    adjustments = "".join(f"<li>{_e(change)}</li>" for change in record.get("adjustments", []))
    return (
        f"<td>{image}"
        f'<span class="tag {"ok" if accepted else ""}">{_e(record.get("verdict"))}</span>'
        f'<div class="small">try {record["attempt"]}, seed {record["attempt_seed"]}, scale {_fmt(record["lora_scale"], 2)}'
        f"<br>{_e(' | '.join(facts))}"
        f"{reasons}"
        + (f'<b>adjusted:</b><ul class="tight">{adjustments}</ul>' if adjustments else "")
        + f"<i>{_e(record.get('outcome', ''))}</i></div></td>"
    )


def _grids_section(
    records: list[dict[str, Any]], selection: dict[str, Any] | None, run_dir: Path, report_dir: Path
) -> str:
    parts = ["<h2 id='grids'>Evaluation images per epoch</h2>"]
    if not records:
        parts.append('<div class="note">No critic/scores.jsonl: the critic has not run.</div>')
        return "\n".join(parts)
    parts.append(
        "<p class='muted'>Rows: evaluation prompt and seed (the same in every epoch). Columns: the first try, then "
        "each retry with its adjusted prompt. Green frame: accepted; red: rejected (reasons listed).</p>"
    )
    by_epoch: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        by_epoch[record["epoch"]].append(record)
    chosen = selection.get("epoch") if selection else None
    for epoch in sorted(by_epoch):
        attempts = by_epoch[epoch]
        items: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in attempts:
            items[record["item"]].append(record)
        columns = max(record["attempt"] for record in attempts) + 1
        accepted = sum(1 for group in items.values() if any(r["accepted"] for r in group))
        title = f"epoch {epoch}{' (chosen)' if epoch == chosen else ''}: {accepted}/{len(items)} accepted"
        parts.append(f"<details{' open' if epoch == chosen else ''}><summary>{_e(title)}</summary>")
        parts.append(
            f'<p class="small muted">LoRA: {_e(attempts[0].get("lora"))}</p><table class="grid"><tr><th>prompt</th>'
        )
        parts += [f"<th>{'first try' if n == 0 else f'retry {n}'}</th>" for n in range(columns)]
        parts.append("</tr>")
        for key in sorted(items):
            group = sorted(items[key], key=lambda r: r["attempt"])
            first = group[0]
            parts.append(
                f"<tr><td class='small'><b>{_e(first['scene'])}</b><br>seed {first['seed']}"
                f"<br><span class='muted'>{_e(first['prompt'])}</span></td>"
            )
            by_number = {record["attempt"]: record for record in group}
            for number in range(columns):
                record = by_number.get(number)
                if record is None:
                    parts.append("<td></td>")
                    continue
                cell = _cell(record, run_dir, report_dir)
                if number > 0:
                    cell = cell.replace("<td>", f"<td title='{_e(record['adjusted_prompt'])}'>", 1)
                parts.append(cell)
            parts.append("</tr>")
        parts.append("</table></details>")
    return "\n".join(parts)


def _command_files(run_dir: Path) -> list[tuple[str, str]]:
    found = []
    train = run_dir / "train"
    if train.is_dir():
        for path in sorted(train.iterdir()):
            if "command" in path.name and path.suffix in (".txt", ".sh", ".json", ".toml") and path.is_file():
                text = path.read_text(encoding="utf-8", errors="replace")[:MAX_COMMAND_FILE]
                found.append((f"train/{path.name}", redact(text)))
    return found


def _commands_section(config: ZireliaConfig, selection: dict[str, Any] | None, run_dir: Path) -> str:
    parts = ["<h2 id='commands'>Commands and config</h2>"]
    source = config.source if config.source is not None else run_dir / "config.toml"
    reproduce = [
        f"python -m zirelia_local.train {source} --run-dir {run_dir}",
        "# or stage by stage:",
        *[
            f"zirelia {stage} {source} --run-dir {run_dir}"
            for stage in ("dataset", "curate", "train", "critic", "report")
        ],
    ]
    if selection and selection.get("command"):
        parts.append(f"<p>The critic (and the epoch choice) ran as:</p><pre>{_e(selection['command'])}</pre>")
    parts.append(f"<p>To reproduce this run:</p><pre>{_e(chr(10).join(reproduce))}</pre>")
    for name, text in _command_files(run_dir):
        parts.append(f"<p>Training command ({_e(name)}):</p><pre>{_e(text)}</pre>")
    if selection and selection.get("settings"):
        settings = json.dumps(selection["settings"], indent=2, ensure_ascii=False)
        parts.append(f"<p>Evaluation settings:</p><pre>{_e(settings)}</pre>")
    snapshot = run_dir / "config.toml"
    if snapshot.is_file():
        text = redact_toml(snapshot.read_text(encoding="utf-8"))
        parts.append(f"<p>The config ({_e(snapshot.name)}, as saved in the run directory, tokens redacted):</p>")
    else:
        import tomli_w

        text = redact_toml(tomli_w.dumps(config.model_dump(mode="json", exclude_none=True)))
        parts.append("<p>The config (no snapshot in the run directory; the loaded values):</p>")
    parts.append(f"<pre>{_e(text)}</pre>")
    return "\n".join(parts)


# --- the page -------------------------------------------------------------------------------------------


def build_report_html(config: ZireliaConfig, report_dir: Path) -> tuple[str, bytes]:
    """The page and its curves PNG, from the files in the run directory."""
    from zirelia_local.critic.stage import CRITIC_DIR, SCORES_NAME, SELECTION_NAME

    run_dir = config.run_dir
    selection = read_json_object(run_dir / CRITIC_DIR / SELECTION_NAME)
    records = _read_jsonl(run_dir / CRITIC_DIR / SCORES_NAME)
    metrics = _read_jsonl(run_dir / TRAIN_METRICS)
    table = (selection or {}).get("table", [])
    curves = curves_png(table, (selection or {}).get("epoch"), metrics)
    persona = config.persona
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        f"<h1>{_e(persona.name)} <span class='muted'>({_e(persona.trigger_word)})</span></h1>",
        f"<p class='muted'>zirelia-local run report &middot; run directory {_e(run_dir)} &middot; written {written}</p>",
        f"<p>{_e(persona.description)}</p>",
        _summary(config, selection, run_dir),
        "<p class='small'>Sections: <a href='#dataset'>dataset</a> &middot; <a href='#training'>training</a> &middot; "
        "<a href='#scores'>critic scores</a> &middot; <a href='#grids'>evaluation images</a> &middot; "
        "<a href='#commands'>commands and config</a></p>",
        _dataset_section(run_dir),
        _training_section(metrics),
        _scores_section(selection, _data_uri(curves, "image/png")),
        _grids_section(records, selection, run_dir, report_dir),
        _commands_section(config, selection, run_dir),
    ]
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(persona.name)}: zirelia-local "
        f"report</title><style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
    return page, curves


def write_report(config: ZireliaConfig) -> Path:
    """Write `<run_dir>/report/index.html` (self-contained) and `curves.png` beside it; return the page's path."""
    report_dir = config.run_dir / REPORT_DIR
    page, curves = build_report_html(config, report_dir)
    atomic_write_bytes(report_dir / CURVES_NAME, curves)
    return atomic_write_text(report_dir / REPORT_NAME, page)
