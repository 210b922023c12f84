"""`[train] pretrained_model`, `clip_l`, `t5xxl`, `ae` = "auto": found in the generator's FLUX repository.

The repository is a stand-in (tests/flux_repo.py: the tiny FLUX's real weights in FLUX.1-dev's layout, in a
real hub-cache layout read by huggingface_hub itself), since FLUX.1-dev cannot be downloaded here. The T5
merge, its reuse, its resumption after a real SIGKILL, and the doctor's rows all run for real on it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open

from tests.conftest import REPO, write_config
from tests.flux_repo import (
    FLUX_DEV_REPO,
    T5_SHARDS,
    assert_same_tensors,
    repository_files,
    write_folder,
    write_hub_cache,
)
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ZireliaError
from zirelia_local.doctor.kohya import kohya_model_file_checks
from zirelia_local.training import t5_merge
from zirelia_local.training.kohya_command import model_paths
from zirelia_local.training.kohya_env import model_file_problems
from zirelia_local.training.model_files import merge_pending_files, resolve_model_files
from zirelia_local.training.t5_merge import FINGERPRINT_KEY, merge_t5_shards, plan_t5_merge

ONE_DOWNLOAD = "hf download black-forest-labs/FLUX.1-dev --exclude flux1-dev.safetensors"


@pytest.fixture
def zirelia_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh zirelia cache for the merged T5 files (the tiny pipeline was built before, elsewhere)."""
    monkeypatch.setenv("ZIRELIA_CACHE", str(tmp_path / "zirelia-cache"))
    return tmp_path / "zirelia-cache"


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


@pytest.fixture
def snapshot(hub_cache: Path, zirelia_cache: Path, tiny_flux_dir: Path) -> Path:
    """The stand-in FLUX.1-dev, downloaded whole into the hub cache."""
    return write_hub_cache(hub_cache, repository_files(tiny_flux_dir))


def flux_config(tmp_path: Path, model: str = FLUX_DEV_REPO, train: str = ""):
    config = load_config(write_config(tmp_path, extra=f"[train]\nbackend = 'kohya'\n{train}"))
    config.generator.model = model
    return config


def assert_byte_exact(merged: Path, shards_folder: Path) -> None:
    assert_same_tensors(merged, [shards_folder / shard for shard in T5_SHARDS])
    with safe_open(str(shards_folder / T5_SHARDS[0]), framework="pt") as first:
        with safe_open(str(shards_folder / T5_SHARDS[1]), framework="pt") as second:
            dtypes = {handle.get_tensor(name).dtype for handle in (first, second) for name in handle.keys()}
    assert dtypes == {torch.bfloat16, torch.float32}  # mixed, as stored: the merge casts nothing


def test_the_stand_in_is_a_hub_cache_huggingface_hub_reads(snapshot: Path, hub_cache: Path) -> None:
    from huggingface_hub import scan_cache_dir, try_to_load_from_cache

    (repo,) = scan_cache_dir(hub_cache).repos
    assert repo.repo_id == FLUX_DEV_REPO and set(repo.refs) == {"main"}
    (revision,) = repo.revisions
    names = {file.file_path.relative_to(revision.snapshot_path).as_posix() for file in revision.files}
    assert {"flux1-dev.safetensors", "ae.safetensors", "text_encoder/model.safetensors"} <= names
    assert {f"text_encoder_2/{shard}" for shard in T5_SHARDS} <= names
    assert try_to_load_from_cache(FLUX_DEV_REPO, "ae.safetensors", cache_dir=hub_cache) == str(
        snapshot / "ae.safetensors"
    )


def test_auto_resolves_every_key_from_the_hub_cache(tmp_path: Path, snapshot: Path, zirelia_cache: Path) -> None:
    config = flux_config(tmp_path)
    assert (config.train.pretrained_model, config.train.clip_l, config.train.t5xxl, config.train.ae) == ("auto",) * 4
    files = resolve_model_files(config)
    assert all(file.auto and file.problem is None for file in files.values()), files
    merged = zirelia_cache / "flux-t5xxl" / "black-forest-labs--FLUX.1-dev-t5xxl.safetensors"
    assert model_paths(config) == {
        "pretrained_model": str(snapshot / "flux1-dev.safetensors"),
        "clip_l": str(snapshot / "text_encoder" / "model.safetensors"),
        "t5xxl": str(merged),
        "ae": str(snapshot / "ae.safetensors"),
    }
    assert "when training starts" in files["t5xxl"].detail and files["t5xxl"].merge_pending
    assert not merged.exists()  # resolving reads headers only; the merge is the training stage's
    assert model_file_problems(config) == []  # the pending merge is not a missing file

    merge_pending_files(files)
    assert_byte_exact(merged, snapshot / "text_encoder_2")
    again = resolve_model_files(config)["t5xxl"]
    assert not again.merge_pending and "reused" in again.detail


