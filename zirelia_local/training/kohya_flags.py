"""The sd-scripts and accelerate command-line flags that zirelia-local knows, checked against their source.

sd-scripts' only API is ~216 argparse flags, and its docs drift from its parser (its SDXL guide shows
`--text_encoder_lr1`, which the parser rejects). So every flag here was read from the parser itself, at
kohya-ss/sd-scripts commit 48d368fa (2026-02-16), by calling each script's `setup_parser()` in sd-scripts'
own venv and listing the option strings:

- `train_network.py` (SD1.x/2.x): `train_network.setup_parser()`, which adds the groups of
  `library/train_util.py` (add_sd_models_arguments, add_dataset_arguments, add_training_arguments,
  add_masked_loss_arguments, add_optimizer_arguments), `library/config_util.py` (add_config_arguments),
  `library/custom_train_functions.py`, `library/deepspeed_utils.py`, `library/sai_model_spec.py`,
  `library/utils.py` (add_logging_arguments) and its own network flags;
- `sdxl_train_network.py`: the above plus `library/sdxl_train_util.py` (add_sdxl_training_arguments);
- `flux_train_network.py`: the above plus `library/train_util.py` (add_dit_training_arguments),
  `library/flux_train_utils.py` (add_flux_train_arguments) and its own `--split_mode`.

`EMITTED_FLAGS` is the smaller set our command builder writes, each with the file that defines it;
tests fail if the builder emits a flag outside it, or if it is not in the script's parser list.
The opt-in sd-scripts test compares these lists with the parser of a real checkout.
"""

from __future__ import annotations

from typing import Literal

SD_SCRIPTS_COMMIT = "48d368fa"

ModelType = Literal["flux", "sdxl", "sd15"]
FlagKind = Literal["switch", "value", "values"]

#: The trainer script of each model type, relative to the sd-scripts checkout.
SCRIPTS: dict[str, str] = {
    "flux": "flux_train_network.py",
    "sdxl": "sdxl_train_network.py",
    "sd15": "train_network.py",
}

#: The LoRA module of each model type (sd-scripts' `networks/` package).
NETWORK_MODULES: dict[str, str] = {
    "flux": "networks.lora_flux",
    "sdxl": "networks.lora",
    "sd15": "networks.lora",
}

# --- Parser contents at 48d368fa (argparse store_true = "switch", everything else takes a value) ---

_COMMON_SWITCHES = """
    alpha_mask async_upload bucket_no_upscale cache_info cache_latents cache_latents_to_disk color_aug
    console_log_simple cpu_offload_checkpointing ddp_gradient_as_bucket_view ddp_static_graph
    debiased_estimation_loss debug_dataset deepspeed dim_from_weights enable_bucket enable_wildcard flip_aug
    fp16_master_weights_and_gradients fp8_base fp8_base_unet full_bf16 full_fp16 fused_backward_pass
    gradient_checkpointing highvram ip_noise_gamma_random_strength log_config lowram masked_loss mem_eff_attn
    network_train_text_encoder_only network_train_unet_only no_half_vae no_metadata noise_offset_random_strength
    output_config persistent_data_loader_workers random_crop resume_from_huggingface sample_at_first save_state
    save_state_on_train_end save_state_to_huggingface scale_v_pred_loss_like_noise_pred sdpa shuffle_caption
    skip_cache_check skip_until_initial_step torch_compile use_8bit_adam use_lion_optimizer v2
    v_parameterization weighted_captions xformers zero3_init_flag zero3_save_16bit_model zero_terminal_snr
""".split()

