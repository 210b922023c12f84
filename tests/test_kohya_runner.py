"""Following sd-scripts' output: progress parsing on real output, the log and metrics files, clean Ctrl-C.

tests/data/kohya/*.out are byte-for-byte captures of sd-scripts 48d368fa training FLUX on CPU (the run of
the opt-in test in test_kohya_integration.py), stdout and stderr together, tqdm's carriage returns
included. Where a child process is needed, a small Python script stands in for the GPU run: it replays
those bytes or prints tqdm-style lines, and reacts to signals as the trainer does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import DATA, REPO
from zirelia_local.common.files import read_jsonl
from zirelia_local.training.kohya_log import parse_epoch, parse_progress, parse_saved, split_segments
from zirelia_local.training.runner import OutputTracker, run_streaming
from zirelia_local.training.step_time import median_from_metrics

FRESH = DATA / "kohya" / "flux_cpu_two_epochs.out"  # 2 images, batch 1, 2 epochs: 4 steps
RESUMED = DATA / "kohya" / "flux_cpu_resumed.out"  # --resume from the epoch-1 state, to epoch 2 of 2


def segments_of(path: Path) -> list[str]:
    return list(split_segments([path.read_bytes()]))


def test_progress_lines_of_a_real_run_parse():
    bars = [parse_progress(s) for s in segments_of(FRESH) if s.startswith("steps:")]
    # Each step is drawn twice (at update, then with its avr_loss); closing the bar redraws the last step.
    pairs = [(0, 4), (1, 4), (1, 4), (2, 4), (2, 4), (3, 4), (3, 4), (4, 4), (4, 4), (4, 4)]
    assert [(p.step, p.total) for p in bars] == pairs
    first_step, first_loss = bars[1], bars[2]
    assert first_step.avg_seconds_per_step == pytest.approx(24.84) and first_step.avr_loss is None
    assert first_step.elapsed == "00:24" and first_step.remaining == "01:14" and first_step.percent == 25
    assert first_loss.avr_loss == pytest.approx(1.5)
    assert bars[0].remaining is None and bars[0].avg_seconds_per_step is None  # "[00:00<?, ?it/s]"
    rate = parse_progress("steps:  40%|####      | 4/10 [00:02<00:03,  1.85it/s, avr_loss=0.0912]")
    assert rate.avg_seconds_per_step == pytest.approx(1 / 1.85) and rate.avr_loss == pytest.approx(0.0912)
    assert parse_progress("caching latents:  50%|#####     | 1/2 [00:01<00:01,  1.00s/it]") is None
    assert parse_progress("epoch validation steps:  0%|          | 0/2 [00:00<?, ?it/s]") is None


def test_epoch_and_checkpoint_lines_of_a_real_run_parse():
    segments = segments_of(FRESH)
    assert [parse_epoch(s) for s in segments if parse_epoch(s)] == [(1, 2), (2, 2)]
    assert [parse_saved(s).name for s in segments if parse_saved(s)] == [
        "testpersona7-000001.safetensors",
        "testpersona7.safetensors",
    ]
    assert parse_epoch("INFO     epoch is incremented.  current_epoch: 0, epoch: 2") is None


def test_segments_survive_any_chunking_of_the_stream():
    data = FRESH.read_bytes()
    whole = list(split_segments([data]))
    for size in (1, 7, 4096):  # 1 and 7 split the UTF-8 bar characters and the \r\n pairs
        assert list(split_segments(data[i : i + size] for i in range(0, len(data), size))) == whole


def track(path: Path, tmp_path: Path, step_offset: int = 0) -> tuple[OutputTracker, str, list[dict]]:
    log_path, metrics = tmp_path / "train.log", tmp_path / "metrics.jsonl"
    with open(log_path, "w", encoding="utf-8") as log:
        tracker = OutputTracker(log, metrics, step_offset=step_offset)
        for segment in segments_of(path):
            tracker.feed(segment)
        tracker.finish()
    return tracker, log_path.read_text(encoding="utf-8"), list(read_jsonl(metrics))


def test_tracker_records_each_step_with_its_own_loss(tmp_path):
    tracker, log, records = track(FRESH, tmp_path)
    assert [(r["step"], r["epoch"], r["total_steps"]) for r in records] == [(1, 1, 4), (2, 1, 4), (3, 2, 4), (4, 2, 4)]
    # tqdm draws a step first with the previous postfix; the loss recorded is the step's own.
    assert [r["avr_loss"] for r in records][:3] == [1.5, 1.51, 1.54]
    assert records[0]["avg_step_seconds"] == pytest.approx(24.84)
    outcome = tracker.outcome
    assert (outcome.epoch, outcome.epochs_total, outcome.step, outcome.total_steps) == (2, 2, 4, 4)
    assert [p.name for p in outcome.saved] == ["testpersona7-000001.safetensors", "testpersona7.safetensors"]
    # One line per step in the log (not one per tqdm redraw) plus tqdm's closing line; nothing glued to a bar.
    assert sum(line.startswith("steps:") for line in log.splitlines()) == 6
    assert all(line.endswith("]") for line in log.splitlines() if line.startswith("steps:"))
    assert "epoch 2/2" in log and "saving checkpoint:" in log


def test_resumed_run_counts_steps_from_the_saved_state(tmp_path):
    # The state held {"current_epoch": 1, "current_step": 2}; sd-scripts' bar restarts at 0 of 4.
    tracker, log, records = track(RESUMED, tmp_path, step_offset=2)
    assert [(r["step"], r["epoch"]) for r in records] == [(3, 2), (4, 2)]
    assert "epoch 1/2" not in log and "epoch 2/2" in log
    assert tracker.outcome.total_steps == 4


def test_bar_text_glued_to_a_log_line_is_split(tmp_path):
    _, log, _ = track(RESUMED, tmp_path, step_offset=2)
    assert any(line.startswith("2026-11-24 19:35:57 INFO") for line in log.splitlines())


def test_secrets_are_redacted_in_the_log(tmp_path):
    log_path = tmp_path / "train.log"
    with open(log_path, "w", encoding="utf-8") as log:
        tracker = OutputTracker(log, tmp_path / "m.jsonl")
        tracker.feed("env HF_TOKEN=hf_abcdefghijklmnopqrstuvwxyz123456 loaded")
        tracker.finish()
    assert "hf_abcdefghij" not in log_path.read_text()


REPLAY_CHILD = """
import random, sys, time
data = open(sys.argv[1], "rb").read()
rng = random.Random(0)
i = 0
while i < len(data):
    n = rng.randint(1, 3000)
    sys.stdout.buffer.write(data[i : i + n]); sys.stdout.buffer.flush()
    i += n
    time.sleep(0.001)
