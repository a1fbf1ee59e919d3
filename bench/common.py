"""Plain-Python helpers the benchmarks share (no TensorFlow: bench_reference_jax.py runs in a JAX venv)."""
import socket
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


def free_ports(count: int) -> List[int]:
    """`count` distinct TCP ports free on 127.0.0.1 now (for loopback clusters: bench_multiworker, its tests)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()
