"""The kohya FLUX LoRA format written by the diffusers backend: names, exact fusion, readers.

Real parts only: the tiny FLUX transformer with a real peft LoRA, diffusers' own kohya reader
(`load_lora_weights`), and, when a checkout is configured, sd-scripts' own LoRA loader.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from zirelia_local.training.lora_format import (
    DIFFUSERS_LINEAR1_SPLITS,
    kohya_metadata,
    lora_target_modules,
    peft_to_kohya,
    single_linear1_loadable,
)

RANK, ALPHA = 4, 2.0


def _transformer(tiny_flux_dir: Path):
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel.from_pretrained(tiny_flux_dir / "transformer")


def _random_lora(transformer, targets: list[str], seed: int = 0) -> None:
    """A peft LoRA whose up matrices are random too, so every layer's update is non-zero."""
    from peft import LoraConfig

    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _forward(transformer) -> torch.Tensor:
    from diffusers import FluxPipeline

    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 16, 64, generator=generator)
    text = torch.randn(2, 7, 32, generator=generator)
    pooled = torch.randn(2, 32, generator=generator)
    with torch.no_grad():
        return transformer(
            hidden_states=hidden,
            encoder_hidden_states=text,
            pooled_projections=pooled,
            timestep=torch.tensor([0.3, 0.8]),
            img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 4, "cpu", torch.float32),
            txt_ids=torch.zeros(7, 3),
            guidance=torch.tensor([1.0, 1.0]),
            return_dict=False,
        )[0]