sys.exit(int(sys.argv[2]))
"""


def test_run_streaming_follows_a_real_output_stream(tmp_path):
    # Stand-in for the GPU run: a child process replaying the captured sd-scripts bytes in random chunks.
    child = tmp_path / "replay.py"
    child.write_text(REPLAY_CHILD)
    outcome = run_streaming(
        [sys.executable, str(child), str(FRESH), "0"],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "train" / "train.log",
        metrics_path=tmp_path / "train" / "metrics.jsonl",
        shown_command="replay",
    )
    assert outcome.returncode == 0 and outcome.step == 4 and outcome.epoch == 2
    assert [r["step"] for r in read_jsonl(tmp_path / "train" / "metrics.jsonl")] == [1, 2, 3, 4]
    log = (tmp_path / "train" / "train.log").read_text()
    assert "===== " in log and "replay" in log and "sd-scripts exited with code 0" in log

    failed = run_streaming(
        [sys.executable, str(child), str(RESUMED), "3"],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "train" / "train.log",
        metrics_path=tmp_path / "train" / "metrics.jsonl",
    )
    assert failed.returncode == 3 and failed.tail and "saving checkpoint" in "\n".join(failed.tail)


TRAINER_CHILD = """
import os, signal, sys, time
from pathlib import Path
tmp, mode = Path(sys.argv[1]), sys.argv[2]
if mode == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    def stop(signum, frame):
        print("KeyboardInterrupt", flush=True)
        (tmp / "stopped").write_text(str(signum))
        sys.exit(1)
    signal.signal(signal.SIGINT, stop)
