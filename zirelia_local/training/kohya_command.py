"""The sd-scripts command line, built from the typed config instead of 40 hand-written flags.

The command is `<sd-scripts python> -m accelerate.commands.launch <accelerate flags> <trainer script>
<trainer flags>`; `accelerate launch` is the same entry point, and naming the interpreter keeps
sd-scripts' pinned packages. Trainer flags are built as an ordered mapping (flag -> True for a switch,
a string, or a list for nargs="*" options), then `[train.extra_args]` overrides, adds or removes entries,
then it is rendered as an argument list. Every flag written here is in `kohya_flags.EMITTED_FLAGS`.
"""

from __future__ import annotations

import difflib
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Union

from zirelia_local.common.config import ZireliaConfig
from zirelia_local.common.errors import ZireliaError
from zirelia_local.training.kohya_flags import (
    NETWORK_MODULES,
    SCRIPTS,
    SD_SCRIPTS_COMMIT,
    SECRET_FLAGS,
    parser_flags,
)
from zirelia_local.training.model_files import resolve_model_files
from zirelia_local.training.presets import VramPreset

ArgValue = Union[bool, str, list[str]]  # noqa: UP007 (a runtime alias: py3.10 needs Union here)

#: sd-scripts' docs recommend these optimizer settings with Adafactor (docs/flux_train_network.md).
ADAFACTOR_ARGS = ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
#: Data loader workers: latents and text encodings are cached, so 2 persistent workers keep up
#: (sd-scripts' default of 8 only costs RAM here).
DATA_LOADER_WORKERS = 2
#: Epoch states kept on disk: resuming needs the newest; one more guards against a damaged newest.
STATES_KEPT = 2

PLACEHOLDER_SD_SCRIPTS = Path("/path/to/sd-scripts")
#: Shown in a dry run's command where a model path is not set yet.
PLACEHOLDERS = {
    "flux": "/path/to/flux1-dev.safetensors",
    "sdxl": "/path/to/sdxl_base.safetensors",
    "sd15": "/path/to/sd15_base.safetensors",
    "clip_l": "/path/to/clip_l.safetensors",
    "t5xxl": "/path/to/t5xxl_fp16.safetensors",
    "ae": "/path/to/ae.safetensors",
}


@dataclass
class LaunchPlan:
    """Everything the command depends on besides the config: resolved paths and the chosen preset."""

    python: Path
    sd_scripts: Path
    script: Path
    preset: VramPreset
    dataset_toml: Path
    sample_prompts: Path
    output_dir: Path
    output_name: str
    resume: Path | None = None


def absolute(path: str | os.PathLike[str]) -> Path:
    """Absolute and normalised, links kept (the child runs in sd-scripts' folder, not ours)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def train_settings(config: ZireliaConfig, preset: VramPreset) -> tuple[int, int, str]:
    """(batch size, resolution, optimizer): the config's values where set, else the preset's; the
    resolution never exceeds the dataset's (upscaled images teach nothing)."""
    train = config.train
    batch_size = train.batch_size or preset.batch_size
    resolution = min(train.resolution or preset.resolution, config.dataset.resolution)
    optimizer = train.optimizer or preset.optimizer
    return batch_size, resolution, optimizer


def model_paths(config: ZireliaConfig) -> dict[str, str | None]:
    """The model inputs of the model type: config key -> value, "auto" resolved (None when unset or not
    found; `model_files.resolve_model_files` says why)."""
    return {key: file.value for key, file in resolve_model_files(config).items()}


def looks_like_hub_id(value: str) -> bool:
    """`org/name` with no local file of that name: sd-scripts loads SDXL/SD1.5 diffusers models by hub id."""
    parts = value.split("/")
    return len(parts) == 2 and all(parts) and not value.startswith((".", "~")) and not Path(value).exists()


def _model_arg(config: ZireliaConfig, key: str, value: str | None) -> str:
    if value is None:
        return PLACEHOLDERS[config.train.model_type if key == "pretrained_model" else key]
    if key == "pretrained_model" and config.train.model_type != "flux" and looks_like_hub_id(value):
        return value
    return str(absolute(value))


