"""FLUX.1-dev at its real size, with no GPU: the real transformer built on the meta device (shapes, no memory).

What a CPU can check about full size: the LoRA target list, the kohya key names of all 19 + 38 blocks (and
that diffusers' kohya reader takes them back at these widths), the rank-32 file size, and the memory each VRAM
preset should need (`training/memory_estimate.py`) against the figures others publish for the same settings.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tests.conftest import REPO
from zirelia_local.dataset import flux_dev_shapes
from zirelia_local.training.lora_format import lora_target_modules, peft_to_kohya, single_linear1_loadable
from zirelia_local.training.memory_estimate import (
    GIB,
    PUBLISHED,
    TrainingSetup,
    estimate_training_memory,
    flux_shape,
    format_tables,
    preset_estimates,
    swapped_blocks,
)
from zirelia_local.training.presets import MIN_GIB, PRESET_NAMES, get_preset

DOUBLE_MODULES = [
    f"{stream}_{part}" for stream in ("img", "txt") for part in ("attn_qkv", "attn_proj", "mlp_0", "mlp_2")
]
SINGLE_MODULES = ["linear1", "linear2"]


@pytest.fixture(scope="module")
def transformer():
    return flux_dev_shapes.meta_transformer()


@pytest.fixture(scope="module")
def shape(transformer):
    return flux_shape(transformer)


def peft_state(transformer, rank: int) -> dict[str, torch.Tensor]:
    """A peft-style LoRA state dict of `rank` on every target, zeros (only the shapes matter)."""
    state = {}
    for name in lora_target_modules(transformer):
        layer = transformer.get_submodule(name)
        state[f"{name}.lora_A.weight"] = torch.zeros(rank, layer.in_features, dtype=torch.bfloat16)
        state[f"{name}.lora_B.weight"] = torch.zeros(layer.out_features, rank, dtype=torch.bfloat16)
    return state


def _numel(handle, key) -> int:
    tensor = handle.get_tensor(key)
    return tensor.numel() * tensor.element_size()


def test_the_transformer_has_flux1_devs_published_shape(transformer):
    assert len(transformer.transformer_blocks) == 19 and len(transformer.single_transformer_blocks) == 38
    assert transformer.transformer_blocks[0].attn.to_q.weight.shape == (3072, 3072)
    assert all(parameter.device.type == "meta" for parameter in transformer.parameters())
    assert flux_dev_shapes.parameter_count(transformer) == flux_dev_shapes.TRANSFORMER_PARAMS  # 11.9B


def test_the_text_encoders_have_their_published_sizes():
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    with torch.device("meta"):
        t5 = T5EncoderModel(T5Config(**flux_dev_shapes.T5_XXL))
        clip = CLIPTextModel(CLIPTextConfig(**flux_dev_shapes.CLIP_L))
    assert flux_dev_shapes.parameter_count(t5) == flux_dev_shapes.T5_XXL_PARAMS  # 4.76B: 9.5 GB in bf16
    assert flux_dev_shapes.parameter_count(clip) == flux_dev_shapes.CLIP_L_PARAMS


def test_the_lora_targets_every_projection_of_every_block(transformer):
    assert single_linear1_loadable(transformer)  # FLUX.1's widths: linear1's parts are trained too
    targets = lora_target_modules(transformer)
    assert len(targets) == len(set(targets)) == 19 * 12 + 38 * 5
    assert all(isinstance(transformer.get_submodule(name), torch.nn.Linear) for name in targets)
    assert "proj_out" not in targets  # the model's final output layer is not a block projection
    assert {name.split(".", 2)[1] for name in targets if name.startswith("transformer_blocks.")} == {
        str(i) for i in range(19)
    }
    assert {name.split(".", 2)[1] for name in targets if name.startswith("single_")} == {str(i) for i in range(38)}


def test_kohya_keys_name_all_19_double_and_38_single_blocks_and_diffusers_reads_them_back(transformer, tmp_path):
    from diffusers import FluxPipeline

    kohya = peft_to_kohya(peft_state(transformer, 1), alpha=16)
    modules = {key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0] for key in kohya}
    expected = {f"lora_unet_double_blocks_{i}_{m}" for i in range(19) for m in DOUBLE_MODULES}
    expected |= {f"lora_unet_single_blocks_{i}_{m}" for i in range(38) for m in SINGLE_MODULES}
    assert modules == expected
    assert kohya["lora_unet_double_blocks_18_img_attn_qkv.lora_down.weight"].shape == (3, 3072)
    assert kohya["lora_unet_double_blocks_18_txt_attn_qkv.lora_up.weight"].shape == (9216, 3)
    assert kohya["lora_unet_single_blocks_37_linear1.lora_up.weight"].shape == (21504, 4)
    assert kohya["lora_unet_single_blocks_37_linear2.lora_down.weight"].shape == (1, 15360)
    assert float(kohya["lora_unet_single_blocks_0_linear1.alpha"]) == 64.0  # 4 fused parts x alpha 16

    path = tmp_path / "rank1.safetensors"
    save_file(kohya, str(path))
    converted = FluxPipeline.lora_state_dict(str(path))
    converted = converted[0] if isinstance(converted, tuple) else converted
    names = {key.removeprefix("transformer.").rsplit(".", 2)[0] for key in converted}
    assert names == set(lora_target_modules(transformer))  # linear1 split at FLUX.1's real widths


def test_the_rank32_file_size_follows_from_the_shapes(transformer, tmp_path):
    sizes = {}
    for rank in (1, 2):
        path = tmp_path / f"rank{rank}.safetensors"
        save_file(peft_to_kohya(peft_state(transformer, rank), alpha=16, dtype=torch.bfloat16), str(path))
        with safe_open(str(path), framework="pt") as handle:
            sizes[rank] = sum(_numel(handle, key) for key in handle.keys())
    alphas = (19 * 8 + 38 * 2) * 4  # one float32 alpha per kohya module
    per_rank = sizes[1] - alphas
    assert sizes[2] == 2 * per_rank + alphas  # every LoRA tensor grows linearly with the rank

    # From the shapes alone: a fused module of n parts stores down (n*r, in) and a block-diagonal up (sum out, n*r).
    double = transformer.transformer_blocks[0]
    single = transformer.single_transformer_blocks[0]
    attn = double.attn
    groups = [
        [attn.to_q, attn.to_k, attn.to_v],
        [attn.to_out[0]],
        [double.ff.net[0].proj],
        [double.ff.net[2]],
        [attn.add_q_proj, attn.add_k_proj, attn.add_v_proj],
        [attn.to_add_out],
        [double.ff_context.net[0].proj],
        [double.ff_context.net[2]],
    ]
    single_groups = [[single.attn.to_q, single.attn.to_k, single.attn.to_v, single.proj_mlp], [single.proj_out]]

    def numel_per_rank(group) -> int:
        n = len(group)
        return n * group[0].in_features + n * sum(layer.out_features for layer in group)

    per_rank_from_shapes = 2 * (  # bf16
        19 * sum(numel_per_rank(group) for group in groups) + 38 * sum(numel_per_rank(g) for g in single_groups)
    )
    assert per_rank == per_rank_from_shapes
    rank32 = 32 * per_rank + alphas
    assert rank32 == 463_209_360  # 442 MiB of tensors for the rank-32 LoRA the project writes
    # peft's own layers hold r * (in + out) per layer (261 MB at rank 32): fusing q/k/v (and proj_mlp)
    # block-diagonally, as kohya's format requires, makes the file 1.8 times that.
    unfused = (
        2
        * 32
        * sum(
            transformer.get_submodule(n).in_features + transformer.get_submodule(n).out_features
            for n in lora_target_modules(transformer)
        )
    )
    assert 1.7 < rank32 / unfused < 1.8


def test_block_swap_splits_as_sd_scripts_does(shape):
    assert swapped_blocks(shape, 16) == (8, 16)
    assert swapped_blocks(shape, 35) == (17, 36)  # sd-scripts' documented maximum for FLUX.1
    with pytest.raises(ValueError):
        swapped_blocks(shape, 36)


@pytest.mark.parametrize("published", PUBLISHED, ids=lambda p: p.source.split("(")[0].strip()[:50])
def test_the_estimate_fits_the_card_each_published_configuration_names(shape, published):
    """Each source says its settings work on a card of `card_gb`: the estimate must fit that card (with 3% for
    what the driver reserves) and use most of it (at least 60%: no source would name a card twice the size)."""
    peak = estimate_training_memory(shape, published.setup).peak / GIB
    assert 0.6 * published.card_gb <= peak <= 0.97 * published.card_gb, f"{peak:.1f} GiB"


def test_the_savers_the_guides_call_for_are_needed(shape):
    """sd-scripts' README: 24 GB with batch 2; 16 GB needs batch 1 and block swap; 12 GB needs 16 blocks
    swapped; 10 GB needs an fp8 T5-XXL. Each smaller card must not fit the larger card's settings."""
    by_card = {p.card_gb: p.setup for p in PUBLISHED if p.source.startswith("sd-scripts")}
    assert estimate_training_memory(shape, by_card[24]).peak / GIB > 16
    assert estimate_training_memory(shape, by_card[16]).peak / GIB > 12
    assert estimate_training_memory(shape, by_card[12]).peak / GIB > 10
    # "T5XXL requires about 10GB of VRAM" (sd-scripts): the text-encoder caching phase with the fp16 file.
    assert 9 <= estimate_training_memory(shape, by_card[12]).caching / GIB <= 11