def _random_peft_state(widths: dict[str, tuple[int, int]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out_features, in_features) in widths.items():
        state[f"{name}.lora_A.weight"] = torch.randn(RANK, in_features, generator=generator)
        state[f"{name}.lora_B.weight"] = torch.randn(out_features, RANK, generator=generator)
    return state


def _delta(state: dict[str, torch.Tensor], name: str) -> torch.Tensor:
    return state[f"{name}.lora_B.weight"] @ state[f"{name}.lora_A.weight"] * (ALPHA / RANK)


def test_targets_are_attention_and_mlp_projections_by_full_name(tiny_flux_dir):
    transformer = _transformer(tiny_flux_dir)
    targets = lora_target_modules(transformer)
    assert "transformer_blocks.0.attn.to_q" in targets
    assert "transformer_blocks.0.ff_context.net.2" in targets
    assert "single_transformer_blocks.0.proj_out" in targets
    # Full names: the transformer's final `proj_out` and the modulation layers are not trained.
    assert "proj_out" not in targets
    assert not any("norm" in name for name in targets)
    # The tiny model's single blocks are not FLUX.1's widths: diffusers could not reload linear1.
    assert not single_linear1_loadable(transformer)
    assert "single_transformer_blocks.0.proj_mlp" not in targets


def test_flux1_sized_model_trains_single_block_linear1_parts_too():
    from diffusers import FluxTransformer2DModel

    with torch.device("meta"):  # FLUX.1's real layout, no memory
        transformer = FluxTransformer2DModel(guidance_embeds=True)
    assert single_linear1_loadable(transformer)
    targets = lora_target_modules(transformer)
    assert "single_transformer_blocks.37.proj_mlp" in targets
    assert "single_transformer_blocks.37.attn.to_v" in targets
    assert len(targets) == 19 * 12 + 38 * 5


def test_kohya_names_follow_sd_scripts_flux_lora(tiny_flux_dir):
    transformer = _transformer(tiny_flux_dir)
    _random_lora(transformer, lora_target_modules(transformer))
    from peft import get_peft_model_state_dict

    kohya = peft_to_kohya(get_peft_model_state_dict(transformer), alpha=ALPHA)
    modules = {key.split(".")[0] for key in kohya}
    assert modules == {
        f"lora_unet_double_blocks_0_{stream}_{part}"
        for stream in ("img", "txt")
        for part in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")
    } | {"lora_unet_single_blocks_0_linear2"}
    for module in modules:
        assert {f"{module}.lora_down.weight", f"{module}.lora_up.weight", f"{module}.alpha"} <= set(kohya)


def test_fused_qkv_is_block_diagonal_with_alpha_keeping_the_scale():
    widths = {f"transformer_blocks.0.attn.to_{p}": (32, 32) for p in "qkv"}
    state = _random_peft_state(widths)
    kohya = peft_to_kohya(state, alpha=ALPHA)
    down = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight"]
    up = kohya["lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight"]
    alpha = kohya["lora_unet_double_blocks_0_img_attn_qkv.alpha"].item()
    assert down.shape == (3 * RANK, 32) and up.shape == (96, 3 * RANK)
    assert up[:32, RANK:].abs().sum() == 0 and up[32:64, :RANK].abs().sum() == 0
    assert alpha / down.shape[0] == pytest.approx(ALPHA / RANK)
    fused = up @ down * (alpha / down.shape[0])
    expected = torch.cat([_delta(state, name) for name in widths])
    torch.testing.assert_close(fused, expected, rtol=1e-5, atol=1e-5)


def test_incomplete_fused_group_is_refused():
    state = _random_peft_state({"transformer_blocks.0.attn.to_q": (32, 32)})
    with pytest.raises(ValueError, match="lacks part"):
        peft_to_kohya(state, alpha=ALPHA)


def test_kohya_file_reloaded_by_diffusers_reproduces_the_peft_adapter(tiny_flux_dir, tmp_path):
    from diffusers import FluxPipeline
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    transformer = _transformer(tiny_flux_dir)
    base = _forward(transformer)
    _random_lora(transformer, lora_target_modules(transformer))
    with_peft = _forward(transformer)
    path = tmp_path / "lora.safetensors"
    save_file(peft_to_kohya(get_peft_model_state_dict(transformer), alpha=ALPHA), str(path))

    pipe = FluxPipeline.from_pretrained(tiny_flux_dir)
    pipe.load_lora_weights(str(path))
    reloaded = _forward(pipe.transformer)
    assert (with_peft - base).abs().max() > 1e-2  # the LoRA does something
    torch.testing.assert_close(reloaded, with_peft, rtol=1e-5, atol=1e-5)


def test_single_block_linear1_round_trips_through_diffusers_reader_at_flux1_widths():
    # FLUX.1's single block is 450 MB in float32: the reader is checked on the state dict it would load.
    from diffusers.loaders.lora_conversion_utils import _convert_kohya_flux_lora_to_diffusers

    q, k, v, mlp = DIFFUSERS_LINEAR1_SPLITS
    names = ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"]
    widths = {f"single_transformer_blocks.0.{n}": (w, 3072) for n, w in zip(names, (q, k, v, mlp), strict=True)}
    state = _random_peft_state(widths)
    converted = _convert_kohya_flux_lora_to_diffusers(peft_to_kohya(state, alpha=ALPHA))
    for name in widths:
        a = converted[f"transformer.{name}.lora_A.weight"]
        b = converted[f"transformer.{name}.lora_B.weight"]
        assert a.shape == (RANK, 3072)  # split back to the original rank, not copied at 4x rank
        torch.testing.assert_close(b @ a, _delta(state, name), rtol=1e-4, atol=1e-4)


def test_metadata_is_what_sd_scripts_writes():
    metadata = kohya_metadata(
        output_name="siennafox23",
        network_dim=32,
        network_alpha=16.0,
        epoch=3,
        steps=120,
        resolution=1024,
        base_model="black-forest-labs/FLUX.1-dev",
        training={"learning_rate": 1e-4, "cache_latents": True},
    )
    assert metadata["ss_network_module"] == "networks.lora_flux"
    assert metadata["ss_network_dim"] == "32" and metadata["ss_network_alpha"] == "16"
    assert metadata["ss_base_model_version"] == "flux1"
    assert metadata["ss_epoch"] == "3" and metadata["ss_steps"] == "120"
    assert metadata["modelspec.architecture"] == "flux-1-dev/lora"
    assert metadata["modelspec.resolution"] == "1024x1024"
    assert metadata["ss_learning_rate"] == "0.0001" and metadata["ss_cache_latents"] == "True"
    assert all(isinstance(value, str) for value in metadata.values())


_SD_SCRIPTS_CHECK = textwrap.dedent(
    """
    # Runs in sd-scripts' venv: load the LoRA as flux_minimal_inference does, then compare every patched
    # BFL layer with base + the update computed from the peft weights.
    import json, sys
    import torch
    from safetensors.torch import load_file
    from library import flux_models
    from networks import lora_flux

    lora_file, expected_file = sys.argv[1], sys.argv[2]
    params = flux_models.FluxParams(in_channels=64, vec_in_dim=32, context_in_dim=32, hidden_size=32,
        mlp_ratio=4.0, num_heads=2, depth=1, depth_single_blocks=1, axes_dim=[4, 4, 8], theta=10000,
        qkv_bias=True, guidance_embed=True)
    model = flux_models.Flux(params)
    weights = load_file(lora_file)
    network, _ = lora_flux.create_network_from_weights(1.0, None, None, [None, None], model, weights, True)
    network.apply_to([None, None], model, apply_text_encoder=False, apply_unet=True)
    loaded = str(network.load_state_dict(weights, strict=True))
    errors = {}
    for name, delta in load_file(expected_file).items():
        module = model.get_submodule(name)
        x = torch.randn(3, module.in_features)
        with torch.no_grad():
            errors[name] = (module(x) - torch.nn.functional.linear(x, module.weight + delta, module.bias)).abs().max().item()
    print(json.dumps({"loaded": loaded, "modules": len(network.unet_loras), "errors": errors}))
    """
)


@pytest.mark.sd_scripts
def test_sd_scripts_loads_the_file_and_applies_the_same_update(tmp_path):
    sd_scripts = Path(os.environ.get("ZIRELIA_SD_SCRIPTS", "/nonexistent")).expanduser()
    python = sd_scripts / "venv" / "bin" / "python"
    if not (sd_scripts / "networks" / "lora_flux.py").is_file() or not python.is_file():
        pytest.skip("needs an sd-scripts checkout with its venv in ZIRELIA_SD_SCRIPTS")
    from safetensors.torch import save_file

    double = "transformer_blocks.0."
    widths = {double + f"attn.to_{p}": (32, 32) for p in "qkv"}
    widths |= {double + f"attn.add_{p}_proj": (32, 32) for p in "qkv"}
    widths |= {double + "attn.to_out.0": (32, 32), double + "attn.to_add_out": (32, 32)}
    widths |= {double + "ff.net.0.proj": (128, 32), double + "ff.net.2": (32, 128)}
    widths |= {double + "ff_context.net.0.proj": (128, 32), double + "ff_context.net.2": (32, 128)}
    single = "single_transformer_blocks.0."
    widths |= {single + f"attn.to_{p}": (32, 32) for p in "qkv"} | {single + "proj_mlp": (128, 32)}
    widths |= {single + "proj_out": (32, 160)}
    state = _random_peft_state(widths)
    d = lambda name: _delta(state, name)  # noqa: E731
    expected = {
        "double_blocks.0.img_attn.qkv": torch.cat([d(double + f"attn.to_{p}") for p in "qkv"]),
        "double_blocks.0.txt_attn.qkv": torch.cat([d(double + f"attn.add_{p}_proj") for p in "qkv"]),
        "double_blocks.0.img_attn.proj": d(double + "attn.to_out.0"),
        "double_blocks.0.txt_attn.proj": d(double + "attn.to_add_out"),
        "double_blocks.0.img_mlp.0": d(double + "ff.net.0.proj"),
        "double_blocks.0.img_mlp.2": d(double + "ff.net.2"),
        "double_blocks.0.txt_mlp.0": d(double + "ff_context.net.0.proj"),
        "double_blocks.0.txt_mlp.2": d(double + "ff_context.net.2"),
        "single_blocks.0.linear1": torch.cat(
            [d(single + n) for n in ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")]
        ),
        "single_blocks.0.linear2": d(single + "proj_out"),
    }
    save_file(peft_to_kohya(state, alpha=ALPHA), str(tmp_path / "lora.safetensors"))
    save_file({k: v.contiguous() for k, v in expected.items()}, str(tmp_path / "expected.safetensors"))
    script = tmp_path / "check.py"
    script.write_text(_SD_SCRIPTS_CHECK)
    done = subprocess.run(
        [str(python), str(script), str(tmp_path / "lora.safetensors"), str(tmp_path / "expected.safetensors")],
        cwd=sd_scripts,
        env={**os.environ, "PYTHONPATH": str(sd_scripts)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["loaded"] == "<All keys matched successfully>"
    assert report["modules"] == len(expected)
    assert max(report["errors"].values()) < 1e-4, report["errors"]
