"""Gradient steps per second of SORLAgent.train_step (the paper configuration), with and without XLA.

    python -m bench.bench_train_step                 # paper config: obs 28, action 5, batch 256, 4x512, M_BTT 8
    python -m bench.bench_train_step --quick         # 2 short windows per mode (smoke run)
    python -m bench.bench_train_step --jit=true --windows=9 --window_steps=50
    python -m bench.bench_train_step --ceiling        # FLOPs per step and this CPU's matmul rate
    python -m bench.bench_train_step --loop=both --jit=true   # Keras' train function vs the training
                                                              # driver (pipeline/training.py), alternating
    (bench/fma_peak.c measures the CPU's float32 FMA peak, the bound above any matmul rate;
    bench/bench_reference_jax.py times the authors' JAX update on the same machine)

Each mode builds a fresh agent on one synthetic cube-single-sized batch held in memory (no input
pipeline in the measurement), runs `--warmup` steps (tracing, XLA compilation, reported as
compile_s), then `--windows` timed windows of `--window_steps` steps through Keras' own train
function (what `agent.fit` runs). Reported per mode: the median steps/s over windows (wall
clock), the median of steps per CPU-second (less sensitive to other processes on the machine,
but counts both cores), and peak resident memory of the process. The per-batch k draws differ
between steps, as in training, so windows average over k in {1, 2, 4, 8}.
--loop=both builds one agent per loop and alternates their windows (fit, driver, fit, ...), both
reading the losses after every step as the training loop's NonFiniteGuard does; steps/s are then
reported per loop.
Run on a quiet machine for numbers you report; they are only comparable on the same machine.
"""

import argparse
import json
import os
import resource
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from pipeline.config import make_run_config  # noqa: E402
from models.sorl import SORLAgent  # noqa: E402


def synthetic_batch(batch_size: int, obs_dim: int, action_dim: int, seed: int = 0) -> dict:
    """One batch shaped like the reader's output (values do not change the cost)."""
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(batch_size, action_dim)).astype(np.float32),
        "next_observations": rng.normal(size=(batch_size, obs_dim)).astype(np.float32),
        "rewards": -rng.integers(0, 2, size=batch_size).astype(np.float32),
        "masks": np.ones(batch_size, np.float32),
        "terminals": np.zeros(batch_size, np.float32),
    }


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB


def step_gflop(args) -> float:
    """Matmul GFLOP of one SORL update (multiply-adds x 2), averaged over k in step_counts.

    F_a, F_c: one actor / critic-ensemble forward pass over the batch. A backward pass costs two
    forwards (input and weight gradients). Per update: critic target = mean(k) F_a + F_c; critic
    loss = 3 F_c; flow matching = 3 F_a; self-consistency = 2 F_a (target) + 3 F_a; Q loss =
    3 mean(k) F_a (unroll and its backward) + 2 F_c (critic forward and input gradient).
    """
    from models.sampling import step_counts

    b, h, depth = args.batch_size, args.width, args.depth
    counts = step_counts(args.m_btt)
    mean_k = sum(counts) / len(counts)

    def forward(inputs, outputs, members=1):
        return 2 * members * b * (inputs * h + (depth - 1) * h * h + h * outputs)

    actor = forward(args.obs_dim + args.action_dim + 2, args.action_dim)
    critic = forward(args.obs_dim + args.action_dim + 1, 1, members=2)
    flops = actor * (mean_k + 3 + 5 + 3 * mean_k) + critic * (1 + 3 + 2)
    return flops / 1e9


def matmul_gflops(rows: int, width: int, repeats: int = 20, runs: int = 7) -> float:
    """Median GFLOP/s of a chain of [rows, width] x [width, width] matmuls in one XLA function."""
    x = tf.random.normal([rows, width])
    w = tf.random.normal([width, width]) / width**0.5

    @tf.function(jit_compile=True)
    def chain(x, w):
        for _ in range(repeats):
            x = tf.matmul(x, w)
        return x

    chain(x, w).numpy()
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        chain(x, w).numpy()
        seconds.append((time.perf_counter() - started) / repeats)
    return 2 * rows * width * width / statistics.median(seconds) / 1e9


