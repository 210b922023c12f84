"""The one typed config of a run, loaded from TOML.

Every stage reads the same `ZireliaConfig`. Unknown keys, wrong types and out-of-range values are
rejected with a `ConfigError` that names the file and the dotted key, so a typo never silently falls
back to a default. Relative paths in the file are resolved against the current working directory,
as sd-scripts and most command-line tools do.

One module per group of sections, in pipeline order (`dataset`: [persona] [dataset] [generator];
`curate`; `training`: [train]; `critic`: [critic] [generate]; `run`: [run] and `ZireliaConfig`), and
`loading` for reading a file. `docs/config.md` is generated from these models
(`zirelia config-reference`). Import from this package, not from its modules.
"""

from zirelia_local.common.config.base import TRIGGER_WORD_PATTERN, NonEmptyStr, Section, Seed
from zirelia_local.common.config.critic import DEFAULT_CRITIC_PROMPTS, CriticConfig, GenerateConfig
from zirelia_local.common.config.curate import CurateConfig
from zirelia_local.common.config.dataset import (
    CAPTION_FIELDS,
    DEFAULT_ANGLES,
    PROMPT_FIELDS,
    DatasetConfig,
    DType,
    GeneratorConfig,
    MemoryMode,
    PersonaConfig,
    Quantization,
)
from zirelia_local.common.config.loading import MAX_CONFIG_BYTES, format_validation_error, load_config, parse_config
from zirelia_local.common.config.run import RunConfig, ZireliaConfig
from zirelia_local.common.config.training import ExtraArgValue, TrainConfig, VramPreset

__all__ = [
    "CAPTION_FIELDS",
    "DEFAULT_ANGLES",
    "DEFAULT_CRITIC_PROMPTS",
    "MAX_CONFIG_BYTES",
    "PROMPT_FIELDS",
    "TRIGGER_WORD_PATTERN",
    "CriticConfig",
    "CurateConfig",
    "DType",
    "DatasetConfig",
    "ExtraArgValue",
    "GenerateConfig",
    "GeneratorConfig",
    "MemoryMode",
    "NonEmptyStr",
    "PersonaConfig",
    "Quantization",
    "RunConfig",
    "Section",
    "Seed",
    "TrainConfig",
    "VramPreset",
    "ZireliaConfig",
    "format_validation_error",
    "load_config",
    "parse_config",
]
