"""Render zirelia-local's self-contained HTML pages from the Jinja2 templates in `report/templates/`.

The run report uses this now; the gallery of generated images (`zirelia generate`) will extend the same
`base.html.j2` and call the same `render_page`. A page is one file with nothing outside it: the template inlines
`style.css`, and images go in as data: URIs (`data_uri`, `thumbnail_uri`).

Every `{{ value }}` is HTML-escaped (autoescape), because persona names, descriptions and prompts are user text;
a missing context value is an error (StrictUndefined) rather than an empty string, so a typo in a template
fails the tests instead of silently dropping a section.
"""

from __future__ import annotations

import base64
import io
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from zirelia_local.common.paths import printable

THUMBNAIL_SIDE = 192


def fmt(value: Any, digits: int = 3) -> str:
    """A score for the page: floats with `digits` decimals, None as "-", anything else as `str()` gives it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@cache
def environment() -> Environment:
    """The one Jinja2 environment for all pages (templates are compiled once per process)."""
    env = Environment(
        # PackageLoader reads the templates from the installed package (they ship as package data), so a
        # non-editable install renders the same page as a checkout.
        loader=PackageLoader("zirelia_local.report", "templates"),
        # The templates are named *.html.j2: select_autoescape matches the last suffix, so "j2" must be listed;
        # default=True escapes anything else too (an included .css holds no {{ }} and is unaffected).
        autoescape=select_autoescape(enabled_extensions=("html", "j2"), default_for_string=True, default=True),
        undefined=StrictUndefined,
        # Block tags on their own line leave no blank line behind: the page source stays readable.
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["fmt"] = fmt
    return env


def render_page(template: str, **context: Any) -> str:
    """Render `template` (a name in report/templates/, e.g. "report.html.j2") with `context`; return the HTML.

    A file name that is not UTF-8 (an imported photo's, the config's) shows its odd bytes as `\\xNN`, so the
    page can always be written as UTF-8.
    """
    return printable(environment().get_template(template).render(**context))


def data_uri(data: bytes, mime: str) -> str:
    """`data` as a data: URI, so that an image is part of the page and not a file beside it."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail_uri(path: Path, side: int = THUMBNAIL_SIDE) -> str | None:
    """A small JPEG of an image file as a data URI, or None when it is missing or unreadable.

    Images no larger than `side` are kept as PNG, unscaled: the test models draw 64 px images, and JPEG would
    blur what little there is to see.
    """
    from zirelia_local.common.images import ImageRefused, open_image  # Pillow only when a page has images

    try:
        image = open_image(path)
    except ImageRefused:
        return None
    buffer = io.BytesIO()
    if max(image.size) <= side:
        image.save(buffer, format="PNG")
        return data_uri(buffer.getvalue(), "image/png")
    image.thumbnail((side, side))
    image.save(buffer, format="JPEG", quality=85)
    return data_uri(buffer.getvalue(), "image/jpeg")
