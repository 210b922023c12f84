"""Opt-in: the real sd-scripts trains real (random) FLUX and SD1.5 LoRAs on the CPU, saves, and resumes; its
sample images feed the live identity curve, and an early stop ends it after a saved epoch.

Skipped unless ZIRELIA_SD_SCRIPTS names an sd-scripts checkout with its venv (`venv/bin/python`). Run:

    ZIRELIA_SD_SCRIPTS=/path/to/sd-scripts python -m pytest -q tests/test_kohya_integration.py

Everything sd-scripts loads is real and built here with sd-scripts' own classes, in its own interpreter:
a FLUX transformer in BFL layout with 1 double and 1 single block (its loader reads the block counts from
the checkpoint), the full-size AE and CLIP-L (their configs are fixed in sd-scripts), and local tokenizers
in `--tokenizer_cache_dir`. One part cannot be full size here: sd-scripts' T5-XXL config is fixed at 24
layers (4.7B parameters), so a small wrapper script swaps `library.flux_utils.load_t5xxl` for a loader of a
1-layer T5 with the real d_model of 4096, then runs flux_train_network.py unchanged.
SD1.5 (`train_network.py`) needs the standard SD1.5 shape (it converts the diffusers U-Net into its own
fixed-width one), so that model is full size: an 860M-parameter U-Net, CLIP-L and the SD VAE, random, saved
in fp16 as a diffusers folder (2 GB). SDXL's 2.6B U-Net is left out: too large for a CPU test.
A third FLUX launch trains from `"auto"` paths: a hub-cache snapshot in FLUX.1-dev's layout, whose
transformer is the diffusers folder (3 shards, full width, 1+1 blocks; sd-scripts converts the keys) and
whose T5 is merged from two shards by zirelia before the launch.
Cost on 2 CPU cores: about 1 min to build the models (cached in ZIRELIA_TEST_CACHE) and 1 min for the
diffusers-layout repository, then three FLUX launches of about 1.5 min each (model loading and caching
dominate; a step takes 20-50 s) and one SD1.5 launch.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open

from tests.conftest import write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.files import read_jsonl
from zirelia_local.critic.renderers import StableDiffusionLoraRenderer
from zirelia_local.dataset import run_dataset
from zirelia_local.training.kohya import LOG_FILE, METRICS_FILE, train_kohya
from zirelia_local.training.kohya_flags import EMITTED_FLAGS, SCRIPTS, parser_flags
from zirelia_local.training.outputs import read_epoch
from zirelia_local.training.resume import newest_state

SD_SCRIPTS = os.environ.get("ZIRELIA_SD_SCRIPTS")
pytestmark = [
    pytest.mark.sd_scripts,
    pytest.mark.slow,
    pytest.mark.skipif(not SD_SCRIPTS, reason="set ZIRELIA_SD_SCRIPTS to an sd-scripts checkout to run"),
]

MODELS_VERSION = 1
BUILD_MODELS = """
import json, sys
from dataclasses import replace
from pathlib import Path
import torch
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer, T5Config, T5EncoderModel, T5TokenizerFast
from library import flux_models

out, tokenizers = Path(sys.argv[1]), Path(sys.argv[2])
# Tokenizers: the tiny pipeline's CLIP BPE (vocab.json + merges.txt) and T5 unigram (tokenizer.json),
# saved by this interpreter's transformers (4.54) under the names sd-scripts looks for.
clip_tok = CLIPTokenizer(vocab_file=str(tokenizers / "tokenizer" / "vocab.json"),
                         merges_file=str(tokenizers / "tokenizer" / "merges.txt"), model_max_length=77)
clip_tok.save_pretrained(out / "tokenizers" / "openai_clip-vit-large-patch14")
t5_tok = T5TokenizerFast(tokenizer_file=str(tokenizers / "tokenizer_2" / "tokenizer.json"), eos_token="</s>",
                         pad_token="<pad>", unk_token="<unk>", extra_ids=0, model_max_length=512)
t5_tok.save_pretrained(out / "tokenizers" / "google_t5-v1_1-xxl")

def save(module, name, metadata=None):
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(out / name), metadata=metadata)

torch.manual_seed(0)
params = replace(flux_models.configs["dev"].params, depth=1, depth_single_blocks=1)
save(flux_models.Flux(params), "flux1-tiny.safetensors")
save(flux_models.AutoEncoder(flux_models.configs["dev"].ae_params), "ae.safetensors")
save(CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
     num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)),
     "clip_l.safetensors")
