"""The library API for programs that post images: `generate_persona_images(config, prompts, ...)`."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ConfigError
from zirelia_local.critic import EvaluationRenderer
from zirelia_local.generate.prompts import PromptSpec
from zirelia_local.generate.results import GeneratedImage
from zirelia_local.generate.stage import run_generate

#: `[generate]` key -> the flag that sets it, for error messages
FLAGS = {
    "count": "--count",
    "seed": "--seed",
    "lora": "--lora",
    "lora_scale": "--scale",
    "max_retries": "--max-retries",
    "keep_rejected": "--keep-rejected",
}


def with_overrides(config: ZireliaConfig, **values: Any) -> ZireliaConfig:
    """A copy of the config with `[generate]` keys set (the command's flags; None leaves a key as it is). An
    invalid value is a ConfigError naming the flag (exit 2)."""
    copy = config.model_copy(deep=True)
    copy._source = config.source
    for key, value in values.items():
        if value is None:
            continue
        try:
            setattr(copy.generate, key, value)
        except ValidationError as error:
            message = error.errors(include_url=False)[0]["msg"].removeprefix("Value error, ")
            raise ConfigError(f"{FLAGS.get(key, key)} {value}: {message}") from None
    return copy


def generate_persona_images(
    config: ZireliaConfig,
    prompts: Sequence[str | PromptSpec] | None = None,
    *,
    count: int | None = None,
    seed: int | None = None,
    lora: Path | None = None,
    scale: float | None = None,
    max_retries: int | None = None,
    keep_rejected: bool | None = None,
    out: Path | None = None,
    renderer: EvaluationRenderer | None = None,
) -> list[GeneratedImage]:
    """The library API: draw images of the persona for `prompts` (scenes; the trigger word is added), judged and
    retried by the critic, and return the accepted ones with their records (`GeneratedImage.path`, `.prompt`,
    `.seed`, `.scale`, `.record`). The keyword arguments override `[generate]`; takes the run lock.

    Requested images that could not be accepted are not returned; the whole result (rejections, the gallery,
    results.jsonl) is `run_generate`'s. Pass one `renderer` (`critic.renderer_for(config)`) to several calls to
    load the base model once.
    """
    from zirelia_local.common.rundir import run_lock

    config = with_overrides(
        config,
        count=count,
        seed=seed,
        lora=lora,
        lora_scale=scale,
        max_retries=max_retries,
        keep_rejected=keep_rejected,
    )
    with run_lock(config.run_dir):
        return run_generate(config, prompts, out=out, renderer=renderer).accepted
