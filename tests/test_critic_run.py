"""`run_critic` end to end: real LoRA epoch files on the tiny FLUX pipeline, retries, files, epoch choice; and
the same loop with real photos standing in for what a trained FLUX.1-dev LoRA would draw."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli, write_config
from tests.critic_support import (
    NAME,
    PhotoRenderer,
    build_tiny_clip,
    save_reference_identity,
    write_epoch_loras,
    write_placeholder_loras,
)
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.common.files import read_jsonl, sha256_file
from zirelia_local.critic import run_critic
from zirelia_local.critic.renderers import FluxLoraRenderer
from zirelia_local.dataset.generation import render_batch

CRITIC = """
[critic]
prompts = ["reading a book in a library", "on a beach at sunrise"]
seeds = [1001]
max_retries = 1
"""


@pytest.fixture(scope="module")
def lora_files(tmp_path_factory, tiny_flux_dir) -> dict[int, Path]:
    return write_epoch_loras(tiny_flux_dir, tmp_path_factory.mktemp("loras"), NAME, epochs=(1, 2))


def install_loras(config, lora_files) -> dict[int, Path]:
    folder = config.run_dir / "train"
    folder.mkdir(parents=True, exist_ok=True)
    return {epoch: Path(shutil.copy2(path, folder / path.name)) for epoch, path in lora_files.items()}


def rescale_lora(path: Path, factor: float) -> None:
    """Change a LoRA file's weights in place, keeping its metadata (epoch, adapter config)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    save_file({key: value * factor for key, value in load_file(path).items()}, str(path), metadata=metadata)


class CountingRenderer(FluxLoraRenderer):
    """The real renderer, counting what it draws."""

    drawn = 0

    def render(self, prompts, seeds, lora_scale):
        CountingRenderer.drawn += len(prompts)
        return super().render(prompts, seeds, lora_scale)


def test_tiny_pipeline_with_two_lora_epochs_records_no_face_after_retries(tmp_path, lora_files, tiny_pipe):
    config = load_config(write_config(tmp_path, extra=CRITIC + '[curate]\nmode = "record"\n'))
    installed = install_loras(config, lora_files)
    result = run_critic(config)
    run_dir = config.run_dir

    records = list(read_jsonl(run_dir / "critic" / "scores.jsonl"))
    assert len(records) == 2 * 2 * 2  # epochs x prompts x (first try + 1 retry)
    for record in records:
        assert (run_dir / record["image"]).is_file()
        assert record["accepted"] is False and record["failures"] == ["no_face"]
        assert record["verdict"] == "rejected: no face found"
        assert "no face found" in record["reasons"]
        for key in ("epoch", "prompt", "seed", "attempt", "adjusted_prompt", "lora_scale", "scores", "checks"):
            assert key in record
    retries = [r for r in records if r["attempt"] == 1]
    assert len(retries) == 4
    for retry in retries:
        assert "close-up portrait, face clearly visible" in retry["adjusted_prompt"]
        assert retry["attempt_seed"] != retry["seed"]
        assert any("no face found: added framing words" in change for change in retry["adjustments"])
        assert retry["outcome"] == "rejected after 1 retry"

    # The LoRA really was applied, and each epoch's differently: same prompt and seed, three different images.
    first = next(r for r in records if r["epoch"] == 1 and r["item"] == "p00_s1001" and r["attempt"] == 0)
    second = next(r for r in records if r["epoch"] == 2 and r["item"] == "p00_s1001" and r["attempt"] == 0)
    base = np.asarray(render_batch(tiny_pipe, [first["adjusted_prompt"]], [1001], config, size=64)[0], np.int16)
    with Image.open(run_dir / first["image"]) as one, Image.open(run_dir / second["image"]) as two:
        one_px, two_px = np.asarray(one, np.int16), np.asarray(two, np.int16)
    assert np.abs(one_px - base).mean() > 1 and np.abs(two_px - one_px).mean() > 1

    selection = json.loads((run_dir / "critic" / "selection.json").read_text())
    assert selection["epoch"] == 2 and selection["basis"] == "default_last"
    assert "no evaluation image showed a face" in selection["reason"]
    assert (
        selection["identity"]["reference"] is None
        and "identity.safetensors is missing" in selection["identity"]["missing"]
    )
    assert "clip_pretrained is not set" in selection["clip"]["unavailable_reason"]
    assert [row["epoch"] for row in selection["table"]] == [1, 2]
    assert result.best_file == run_dir / "best.safetensors"
    assert sha256_file(result.best_file) == sha256_file(installed[2])

    # A rerun with nothing changed reuses every epoch; a changed LoRA is judged again.
    CountingRenderer.drawn = 0
    run_critic(config, renderer=CountingRenderer(config))
    assert CountingRenderer.drawn == 0
    rescale_lora(installed[2], 2.0)
    run_critic(config, renderer=CountingRenderer(config))
    assert CountingRenderer.drawn == 4  # epoch 2 only: 2 first tries + 2 retries


