"""The output of every benchmark script: a line for people, then a `BENCH {json}` line for run_all.py."""

from __future__ import annotations

import json


def print_figure(benchmark: str, metric: str, value: float, params: str) -> None:
    print(f"  {metric}: {value:.4g}  ({params})")
    line = {"benchmark": benchmark, "metric": metric, "value": round(value, 4 if value >= 1 else 5), "params": params}
    print("BENCH " + json.dumps(line), flush=True)