sys.stderr.write("\\rsteps:   0%|          | 0/10 [00:00<?, ?it/s]"); sys.stderr.flush()
print("\\nepoch 1/2\\n", flush=True)
sys.stderr.write("\\rsteps:  10%|#         | 1/10 [00:01<00:09,  1.00s/it, avr_loss=0.5]"); sys.stderr.flush()
(tmp / "ready").write_text(str(os.getpid()))
for _ in range(600):
    time.sleep(0.1)
"""

RUNNER = """
import json, os, sys
from pathlib import Path
from zirelia_local.training.runner import Interrupted, run_streaming
tmp = Path(sys.argv[1])
try:
    outcome = run_streaming(
        [sys.executable, str(tmp / "trainer.py"), str(tmp), sys.argv[2]], cwd=tmp, env=dict(os.environ),
        log_path=tmp / "train.log", metrics_path=tmp / "metrics.jsonl",
        sigint_grace_s=float(sys.argv[3]), sigterm_grace_s=float(sys.argv[3]),
    )
    print(json.dumps({"interrupted": False, "returncode": outcome.returncode}))
except Interrupted as error:
    print(json.dumps({"interrupted": True, "returncode": error.outcome.returncode, "step": error.outcome.step}))
    sys.exit(130)
"""


def interrupt_runner(tmp_path: Path, mode: str, grace: float) -> tuple[int, dict, int]:
    """Start our runner in its own process over a stand-in trainer, press Ctrl-C (SIGINT to the runner only,
    as a terminal does to the foreground process: the trainer is in its own session), return the result."""
    (tmp_path / "trainer.py").write_text(TRAINER_CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO), "ZIRELIA_NO_PROGRESS": "1"}
    runner = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RUNNER), str(tmp_path), mode, str(grace)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert runner.poll() is None, runner.communicate()
        assert time.monotonic() < deadline, "the stand-in trainer never started"
        time.sleep(0.05)
    trainer_pid = int((tmp_path / "ready").read_text())
    time.sleep(0.3)  # let the runner read the progress lines
    runner.send_signal(signal.SIGINT)
    stdout, _ = runner.communicate(timeout=60)
    return runner.returncode, json.loads(stdout.strip().splitlines()[-1]), trainer_pid


def process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_ctrl_c_stops_the_trainer_cleanly(tmp_path):
    code, result, trainer_pid = interrupt_runner(tmp_path, "cooperative", grace=20)
    assert code == 130 and result == {"interrupted": True, "returncode": 1, "step": 1}
    assert (tmp_path / "stopped").read_text() == str(int(signal.SIGINT))  # the trainer got SIGINT, not a kill
    assert process_gone(trainer_pid)
    log = (tmp_path / "train.log").read_text()
    assert "interrupted: stopping sd-scripts" in log and "KeyboardInterrupt" in log
    assert [r["step"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1]


def test_a_trainer_that_ignores_ctrl_c_is_killed_after_the_grace_time(tmp_path):
    start = time.monotonic()
    code, result, trainer_pid = interrupt_runner(tmp_path, "stubborn", grace=0.5)
    assert code == 130 and result["interrupted"] and result["returncode"] == -signal.SIGKILL
    assert process_gone(trainer_pid)
    assert time.monotonic() - start < 30


PACED_CHILD = r"""
import sys, time
def draw(text):
    sys.stderr.write("\r" + text); sys.stderr.flush()