_COMMON_OPTIONS = """
    adaptive_noise_scale base_weights base_weights_multiplier bucket_reso_steps caption_dropout_every_n_epochs
    caption_dropout_rate caption_extension caption_extention caption_prefix caption_separator caption_suffix
    caption_tag_dropout_rate clip_skip conditioning_data_dir config_file console_log_file console_log_level
    dataset_class dataset_config dataset_repeats ddp_timeout dynamo_backend face_crop_aug_range
    gradient_accumulation_steps huber_c huber_scale huber_schedule huggingface_path_in_repo huggingface_repo_id
    huggingface_repo_type huggingface_repo_visibility huggingface_token in_json initial_epoch initial_step
    ip_noise_gamma keep_tokens keep_tokens_separator learning_rate log_prefix log_tracker_config
    log_tracker_name log_with logging_dir loss_type lr_decay_steps lr_scheduler lr_scheduler_args
    lr_scheduler_min_lr_ratio lr_scheduler_num_cycles lr_scheduler_power lr_scheduler_timescale
    lr_scheduler_type lr_warmup_steps max_bucket_reso max_data_loader_n_workers max_grad_norm max_timestep
    max_token_length max_train_epochs max_train_steps max_validation_steps metadata_author metadata_description
    metadata_is_negative_embedding metadata_license metadata_merged_from metadata_preprocessor metadata_tags
    metadata_thumbnail metadata_title metadata_trigger_phrase metadata_usage_hint min_bucket_reso min_snr_gamma
    min_timestep mixed_precision multires_noise_discount multires_noise_iterations network_alpha network_args
    network_dim network_dropout network_module network_weights noise_offset offload_optimizer_device
    offload_optimizer_nvme_path offload_param_device offload_param_nvme_path optimizer_args optimizer_type
    output_dir output_name pretrained_model_name_or_path prior_loss_weight reg_data_dir resize_interpolation
    resolution resume sample_every_n_epochs sample_every_n_steps sample_prompts sample_sampler
    save_every_n_epochs save_every_n_steps save_last_n_epochs save_last_n_epochs_state save_last_n_steps
    save_last_n_steps_state save_model_as save_n_epoch_ratio save_precision scale_weight_norms
    secondary_separator seed text_encoder_lr token_warmup_min token_warmup_step tokenizer_cache_dir
    train_batch_size train_data_dir training_comment unet_lr v_pred_like_loss vae vae_batch_size
    validate_every_n_epochs validate_every_n_steps validation_seed validation_split wandb_api_key wandb_run_name
    zero_stage
""".split()

# Added by sdxl_train_util.add_sdxl_training_arguments (SDXL) / train_util.add_dit_training_arguments (FLUX).
_TEXT_ENCODER_CACHE_SWITCHES = """
    cache_text_encoder_outputs cache_text_encoder_outputs_to_disk disable_mmap_load_safetensors
""".split()

_FLUX_SWITCHES = ["apply_t5_attn_mask", "split_mode"]

_FLUX_OPTIONS = """
    ae blocks_to_swap clip_l controlnet_model_name_or_path discrete_flow_shift guidance_scale logit_mean
    logit_std mode_scale model_prediction_type model_type sigmoid_scale t5xxl t5xxl_max_token_length
    text_encoder_batch_size timestep_sampling weighting_scheme
""".split()

#: Options declared with nargs="*" (one flag, several values).
MULTI_VALUE_OPTIONS = frozenset(
    {
        "base_weights",
        "base_weights_multiplier",
        "lr_scheduler_args",
        "network_args",
        "optimizer_args",
        "text_encoder_lr",
    }
)


def parser_flags(model_type: str) -> dict[str, FlagKind]:
    """Every flag of the model type's trainer script at SD_SCRIPTS_COMMIT, with how it takes values."""
    if model_type not in SCRIPTS:
        raise ValueError(f"unknown model type {model_type!r}")
    switches = list(_COMMON_SWITCHES)
    options = list(_COMMON_OPTIONS)
    if model_type in ("flux", "sdxl"):
        switches += _TEXT_ENCODER_CACHE_SWITCHES
    if model_type == "flux":
        switches += _FLUX_SWITCHES
        options += _FLUX_OPTIONS
    flags: dict[str, FlagKind] = dict.fromkeys(switches, "switch")
    for name in options:
        flags[name] = "values" if name in MULTI_VALUE_OPTIONS else "value"
    return flags


# --- What our command builder emits, each flag checked by hand in the file named (sd-scripts 48d368fa) ---

_TRAIN_UTIL = "library/train_util.py"
_TRAIN_NETWORK = "train_network.py"
_FLUX_TRAIN_UTILS = "library/flux_train_utils.py"

