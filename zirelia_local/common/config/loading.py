"""Reading a config: TOML from a file, validated into `ZireliaConfig`, errors naming the file and the key."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zirelia_local.common.config.run import ZireliaConfig
from zirelia_local.common.errors import ConfigError
from zirelia_local.common.paths import describe_os_error, display_path

# A config is a few KB; anything past this is the wrong file (a device such as /dev/zero would never end).
MAX_CONFIG_BYTES = 2**20


def _format_location(loc: tuple[Any, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts) or "(top level)"


def format_validation_error(error: ValidationError, source: str) -> str:
    lines = [f"invalid config {source}:"]
    for item in error.errors(include_url=False):
        key = _format_location(tuple(part for part in item["loc"] if not _is_union_tag(part)))
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; `zirelia config-reference` lists every key)"
        elif item["type"] == "missing":
            message = "required key is missing"
        got = item.get("input")
        shown = "" if item["type"] in ("missing", "extra_forbidden") or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {key}: {message}{shown}")
    return "\n".join(lines)


def _is_union_tag(part: Any) -> bool:
    # pydantic puts the tried union member's type name into the location ("literal['all','last']", "list[int]").
    return isinstance(part, str) and ("[" in part or part in ("str", "int", "float", "bool", "none"))


def parse_config(data: dict[str, Any], source: str = "<config>") -> ZireliaConfig:
    """Validate an already-parsed TOML document."""
    try:
        config = ZireliaConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(format_validation_error(error, source)) from None
    return config


def load_config(path: str | os.PathLike[str], *, run_dir: str | os.PathLike[str] | None = None) -> ZireliaConfig:
    """Read and validate a TOML config; `run_dir` overrides `[run] dir` (the CLI's --run-dir)."""
    path = Path(path)
    raw = _read_config_bytes(path)
    shown = display_path(path)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {shown} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"config file {shown} is not valid TOML: {error}") from None
    config = parse_config(data, shown)
    config._source = path
    if run_dir is not None:
        config.run.dir = Path(run_dir)
    return config


def _read_config_bytes(path: Path) -> bytes:
    """The config file's bytes; a ConfigError naming the path when it is missing, a folder, unreadable or far
    too large to be a config (a device such as /dev/zero would otherwise be read forever)."""
    shown = display_path(path)
    if path.is_dir():
        tomls = sorted(child.name for child in path.glob("*.toml"))[:3]
        raise ConfigError(
            f"config file {shown} is a folder, not a file",
            hint=f"pass one of its .toml files, e.g. {display_path(path / tomls[0])}"
            if tomls
            else "pass the path of a .toml file, e.g. configs/demo.toml",
        )
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"config file not found: {shown}", hint="pass the path of a .toml file, e.g. configs/demo.toml"
        ) from None
    except OSError as error:
        raise ConfigError(
            f"cannot read config file {shown}: {describe_os_error(error)}",
            hint="check that it is a file you may read (ls -l), or copy it somewhere readable",
        ) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {shown} is larger than {MAX_CONFIG_BYTES // 2**20} MiB: not a zirelia config",
            hint="pass the path of a .toml file, e.g. configs/demo.toml",
        )
    return raw
