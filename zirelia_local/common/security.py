"""Keeping secrets out of files and logs."""

from __future__ import annotations

import re
from pathlib import Path

from zirelia_local.common.errors import ZireliaError

# Formats that torch / pickle deserialise by running code stored in the file.
PICKLE_SUFFIXES = {".ckpt", ".pt", ".pth", ".bin", ".pkl", ".pickle"}

REDACTED = "***"
# `hf_token = "..."`, `api_token = '...'`, `HF_TOKEN=...`: any key that ends in "token" (any case).
_TOML_TOKEN = re.compile(r'(?im)^(\s*[A-Za-z0-9_.-]*token\s*=\s*)(["\']).*?\2')
_ENV_TOKEN = re.compile(r"(?i)\b([A-Z0-9_]*TOKEN=)(\S+)")
_HF_TOKEN_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def redact_toml(text: str) -> str:
    """Replace the value of every `*token` key in a TOML text, and any Hugging Face token value (comments too)."""
    text = _TOML_TOKEN.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(2)}", text)
    return _HF_TOKEN_VALUE.sub(REDACTED, text)


def redact(text: str) -> str:
    """Remove tokens from free text (log lines, commands): `X_TOKEN=value` and `hf_...` values."""
    text = _ENV_TOKEN.sub(lambda m: f"{m.group(1)}{REDACTED}", text)
    return _HF_TOKEN_VALUE.sub(REDACTED, text)


def require_safetensors(path: str | Path, what: str, *, allow_pickle: bool = False) -> Path:
    """Refuse a pickled weights file from a user path unless the user opted in (`[run] allow_pickle`).

    Unpickling runs arbitrary code from the file; safetensors cannot. Folders and other formats pass.
    """
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES and not allow_pickle:
        raise ZireliaError(
            f"{what} {path} is a pickled file ({path.suffix}): loading it could run code hidden in it",
            hint="convert it to .safetensors (e.g. with the safetensors convert tools), or, if you trust its "
            "source, set `allow_pickle = true` under [run]",
        )
    return path