t5_config = dict(vocab_size=len(t5_tok), d_model=4096, d_kv=64, d_ff=256, num_layers=1, num_heads=2,
                 feed_forward_proj="gated-gelu", pad_token_id=t5_tok.pad_token_id, eos_token_id=t5_tok.eos_token_id)
save(T5EncoderModel(T5Config(**t5_config)), "t5xxl-1layer.safetensors", {"zirelia_t5_config": json.dumps(t5_config)})
"""

SD15_MODELS_VERSION = 1
BUILD_SD15 = """
import sys
from pathlib import Path
import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

out, tokenizers = Path(sys.argv[1]), Path(sys.argv[2])
torch.manual_seed(0)
tokenizer = CLIPTokenizer(vocab_file=str(tokenizers / "tokenizer" / "vocab.json"),
                          merges_file=str(tokenizers / "tokenizer" / "merges.txt"), model_max_length=77)
tokenizer.save_pretrained(out / "tokenizers" / "openai_clip-vit-large-patch14")
# The SD1.5 shapes (diffusers' defaults are SD1.x widths; SD1.5 has 768-d cross attention, 8 heads).
unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
                    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
    num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
    projection_dim=768))
scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1)
pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe.to(torch.float16).save_pretrained(out / "sd15", safe_serialization=True)
"""

T5_WRAPPER = '''"""Stand-in for the T5-XXL only (its full-size config is fixed in sd-scripts): load the 1-layer
T5 described in the file's metadata, then run sd-scripts' FLUX trainer unchanged."""
import json
import runpy
import sys

SD_SCRIPTS = {sd_scripts!r}
T5_CONFIG = {t5_config!r}  # None: the config is in the file's metadata
sys.path.insert(0, SD_SCRIPTS)

from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from transformers import T5Config, T5EncoderModel  # noqa: E402

from library import flux_utils  # noqa: E402


def load_small_t5(ckpt_path, dtype, device, disable_mmap=False, state_dict=None):
    with safe_open(ckpt_path, framework="pt") as handle:
        config = T5Config(**json.loads(T5_CONFIG or handle.metadata()["zirelia_t5_config"]))
    model = T5EncoderModel(config)
    model.load_state_dict(state_dict if state_dict is not None else load_file(ckpt_path), strict=True)
    return model.to(device=device, dtype=dtype) if dtype is not None else model.to(device)


flux_utils.load_t5xxl = load_small_t5
script = SD_SCRIPTS + "/flux_train_network.py"
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
'''

DUMP_FLAGS = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
flags = {}
for module in sys.argv[2:]:
    parser = importlib.import_module(module).setup_parser()
    flags[module] = {}
    for action in parser._actions:
        kind = "switch" if type(action).__name__ == "_StoreTrueAction" else "values" if action.nargs == "*" else "value"
        for option in action.option_strings:
            if option.startswith("--") and option != "--help":
                flags[module][option[2:]] = kind
print("FLAGS " + json.dumps(flags))
"""


@pytest.fixture(scope="module")
def sd_scripts() -> Path:
    folder = Path(SD_SCRIPTS).expanduser().resolve()
    assert (folder / "venv" / "bin" / "python").is_file(), f"{folder}/venv/bin/python is needed"
    return folder


def _build_once(sd_scripts: Path, script: str, folder: Path, last_file: str, tokenizers: Path) -> Path:
    """Run a model-building script in sd-scripts' interpreter unless its last file is already there."""
    if not (folder / last_file).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        python = sd_scripts / "venv" / "bin" / "python"
        subprocess.run(
            [str(python), "-c", script, str(folder), str(tokenizers)], cwd=sd_scripts, check=True, timeout=900
        )
    return folder


@pytest.fixture(scope="module")
def kohya_models(sd_scripts: Path, tiny_flux_dir: Path, _cache_dir: Path) -> Path:
    folder = _cache_dir / f"kohya-tiny-flux-v{MODELS_VERSION}"
    return _build_once(sd_scripts, BUILD_MODELS, folder, "t5xxl-1layer.safetensors", tiny_flux_dir)


@pytest.fixture(scope="module")
def sd15_model(sd_scripts: Path, tiny_flux_dir: Path, _cache_dir: Path) -> Path:
    folder = _cache_dir / f"kohya-sd15-v{SD15_MODELS_VERSION}"
    return _build_once(sd_scripts, BUILD_SD15, folder, "sd15/model_index.json", tiny_flux_dir)


