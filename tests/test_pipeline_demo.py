"""`python -m zirelia_local.train configs/demo.toml`: every stage on the embedded tiny model, then the report."""

from __future__ import annotations

import importlib.util
import json

import pytest

from tests.conftest import REPO, run_cli

STAGES_PRESENT = all(
    importlib.util.find_spec(name) is not None
    for name in ("zirelia_local.curate.stage", "zirelia_local.training.diffusers_backend")
)


@pytest.mark.slow
@pytest.mark.skipif(not STAGES_PRESENT, reason="the curation and diffusers training stages are not in this checkout")
def test_demo_runs_every_stage_and_the_report_says_the_critic_rejected_the_images(tmp_path):
    run_dir = tmp_path / "demo"
    result = run_cli(
        ["-m", "zirelia_local.train", str(REPO / "configs" / "demo.toml"), "--run-dir", str(run_dir)], timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = run_dir / "report" / "index.html"
    assert "report:" in result.stderr and report.is_file()
    page = report.read_text()
    # The tiny random model draws no faces: the critic says so for every image, after its retry.
    assert "no face found" in page and "could not confirm the persona" in page
    assert "close-up portrait, face clearly visible" in page  # the retry's framing words
    selection = json.loads((run_dir / "critic" / "selection.json").read_text())
    assert selection["basis"] == "default_last" and selection["epoch"] == 2
    assert all(row["accepted"] == 0 for row in selection["table"])
    assert (run_dir / "best.safetensors").is_file()
