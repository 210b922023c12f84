"""Console messages of the training stage, as plain text.

Our messages name config sections (`[train] vram`), which rich would read as markup tags and drop.
"""

from __future__ import annotations

from rich.markup import escape

from zirelia_local.common import console


def info(message: str) -> None:
    console.info(escape(message))


def warn(message: str) -> None:
    console.warn(escape(message))
