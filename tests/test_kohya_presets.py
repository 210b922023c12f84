"""VRAM presets: the card sizes torch reports map to the right preset, and `auto` always says why."""

from __future__ import annotations

import pytest

from zirelia_local.training.presets import (
    PRESET_NAMES,
    PRESETS,
    GpuInfo,
    choose_preset,
    detect_local_gpus,
    preset_name_for_memory,
    smaller_preset,
)

GIB = 2**30


@pytest.mark.parametrize(
    ("card", "total_gib", "expected"),
    [
        ("RTX 3060 12GB", 11.76, "12gb"),
        ("RTX 4060 Ti 16GB", 15.70, "16gb"),
        ("RTX 4080", 15.99, "16gb"),
        ("RTX 3090", 23.69, "24gb"),
        ("RTX 4090", 23.99, "24gb"),
        ("A100 40GB", 39.39, "40gb"),
        ("RTX 6000 Ada 48GB", 47.50, "40gb"),
        ("H100 80GB", 79.19, "80gb"),
        ("H200", 139.8, "80gb"),
        ("RTX 3070 8GB", 7.79, "12gb"),
    ],
)
def test_reported_card_memory_picks_the_largest_preset_that_fits(card, total_gib, expected):
    assert preset_name_for_memory(total_gib) == expected, card


def test_auto_without_a_gpu_falls_back_and_says_so():
    choice = choose_preset("flux", "auto", [])
    assert choice.preset.name == "24gb" and not choice.detected
    assert "no CUDA GPU was detected" in choice.reason and "fell back to the 24gb preset" in choice.reason
    unknown = choose_preset("flux", "auto", None)
    assert "could not be queried" in unknown.reason


def test_auto_uses_the_smallest_card_the_run_uses():
    gpus = [GpuInfo(0, "NVIDIA H100", int(79.2 * GIB)), GpuInfo(1, "NVIDIA GeForce RTX 4090", int(23.99 * GIB))]
    assert choose_preset("flux", "auto", gpus).preset.name == "80gb"  # one process: cuda:0 only
    both = choose_preset("flux", "auto", gpus, num_processes=2)
    assert both.preset.name == "24gb" and "RTX 4090 (24.0 GiB)" in both.reason
    assert choose_preset("flux", "auto", gpus, gpu_ids="1").preset.name == "24gb"


def test_auto_below_12gb_explains_what_else_to_do():
    choice = choose_preset("flux", "auto", [GpuInfo(0, "RTX 3070", int(7.8 * GIB))])
    assert choice.preset.name == "12gb" and "blocks_to_swap to 22-28" in choice.reason


def test_explicit_preset_is_used_as_is():
    choice = choose_preset("sdxl", "16gb", [])
    assert choice.preset is PRESETS["sdxl"]["16gb"] and "set in the config" in choice.reason


def test_presets_shrink_memory_use_step_by_step():
    assert [smaller_preset(name) for name in PRESET_NAMES] == [None, "12gb", "16gb", "24gb", "40gb"]
    flux = [PRESETS["flux"][name] for name in PRESET_NAMES]
    assert [p.blocks_to_swap for p in flux] == sorted((p.blocks_to_swap for p in flux), reverse=True)
    assert all(p.blocks_to_swap <= 35 for p in flux)  # FLUX.1 swaps at most 35 blocks (sd-scripts docs)
    assert [p.fp8_base for p in flux] == [True, True, True, False, False]
    for model_type in PRESETS:
        sizes = [
            PRESETS[model_type][name].batch_size * PRESETS[model_type][name].resolution ** 2 for name in PRESET_NAMES
        ]
        assert sizes == sorted(sizes), model_type


def test_local_detection_reports_this_machines_cuda_devices():
    import torch

    gpus = detect_local_gpus()
    assert isinstance(gpus, list)
    assert len(gpus) == (torch.cuda.device_count() if torch.cuda.is_available() else 0)