def _number(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return repr(value) if isinstance(value, float) else str(value)


def script_args(config: ZireliaConfig, plan: LaunchPlan) -> dict[str, ArgValue]:
    """The trainer's flags before `[train.extra_args]`, in the order a person would write them."""
    train = config.train
    model_type = train.model_type
    preset = plan.preset
    _, _, optimizer = train_settings(config, preset)
    paths = model_paths(config)
    args: dict[str, ArgValue] = {}

    args["pretrained_model_name_or_path"] = _model_arg(config, "pretrained_model", paths["pretrained_model"])
    if model_type == "flux":
        for key in ("clip_l", "t5xxl", "ae"):
            args[key] = _model_arg(config, key, paths[key])
    if train.tokenizer_cache_dir is not None:
        args["tokenizer_cache_dir"] = str(absolute(train.tokenizer_cache_dir))

    args["dataset_config"] = str(plan.dataset_toml)
    args["output_dir"] = str(plan.output_dir)
    args["output_name"] = plan.output_name
    args["save_model_as"] = "safetensors"

    args["network_module"] = NETWORK_MODULES[model_type]
    args["network_dim"] = str(train.network_dim)
    args["network_alpha"] = _number(train.network_alpha)
    caches_text = train.cache_text_encoder_outputs and model_type in ("flux", "sdxl")
    # FLUX LoRAs train the transformer only; SDXL must when its text-encoder outputs are cached
    # (sdxl_train_network.py asserts it); SD1.5 has no text-encoder cache and trains both, as usual there.
    if model_type == "flux" or caches_text:
        args["network_train_unet_only"] = True

    args["max_train_epochs"] = str(train.epochs)
    args["learning_rate"] = _number(train.learning_rate)
    args["optimizer_type"] = optimizer
    if optimizer.lower() == "adafactor":
        args["optimizer_args"] = list(ADAFACTOR_ARGS)
        args["lr_scheduler"] = "constant_with_warmup"
        args["max_grad_norm"] = "0.0"
    else:
        args["lr_scheduler"] = "constant"
    args["seed"] = str(train.seed)

    args["mixed_precision"] = train.mixed_precision
    args["save_precision"] = {"bf16": "bf16", "fp16": "fp16", "no": "float"}[train.mixed_precision]
    if preset.fp8_base and train.mixed_precision != "no":  # sd-scripts: fp8_base needs fp16/bf16
        args["fp8_base"] = True
    if model_type == "flux" and preset.blocks_to_swap:
        args["blocks_to_swap"] = str(preset.blocks_to_swap)
    if preset.highvram:
        args["highvram"] = True
    args["sdpa"] = True
    if train.gradient_checkpointing:
        args["gradient_checkpointing"] = True
    if model_type == "sdxl" and train.mixed_precision == "fp16":
        args["no_half_vae"] = True  # the SDXL VAE overflows in fp16 (docs/sdxl_train_network.md)
    if train.cache_latents:
        args["cache_latents"] = True
        args["cache_latents_to_disk"] = True
    if caches_text:
        args["cache_text_encoder_outputs"] = True
        args["cache_text_encoder_outputs_to_disk"] = True
    args["max_data_loader_n_workers"] = str(DATA_LOADER_WORKERS)
    args["persistent_data_loader_workers"] = True

    if model_type == "flux":
        args["timestep_sampling"] = train.timestep_sampling
        args["discrete_flow_shift"] = _number(train.discrete_flow_shift)
        args["model_prediction_type"] = train.model_prediction_type
        args["guidance_scale"] = _number(train.guidance_scale)

    args["save_every_n_epochs"] = str(train.save_every_n_epochs)
    args["save_state"] = True
    args["save_last_n_epochs_state"] = str(STATES_KEPT)
    if train.sample_every_n_epochs > 0:
        args["sample_prompts"] = str(plan.sample_prompts)
        args["sample_every_n_epochs"] = str(train.sample_every_n_epochs)
    args["logging_dir"] = str(plan.output_dir / "logs")
    args["log_with"] = "tensorboard"
    if plan.resume is not None:
        args["resume"] = str(plan.resume)
    return args


def apply_extra_args(args: dict[str, ArgValue], config: ZireliaConfig) -> list[str]:
    """Apply `[train.extra_args]` to `args` in place; returns warnings (flags this sd-scripts version lacks)."""
    known = parser_flags(config.train.model_type)
    script = SCRIPTS[config.train.model_type]
    warnings = []
    for raw_key, value in config.train.extra_args.items():
        key = raw_key.lstrip("-")
        kind = known.get(key)
        if kind is None:
            close = difflib.get_close_matches(key, list(known), n=2)
            warnings.append(
                f"[train.extra_args] {raw_key!r} is not a flag of {script} at sd-scripts {SD_SCRIPTS_COMMIT}"
                + (f" (did you mean {' or '.join(close)}?)" if close else "")
                + "; it is passed through as written"
            )
        if value is None or value is False:
            args.pop(key, None)
            continue
        if kind == "switch":
            if value is not True:
                raise ZireliaError(
                    f"[train.extra_args] {raw_key} is an on/off flag of {script}, but its value is {value!r}",
                    hint=f"write {key} = true to add it, or {key} = false to remove it",
                )
            args[key] = True
        elif isinstance(value, list):
            args[key] = [_number(item) if isinstance(item, (int, float)) else str(item) for item in value]
        elif value is True:
            args[key] = True if kind is None else "True"
        else:
            args[key] = _number(value) if isinstance(value, (int, float)) else str(value)
    if args.get("max_data_loader_n_workers") == "0":
        args.pop("persistent_data_loader_workers", None)  # torch refuses persistent workers without workers
    return warnings


def render_args(args: dict[str, ArgValue]) -> list[str]:
    """`{"a": True, "b": "1", "c": ["x", "y"]}` -> `["--a", "--b", "1", "--c", "x", "y"]`."""
    argv: list[str] = []
    for key, value in args.items():
        flag = f"--{key}"
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):
            argv.append(flag)
            argv.extend(value)
        elif str(value).startswith("-"):
            argv.append(f"{flag}={value}")  # a value starting with "-" would read as a flag
        else:
            argv.extend([flag, str(value)])
    return argv


