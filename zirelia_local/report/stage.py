"""`zirelia report CONFIG`: one self-contained HTML page about the run, `<run_dir>/report/index.html`.

It reads only files the stages wrote (so it can be rerun at any time, on a finished run or half of one) and
says plainly which stage has not run yet. Every image is embedded (base64 PNG/JPEG thumbnails), the page has
no script, no external style sheet and no URL outside itself, so it can be mailed or archived as one file;
links to the full-size evaluation images point into the run directory beside it. Sections: summary, dataset
(the anchor portrait of an identity-anchored set, identity cohesion, contact sheet and curation), training
loss, per-epoch critic scores (matplotlib curves), the evaluation grid of every epoch (each attempt's image,
verdict, scores, reasons, retry adjustments), the chosen epoch and why, and the commands and config that
produced the run.

The modules beside this one split the work: `sections` (and `identity`) read the run directory into plain data, `plots` draws
the curves, `render` fills `templates/report.html.j2` (which extends `base.html.j2`, the layout shared with
later pages) with Jinja2 autoescaping, so user text (persona, prompts) can never become markup.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import atomic_write_bytes, atomic_write_text, read_json_object
from zirelia_local.common.manifest import MANIFEST_NAME
from zirelia_local.critic.stage import CRITIC_DIR, SCORES_NAME, SELECTION_NAME
from zirelia_local.report import identity, sections
from zirelia_local.report.plots import curves_png
from zirelia_local.report.render import data_uri, render_page

REPORT_DIR = "report"
REPORT_NAME = "index.html"
CURVES_NAME = "curves.png"
TEMPLATE = "report.html.j2"


def build_report_html(config: ZireliaConfig, report_dir: Path, *, now: datetime | None = None) -> tuple[str, bytes]:
    """The page and its curves PNG, from the files in the run directory.

    `now` is the time the page says it was written (default: the current time, UTC); apart from it the page
    depends only on the run directory, so two builds with the same `now` are byte for byte the same.
    """
    run_dir = config.run_dir
    selection = read_json_object(run_dir / CRITIC_DIR / SELECTION_NAME)
    records = sections.read_jsonl_if_present(run_dir / CRITIC_DIR / SCORES_NAME)
    metrics = sections.read_jsonl_if_present(run_dir / sections.TRAIN_METRICS)
    table = (selection or {}).get("table", [])
    curves = curves_png(table, (selection or {}).get("epoch"), metrics)
    persona = config.persona
    page = render_page(
        TEMPLATE,
        persona={"name": persona.name, "trigger_word": persona.trigger_word, "description": persona.description},
        run_dir=str(run_dir),
        written=(now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        summary=sections.summary(selection, run_dir),
        dataset=sections.dataset(run_dir),
        anchor=identity.anchor(run_dir),
        cohesion=identity.cohesion(run_dir),
        training=sections.training(metrics),
        preflight=sections.preflight(run_dir),
        curves=data_uri(curves, "image/png"),
        scores=sections.scores(selection),
        grids=sections.grids(records, selection, run_dir, report_dir),
        commands=sections.commands(config, selection, run_dir),
    )
    return page, curves


def write_report(config: ZireliaConfig) -> Path:
    """Write `<run_dir>/report/index.html` (self-contained) and `curves.png` beside it; return the page's path."""
    if not any((config.run_dir / name).exists() for name in (MANIFEST_NAME, sections.TRAIN_METRICS, CRITIC_DIR)):
        raise ZireliaError(
            f"nothing to report in {config.run_dir}: no stage has run there (no {MANIFEST_NAME}, training "
            "metrics or critic results)",
            hint="run the job first: `python -m zirelia_local.train CONFIG` (or `zirelia dataset CONFIG` and the "
            "stages after it); check --run-dir if the run is elsewhere",
        )
    report_dir = config.run_dir / REPORT_DIR
    page, curves = build_report_html(config, report_dir)
    atomic_write_bytes(report_dir / CURVES_NAME, curves)
    return atomic_write_text(report_dir / REPORT_NAME, page)
