"""Plain-Python helpers the benchmarks share (no TensorFlow: bench_reference_jax.py runs in a JAX venv)."""
import json
import os
import time
from typing import Callable, List


def time_calls(call: Callable[[], object], runs: int, calls: int, warmup: int = 5) -> List[float]:
    """Mean seconds per call of each of `runs` runs of `calls` calls (after `warmup` untimed calls)."""
    for _ in range(warmup):
        call()
    per_run = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(calls):
            call()
        per_run.append((time.perf_counter() - start) / calls)
    return per_run


def write_json(path: str, payload) -> None:
    """Writes `payload` as JSON to `path` (creating its folder) through a temporary file and a rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
