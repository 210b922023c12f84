"""The sd-scripts command built from the config: every model type and preset, extra_args, quoting.

The flag lists were read from sd-scripts' parser at commit 48d368fa (see kohya_flags.py); these tests fail
as soon as the builder writes a flag outside them.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from tests.conftest import write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.training.kohya_command import (
    LaunchPlan,
    build_command,
    redact_argv,
    render_args,
    shell_command,
    train_settings,
)
from zirelia_local.training.kohya_flags import (
    ACCELERATE_FLAGS,
    EMITTED_FLAGS,
    SCRIPTS,
    parser_flags,
)
from zirelia_local.training.presets import PRESET_NAMES, get_preset

MODEL_TYPES = ("flux", "sdxl", "sd15")


def make_config(tmp_path: Path, train: str = "", *, resolution: int = 1024):
    text = f"[train]\nsd_scripts = '{tmp_path / 'sd-scripts'}'\npretrained_model = '{tmp_path / 'base.safetensors'}'\n"
    text += f"clip_l = '{tmp_path / 'clip_l.safetensors'}'\nt5xxl = '{tmp_path / 't5xxl.safetensors'}'\n"
    text += f"ae = '{tmp_path / 'ae.safetensors'}'\n" + train
    path = write_config(tmp_path, extra=text)
    config = load_config(path)
    config.dataset.resolution = resolution
    return config


def make_plan(tmp_path: Path, config, preset: str = "24gb", resume: Path | None = None) -> LaunchPlan:
    model_type = config.train.model_type
    return LaunchPlan(
        python=tmp_path / "sd-scripts" / "venv" / "bin" / "python",
        sd_scripts=tmp_path / "sd-scripts",
        script=tmp_path / "sd-scripts" / SCRIPTS[model_type],
        preset=get_preset(model_type, preset),
        dataset_toml=tmp_path / "run" / "dataset.toml",
        sample_prompts=tmp_path / "run" / "sample_prompts.txt",
        output_dir=tmp_path / "run" / "train",
        output_name=config.lora_name,
        resume=resume,
    )


def split_command(argv: list[str], script: Path) -> tuple[list[str], dict[str, list[str]]]:
    """(accelerate flags, {trainer flag: values}) of a built command."""
    at = argv.index(str(script))
    assert argv[1:3] == ["-m", "accelerate.commands.launch"]
    launcher = [item[2:] for item in argv[3:at] if item.startswith("--")]
    flags: dict[str, list[str]] = {}
    current = None
    for item in argv[at + 1 :]:
        if item.startswith("--"):
            name, _, value = item[2:].partition("=")
            assert name not in flags, f"--{name} written twice"
            flags[name] = [value] if value else []
            current = name
        else:
            assert current is not None
            flags[current].append(item)
    return launcher, flags


def unverified_flags(flags: dict[str, list[str]], model_type: str) -> set[str]:
    """Flags not in the verified lists: not emitted by design, or not in the script's parser."""
    known = parser_flags(model_type)
    return {name for name in flags if name not in EMITTED_FLAGS or name not in known}


@pytest.mark.parametrize("preset", PRESET_NAMES)
@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_every_emitted_flag_is_verified_against_the_parser(tmp_path, model_type, preset):
    config = make_config(tmp_path, f"model_type = '{model_type}'\nsample_every_n_epochs = 2\nnum_processes = 2\n")
    config.train.gpu_ids = "0,1"
    config.train.tokenizer_cache_dir = tmp_path / "tokenizers"
    plan = make_plan(tmp_path, config, preset, resume=tmp_path / "run" / "train" / "x-state")
    argv, warnings = build_command(config, plan)
    launcher, flags = split_command(argv, plan.script)

    assert warnings == []
    assert unverified_flags(flags, model_type) == set()
    assert set(launcher) <= set(ACCELERATE_FLAGS)
    assert argv[0] == str(plan.python)
    assert {"multi_gpu", "gpu_ids"} <= set(launcher)
    # Switches carry no value; value options exactly one; nargs="*" options any number.
    kinds = parser_flags(model_type)
    for name, values in flags.items():
        if kinds[name] == "switch":
            assert values == [], name
        elif kinds[name] == "value":
            assert len(values) == 1, name


def test_the_verification_catches_a_flag_outside_the_list():
    # sd-scripts' own SDXL guide shows --text_encoder_lr1, which its parser rejects.
    assert unverified_flags({"text_encoder_lr1": ["1e-5"], "sdpa": []}, "sdxl") == {"text_encoder_lr1"}
    # A FLUX-only flag is not verified for SD1.5.
    assert unverified_flags({"blocks_to_swap": ["8"]}, "sd15") == {"blocks_to_swap"}