draw("steps:   0%|          | 0/2 [00:00<?, ?it/s]")
print("\nepoch 1/1\n", flush=True)
draw("steps:  50%|#####     | 1/2 [00:01<00:01,  1.00s/it]")
draw("steps:  50%|#####     | 1/2 [00:01<00:01,  1.00s/it, avr_loss=0.7]")
time.sleep(1.0)
draw("steps: 100%|##########| 2/2 [00:02<00:00,  1.00s/it, avr_loss=0.7]")
draw("steps: 100%|##########| 2/2 [00:02<00:00,  1.00s/it, avr_loss=0.6]")
print("\nsaving checkpoint: /tmp/x.safetensors", flush=True)
"""


def test_metrics_time_each_step_when_it_ends_not_when_the_next_begins(tmp_path):
    # Stand-in for the GPU run: tqdm-style drawings one second apart, as sd-scripts writes them.
    child = tmp_path / "paced.py"
    child.write_text(PACED_CHILD)
    run_streaming(
        [sys.executable, str(child)],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "train.log",
        metrics_path=tmp_path / "metrics.jsonl",
    )
    first, second = read_jsonl(tmp_path / "metrics.jsonl")
    assert (first["avr_loss"], second["avr_loss"]) == (0.7, 0.6)
    assert second["elapsed_s"] - first["elapsed_s"] >= 0.8
    assert second["step_seconds"] >= 0.8  # the second step's line came a second after the first's


def stamped_tracker(tmp_path: Path) -> list[dict]:
    """The captured real run through the tracker, each step line arriving at the time tqdm stamped on it
    (its elapsed field, `[01:05<...`): a clock for the replay, as the capture holds no arrival times."""
    now = [0.0]
    metrics = tmp_path / "metrics.jsonl"
    with open(tmp_path / "train.log", "w", encoding="utf-8") as log:
        tracker = OutputTracker(log, metrics, clock=lambda: now[0])
        for segment in segments_of(FRESH):
            progress = parse_progress(segment)
            if progress is not None and progress.elapsed:
                minutes, seconds = progress.elapsed.split(":")
                now[0] = 60 * int(minutes) + int(seconds)
            tracker.feed(segment)
        tracker.finish()
    return list(read_jsonl(metrics))


def test_step_seconds_of_a_real_log_are_the_differences_of_its_step_timestamps(tmp_path):
    records = stamped_tracker(tmp_path)
    # Step lines stamped 00:00 (the bar's 0/4), 00:24, 00:50, 01:05, 01:20.
    assert [r["step_seconds"] for r in records] == [24, 26, 15, 15]
    # sd-scripts' own s/it is its running average (elapsed / steps, tqdm smoothing=0), kept under its own name.
    assert [r["avg_step_seconds"] for r in records] == pytest.approx([24.84, 25.50, 21.81, 20.06])
    assert median_from_metrics(records) == 15  # steps 2..4: the figure the bar, the report and benchmarks quote


PAUSED_REPLAY_CHILD = r"""
import re, sys, time
data = open(sys.argv[1], "rb").read()
pauses = {1: 0.6, 2: 0.65, 3: 0.375, 4: 0.375}  # the capture's step times (24, 26, 15, 15 s) / 40
drawn = 0
for piece in re.split(rb"(?=\r)", data):
    match = re.match(rb"\rsteps:\s*\d+%\|[^|]*\|\s*(\d+)/", piece)
    if match and int(match.group(1)) > drawn:
        drawn = int(match.group(1))
        time.sleep(pauses[drawn])
    sys.stdout.buffer.write(piece)
    sys.stdout.buffer.flush()
"""


def test_step_seconds_are_measured_as_the_lines_arrive(tmp_path):
    # Stand-in for the GPU run: a child replays the captured bytes, pausing before each new step line.
    child = tmp_path / "paused.py"
    child.write_text(PAUSED_REPLAY_CHILD)
    outcome = run_streaming(
        [sys.executable, str(child), str(FRESH)],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "train.log",
        metrics_path=tmp_path / "metrics.jsonl",
    )
    assert outcome.returncode == 0
    records = list(read_jsonl(tmp_path / "metrics.jsonl"))
    measured = [r["step_seconds"] for r in records]
    assert measured == pytest.approx([0.6, 0.65, 0.375, 0.375], abs=0.2), measured
    assert [r["avg_step_seconds"] for r in records] == pytest.approx([24.84, 25.50, 21.81, 20.06])
