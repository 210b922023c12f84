"""The gallery, `<out>/index.html`: one self-contained page in the report's house style (it extends the
report's `base.html.j2` and renders through its `render_page`): accepted images first, then the requested images
that could not be accepted, each attempt with its verdict, reasons and retry adjustments.

Everything on it comes from the request's attempt records, so a rerun that draws nothing writes the same page.
A rejected image that was not kept is shown from the small thumbnail its record carries.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.files import atomic_write_text
from zirelia_local.generate.prompts import GenerationItem
from zirelia_local.generate.store import GALLERY_NAME
from zirelia_local.report.render import data_uri, render_page, thumbnail_uri

TEMPLATE = "gallery.html.j2"
THUMBNAIL_SIDE = 256
#: why hands are not judged (docs/critic.md#hands says more)
HANDS_NOTE = (
    "Hands are not judged: no hand model runs offline from a package registry here (current mediapipe wheels hold "
    "no hand model, and the older ones that do need numpy < 2). Look at the hands yourself."
)


def image_thumbnail_uri(image: Any, side: int = THUMBNAIL_SIDE) -> str:
    """A small copy of an image in memory as a data URI (PNG when already small, as the report keeps it)."""
    image = image.convert("RGB")
    buffer = io.BytesIO()
    if max(image.size) <= side:
        image.save(buffer, format="PNG")
        return data_uri(buffer.getvalue(), "image/png")
    image = image.copy()
    image.thumbnail((side, side))
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")


def _cell(out: Path, record: dict[str, Any], said: set[str]) -> dict[str, Any]:
    image = record.get("image")
    thumbnail = thumbnail_uri(out / image, THUMBNAIL_SIDE) if image else record.get("thumbnail")
    return {
        **record,
        # what could not be judged is said once at the top, not in every cell
        "reasons": [reason for reason in record["reasons"] if reason not in said],
        "thumbnail": thumbnail,
        "link": image if image and (out / image).is_file() else None,
        "alt": image or f"{record['item']} try {record['attempt']} (not kept)",
    }


def unavailable_checks(records: Sequence[dict[str, Any]]) -> dict[str, str]:
    """Check name -> why it could not be made, from the records themselves (never guessed)."""
    found: dict[str, str] = {}
    for record in records:
        for check in record.get("checks", []):
            if check["status"] == "unavailable" and check["name"] not in found:
                found[check["name"]] = check["reason"]
    return found


def notes(unavailable: dict[str, str], *, has_identity: bool) -> list[str]:
    """What was not judged, said once at the top of the page: identity, prompt adherence, hands."""
    lines = []
    if not has_identity:
        lines.append(
            "Identity is not judged: the run has no identity.safetensors (curation in record mode found no face "
            "to build it from), so no face can be compared with the persona's. An image that passes every other "
            "check is accepted and marked 'identity not judged'."
        )
    if "prompt_adherence" in unavailable:
        lines.append(
            f"Prompt adherence is not judged: {unavailable['prompt_adherence'].removeprefix('prompt adherence not scored: ')}."
        )
    return [*lines, HANDS_NOTE]


def write_gallery(
    out: Path,
    config: ZireliaConfig,
    items: Sequence[GenerationItem],
    records: dict[str, list[dict[str, Any]]],
    *,
    settings: dict[str, Any],
    summary: dict[str, Any],
    command: str,
    keep_rejected: bool,
    now: datetime | None = None,
) -> Path:
    """Write `<out>/index.html` for the request's items and their attempt records; return its path."""
    unavailable = unavailable_checks([record for attempts in records.values() for record in attempts])
    said = set(unavailable.values())
    accepted, failures = [], []
    for item in items:
        attempts = records.get(item.key, [])
        final = next((record for record in attempts if record["accepted"]), None)
        if final is not None:
            accepted.append(_cell(out, final, said))
        elif attempts:
            failures.append(
                {
                    "scene": item.scene,
                    "seed": item.seed,
                    "outcome": attempts[-1]["outcome"],
                    "cells": [_cell(out, record, said) for record in attempts],
                }
            )
    persona = config.persona
    page = render_page(
        TEMPLATE,
        persona={"name": persona.name, "trigger_word": persona.trigger_word},
        out_dir=str(out),
        written=(now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC"),
        summary=summary,
        notes=notes(unavailable, has_identity=settings.get("identity_sha256") is not None),
        settings=settings,
        accepted=accepted,
        failures=failures,
        keep_rejected=keep_rejected,
        command=command,
    )
    return atomic_write_text(out / GALLERY_NAME, page)
