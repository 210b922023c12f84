"""Paths the user hands us: how to show one in a message, and what is wrong with one before it is used.

A path on Linux is bytes. Python reads a name that is not UTF-8 into a str with "surrogate escapes", which
cannot be written as UTF-8 (a message, a JSON record, the HTML report), and a name may hold a newline or a
terminal escape. `display_path` and `printable` turn both into plain text; `path_problem` says, in a few
words, why a path is not the file or folder a command expects, so the error can be raised where the path
enters instead of as an OSError deep inside a stage.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal

Kind = Literal["file", "folder"]


def printable(text: str) -> str:
    """`text` with undecodable bytes of a file name (surrogate escapes) as `\\xNN`, so it can be written as
    UTF-8; every other character unchanged."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        pass
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes os.fsencode would give
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (e.g. from a JSON \ud800)
        raw = text.encode("utf-8", "backslashreplace")
    return raw.decode("utf-8", "backslashreplace")


def display_path(path: str | os.PathLike[str]) -> str:
    """A path as a message shows it: undecodable bytes as `\\xNN`, newlines, tabs and other control
    characters escaped, so one path stays on one line and cannot move the terminal's cursor."""
    text = printable(os.fspath(path))
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode("ascii") for char in text)


def describe_os_error(error: OSError) -> str:
    """An OSError about a path in a few words ("permission denied", "read-only file system")."""
    words = {
        errno.ENOENT: "does not exist",
        errno.EACCES: "permission denied",
        errno.EPERM: "operation not permitted",
        errno.EROFS: "read-only file system",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "is a folder",
        errno.ELOOP: "too many levels of symbolic links",
        errno.ENAMETOOLONG: "file name too long",
    }
    return words.get(error.errno or 0, (error.strerror or str(error)).lower())


def path_problem(path: str | os.PathLike[str], kind: Kind) -> str | None:
    """Why `path` is not an existing `kind` ("does not exist", "is a folder, not a file", ...), or None.

    Only the kind is checked (one stat call), not whether the contents are usable: that is the job of the
    code that reads them.
    """
    try:
        mode = Path(path).stat().st_mode
    except FileNotFoundError:
        return "does not exist" + _broken_link(path)
    except NotADirectoryError:
        return f"does not exist: {display_path(_file_ancestor(Path(path)))} is a file, not a folder"
    except OSError as error:
        return f"cannot be read ({describe_os_error(error)})"
    if kind == "folder":
        if stat.S_ISDIR(mode):
            return None
        return "is a file, not a folder" if stat.S_ISREG(mode) else "is not a folder (a device, pipe or socket)"
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    return "is not a regular file (a device, pipe or socket)"


def _broken_link(path: str | os.PathLike[str]) -> str:
    return " (a symbolic link to a missing target)" if Path(path).is_symlink() else ""


def _file_ancestor(path: Path) -> Path:
    """The first part of `path` that exists and is not a folder (the reason for ENOTDIR)."""
    for parent in [*reversed(path.parents), path]:
        if parent.exists() and not parent.is_dir():
            return parent
    return path
