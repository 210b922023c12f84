"""Contact sheets: a grid of thumbnails with a label under each and a green (ok) or red (rejected) frame.

Used by curation (kept vs rejected training images, with their identity distance) and by the critic's
report (evaluation images per epoch). One PNG, written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.files import atomic_write_bytes, png_bytes
from zirelia_local.common.images import ImageRefused, open_image
from zirelia_local.common.paths import printable

OK_COLOUR = (46, 160, 67)
REJECTED_COLOUR = (207, 34, 46)
BACKGROUND = (250, 250, 250)
TEXT_COLOUR = (20, 20, 20)
FRAME = 4
PADDING = 6
LINE_HEIGHT = 14


@dataclass(frozen=True)
class SheetItem:
    """One cell: the image, its label (one line, or several separated by newlines) and whether it passed. `box` (left, top, right, bottom, in pixels of
    the original image) is drawn on the thumbnail when given, e.g. the detected face."""

    path: Path
    label: str
    ok: bool
    box: tuple[int, int, int, int] | None = None


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # scalable default font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError):
        return ImageFont.load_default()


def _fit_text(draw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _thumbnail(item: SheetItem, thumb: int):
    from PIL import Image, ImageDraw

    try:
        image = open_image(item.path)
    except ImageRefused:  # the label says why
        image = Image.new("RGB", (thumb, thumb), (120, 120, 120))
        ImageDraw.Draw(image).text((8, thumb // 2 - 6), "unreadable", fill=(255, 255, 255), font=_font())
        return image
    scale = min(thumb / image.width, thumb / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    small = image.resize(size, Image.BILINEAR)
    if item.box is not None:
        left, top, right, bottom = (round(value * scale) for value in item.box)
        ImageDraw.Draw(small).rectangle((left, top, right, bottom), outline=(255, 214, 0), width=2)
    canvas = Image.new("RGB", (thumb, thumb), BACKGROUND)
    canvas.paste(small, ((thumb - size[0]) // 2, (thumb - size[1]) // 2))
    return canvas


def render_contact_sheet(items: Sequence[SheetItem], *, thumb: int = 160, columns: int = 8, title: str | None = None):
    """The sheet as a PIL image (see `contact_sheet`)."""
    from PIL import Image, ImageDraw

    font = _font()
    columns = max(1, min(columns, len(items) or 1))
    rows = max(1, -(-len(items) // columns))
    cell_w = thumb + 2 * FRAME + PADDING
    lines = max((len(item.label.splitlines()) for item in items), default=1) or 1
    cell_h = thumb + 2 * FRAME + lines * LINE_HEIGHT + PADDING
    header = LINE_HEIGHT + 2 * PADDING if title else 0
    sheet = Image.new("RGB", (PADDING + columns * cell_w, header + PADDING + rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    title = " ".join(printable(title).splitlines()) if title else title  # user text: one line, encodable
    if title:
        draw.text(
            (PADDING, PADDING), _fit_text(draw, title, font, sheet.width - 2 * PADDING), fill=TEXT_COLOUR, font=font
        )
    for index, item in enumerate(items):
        x = PADDING + (index % columns) * cell_w
        y = header + PADDING + (index // columns) * cell_h
        colour = OK_COLOUR if item.ok else REJECTED_COLOUR
        draw.rectangle((x, y, x + thumb + 2 * FRAME - 1, y + thumb + 2 * FRAME - 1), fill=colour)
        sheet.paste(_thumbnail(item, thumb), (x + FRAME, y + FRAME))
        for number, line in enumerate(item.label.splitlines()):
            text = _fit_text(draw, printable(line), font, thumb + 2 * FRAME)
            position = (x, y + thumb + 2 * FRAME + 1 + number * LINE_HEIGHT)
            draw.text(position, text, fill=colour if not item.ok else TEXT_COLOUR, font=font)
    return sheet


def contact_sheet(
    items: Sequence[SheetItem], out_path: Path, *, thumb: int = 160, columns: int = 8, title: str | None = None
) -> Path:
    """Write a grid of `items` (thumbnails `thumb` px, `columns` per row, optional title line) to `out_path`."""
    sheet = render_contact_sheet(items, thumb=thumb, columns=columns, title=title)
    return atomic_write_bytes(out_path, png_bytes(sheet))