def ceiling(args) -> dict:
    """The steps/s this CPU could reach if every FLOP of the update ran at its matmul rate."""
    gflop = step_gflop(args)
    rates = {rows: matmul_gflops(rows, args.width) for rows in (args.batch_size, 2 * args.batch_size)}
    return {
        "step_gflop": round(gflop, 2),
        **{f"matmul_gflops_{rows}_rows": round(rate, 1) for rows, rate in rates.items()},
        **{f"ceiling_steps_per_s_at_{rows}_rows": round(rate / gflop, 2) for rows, rate in rates.items()},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def make_runner(jit_compile: bool, args, loop: str = "fit"):
    """run(steps) -> the last actor loss, over a fresh agent: Keras' train function (`fit`, what
    agent.fit runs) or pipeline.training.TrainingDriver (`driver`, what run_training runs)."""
    widths = (args.width,) * args.depth
    config = make_run_config("cube-single-play", {"batch_size": args.batch_size, "actor_hidden_dims": widths,
                                                  "critic_hidden_dims": widths, "m_btt": args.m_btt}).agent
    agent = SORLAgent(config, args.obs_dim, args.action_dim)
    agent.compile(jit_compile=jit_compile, steps_per_execution=args.steps_per_execution)
    batch = synthetic_batch(args.batch_size, args.obs_dim, args.action_dim)
    read_each_step = args.loop == "both"
    if loop == "driver":
        from pipeline.training import TrainingDriver

        driver = TrainingDriver(agent, tf.distribute.get_strategy())
        iterator = iter(driver.distribute(lambda: tf.data.Dataset.from_tensors(batch).repeat()))

        def run(steps):
            logs = None
            for _ in range(steps):
                logs, _ = driver.train_step(iterator)  # reads the stop signal: one sync per step
            return float(logs["actor/loss"])

        return run
    iterator = iter(tf.data.Dataset.from_tensors(batch).repeat())
    agent.make_train_function()
    train = agent.train_function

    def run(steps):  # steps: a multiple of --steps_per_execution (checked in main)
        logs = None
        for _ in range(steps // args.steps_per_execution):
            logs = train(iterator)
            if read_each_step:
                float(logs["critic/loss"])
        return float(logs["actor/loss"])  # forces completion

    return run


def measure(jit_compile: bool, args) -> list:
    loops = ["fit", "driver"] if args.loop == "both" else [args.loop]
    runs = {}
    for loop in loops:
        runs[loop] = make_runner(jit_compile, args, loop)
    compile_s, wall_rates, cpu_rates = {}, {loop: [] for loop in loops}, {loop: [] for loop in loops}
    for loop, run in runs.items():
        started = time.perf_counter()
        run(args.warmup)
        compile_s[loop] = time.perf_counter() - started
    for _ in range(args.windows):
        for loop, run in runs.items():  # alternating, so a change of load hits every loop alike
            wall, cpu = time.perf_counter(), time.process_time()
            run(args.window_steps)
            wall_rates[loop].append(args.window_steps / (time.perf_counter() - wall))
            cpu_rates[loop].append(args.window_steps / (time.process_time() - cpu))
    return [{
        "jit_compile": jit_compile,
        **({"loop": loop} if args.loop != "fit" else {}),
        "steps_per_s": round(statistics.median(wall_rates[loop]), 2),
        "steps_per_cpu_s": round(statistics.median(cpu_rates[loop]), 2),
        "windows_steps_per_s": [round(r, 2) for r in wall_rates[loop]],
        "compile_s": round(compile_s[loop], 1),
        "peak_rss_mib": round(peak_rss_mib()),
        "batch_size": args.batch_size,
        "network": f"{args.depth}x{args.width}",
        "m_btt": args.m_btt,
        "steps_per_execution": args.steps_per_execution,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    } for loop in loops]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jit", choices=["both", "true", "false"], default="both")
    parser.add_argument("--quick", action="store_true", help="2 windows of 5 steps per mode")
    parser.add_argument("--windows", type=int, default=7)
    parser.add_argument("--window_steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--obs_dim", type=int, default=28)
    parser.add_argument("--action_dim", type=int, default=5)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--m_btt", type=int, default=8)
    parser.add_argument("--steps_per_execution", type=int, default=1,
                        help="train steps per call of Keras' train function (one compiled loop, no Python between)")
    parser.add_argument("--loop", choices=["fit", "driver", "both"], default="fit",
                        help="Keras' train function, the training driver, or both alternating (module docstring)")
    parser.add_argument("--ceiling", action="store_true",
                        help="only print FLOPs per step, the XLA matmul rate and the implied ceiling")
    args = parser.parse_args(argv)
    if args.ceiling:
        print(json.dumps(ceiling(args)), flush=True)
        return
    if args.quick:
        args.windows, args.window_steps, args.warmup = 2, 5, 3
    for flag in ("window_steps", "warmup"):
        if getattr(args, flag) % args.steps_per_execution:
            parser.error(f"--{flag}={getattr(args, flag)} must be a multiple of "
                         f"--steps_per_execution={args.steps_per_execution}")
    modes = {"both": [True, False], "true": [True], "false": [False]}[args.jit]
    # Peak RSS is per process, so with --jit=both the second mode's figure includes the first's.
    for jit_compile in modes:
        for result in measure(jit_compile, args):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
