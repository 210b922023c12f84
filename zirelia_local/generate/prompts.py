"""What to draw: the user's prompts, and the images they ask for, each with its own seed and a stable key.

A prompt comes from `--prompt TEXT`, from a `--prompts FILE` (one prompt a line, `#` comments; or JSON Lines,
one object a line with `prompt` and optional `seed`, `count`, `name`) or from `[generate] prompts`. A prompt is
the *scene*: the critic's retry logic puts the trigger word and the class phrase in front of it
(`trigger, a photo of <class phrase>, <framing>, <scene>`), as it does for its evaluation images.

Image n of a prompt is drawn with seed + n. Without a seed (`--seed`, `[generate] seed` or the line's own), the
seed is derived from the prompt text, so the same command always asks for the same images: that is what lets
a rerun find and skip the ones already done. Each image has a key, `<name>_s<seed>`, that names its files and
its records; the name is the line's `name`, or a slug of the prompt plus a short hash of it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from zirelia_local.common.errors import ConfigError, UsageError
from zirelia_local.common.paths import describe_os_error, display_path, path_problem
from zirelia_local.critic import EvaluationItem

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,79}"
JSONL_KEYS = {"prompt", "seed", "count", "name"}
_SLUG_LENGTH = 40


@dataclass(frozen=True)
class PromptSpec:
    """One prompt of a request; `count`, `seed` and `name` override the request's (None: the request's)."""

    prompt: str
    count: int | None = None
    seed: int | None = None
    name: str | None = None


@dataclass(frozen=True)
class GenerationItem(EvaluationItem):
    """One requested image: the scene and seed the critic's loop draws, with the name its files carry."""

    name: str = ""
    #: which image of its prompt (0 .. count - 1)
    index: int = 0

    @property
    def key(self) -> str:
        return f"{self.name}_s{self.seed}"


def slug(text: str) -> str:
    """Lower-case words joined by '-', at most 40 characters: a readable, safe part of a file name."""
    words = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return words[:_SLUG_LENGTH].rstrip("-") or "prompt"


def short_hash(text: str, length: int = 6) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def derived_seed(prompt: str, occurrence: int) -> int:
    """A seed from the prompt text (and which repeat of it this is), the same on every run."""
    return int(hashlib.sha256(f"{prompt}\n{occurrence}".encode()).hexdigest()[:8], 16)


def read_prompts_file(path: str | Path) -> list[PromptSpec]:
    """The prompts of a `--prompts` file: plain text (one a line, `#` comments, blank lines skipped) or JSON
    Lines (`.jsonl`, or every line an object). Errors name the file and the line (exit 2)."""
    path = Path(path)
    hint = "pass a text file with one prompt a line, or JSON Lines (--prompts FILE)"
    problem = path_problem(path, "file")
    if problem is not None:
        raise UsageError(f"--prompts {display_path(path)} {problem}", hint=hint)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise UsageError(f"--prompts {display_path(path)}: cannot read it ({describe_os_error(error)})") from None
    except UnicodeDecodeError:
        raise UsageError(f"--prompts {display_path(path)} is not UTF-8 text", hint=hint) from None
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1)]
    lines = [(number, line) for number, line in lines if line and not line.startswith("#")]
    as_json = path.suffix == ".jsonl" or (bool(lines) and all(line.startswith("{") for _, line in lines))
    specs = [_json_line(path, number, line) if as_json else PromptSpec(line) for number, line in lines]
    if not specs:
        raise UsageError(f"--prompts {display_path(path)} holds no prompt", hint="write one prompt a line")
    return specs


def _json_line(path: Path, number: int, line: str) -> PromptSpec:
    where = f"{display_path(path)}:{number}"
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{where} is not valid JSON ({error.msg})", hint="one JSON object a line") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{where} is not a JSON object", hint='write {"prompt": "..."} on each line')
    unknown = sorted(set(value) - JSONL_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}", hint=f"allowed: {sorted(JSONL_KEYS)}")
    prompt = value.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError(f"{where}: `prompt` is missing or empty", hint='write {"prompt": "..."} on each line')
    seed, count, name = value.get("seed"), value.get("count"), value.get("name")
    if seed is not None and (type(seed) is not int or not 0 <= seed < 2**32):
        raise ConfigError(f"{where}: `seed` must be an integer from 0 to 2**32 - 1 (got {seed!r})")
    if count is not None and (type(count) is not int or not 1 <= count <= 10_000):
        raise ConfigError(f"{where}: `count` must be an integer from 1 to 10000 (got {count!r})")
    if name is not None and (not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name)):
        raise ConfigError(
            f"{where}: `name` must be 1-80 letters, digits, '.', '-' or '_' (it names the files; got {name!r})"
        )
    return PromptSpec(prompt.strip(), count=count, seed=seed, name=name)


def prompt_specs(prompts: Sequence[str | PromptSpec]) -> list[PromptSpec]:
    """Prompts as specs (a plain string is a prompt with the request's count and seed)."""
    specs = [prompt if isinstance(prompt, PromptSpec) else PromptSpec(str(prompt).strip()) for prompt in prompts]
    for spec in specs:
        if not spec.prompt:
            raise ConfigError("an empty prompt was given", hint="every prompt must describe a scene")
    return specs


def expand_items(specs: Sequence[PromptSpec], *, count: int, seed: int | None) -> tuple[list[GenerationItem], int]:
    """Every requested image, in order, and how many repeats of the same image were dropped (same prompt and
    seed twice: the same picture, drawn once)."""
    names = [spec.name for spec in specs if spec.name]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"prompt names must be unique: {repeated} given more than once")
    occurrences: dict[str, int] = {}
    items: list[GenerationItem] = []
    seen: set[tuple[str, int]] = set()
    dropped = 0
    for index, spec in enumerate(specs):
        occurrence = occurrences.get(spec.prompt, 0)
        occurrences[spec.prompt] = occurrence + 1
        name = spec.name or f"{slug(spec.prompt)}-{short_hash(spec.prompt)}" + (
            f"-{occurrence + 1}" if occurrence else ""
        )
        if spec.seed is not None:
            base = spec.seed
        elif seed is not None:
            base = seed
        else:
            base = derived_seed(spec.prompt, occurrence)
        for number in range(spec.count or count):
            item = GenerationItem(index, spec.prompt, (base + number) % 2**32, name=name, index=number)
            if (item.scene, item.seed) in seen:
                dropped += 1
                continue
            seen.add((item.scene, item.seed))
            items.append(item)
    return items, dropped
