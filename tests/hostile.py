"""Hostile inputs for the tests: image files that are huge, lie about their size or stop half-way, and names
with a newline or bytes that are not UTF-8. All real files, cheap to make: the 400-megapixel PNG is a valid
1-bit image of 20000 x 20000 pixels, written row by row through zlib (about 50 KB on disk, ~0.3 s)."""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
HUGE_SIDE = 20_000  # 400 MP: above Pillow's decompression-bomb limit (179 MP)
#: a file name with a newline, a byte that is not UTF-8 and a terminal escape in it
ODD_NAME = os.fsdecode(b"odd\xff\nname\x1b[31m.png")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bytes(width: int, height: int, idat: bytes, *, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG with the given header and compressed pixel data, whether or not the two agree."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def huge_png(path: Path, side: int = HUGE_SIDE) -> Path:
    """A real, valid black `side` x `side` 1-bit greyscale PNG (every row present), small on disk."""
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    rows_per_block = 1000
    blocks = [compressor.compress(row * rows_per_block) for _ in range(side // rows_per_block)]
    blocks.append(compressor.compress(row * (side % rows_per_block)))
    blocks.append(compressor.flush())
    path.write_bytes(png_bytes(side, side, b"".join(blocks)))
    return path


def lying_png(path: Path, width: int, height: int, rows: int = 1) -> Path:
    """A PNG whose header claims `width` x `height` but whose data holds only `rows` rows."""
    row = b"\x00" * (1 + (width + 7) // 8)
    path.write_bytes(png_bytes(width, height, zlib.compress(row * rows)))
    return path


def truncated_png(path: Path, size: int = 64) -> Path:
    """A real RGB PNG cut off half-way through its pixel data."""
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 64).convert("RGB").save(buffer, format="PNG")
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) // 2])
    return path
