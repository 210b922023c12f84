"""The config reference (docs/config.md), generated from the pydantic models in `zirelia_local.common.config`.

One section per TOML table, one row per key: type (with its allowed values and bounds), default, and the
field's own description. The models are the single source: `zirelia config-reference > docs/config.md`
regenerates the page and a test fails when the committed page is stale.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any, Literal

import annotated_types
import tomli_w
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from zirelia_local.common.config import ZireliaConfig

REGENERATE_COMMAND = "zirelia config-reference > docs/config.md"

_SCALAR_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", Path: "path"}

_INTRO = f"""# Config reference

<!-- Generated from zirelia_local/common/config/ by `{REGENERATE_COMMAND}`. Do not edit by hand. -->

A run is described by one TOML file (see `configs/demo.toml` and `configs/sienna.toml`). Each section below
is a TOML table; `[persona]` and `[dataset]` are required, the others may be left out. Unknown keys, wrong
types and out-of-range values are rejected with the file name and the dotted key, so a typo never falls
back to a default silently. Relative paths are resolved against the current working directory.
Keys marked **required** have no default. "unset" means the key is absent (TOML has no null).
"""


def _unwrap_annotated(annotation: Any) -> tuple[Any, list[Any]]:
    metadata: list[Any] = []
    while typing.get_origin(annotation) is typing.Annotated:
        annotation, *extra = typing.get_args(annotation)
        metadata.extend(extra)
    return annotation, metadata


def _constraints(metadata: list[Any], *, is_collection: bool) -> list[str]:
    """Bounds from pydantic / annotated_types metadata, in words."""
    words = []
    for item in metadata:
        if isinstance(item, FieldInfo):
            words += _constraints(list(item.metadata), is_collection=is_collection)
        elif isinstance(item, annotated_types.Ge):
            words.append(f"≥ {item.ge}")
        elif isinstance(item, annotated_types.Gt):
            words.append(f"> {item.gt}")
        elif isinstance(item, annotated_types.Le):
            words.append(f"≤ {item.le}")
        elif isinstance(item, annotated_types.Lt):
            words.append(f"< {item.lt}")
        elif isinstance(item, annotated_types.MultipleOf):
            words.append(f"multiple of {item.multiple_of}")
        elif isinstance(item, annotated_types.MinLen) and item.min_length > 0:
            count = f"{item.min_length} item" + ("s" if item.min_length > 1 else "")
            words.append(f"at least {count}" if is_collection else "non-empty")
        elif isinstance(item, annotated_types.MaxLen):
            words.append(f"at most {item.max_length} items" if is_collection else f"≤ {item.max_length} chars")
    return words


def type_description(annotation: Any, metadata: list[Any] | None = None) -> str:
    """A readable type: `integer (≥ 1, ≤ 1000)`, "one of `a`, `b`", `list of string`, `path (optional)`."""
    annotation, inner = _unwrap_annotated(annotation)
    metadata = [*(metadata or []), *inner]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        text = "one of " + ", ".join(f"`{value}`" for value in args)
    elif origin in (typing.Union, types.UnionType):
        options = [arg for arg in args if arg is not type(None)]
        if len(options) == 1:  # `X | None`: the field's bounds apply to X
            return type_description(options[0], metadata) + ", optional"
        text = " or ".join(type_description(arg) for arg in options)
        if len(options) < len(args):
            text += ", optional"
    elif origin is list:
        text = f"list of {type_description(args[0])}" if args else "list"
    elif origin is dict:
        text = "table"
    elif annotation in _SCALAR_NAMES:
        text = _SCALAR_NAMES[annotation]
    else:
        text = getattr(annotation, "__name__", str(annotation))
    bounds = _constraints(metadata, is_collection=origin in (list, dict))
    if not bounds:
        return text
    return f"{text}; {', '.join(bounds)}" if origin in (list, dict) else f"{text} ({', '.join(bounds)})"


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list):  # inline, on one line (tomli_w breaks long arrays over lines)
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):  # an inline table (tomli_w would write a [table] header)
        return "{ " + ", ".join(f"{key} = {_toml_value(item)}" for key, item in value.items()) + " }" if value else "{}"
    rendered = tomli_w.dumps({"x": value}).strip()
    return rendered.split("=", 1)[1].strip()


def default_description(field: FieldInfo) -> str:
    if field.is_required():
        return "**required**"
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    return f"`{_toml_value(value)}`"


def _cell(text: str) -> str:
    """Text safe in a Markdown table cell: pipes escaped, `<name>` kept visible outside code spans."""
    text = text.replace("|", "\\|").replace("\n", " ")
    pieces = text.split("`")
    for index in range(0, len(pieces), 2):
        pieces[index] = pieces[index].replace("<", "&lt;").replace(">", "&gt;")
    return "`".join(pieces)


def section_markdown(key: str, model: type[BaseModel], required: bool) -> str:
    doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
    lines = [f"## [{key}]", ""]
    if doc:
        lines += [doc + (" Required section." if required else ""), ""]
    lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
    for name, field in model.model_fields.items():
        kind = type_description(field.annotation, list(field.metadata))
        lines.append(
            f"| `{name}` | {_cell(kind)} | {_cell(default_description(field))} | {_cell(field.description or '')} |"
        )
    return "\n".join(lines) + "\n"


def config_reference_markdown() -> str:
    """The whole reference page, as Markdown, from the pydantic models."""
    parts = [_INTRO]
    for key, field in ZireliaConfig.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel), key
        parts.append(section_markdown(key, model, field.is_required()))
    return "\n".join(parts)