EMITTED_FLAGS: dict[str, str] = {
    # models
    "pretrained_model_name_or_path": _TRAIN_UTIL + " add_sd_models_arguments",
    "tokenizer_cache_dir": _TRAIN_UTIL + " add_sd_models_arguments",
    "clip_l": _FLUX_TRAIN_UTILS + " add_flux_train_arguments",
    "t5xxl": _FLUX_TRAIN_UTILS + " add_flux_train_arguments",
    "ae": _FLUX_TRAIN_UTILS + " add_flux_train_arguments",
    # network
    "network_module": _TRAIN_NETWORK + " setup_parser",
    "network_dim": _TRAIN_NETWORK + " setup_parser",
    "network_alpha": _TRAIN_NETWORK + " setup_parser (default 1: always pass it)",
    "network_train_unet_only": _TRAIN_NETWORK + " setup_parser",
    # schedule and optimizer
    "max_train_epochs": _TRAIN_UTIL + " add_training_arguments",
    "learning_rate": _TRAIN_UTIL + " add_optimizer_arguments (default 2e-6: always pass it)",
    "optimizer_type": _TRAIN_UTIL + " add_optimizer_arguments",
    "optimizer_args": _TRAIN_UTIL + " add_optimizer_arguments (nargs='*')",
    "lr_scheduler": _TRAIN_UTIL + " add_optimizer_arguments",
    "max_grad_norm": _TRAIN_UTIL + " add_optimizer_arguments",
    "seed": _TRAIN_UTIL + " add_training_arguments",
    # precision and memory
    "mixed_precision": _TRAIN_UTIL + " add_training_arguments (no|fp16|bf16)",
    "save_precision": _TRAIN_UTIL + " add_training_arguments (float|fp16|bf16)",
    "fp8_base": _TRAIN_UTIL + " add_training_arguments",
    "blocks_to_swap": _TRAIN_UTIL + " add_dit_training_arguments (FLUX; at most 35 for FLUX.1)",
    "highvram": _TRAIN_UTIL + " add_training_arguments",
    "sdpa": _TRAIN_UTIL + " add_training_arguments",
    "gradient_checkpointing": _TRAIN_UTIL + " add_training_arguments",
    "no_half_vae": _TRAIN_NETWORK + " setup_parser",
    "cache_latents": _TRAIN_UTIL + " add_training_arguments",
    "cache_latents_to_disk": _TRAIN_UTIL + " add_training_arguments",
    "cache_text_encoder_outputs": _TRAIN_UTIL + " add_dit_training_arguments / library/sdxl_train_util.py",
    "cache_text_encoder_outputs_to_disk": _TRAIN_UTIL + " add_dit_training_arguments / library/sdxl_train_util.py",
    "max_data_loader_n_workers": _TRAIN_UTIL + " add_training_arguments (default 8)",
    "persistent_data_loader_workers": _TRAIN_UTIL + " add_training_arguments",
    # FLUX flow matching
    "timestep_sampling": _FLUX_TRAIN_UTILS + " add_flux_train_arguments (sigma|uniform|sigmoid|shift|flux_shift)",
    "discrete_flow_shift": _FLUX_TRAIN_UTILS + " add_flux_train_arguments",
    "model_prediction_type": _FLUX_TRAIN_UTILS + " add_flux_train_arguments (raw|additive|sigma_scaled)",
    "guidance_scale": _FLUX_TRAIN_UTILS + " add_flux_train_arguments (default 3.5; docs: 1.0 for dev)",
    # data, outputs, samples, state, logs
    "dataset_config": "library/config_util.py add_config_arguments",
    "output_dir": _TRAIN_UTIL + " add_training_arguments",
    "output_name": _TRAIN_UTIL + " add_training_arguments",
    "save_model_as": _TRAIN_UTIL + " add_training_arguments (ckpt|pt|safetensors)",
    "save_every_n_epochs": _TRAIN_UTIL + " add_training_arguments",
    "save_state": _TRAIN_UTIL + " add_training_arguments",
    "save_last_n_epochs_state": _TRAIN_UTIL + " add_training_arguments",
    "resume": _TRAIN_UTIL + " add_training_arguments",
    "sample_prompts": _TRAIN_UTIL + " add_training_arguments",
    "sample_every_n_epochs": _TRAIN_UTIL + " add_training_arguments",
    "logging_dir": _TRAIN_UTIL + " add_training_arguments",
    "log_with": _TRAIN_UTIL + " add_training_arguments (tensorboard|wandb|all)",
}

#: `accelerate launch` flags we emit, checked in accelerate/commands/launch.py of accelerate 1.6.0
#: (the version sd-scripts 48d368fa pins). We run it as `python -m accelerate.commands.launch`, the same
#: entry point as the `accelerate launch` command, so the interpreter is always sd-scripts' own.
ACCELERATE_FLAGS: dict[str, FlagKind] = {
    "num_processes": "value",
    "num_machines": "value",
    "mixed_precision": "value",
    "dynamo_backend": "value",
    "multi_gpu": "switch",
    "gpu_ids": "value",
}

#: Flags whose value is a secret: shown as *** in printed and logged commands.
SECRET_FLAGS = frozenset({"huggingface_token", "wandb_api_key"})
