"""[run] and the whole config: every section of a run, and what is derived from them."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, PrivateAttr

from zirelia_local.common.config.base import Section
from zirelia_local.common.config.critic import CriticConfig, GenerateConfig
from zirelia_local.common.config.curate import CurateConfig
from zirelia_local.common.config.dataset import DatasetConfig, GeneratorConfig, PersonaConfig
from zirelia_local.common.config.training import TrainConfig


class RunConfig(Section):
    """Where the run's files go."""

    dir: Path | None = Field(default=None, description="Run directory (default: runs/<trigger_word>).")
    allow_pickle: bool = Field(
        default=False,
        description="Allow pickled weights (.ckpt/.pt/.bin) from user paths. Unpickling can run code hidden in "
        "the file: leave off unless you trust the source; safetensors files are always accepted.",
    )


class ZireliaConfig(Section):
    """A whole run: persona -> dataset -> curation -> training -> critic (-> generate)."""

    persona: PersonaConfig
    dataset: DatasetConfig
    generator: GeneratorConfig = Field(default_factory=GeneratorConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    critic: CriticConfig = Field(default_factory=CriticConfig)
    generate: GenerateConfig = Field(default_factory=GenerateConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    # Not part of the file: where it was read from (for messages and the report).
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def run_dir(self) -> Path:
        return self.run.dir if self.run.dir is not None else Path("runs") / self.persona.trigger_word

    @property
    def curate_target(self) -> int:
        return self.curate.target_count or self.dataset.count

    @property
    def curate_minimum(self) -> int:
        return self.curate.min_count or self.curate_target

    @property
    def lora_name(self) -> str:
        return self.train.output_name or self.persona.trigger_word

    def sd_scripts_dir(self) -> Path | None:
        if self.train.sd_scripts is not None:
            return self.train.sd_scripts.expanduser()
        env = os.environ.get("ZIRELIA_SD_SCRIPTS")
        return Path(env).expanduser() if env else None