def test_flux_24gb_command_has_the_recipe(tmp_path):
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, config, "24gb")
    argv, _ = build_command(config, plan)
    _, flags = split_command(argv, plan.script)

    assert argv[argv.index(str(plan.script)) - 8 :][:8] == [
        "--num_processes", "1", "--num_machines", "1", "--mixed_precision", "bf16", "--dynamo_backend", "no",
    ]  # fmt: skip
    assert flags["pretrained_model_name_or_path"] == [str(tmp_path / "base.safetensors")]
    for key in ("clip_l", "t5xxl", "ae"):
        assert flags[key] == [str(tmp_path / f"{key}.safetensors")]
    assert flags["network_module"] == ["networks.lora_flux"]
    assert flags["network_dim"] == ["32"] and flags["network_alpha"] == ["16"]
    assert flags["max_train_epochs"] == ["20"]
    assert flags["optimizer_type"] == ["AdamW8bit"]
    assert flags["timestep_sampling"] == ["shift"] and flags["discrete_flow_shift"] == ["3.1582"]
    assert flags["model_prediction_type"] == ["raw"] and flags["guidance_scale"] == ["1"]
    assert flags["dataset_config"] == [str(tmp_path / "run" / "dataset.toml")]
    assert flags["output_dir"] == [str(tmp_path / "run" / "train")] and flags["output_name"] == ["testpersona7"]
    assert flags["save_model_as"] == ["safetensors"] and flags["save_every_n_epochs"] == ["1"]
    assert flags["logging_dir"] == [str(tmp_path / "run" / "train" / "logs")] and flags["log_with"] == ["tensorboard"]
    for switch in (
        "fp8_base",
        "save_state",
        "sdpa",
        "gradient_checkpointing",
        "cache_latents_to_disk",
        "cache_text_encoder_outputs",
        "cache_text_encoder_outputs_to_disk",
        "network_train_unet_only",
    ):
        assert flags[switch] == [], switch
    assert "blocks_to_swap" not in flags
    # The live identity curve: sd-scripts draws the sample prompts at every epoch's end by default.
    assert flags["sample_prompts"] == [str(tmp_path / "run" / "sample_prompts.txt")]
    assert flags["sample_every_n_epochs"] == ["1"]
    assert "resume" not in flags


def test_flux_12gb_swaps_blocks_and_uses_adafactor_as_the_docs_say(tmp_path):
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, config, "12gb")
    _, flags = split_command(build_command(config, plan)[0], plan.script)
    assert flags["blocks_to_swap"] == ["16"]
    assert flags["fp8_base"] == []
    assert flags["optimizer_type"] == ["Adafactor"]
    assert flags["optimizer_args"] == ["relative_step=False", "scale_parameter=False", "warmup_init=False"]
    assert flags["lr_scheduler"] == ["constant_with_warmup"] and flags["max_grad_norm"] == ["0.0"]


def test_flux_80gb_keeps_bf16_weights(tmp_path):
    config = make_config(tmp_path)
    plan = make_plan(tmp_path, config, "80gb")
    _, flags = split_command(build_command(config, plan)[0], plan.script)
    assert "fp8_base" not in flags and "blocks_to_swap" not in flags
    assert flags["highvram"] == [] and flags["optimizer_type"] == ["AdamW"]


def test_sdxl_and_sd15_use_their_scripts_and_modules(tmp_path):
    sdxl = make_config(tmp_path / "a", "model_type = 'sdxl'\nmixed_precision = 'fp16'\n")
    plan = make_plan(tmp_path / "a", sdxl, "16gb")
    _, flags = split_command(build_command(sdxl, plan)[0], plan.script)
    assert plan.script.name == "sdxl_train_network.py"
    assert flags["network_module"] == ["networks.lora"]
    assert flags["no_half_vae"] == []  # fp16: the SDXL VAE overflows without it
    assert flags["network_train_unet_only"] == [] and flags["cache_text_encoder_outputs"] == []
    assert not {"clip_l", "t5xxl", "ae", "timestep_sampling", "guidance_scale", "blocks_to_swap"} & set(flags)

    sd15 = make_config(tmp_path / "b", "model_type = 'sd15'\n")
    sd15.train.pretrained_model = "runwayml/stable-diffusion-v1-5"
    plan = make_plan(tmp_path / "b", sd15, "12gb")
    _, flags = split_command(build_command(sd15, plan)[0], plan.script)
    assert plan.script.name == "train_network.py"
    assert flags["pretrained_model_name_or_path"] == ["runwayml/stable-diffusion-v1-5"]  # a hub id stays as is
    # train_network.py has no text-encoder cache, so both networks train, as usual for SD1.5 LoRAs.
    assert "cache_text_encoder_outputs" not in flags and "network_train_unet_only" not in flags