def accelerate_args(config: ZireliaConfig) -> list[str]:
    """`accelerate launch` flags: every value passed, so no accelerate config file changes the run."""
    train = config.train
    argv = [
        "--num_processes",
        str(train.num_processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        train.mixed_precision,
        "--dynamo_backend",
        "no",
    ]
    if train.num_processes > 1:
        argv.append("--multi_gpu")
    if train.gpu_ids:
        argv.extend(["--gpu_ids", train.gpu_ids])
    return argv


def build_command(config: ZireliaConfig, plan: LaunchPlan) -> tuple[list[str], list[str]]:
    """(argv, warnings) of the whole launch command."""
    args = script_args(config, plan)
    warnings = apply_extra_args(args, config)
    argv = [
        str(plan.python),
        "-m",
        "accelerate.commands.launch",
        *accelerate_args(config),
        str(plan.script),
        *render_args(args),
    ]
    return argv, warnings


def redact_argv(argv: list[str]) -> list[str]:
    """The command with secret values (tokens, API keys) replaced by ***."""
    shown = list(argv)
    for index, item in enumerate(shown):
        name = item[2:].split("=", 1)[0] if item.startswith("--") else None
        if name in SECRET_FLAGS:
            if "=" in item:
                shown[index] = f"--{name}=***"
            elif index + 1 < len(shown):
                shown[index + 1] = "***"
    return shown


def shell_command(argv: list[str], cwd: Path, script: Path) -> str:
    """A copyable shell command: `cd` into sd-scripts, the launcher, the script, then one flag (with its
    values) per line."""
    split = argv.index(str(script))
    lines = [f"cd {shlex.quote(str(cwd))} &&"]
    for part in (_flag_groups(argv[:split]), [[str(script)]], _flag_groups(argv[split + 1 :])):
        lines.extend("  " + shlex.join(group) for group in part)
    return " \\\n".join(lines)


def _flag_groups(argv: list[str]) -> list[list[str]]:
    groups: list[list[str]] = []
    for item in argv:
        if item.startswith("--") or not groups:
            groups.append([item])
        else:
            groups[-1].append(item)
    return groups
