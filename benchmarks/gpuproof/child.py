"""The child side of a case: measure one section in this process and print its result line for the parent
(`cases.run_case`). Apart from `cases` so that the sections, which import `cases.Case`, are not imported back
by it."""

from __future__ import annotations

import json
import time
import traceback
from typing import Any

from gpuproof.cases import GIB, RESULT_MARK, MemorySampler


def child_main(payload: str) -> int:
    """Run one case (in the child process) and print its result line; exit 0 even when the case failed."""
    spec = json.loads(payload)
    section, params = spec["section"], spec["params"]
    result: dict[str, Any] = {"status": "ok", "figures": {}}
    started = time.perf_counter()
    try:
        result["figures"] = _measure(section, params)
    except BaseException as error:  # the case failed: say why, in one line and with the traceback on stderr
        traceback.print_exc()
        message = " / ".join(line.strip() for line in f"{type(error).__name__}: {error}".splitlines() if line.strip())
        result = {"status": "failed", "error": message[:600]}
    result["seconds"] = round(time.perf_counter() - started, 2)
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


def _measure(section: str, params: dict[str, Any]) -> dict[str, Any]:
    from gpuproof import build, critic, generation, kohya, training

    measure = {
        "build": build.measure,
        "generation": generation.measure,
        "training": training.measure,
        "kohya": kohya.measure,
        "critic": critic.measure,
    }[section]
    if not params.get("cuda"):
        return measure(params)
    import torch

    torch.cuda.init()
    torch.cuda.reset_peak_memory_stats()
    with MemorySampler() as sampler:
        figures = measure(params)
        torch.cuda.synchronize()
    return {
        **figures,
        "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 2),
        "peak_reserved_gib": round(torch.cuda.max_memory_reserved() / GIB, 2),
        "device_peak_gib": round(sampler.peak / GIB, 2),
        "device_baseline_gib": round(sampler.baseline / GIB, 2),
        "device_total_gib": round(sampler.total / GIB, 2),
        "device_name": torch.cuda.get_device_name(0),
        "cuda_build": torch.version.cuda,
    }