def test_without_the_single_file_sd_scripts_gets_the_diffusers_folder(tmp_path: Path, snapshot: Path) -> None:
    (snapshot / "flux1-dev.safetensors").unlink()
    file = resolve_model_files(flux_config(tmp_path))["pretrained_model"]
    # sd-scripts (library/flux_utils.py) reads <folder>/transformer/diffusion_pytorch_model-00001-of-00003
    # .safetensors and its two siblings when given a folder, and converts the diffusers keys.
    assert file.value == str(snapshot) and "3 diffusers shards" in file.detail
    assert (Path(file.value) / "transformer" / "diffusion_pytorch_model-00001-of-00003.safetensors").is_file()


def test_the_merge_is_byte_exact_and_not_redone(tmp_path: Path, snapshot: Path) -> None:
    plan = plan_t5_merge(snapshot / "text_encoder_2", tmp_path / "out" / "t5xxl.safetensors")
    first = merge_t5_shards(plan)
    assert not first.reused and first.copied == plan.total_bytes == plan.target.stat().st_size
    assert_byte_exact(plan.target, snapshot / "text_encoder_2")
    with safe_open(str(plan.target), framework="pt") as handle:
        assert handle.metadata()[FINGERPRINT_KEY] == plan.fingerprint
    before = plan.target.stat()

    second = merge_t5_shards(plan_t5_merge(snapshot / "text_encoder_2", plan.target))
    after = plan.target.stat()
    assert second.reused and second.copied == 0
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)

    # A replaced shard (a new download) changes the fingerprint: the file is merged again.
    shard = snapshot / "text_encoder_2" / T5_SHARDS[1]
    os.utime(shard, ns=(before.st_mtime_ns + 10**9, before.st_mtime_ns + 10**9))
    changed = plan_t5_merge(snapshot / "text_encoder_2", plan.target)
    assert changed.fingerprint != plan.fingerprint and not merge_t5_shards(changed).reused
    assert plan.target.stat().st_ino != before.st_ino
    assert not list(plan.target.parent.glob("*.partial"))


