"""One case, one process: the parent starts `gpu_proof.py --case JSON`, the child measures and prints one
`GPUPROOF_RESULT {json}` line.

A fresh process per case keeps its peak memory clean: torch's peak allocated and reserved bytes count only
that case, and a sampler thread polls the device's used memory (`torch.cuda.mem_get_info`, every 50 ms), which
also sees what torch does not allocate (the CUDA context, bitsandbytes, another process such as sd-scripts).
A case that raises, crashes or runs out of time is recorded as failed with its error; the parent goes on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESULT_MARK = "GPUPROOF_RESULT "
SCRIPT = Path(__file__).resolve().parent.parent / "gpu_proof.py"
GIB = 1024**3


@dataclass
class Case:
    """A measurement to run in its own process (or a skip, with its reason)."""

    section: str
    name: str
    params: dict[str, Any]
    skip_reason: str | None = None
    status: str = "pending"  # ok | failed | skipped | timed out
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status == "ok"


class MemorySampler:
    """Polls the device's used memory in a thread; `peak` is the most seen (bytes)."""

    def __init__(self, device_index: int = 0, interval: float = 0.05) -> None:
        import torch

        self.torch = torch
        self.index = device_index
        self.interval = interval
        free, total = torch.cuda.mem_get_info(device_index)
        self.total = total
        self.baseline = total - free
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        free, total = self.torch.cuda.mem_get_info(self.index)
        self.peak = max(self.peak, total - free)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def run_case(case: Case, *, timeout: float, env: dict[str, str] | None = None, log: Path | None = None) -> Case:
    """Run `case` in a fresh process; fill in its status, figures or error."""
    if case.skip_reason:
        case.status = "skipped"
        return case
    payload = json.dumps({"section": case.section, "params": case.params})
    command = [sys.executable, str(SCRIPT), "--case", payload]
    child_env = {**os.environ, "ZIRELIA_NO_PROGRESS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    started = time.perf_counter()
    try:
        completed = subprocess.run(
            command, capture_output=True, text=True, timeout=max(timeout, 1), env=child_env, check=False
        )
        stdout, stderr, code = completed.stdout, completed.stderr, completed.returncode
    except subprocess.TimeoutExpired as error:
        stdout, stderr, code = _text(error.stdout), _text(error.stderr), None
    case.seconds = round(time.perf_counter() - started, 1)
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a", encoding="utf-8") as handle:
            handle.write(f"===== {case.section}: {case.name} ({case.seconds} s)\n{stdout}\n{stderr}\n")
    line = next((line for line in reversed(stdout.splitlines()) if line.startswith(RESULT_MARK)), None)
    if code is None:
        case.status, case.error = "timed out", f"stopped after {timeout:.0f} s"
    elif line is None:
        case.status = "failed"
        case.error = f"exit {code}, no result: " + _last_error(stderr)
    else:
        result = json.loads(line[len(RESULT_MARK) :])
        case.status = result["status"]
        case.figures = result.get("figures", {})
        case.error = result.get("error")
    return case


def _last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    return (lines[-1] if lines else "no output")[:500]


def _text(data: str | bytes | None) -> str:
    if data is None:
        return ""
    return data.decode(errors="replace") if isinstance(data, bytes) else data