def test_every_preset_fits_the_smallest_card_it_is_chosen_for(shape):
    estimates = preset_estimates(shape, rank=32)
    for name in PRESET_NAMES:
        assert estimates[name].peak / GIB <= MIN_GIB[name], f"{name}: {estimates[name].peak / GIB:.1f} GiB"
    peaks = [estimates[name].peak for name in PRESET_NAMES]
    assert peaks == sorted(peaks)
    # The bf16 presets hold the whole 22 GiB transformer; fp8 halves it; swapping keeps blocks on the CPU.
    assert estimates["40gb"].weights / GIB == pytest.approx(flux_dev_shapes.TRANSFORMER_PARAMS * 2 / GIB)
    assert estimates["24gb"].weights * 2 == estimates["40gb"].weights
    assert estimates["12gb"].weights < estimates["16gb"].weights < estimates["24gb"].weights
    setup = TrainingSetup.from_preset(get_preset("flux", "24gb"))
    assert (setup.batch_size, setup.resolution, setup.fp8_base) == (2, 1024, True)


def test_the_kohya_guide_shows_the_estimates_the_module_prints(shape):
    text = (REPO / "docs" / "training-kohya.md").read_text()
    assert format_tables(shape) in text
    assert "python -m zirelia_local.training.memory_estimate" in text
    for name, estimate in preset_estimates(shape).items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | ") and " GiB | " in line)
        assert f"| {estimate.peak / GIB:.1f} GiB |" in row, row