def test_verified_flags_exist_in_the_checkouts_parser(sd_scripts):
    modules = [script.removesuffix(".py") for script in SCRIPTS.values()]
    completed = subprocess.run(
        [str(sd_scripts / "venv" / "bin" / "python"), "-c", DUMP_FLAGS, str(sd_scripts), *modules],
        cwd=sd_scripts,
        capture_output=True,
        text=True,
        timeout=300,
    )
    line = next(line for line in completed.stdout.splitlines() if line.startswith("FLAGS "))
    real = json.loads(line[len("FLAGS ") :])
    for model_type, script in SCRIPTS.items():
        theirs = real[script.removesuffix(".py")]
        ours = parser_flags(model_type)
        assert {name: kind for name, kind in ours.items() if theirs.get(name) != kind} == {}, model_type
        emitted = {name for name in EMITTED_FLAGS if name in ours}
        assert emitted <= set(theirs), model_type


def test_real_sd_scripts_trains_a_flux_lora_on_cpu_and_resumes(tmp_path, sd_scripts, kohya_models):
    wrapper = tmp_path / "flux_train_with_small_t5.py"
    wrapper.write_text(T5_WRAPPER.format(sd_scripts=str(sd_scripts), t5_config=None))
    train = f"""
    [train]
    sd_scripts = '{sd_scripts}'
    pretrained_model = '{kohya_models / "flux1-tiny.safetensors"}'
    clip_l = '{kohya_models / "clip_l.safetensors"}'
    t5xxl = '{kohya_models / "t5xxl-1layer.safetensors"}'
    ae = '{kohya_models / "ae.safetensors"}'
    tokenizer_cache_dir = '{kohya_models / "tokenizers"}'
    vram = '40gb'
    mixed_precision = 'no'
    optimizer = 'AdamW'
    batch_size = 2
    epochs = {{epochs}}
    sample_every_n_epochs = {{samples}}
    [train.extra_args]
    max_data_loader_n_workers = 0
    [critic]
    prompts = ['reading a book']
    seeds = [1]
    """
    config_path = write_config(tmp_path, count=2, extra=train.format(epochs=1, samples=1))
    config = load_config(config_path)
    run_dataset(config)  # 2 images, 64 px, from the tiny pipeline: one batch, one step per epoch

    first = train_kohya(config, script=wrapper)
    out = first.output_dir
    assert first.epoch_files == {1: out / "testpersona7.safetensors"}
    with safe_open(str(out / "testpersona7.safetensors"), framework="pt") as lora:
        keys, metadata = set(lora.keys()), lora.metadata()
        assert lora.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight").shape == (32, 3072)
    assert "lora_unet_single_blocks_0_linear1.lora_up.weight" in keys
    assert metadata["ss_network_dim"] == "32" and metadata["ss_epoch"] == "1"
    assert metadata["ss_base_model_version"] == "flux1"
    assert any((out / "sample").glob("*.png"))
    state = newest_state(out, "testpersona7")
    assert state.path.name == "testpersona7-state" and (state.epoch, state.step) == (1, 1)
    assert [(r["step"], r["epoch"]) for r in read_jsonl(out / METRICS_FILE)] == [(1, 1)]

    # Train on to 2 epochs: the rerun resumes from the saved state instead of starting over.
    config_path = write_config(tmp_path, count=2, extra=train.format(epochs=2, samples=0))
    second = train_kohya(load_config(config_path), script=wrapper)
    assert second.epoch_files == {1: out / "testpersona7-000001.safetensors", 2: out / "testpersona7.safetensors"}
    assert read_epoch(out / "testpersona7.safetensors") == 2
    second_launch = re.split(r"\n===== \d{4}-\d\d-\d\d ", (out / LOG_FILE).read_text())[-1]
    assert f"--resume {out / 'testpersona7-state'}" in second_launch
    assert "epoch 2/2" in second_launch and "epoch 1/2" not in second_launch
    assert [(r["step"], r["epoch"]) for r in read_jsonl(out / METRICS_FILE)] == [(1, 1), (2, 2)]
    assert newest_state(out, "testpersona7").epoch == 2


FLUX_REPO_VERSION = 1