def test_config_values_win_over_the_preset_and_resolution_stays_within_the_dataset(tmp_path):
    config = make_config(tmp_path, "batch_size = 3\noptimizer = 'Prodigy'\n", resolution=768)
    assert train_settings(config, get_preset("flux", "24gb")) == (3, 768, "Prodigy")
    config.train.resolution = 512
    assert train_settings(config, get_preset("flux", "80gb")) == (3, 512, "Prodigy")


def test_extra_args_override_add_and_remove_flags(tmp_path):
    extra = """
    [train.extra_args]
    learning_rate = 5e-5
    max_grad_norm = 1.0
    network_args = ["train_blocks=single", "split_qkv=True"]
    sdpa = false
    cache_latents_to_disk = false
    fp8_base = true
    "--loss_type" = "huber"
    """
    config = make_config(tmp_path, extra)
    plan = make_plan(tmp_path, config, "40gb")
    argv, warnings = build_command(config, plan)
    _, flags = split_command(argv, plan.script)
    assert warnings == []
    assert flags["learning_rate"] == ["5e-05"]
    assert argv.index("--learning_rate") < argv.index("--optimizer_type")  # overridden in place
    assert flags["max_grad_norm"] == ["1"]
    assert flags["network_args"] == ["train_blocks=single", "split_qkv=True"]
    assert flags["fp8_base"] == [] and flags["loss_type"] == ["huber"]
    assert "sdpa" not in flags and "cache_latents_to_disk" not in flags


def test_extra_args_warn_on_unknown_flags_and_reject_values_for_switches(tmp_path):
    config = make_config(tmp_path, "[train.extra_args]\nnetwork_dimm = 64\n")
    argv, warnings = build_command(config, make_plan(tmp_path, config))
    assert len(warnings) == 1 and "network_dimm" in warnings[0] and "network_dim" in warnings[0]
    assert "--network_dimm" in argv  # passed through: a newer sd-scripts may know it

    config = make_config(tmp_path / "b", "[train.extra_args]\nsdpa = 'yes'\n")
    with pytest.raises(ZireliaError, match="on/off flag"):
        build_command(config, make_plan(tmp_path / "b", config))


def test_no_data_loader_workers_drops_persistent_workers(tmp_path):
    config = make_config(tmp_path, "[train.extra_args]\nmax_data_loader_n_workers = 0\n")
    _, flags = split_command(build_command(config, make_plan(tmp_path, config))[0], make_plan(tmp_path, config).script)
    assert flags["max_data_loader_n_workers"] == ["0"] and "persistent_data_loader_workers" not in flags


def test_resume_and_samples(tmp_path):
    config = make_config(tmp_path, "sample_every_n_epochs = 5\n")
    state = tmp_path / "run" / "train" / "testpersona7-000004-state"
    plan = make_plan(tmp_path, config, resume=state)
    _, flags = split_command(build_command(config, plan)[0], plan.script)
    assert flags["resume"] == [str(state)]
    assert flags["sample_prompts"] == [str(tmp_path / "run" / "sample_prompts.txt")]
    assert flags["sample_every_n_epochs"] == ["5"]


def test_render_keeps_dash_values_attached():
    assert render_args({"a": True, "b": "-1", "c": ["x y", "z"], "d": "2"}) == [
        "--a",
        "--b=-1",
        "--c",
        "x y",
        "z",
        "--d",
        "2",
    ]


def test_shell_command_round_trips_through_a_shell_parser(tmp_path):
    spaced = tmp_path / "my models"
    config = make_config(tmp_path, "[train.extra_args]\nwandb_api_key = 'k-123'\n")
    config.train.ae = spaced / "ae.safetensors"
    plan = make_plan(tmp_path, config)
    argv, _ = build_command(config, plan)
    shown = shell_command(redact_argv(argv), plan.sd_scripts, plan.script)

    first, rest = shown.split(" &&", 1)
    assert shlex.split(first) == ["cd", str(plan.sd_scripts)]
    parsed = shlex.split(rest.replace("\\\n", " "))
    assert parsed[: argv.index("--wandb_api_key") + 1] == argv[: argv.index("--wandb_api_key") + 1]
    assert parsed[parsed.index("--wandb_api_key") + 1] == "***"
    assert "k-123" not in shown
    assert str(spaced / "ae.safetensors") in parsed
    assert all(line.endswith(" \\") for line in shown.splitlines()[:-1])
