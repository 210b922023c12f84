"""`python -m zirelia_local.train configs/demo.toml`: every stage on the embedded tiny model, then the report."""

from __future__ import annotations

import json
import re

import pytest

from tests.conftest import REPO, assert_no_temp_files, run_cli


@pytest.mark.slow
def test_demo_runs_every_stage_and_the_report_says_the_critic_rejected_the_images(tmp_path):
    run_dir = tmp_path / "demo"
    result = run_cli(
        ["-m", "zirelia_local.train", str(REPO / "configs" / "demo.toml"), "--run-dir", str(run_dir)], timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    report = run_dir / "report" / "index.html"
    assert "report:" in result.stderr and report.is_file()
    page = report.read_text()
    # The pre-flight checked every stage first; its one warning (no CLIP weights) is printed once, not again
    # by the critic; the demo's other warnings are the stages' own, as before there was a pre-flight.
    text = " ".join(result.stderr.split())
    assert re.search(r"pre-flight: \d+ checks for dataset, curate, train, critic, report passed", text), text
    assert text.count("prompt adherence will not be scored") == 1
    assert text.count("warning:") == 4, text  # CLIP, record mode, no reference identity, epoch by default
    assert "Pre-flight checks" in page and "were skipped" not in page
    assert "s/step (median)" in page  # the step time, as the progress bar and docs/benchmarks.md quote it
    # The tiny random model draws no faces: the critic says so for every image, after its retry.
    assert "no face found" in page and "could not confirm the persona" in page
    assert "close-up portrait, face clearly visible" in page  # the retry's framing words
    selection = json.loads((run_dir / "critic" / "selection.json").read_text())
    assert selection["basis"] == "default_last" and selection["epoch"] == 2
    assert all(row["accepted"] == 0 for row in selection["table"])
    assert (run_dir / "best.safetensors").is_file()
    assert_no_temp_files(run_dir)

    # A rerun on the finished run directory redoes nothing and still leaves no temp file (hard links that
    # already point at the right file once left `.best.safetensors.link.tmp` behind).
    again = run_cli(
        ["-m", "zirelia_local.train", str(REPO / "configs" / "demo.toml"), "--run-dir", str(run_dir)], timeout=600
    )
    assert again.returncode == 0, again.stderr[-4000:]
    assert_no_temp_files(run_dir)