@pytest.fixture(scope="module")
def flux_repository(kohya_models: Path, _cache_dir: Path) -> dict[str, Path]:
    """FLUX.1-dev's repository layout at sd-scripts' full width, without flux1-dev.safetensors: the diffusers
    transformer (1 double + 1 single block) in three shards, text_encoder/model.safetensors (the CLIP-L),
    text_encoder_2/ (the 1-layer T5) in two shards, ae.safetensors. Built once into the test cache."""
    import torch
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    from tests.flux_repo import T5_SHARDS, TRANSFORMER_SHARDS, sharded_files, write_folder

    folder = _cache_dir / f"kohya-flux-repository-v{FLUX_REPO_VERSION}"
    if not (folder / "model_index.json").is_file():
        staging = folder.with_name(folder.name + ".building")
        torch.manual_seed(0)
        transformer = FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,
            num_layers=1,
            num_single_layers=1,
            attention_head_dim=128,
            num_attention_heads=24,
            joint_attention_dim=4096,
            pooled_projection_dim=768,
            guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        weights = {name: tensor.to(torch.bfloat16) for name, tensor in transformer.state_dict().items()}
        del transformer
        files: dict[str, bytes] = sharded_files(
            weights, TRANSFORMER_SHARDS, "diffusion_pytorch_model.safetensors.index.json", "transformer"
        )
        files.update(
            sharded_files(
                load_file(kohya_models / "t5xxl-1layer.safetensors"),
                T5_SHARDS,
                "model.safetensors.index.json",
                "text_encoder_2",
            )
        )
        files["text_encoder/model.safetensors"] = (kohya_models / "clip_l.safetensors").read_bytes()
        files["ae.safetensors"] = (kohya_models / "ae.safetensors").read_bytes()
        write_folder(staging, files)
        (staging / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        os.replace(staging, folder)
    return {str(path.relative_to(folder)): path for path in folder.rglob("*") if path.is_file()}


def test_real_sd_scripts_trains_from_auto_paths_in_the_hub_cache(
    tmp_path, sd_scripts, kohya_models, flux_repository, monkeypatch
):
    """One download: "auto" gives sd-scripts the diffusers folder as the transformer and T5-XXL merged from
    its two shards; the real FLUX trainer loads both (converting the diffusers keys) and trains."""
    from huggingface_hub import constants
    from safetensors import safe_open as open_safetensors

    from tests.flux_repo import FLUX_DEV_REPO, T5_SHARDS, assert_same_tensors, write_hub_cache

    snapshot = write_hub_cache(tmp_path / "hub", dict(flux_repository))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("ZIRELIA_CACHE", str(tmp_path / "zirelia-cache"))
    with open_safetensors(str(kohya_models / "t5xxl-1layer.safetensors"), framework="pt") as handle:
        t5_config = handle.metadata()["zirelia_t5_config"]
    wrapper = tmp_path / "flux_train_with_small_t5.py"
    wrapper.write_text(T5_WRAPPER.format(sd_scripts=str(sd_scripts), t5_config=t5_config))
    train = f"""
    [train]
    sd_scripts = '{sd_scripts}'
    tokenizer_cache_dir = '{kohya_models / "tokenizers"}'
    vram = '40gb'
    mixed_precision = 'no'
    optimizer = 'AdamW'
    batch_size = 2
    epochs = 1
    [train.extra_args]
    max_data_loader_n_workers = 0
    """
    config = load_config(write_config(tmp_path, count=2, extra=train))
    run_dataset(config)  # drawn by the tiny pipeline; training then reads FLUX.1-dev's (stand-in) repository
    config.generator.model = FLUX_DEV_REPO

    result = train_kohya(config, script=wrapper)
    out = result.output_dir
    merged = tmp_path / "zirelia-cache" / "flux-t5xxl" / "black-forest-labs--FLUX.1-dev-t5xxl.safetensors"
    command = (out / "command.sh").read_text()
    assert f"--pretrained_model_name_or_path {snapshot}" in command and f"--t5xxl {merged}" in command
    assert f"--clip_l {snapshot / 'text_encoder' / 'model.safetensors'}" in command
    assert f"--ae {snapshot / 'ae.safetensors'}" in command
    log = (out / LOG_FILE).read_text()
    assert "from Diffusers checkpoint" in log and "Converting Diffusers to BFL" in log
    assert "Loaded Flux: <All keys matched successfully>" in log  # sd-scripts loads with strict=False
    assert_same_tensors(merged, [snapshot / "text_encoder_2" / shard for shard in T5_SHARDS])
    assert result.epoch_files == {1: out / "testpersona7.safetensors"}
    with safe_open(str(out / "testpersona7.safetensors"), framework="pt") as lora:
        assert lora.get_tensor("lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight").shape == (32, 3072)
        assert lora.metadata()["ss_base_model_version"] == "flux1"


def test_real_sd_scripts_trains_an_sd15_lora_from_a_diffusers_folder_on_cpu(tmp_path, sd_scripts, sd15_model):
    train = f"""
    [train]
    model_type = 'sd15'
    sd_scripts = '{sd_scripts}'
    pretrained_model = '{sd15_model / "sd15"}'
    tokenizer_cache_dir = '{sd15_model / "tokenizers"}'
    vram = '12gb'
    mixed_precision = 'no'
    optimizer = 'AdamW'
    batch_size = 2
    epochs = 1
    learning_rate = 0.01  # one step must move the LoRA visibly (checked through the critic's renderer)
    [train.extra_args]
    max_data_loader_n_workers = 0
    [critic]
    prompts = ['reading a book']
    seeds = [1]
    resolution = 64
    steps = 2
    """
    config = load_config(write_config(tmp_path, count=2, extra=train))
    run_dataset(config)  # 2 images, 64 px: one batch, one step

    result = train_kohya(config)  # sd-scripts' train_network.py, unchanged
    out = result.output_dir
    assert result.epoch_files == {1: out / "testpersona7.safetensors"}
    log = (out / LOG_FILE).read_text()
    assert "train_network.py" in log and "U-Net converted to original U-Net" in log
    with safe_open(str(out / "testpersona7.safetensors"), framework="pt") as lora:
        keys, metadata = set(lora.keys()), lora.metadata()
        down = lora.get_tensor("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight")
    assert down.shape == (32, 320)  # network_dim 32 on the first block's 320 channels
    assert any(key.startswith("lora_te_") for key in keys)  # SD1.5 LoRAs train the text encoder too
    assert metadata["ss_network_dim"] == "32" and metadata["ss_epoch"] == "1"
    assert metadata["ss_base_model_version"] == "sd_v1"
    assert newest_state(out, "testpersona7").epoch == 1
    assert [(r["step"], r["epoch"]) for r in read_jsonl(out / METRICS_FILE)] == [(1, 1)]

    # The critic draws SD1.5 evaluation images with diffusers (this interpreter's version, not sd-scripts'):
    # every LoRA module sd-scripts wrote must land on a diffusers module, and the LoRA must change the image.
    renderer = StableDiffusionLoraRenderer(config)
    renderer.load_lora(out / "testpersona7.safetensors", epoch=1)
    adapted = {
        part: sum(1 for m in getattr(renderer.pipe, part).modules() if "zirelia_epoch_1" in getattr(m, "lora_A", {}))
        for part in ("unet", "text_encoder")
    }
    written = {
        "unet": sum(1 for k in keys if k.startswith("lora_unet_") and k.endswith(".lora_down.weight")),
        "text_encoder": sum(1 for k in keys if k.startswith("lora_te_") and k.endswith(".lora_down.weight")),
    }
    assert adapted == written
    without, with_lora = (
        np.asarray(renderer.render(["testpersona7 reading a book"], [1], scale)[0], np.float32) for scale in (0.0, 1.0)
    )
    assert np.abs(with_lora - without).mean() > 0.5  # pixel levels (0-255)


class PhotoSamplesJudge:
    """The critic's live judge shown a real photo in place of each sample sd-scripts drew: the tiny random
    FLUX draws no face, so this stands in for what FLUX.1-dev with the LoRA would draw. The judging (dlib, the
    reference identity, the early-stop decision) is the real code; `drawn` keeps the files sd-scripts wrote."""

    def __init__(self, config, shown: dict[int, str]) -> None:
        from zirelia_local.critic import LiveJudge

        self.judge = LiveJudge(config)
        self.shown = shown
        self.folder = config.run_dir / "photos"
        self.drawn: dict[int, list[Path]] = {}

    def judge_epoch(self, epoch, images, history, *, since_epoch=0):
        from tests.photos import photo

        self.drawn[epoch] = list(images)
        self.folder.mkdir(exist_ok=True)
        stand_ins = []
        for index in range(len(images)):
            stand_ins.append(self.folder / f"e{epoch}_{index}.png")
            photo(self.shown.get(epoch, "biden")).save(stand_ins[-1])
        return self.judge.judge_epoch(epoch, stand_ins, history, since_epoch=since_epoch)


def test_real_sd_scripts_samples_feed_the_live_curve_and_an_early_stop_resumes(tmp_path, sd_scripts, kohya_models):
    from tests.critic_support import save_reference_identity
    from zirelia_local.critic import live_judge
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    wrapper = tmp_path / "flux_train_with_small_t5.py"
    wrapper.write_text(T5_WRAPPER.format(sd_scripts=str(sd_scripts)))
    train = f"""
    [train]
    sd_scripts = '{sd_scripts}'
    pretrained_model = '{kohya_models / "flux1-tiny.safetensors"}'
    clip_l = '{kohya_models / "clip_l.safetensors"}'
    t5xxl = '{kohya_models / "t5xxl-1layer.safetensors"}'
    ae = '{kohya_models / "ae.safetensors"}'
    tokenizer_cache_dir = '{kohya_models / "tokenizers"}'
    vram = '40gb'
    mixed_precision = 'no'
    optimizer = 'AdamW'
    batch_size = 2
    epochs = {{epochs}}
    early_stop = '{{early_stop}}'
    early_stop_patience = 1
    early_stop_min_epochs = 2
    [train.extra_args]
    max_data_loader_n_workers = 0
    [critic]
    prompts = ['reading a book']
    seeds = [1]
    steps = 2
    """
    config = load_config(write_config(tmp_path, count=2, extra=train.format(epochs=2, early_stop="off")))
    run_dataset(config)  # 2 images, 64 px: one step per epoch
    save_reference_identity(config.run_dir, DlibEmbedder())

    # 1. A real run: sd-scripts draws the sample prompt at each epoch's end; no face on the tiny model.
    first = train_kohya(config, script=wrapper, live=live_judge(config))
    out = first.output_dir
    curve = [r for r in read_jsonl(out / METRICS_FILE) if r.get("event") == "identity"]
    assert [r["epoch"] for r in curve] == [1, 2]
    assert all(r["identity"] is None and r["faces"] == 0 and "no_face" in r["failures"] for r in curve)
    assert curve[0]["summary"].startswith("no face in any of the 1 sample image(s)")
    assert all(Path(out / r["samples"][0]).name.startswith("testpersona7_e00000") for r in curve)

    # 2. Train on (resuming epoch 2's state) with the early stop on, judging photos in place of the samples: the
    #    persona in epochs 3-4, the other person after. The curve (2-epoch means, no face = 0) peaks at 4;
    #    patience 1: the stop is asked for at epoch 5 and carried out once a saved epoch (5, unless sd-scripts
    #    was quicker than the judge) has its LoRA and state on disk.
    config = load_config(write_config(tmp_path, count=2, extra=train.format(epochs=8, early_stop="identity")))
    judge = PhotoSamplesJudge(config, {3: "obama", 4: "obama"})
    stopped = train_kohya(config, script=wrapper, live=judge)
    record = json.loads((out / "early_stop.json").read_text())
    stop = record["epoch"]
    assert (record["decided_at_epoch"], record["best_epoch"]) == (5, 4) and stop >= 5
    assert sorted(judge.drawn)[:3] == [3, 4, 5] and all(p.is_file() for p in judge.drawn[5])  # sd-scripts' samples
    assert sorted(stopped.epoch_files) == list(range(1, stop + 1))
    assert read_epoch(out / f"testpersona7-{stop:06d}.safetensors") == stop
    state = newest_state(out, "testpersona7")
    assert state.epoch == stop and state.path.name == f"testpersona7-{stop:06d}-state"
    log = (out / LOG_FILE).read_text()
    assert f"early stop after the saved epoch {stop}: stopping sd-scripts" in log and "epoch 8/8" not in log

    # 3. The same config trains nothing more; with one more epoch and the early stop off it resumes there.
    assert sorted(train_kohya(config, script=wrapper, live=judge).epoch_files) == list(range(1, stop + 1))
    config = load_config(write_config(tmp_path, count=2, extra=train.format(epochs=stop + 1, early_stop="off")))
    last = train_kohya(config, script=wrapper, live=live_judge(config))
    assert sorted(last.epoch_files) == list(range(1, stop + 2))
    assert read_epoch(out / "testpersona7.safetensors") == stop + 1
    last_launch = re.split(r"\n===== \d{4}-\d\d-\d\d ", (out / LOG_FILE).read_text())[-1]
    assert f"--resume {out / f'testpersona7-{stop:06d}-state'}" in last_launch
    assert f"epoch {stop + 1}/{stop + 1}" in last_launch
    assert not (out / "early_stop.json").exists()