KILLED_MERGE = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from zirelia_local.training.t5_merge import merge_t5_shards, plan_t5_merge

    plan = plan_t5_merge(Path(sys.argv[1]), Path(sys.argv[2]))
    done = 0

    def progress(count):
        global done
        done += count
        print(done, plan.total_bytes, flush=True)
        time.sleep(0.02)  # slow enough to be killed mid-copy

    merge_t5_shards(plan, chunk_bytes=1024, on_progress=progress)
    print("finished", flush=True)
    """
)


def test_a_kill_mid_merge_leaves_no_half_file_and_the_rerun_completes(tmp_path: Path, snapshot: Path) -> None:
    folder, target = snapshot / "text_encoder_2", tmp_path / "out" / "t5xxl.safetensors"
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_MERGE, str(folder), str(target)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    seen = 0
    for line in child.stdout:
        done, total = (int(part) for part in line.split())
        seen = done
        if done > total // 3:
            os.kill(child.pid, signal.SIGKILL)
            break
    assert child.wait(timeout=60) == -signal.SIGKILL
    plan = plan_t5_merge(folder, target)
    assert not target.exists()  # never a half file under the name sd-scripts is given
    assert seen <= plan.partial.stat().st_size < plan.total_bytes

    rerun = merge_t5_shards(plan)
    assert rerun.resumed_from >= seen and rerun.copied == plan.total_bytes - rerun.resumed_from
    assert_byte_exact(target, folder)
    assert not plan.partial.exists()


def test_not_enough_disk_stops_before_writing(tmp_path: Path, snapshot: Path, monkeypatch) -> None:
    # Stand-in for a full disk (filling a real one is not something a test should do): the free-space query.
    monkeypatch.setattr(
        t5_merge.shutil, "disk_usage", lambda path: SimpleNamespace(total=10**12, used=10**12, free=1024)
    )
    plan = plan_t5_merge(snapshot / "text_encoder_2", tmp_path / "out" / "t5xxl.safetensors")
    with pytest.raises(ZireliaError, match="not enough disk space") as caught:
        merge_t5_shards(plan)
    assert "ZIRELIA_CACHE" in caught.value.hint
    assert not plan.target.exists() and not plan.partial.exists()


@pytest.mark.parametrize(
    ("remove", "key", "command"),
    [
        (["ae.safetensors"], "ae", "hf download black-forest-labs/FLUX.1-dev ae.safetensors"),
        (
            [f"text_encoder_2/{T5_SHARDS[1]}"],
            "t5xxl",
            "hf download black-forest-labs/FLUX.1-dev --include 'text_encoder_2/*'",
        ),
        (
            ["text_encoder/model.safetensors"],
            "clip_l",
            "hf download black-forest-labs/FLUX.1-dev --include 'text_encoder/*'",
        ),
        (
            ["flux1-dev.safetensors", "transformer/diffusion_pytorch_model-00002-of-00003.safetensors"],
            "pretrained_model",
            "hf download black-forest-labs/FLUX.1-dev --include 'transformer/*'",
        ),
    ],
)
def test_a_missing_piece_names_the_download_that_brings_it(tmp_path, snapshot, remove, key, command) -> None:
    for relative in remove:
        (snapshot / relative).unlink()
    config = flux_config(tmp_path)
    files = resolve_model_files(config)
    assert files[key].problem is not None and files[key].fix == command
    assert [name for name, file in files.items() if file.problem] == [key]
    rows = {check.name: check for check in kohya_model_file_checks(config)}
    assert rows[f"train.{key}"].status == "FAIL" and rows[f"train.{key}"].fix == command
    assert [problem for problem in model_file_problems(config) if command in problem]


def test_nothing_cached_names_the_one_download(tmp_path: Path, hub_cache: Path, zirelia_cache: Path) -> None:
    rows = kohya_model_file_checks(flux_config(tmp_path))
    assert [row.status for row in rows] == ["FAIL"] * 4
    assert all(row.fix.startswith(ONE_DOWNLOAD) and "not in the Hugging Face cache" in row.detail for row in rows)


def test_doctor_rows_say_what_auto_resolved_to(tmp_path: Path, snapshot: Path) -> None:
    rows = {check.name: check for check in kohya_model_file_checks(flux_config(tmp_path))}
    assert {row.status for row in rows.values()} == {"ok"}
    assert rows["train.pretrained_model"].detail.startswith("auto: flux1-dev.safetensors of black-forest-labs")
    assert "text_encoder/model.safetensors" in rows["train.clip_l"].detail
    assert "2 shards, merged once into" in rows["train.t5xxl"].detail
    assert rows["train.ae"].detail.startswith("auto: ae.safetensors")


def test_a_local_folder_of_the_repository(tmp_path: Path, zirelia_cache: Path, tiny_flux_dir: Path) -> None:
    folder = write_folder(tmp_path / "models" / "FLUX.1-dev", repository_files(tiny_flux_dir))
    (folder / "ae.safetensors").unlink()
    config = flux_config(tmp_path, model=str(folder))
    files = resolve_model_files(config)
    assert files["pretrained_model"].value == str(folder / "flux1-dev.safetensors")
    assert files["ae"].fix == f"hf download black-forest-labs/FLUX.1-dev ae.safetensors --local-dir {folder}"
    merge_pending_files(files)
    target = Path(files["t5xxl"].value)
    assert target.parent == zirelia_cache / "flux-t5xxl" and target.name.startswith("FLUX.1-dev-")
    assert_byte_exact(target, folder / "text_encoder_2")


def test_explicit_paths_keep_working_and_auto_needs_a_flux_repository(tmp_path: Path, zirelia_cache: Path) -> None:
    clip = tmp_path / "clip_l.safetensors"
    config = flux_config(tmp_path, model="builtin:tiny-flux", train=f"clip_l = '{clip}'\n")
    files = resolve_model_files(config)
    assert files["clip_l"].value == str(clip) and not files["clip_l"].auto
    assert "embedded test model" in files["ae"].problem
    sdxl = flux_config(tmp_path, train="model_type = 'sdxl'\n")
    (only,) = resolve_model_files(sdxl).values()
    assert only.value is None and "FLUX files only" in only.problem


LOAD_FOR_GENERATION = textwrap.dedent(
    """
    from zirelia_local.common.config import GeneratorConfig
    from zirelia_local.dataset.flux import load_flux_pipeline

    pipe = load_flux_pipeline(GeneratorConfig(model="black-forest-labs/FLUX.1-dev", device="cpu"))
    print(type(pipe.transformer).__name__, pipe.transformer.config.num_layers, pipe.text_encoder_2.dtype)
    """
)


@pytest.mark.slow
def test_the_same_snapshot_serves_generation(snapshot: Path, hub_cache: Path) -> None:
    """The download "auto" reads is the one generation loads: FluxPipeline from the hub id, offline."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_FOR_GENERATION], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    assert completed.stdout.split() == ["FluxTransformer2DModel", "1", "torch.float32"]


def test_the_reference_config_has_no_model_path_to_fill_in() -> None:
    config = load_config(REPO / "configs" / "sienna.toml")
    assert config.generator.model == FLUX_DEV_REPO
    assert [config.train.pretrained_model, config.train.clip_l, config.train.t5xxl, config.train.ae] == ["auto"] * 4
