"""Secrets, names derived from the config, and full disks."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys

import pytest

from tests.conftest import REPO, write_config
from zirelia_local.common.config import load_config
from zirelia_local.common.errors import ConfigError
from zirelia_local.common.security import redact, redact_toml


def test_tokens_are_redacted_from_toml_and_text():
    toml = 'hf_token = "hf_abcdefghijklmnopqrstuvwxyz1234"\n[x]\napi_token = \'secret\'\nname = "kept"\n'
    redacted = redact_toml(toml)
    assert "hf_abcdef" not in redacted and "secret" not in redacted
    assert 'name = "kept"' in redacted and 'hf_token = "***"' in redacted
    line = "HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz1234 accelerate launch ... token hf_ZYXWVUTSRQPONMLKJIHGFEDCBA99"
    assert "hf_" not in redact(line).replace("HF_TOKEN", "")


def test_config_snapshot_in_run_dir_has_no_token(tmp_path):
    path = write_config(tmp_path, count=2)
    path.write_text(path.read_text() + '\n# hf_token = "hf_abcdefghijklmnopqrstuvwxyz1234"\n')
    from zirelia_local.common.rundir import prepare_run_dir

    run_dir = prepare_run_dir(load_config(path))
    assert "hf_abcdefghijklmnopqrstuvwxyz1234" not in (run_dir / "config.toml").read_text()


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "x y", "/abs", "C:\\x"])
def test_names_from_the_config_cannot_escape_the_run_dir(tmp_path, name):
    path = write_config(tmp_path)
    text = path.read_text()
    with pytest.raises(ConfigError):
        path.write_text(text.replace('trigger_word = "testpersona7"', f"trigger_word = {json.dumps(name)}"))
        load_config(path)
    with pytest.raises(ConfigError):
        path.write_text(text + f"\n[train]\noutput_name = {json.dumps(name)}\n")
        load_config(path)


def _limit_file_size(limit: int):
    def apply() -> None:
        # A real kernel limit on file size: writes past it fail with EFBIG, as on a full disk.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_full_disk_leaves_no_half_written_manifest_and_resume_completes(tmp_path, tiny_flux_dir):
    from zirelia_local.common.files import sha256_file
    from zirelia_local.common.manifest import Manifest
    from zirelia_local.dataset import run_dataset

    path = write_config(tmp_path, count=6, batch_size=2)
    run_dataset(load_config(path))
    manifest = tmp_path / "run" / "manifest.jsonl"
    before = manifest.read_bytes()
    assert len(before) < 8_000

    # Grow the plan to 16 images: the manifest (~0.7 kB a record) no longer fits under the 8 kB limit.
    # (a real kernel limit on file size: writes past it fail with EFBIG, as on a full disk)
    path.write_text(path.read_text().replace("count = 6", "count = 16"))
    result = subprocess.run(
        [sys.executable, "-m", "zirelia_local", "dataset", str(path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size(8_000),
        timeout=300,
    )
    assert result.returncode == 1, result.stderr
    assert "the disk is full" in result.stderr and "Traceback" not in result.stderr
    assert manifest.read_bytes() == before  # the old manifest, whole: never a truncated mix
    assert list((tmp_path / "run").rglob(".*.tmp")) == []

    config = load_config(path)
    run_dataset(config)
    records = list(Manifest(config.run_dir))
    assert len(records) == 16
    assert all(sha256_file(config.run_dir / r["file"]) == r["sha256"] for r in records)
