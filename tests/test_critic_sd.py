"""The critic on SD1.5 LoRAs (`[train] model_type = "sd15"`): it draws with the base model training used, not
with FLUX. A tiny, randomly initialised but real SD1.5 pipeline (diffusers classes, a CLIP tokenizer trained
locally) stands in for the user's model file; its LoRAs are real peft adapters saved by diffusers.

SDXL is checked at the level of which pipeline class loads the model (a tiny SDXL pipeline would add a second
text encoder and several seconds for no other code path)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import read_jsonl
from zirelia_local.critic import run_critic
from zirelia_local.critic.renderers import (
    SD_GUIDANCE,
    StableDiffusionLoraRenderer,
    evaluation_generation_config,
    evaluation_size,
    load_stable_diffusion_pipeline,
    renderer_for,
)
from zirelia_local.critic.stage import _settings

NAME = "testpersona7"  # tests.conftest's trigger word, so also the LoRA name


def build_tiny_sd15(folder: Path) -> Path:
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from zirelia_local.dataset.tiny_flux import _train_clip_tokenizer

    torch.manual_seed(0)
    (folder / "tokenizer").mkdir(parents=True)
    _train_clip_tokenizer(folder / "tokenizer")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            projection_dim=32,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    unet = UNet2DConditionModel(
        sample_size=32,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=32,
    )
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, clip_sample=False)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(folder / "model", safe_serialization=True)
    return folder / "model"


def write_sd_loras(model: Path, folder: Path, epochs=(1, 2)) -> dict[int, Path]:
    """One real LoRA file per epoch in sd-scripts' naming: a peft adapter on the tiny UNet, randomised per epoch."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipe = StableDiffusionPipeline.from_pretrained(model)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    files = {}
    for epoch in epochs:
        generator = torch.Generator().manual_seed(epoch)
        with torch.no_grad():
            for name, parameter in pipe.unet.named_parameters():
                if "lora_" in name:
                    parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        weight_name = f"{NAME}-{epoch:06d}.safetensors"  # sd-scripts' per-epoch name
        StableDiffusionPipeline.save_lora_weights(
            folder, unet_lora_layers=get_peft_model_state_dict(pipe.unet), weight_name=weight_name
        )
        files[epoch] = folder / weight_name
    return files


@pytest.fixture(scope="module")
def tiny_sd15(tmp_path_factory) -> tuple[Path, dict[int, Path]]:
    root = tmp_path_factory.mktemp("sd15")
    model = build_tiny_sd15(root)
    return model, write_sd_loras(model, root / "loras")


def sd_config(tmp_path: Path, model: Path | None, model_type: str = "sd15"):
    pretrained = f'pretrained_model = "{model}"\n' if model is not None else ""
    extra = (
        f'[train]\nmodel_type = "{model_type}"\n{pretrained}'
        '[curate]\nmode = "record"\n'
        '[critic]\nprompts = ["reading a book in a library"]\nseeds = [1001]\nmax_retries = 1\nresolution = 64\n'
    )
    return load_config(write_config(tmp_path, extra=extra))


def test_critic_draws_sd15_epochs_with_the_trained_base_model(tmp_path, tiny_sd15):
    model, loras = tiny_sd15
    config = sd_config(tmp_path, model)
    train = config.run_dir / "train"
    train.mkdir(parents=True)
    for path in loras.values():
        shutil.copy2(path, train / path.name)

    assert isinstance(renderer_for(config), StableDiffusionLoraRenderer)
    result = run_critic(config)

    records = list(read_jsonl(config.run_dir / "critic" / "scores.jsonl"))
    assert sorted({r["epoch"] for r in records}) == [1, 2]
    assert all(not r["accepted"] and r["failures"] == ["no_face"] for r in records)  # random weights: no face
    from PIL import Image

    first = {r["epoch"]: r for r in records if r["attempt"] == 0}
    pixels = {}
    for epoch, record in first.items():
        with Image.open(config.run_dir / record["image"]) as image:
            assert image.size == (64, 64)
            pixels[epoch] = np.asarray(image, np.float32)
    assert np.abs(pixels[1] - pixels[2]).mean() > 1  # each epoch's LoRA changes the image
    assert result.selection.epoch in (1, 2)
    assert (config.run_dir / "best.safetensors").is_file()


def test_sd_renderer_is_deterministic_and_the_lora_scale_matters(tmp_path, tiny_sd15):
    model, loras = tiny_sd15
    renderer = StableDiffusionLoraRenderer(sd_config(tmp_path, model))
    renderer.load_lora(loras[1], 1)
    once, again = renderer.render(["a photo"], [7], 1.0), renderer.render(["a photo"], [7], 1.0)
    weaker = renderer.render(["a photo"], [7], 0.2)
    renderer.unload_lora()
    same = np.asarray(once[0], np.float32) - np.asarray(again[0], np.float32)
    assert np.abs(same).max() <= 1  # same seed, same image (one grey level for CPU kernel order)
    assert np.abs(np.asarray(once[0], np.float32) - np.asarray(weaker[0], np.float32)).mean() > 1


def test_sd_settings_use_the_trained_base_model_cfg_guidance_and_native_size(tmp_path, tiny_sd15):
    model, _ = tiny_sd15
    config = sd_config(tmp_path, model)
    settings = _settings(config)
    assert settings["model_type"] == "sd15" and settings["model"] == str(model)
    assert evaluation_generation_config(config).generator.guidance == SD_GUIDANCE
    config.critic.resolution = None
    assert config.dataset.resolution == 64 and evaluation_size(config) == 64
    config.dataset.resolution = 1024
    assert evaluation_size(config) == 512  # SD1.5's native size, not the FLUX dataset's 1024
    config.train.model_type = "sdxl"
    assert evaluation_size(config) == 1024


def test_sd_base_model_unset_missing_or_of_another_family_is_a_clear_error(tmp_path, tiny_sd15):
    model, _ = tiny_sd15
    with pytest.raises(ZireliaError, match="pretrained_model is not set"):
        load_stable_diffusion_pipeline(sd_config(tmp_path / "a", None))
    with pytest.raises(ZireliaError, match="does not exist"):
        load_stable_diffusion_pipeline(sd_config(tmp_path / "b", tmp_path / "nowhere"))
    # model_type = "sdxl" loads with StableDiffusionXLPipeline, which an SD1.5 folder does not fit
    with pytest.raises(ZireliaError, match=r"holds a StableDiffusionPipeline, .* needs a StableDiffusionXLPipeline"):
        load_stable_diffusion_pipeline(sd_config(tmp_path / "c", model, "sdxl"))
    # a single file that is no model: the loader's failure becomes a message with the offline way out
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ZireliaError, match=r"could not load .* as a StableDiffusionPipeline") as caught:
        load_stable_diffusion_pipeline(sd_config(tmp_path / "d", tmp_path / "broken.safetensors"))
    assert "diffusers folder" in caught.value.hint