def test_missing_loras_missing_identity_and_unknown_epochs_are_clear_errors(tmp_path, lora_files):
    config = load_config(write_config(tmp_path, extra=CRITIC))
    with pytest.raises(ZireliaError, match="no LoRA files to judge") as error:
        run_critic(config)
    assert "zirelia train" in error.value.hint
    install_loras(config, lora_files)
    with pytest.raises(ZireliaError, match="no reference identity"):  # curate mode enforce: identity required
        run_critic(config)
    config.critic.epochs = [1, 5]
    with pytest.raises(ZireliaError, match=r"epochs lists \[5\], but only epochs \[1, 2\] were saved"):
        run_critic(config)


def test_cli_critic_without_loras_exits_1_with_a_hint(tmp_path):
    path = write_config(tmp_path, extra=CRITIC)
    result = run_cli(["-m", "zirelia_local", "critic", str(path)])
    assert result.returncode == 1, result.stderr
    assert "no LoRA files to judge" in result.stderr and "Traceback" not in result.stderr


def test_real_photos_same_person_accepted_other_rejected_and_retry_recovers(tmp_path):
    clip = build_tiny_clip(tmp_path / "clip")
    extra = CRITIC + f'clip_model = "{clip}"\nmin_clip_score = -1.0\n'
    config = load_config(write_config(tmp_path, extra=extra))
    installed = write_placeholder_loras(config.run_dir / "train")
    from zirelia_local.faces.dlib_embedder import DlibEmbedder

    save_reference_identity(config.run_dir, DlibEmbedder(), ("obama2", "obama3"))
    renderer = PhotoRenderer()
    result = run_critic(config, renderer=renderer)

    records = list(read_jsonl(config.run_dir / "critic" / "scores.jsonl"))
    by_key = {(r["epoch"], r["item"], r["attempt"]): r for r in records}
    # Epoch 1: the other person, rejected on identity, retried with the adjusted prompt, still rejected.
    wrong = by_key[(1, "p00_s1001", 0)]
    assert wrong["failures"] == ["identity_weak"] and wrong["scores"]["identity_distance"] > 0.6
    assert by_key[(1, "p00_s1001", 1)]["lora_scale"] == pytest.approx(1.15)
    assert not by_key[(1, "p00_s1001", 1)]["accepted"]
    # Epoch 2: the same person accepted at once; the beach image recovers on its retry.
    right = by_key[(2, "p00_s1001", 0)]
    assert right["accepted"] and right["scores"]["identity_distance"] < 0.45
    assert right["scores"]["clip_score"] is not None
    assert (2, "p00_s1001", 1) not in by_key
    assert not by_key[(2, "p01_s1001", 0)]["accepted"]
    retry = by_key[(2, "p01_s1001", 1)]
    assert retry["accepted"] and retry["adjusted_prompt"].startswith(f"{NAME}, a photo of {NAME},")
    assert retry["lora_scale"] == pytest.approx(1.15)
    assert (2, [retry["adjusted_prompt"]], pytest.approx(1.15)) in renderer.calls

    assert result.selection.epoch == 2 and result.selection.basis == "identity"
    assert sha256_file(config.run_dir / "best.safetensors") == sha256_file(installed[2])
    table = {row.epoch: row for row in result.table}
    assert table[1].accepted == 0 and table[2].accepted == 2 and table[2].accepted_first_try == 1
