"""Shared fixtures. Everything here is real: the tiny FLUX pipeline is built from the real diffusers and
transformers classes (randomly initialised), images are real PNGs, configs are real TOML files."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"

os.environ.setdefault("ZIRELIA_NO_PROGRESS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One model cache for the whole session, so the tiny pipeline is built once (~5 s)."""
    path = Path(os.environ.get("ZIRELIA_TEST_CACHE") or tmp_path_factory.mktemp("zirelia-cache"))
    os.environ["ZIRELIA_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_flux_dir(_cache_dir: Path) -> Path:
    from zirelia_local.dataset.tiny_flux import ensure_tiny_flux

    return ensure_tiny_flux()


@pytest.fixture(scope="session")
def tiny_pipe(tiny_flux_dir: Path):
    """The tiny pipeline, loaded once. Tests must not change its state (LoRA, offload)."""
    from zirelia_local.common.config import GeneratorConfig
    from zirelia_local.dataset.flux import load_flux_pipeline

    return load_flux_pipeline(GeneratorConfig(model=str(tiny_flux_dir), device="cpu"))


DEMO_TOML = textwrap.dedent(
    """
    [persona]
    name = "Test Persona"
    trigger_word = "testpersona7"
    description = "a 30-year-old man with short black hair"
    caption_class = "a 30-year-old man"

    [dataset]
    count = {count}
    resolution = 64
    seed = 7
    fixed_seed_images = 2
    lighting = ["soft light", "hard light", "neon light"]
    expressions = ["smiling", "serious"]
    settings = ["in a park", "in an office", "on a beach"]
    outfits = ["a suit", "a hoodie"]
    angles = ["front view", "profile view"]

    [generator]
    model = "builtin:tiny-flux"
    steps = 2
    max_sequence_length = 32
    device = "cpu"
    batch_size = {batch_size}

    [run]
    dir = "{run_dir}"
    """
)


def write_config(
    tmp_path: Path, *, count: int = 6, batch_size: int = 2, extra: str = "", name: str = "config.toml"
) -> Path:
    run_dir = tmp_path / "run"
    text = DEMO_TOML.format(count=count, batch_size=batch_size, run_dir=run_dir) + textwrap.dedent(extra)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def assert_no_temp_files(run_dir: Path) -> None:
    """A finished (or rerun) stage leaves no temp file of an atomic write anywhere in the run directory."""
    leftovers = sorted(str(path.relative_to(run_dir)) for path in run_dir.rglob("*.tmp"))
    assert not leftovers, f"temp files left in {run_dir}: {leftovers}"


def run_cli(args: list[str], cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300):
    """Run a command of ours in a real subprocess (as a user would) and return the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )
