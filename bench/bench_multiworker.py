"""Multi-worker training: steps/s of 2 workers on 127.0.0.1 against one process, the same global batch.

    python -m bench.bench_multiworker                       # paper networks (4x512), global batch 256
    python -m bench.bench_multiworker --width=64 --depth=2 --rounds=1 --windows=3   # quick

Each round runs both modes in fresh processes, one after the other (alternating, so a change of load
hits both alike):
- `one`: one process, the default strategy, without XLA (the workers cannot use it: see below);
- `two`: MultiWorkerMirroredStrategy over two processes (TF_CONFIG on free loopback ports), each
  computing half of every global batch.
Both train through pipeline.training.TrainingDriver (what run_training runs) on one synthetic batch
held in memory, `--warmup` steps then `--windows` windows of `--window_steps` steps; reported per
mode: the median steps/s over windows. `two` also times the all-reduce alone: one strategy.run of
an all-reduce of tensors shaped like the actor's and the critic's trainable weights (each update
sums its gradients across workers once for the global norm and once in the optimizers' apply, so
an update spends about twice this), as `gradient_allreduce_ms`.
SORLAgent.compile turns XLA off for more than one replica (XLA cannot compile the collectives in
the step), so `one` runs without it too; `--jit_one` adds the XLA figure of one process.
Run on a quiet machine for numbers you report; two workers on a 2-core machine share its cores.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bench.common import free_ports  # noqa: E402


def worker(args) -> dict:
    """One process's measurement (a worker of `two`, or `one`); the chief's is the mode's result."""
    import tensorflow as tf

    from bench.bench_train_step import synthetic_batch
    from models.sorl import SORLAgent
    from pipeline import training
    from pipeline.config import make_run_config

    strategy = training.make_strategy("multi_worker" if args.mode == "two" else "default")
    widths = (args.width,) * args.depth
    config = make_run_config("cube-single-play", {"batch_size": args.batch_size, "actor_hidden_dims": widths,
                                                  "critic_hidden_dims": widths}).agent
    with strategy.scope():
        agent = SORLAgent(config, args.obs_dim, args.action_dim)
        agent.compile(jit_compile=args.jit and args.mode == "one")
    driver = training.TrainingDriver(agent, strategy)
    batch = synthetic_batch(args.batch_size, args.obs_dim, args.action_dim)
    iterator = iter(driver.distribute(lambda: tf.data.Dataset.from_tensors(batch).repeat()))

    def run(steps):
        for _ in range(steps):
            driver.train_step(iterator)  # reads the agreed stop signal: every step ends on every worker

    started = time.perf_counter()
    run(args.warmup)
    compile_s = time.perf_counter() - started
    rates = []
    for _ in range(args.windows):
        started = time.perf_counter()
        run(args.window_steps)
        rates.append(args.window_steps / (time.perf_counter() - started))
    result = {"mode": args.mode, "xla": bool(agent.jit_compile), "replicas": strategy.num_replicas_in_sync,
              "steps_per_s": round(statistics.median(rates), 3), "windows_steps_per_s": [round(r, 3) for r in rates],
              "compile_s": round(compile_s, 1), "batch_size": args.batch_size, "network": f"{args.depth}x{args.width}"}
    if args.mode == "two":
        shapes = [v.shape for v in agent.actor.trainable_variables + agent.critic.trainable_variables]
        gradients = [tf.zeros(shape) for shape in shapes]

        @tf.function
        def all_reduce():
            summed = strategy.run(lambda: tf.distribute.get_replica_context().all_reduce(
                tf.distribute.ReduceOp.SUM, gradients))
            return strategy.experimental_local_results(summed)[0][0]

        all_reduce().numpy()
        seconds = []
        for _ in range(args.allreduce_calls):
            started = time.perf_counter()
            all_reduce().numpy()
            seconds.append(time.perf_counter() - started)
        result["gradient_allreduce_ms"] = round(1000 * statistics.median(seconds), 2)
        result["gradient_floats"] = int(sum(s.num_elements() for s in shapes))
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    return result


def launch(mode: str, args, forwarded: list) -> dict:
    """Runs one mode in fresh processes; returns the chief's (or the one process's) result."""
    command = [sys.executable, "-m", "bench.bench_multiworker", "--role=worker", f"--mode={mode}", *forwarded]
    count = 2 if mode == "two" else 1
    ports = free_ports(count)
    procs = []
    try:
        for index in range(count):
            env = {**os.environ}
            env.pop("TF_CONFIG", None)
            if mode == "two":
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
                                               "task": {"type": "worker", "index": index}})
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                          text=True))
        outputs = [proc.communicate(timeout=args.timeout)[0] for proc in procs]
    finally:
        for proc in procs:  # each by its PID
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if procs[0].returncode != 0:
        raise SystemExit(f"bench_multiworker: mode {mode} failed (exit {procs[0].returncode})")
    return json.loads(outputs[0].strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (one, two)")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=256, help="global batch size")
    parser.add_argument("--obs_dim", type=int, default=28)
    parser.add_argument("--action_dim", type=int, default=5)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--allreduce_calls", type=int, default=30)
    parser.add_argument("--jit_one", action="store_true", help="also run `one` with XLA")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds for one mode's processes")
    parser.add_argument("--role", choices=["driver", "worker"], default="driver", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["one", "two"], default="one", help=argparse.SUPPRESS)
    parser.add_argument("--jit", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "worker":
        print(json.dumps(worker(args)), flush=True)
        return
    forwarded = [f"--{name}={getattr(args, name)}" for name in
                 ("windows", "window_steps", "warmup", "batch_size", "obs_dim", "action_dim", "width", "depth",
                  "allreduce_calls")]
    for _ in range(args.rounds):
        print(json.dumps(launch("one", args, forwarded)), flush=True)
        if args.jit_one:
            print(json.dumps(launch("one", args, forwarded + ["--jit"])), flush=True)
        print(json.dumps(launch("two", args, forwarded)), flush=True)


if __name__ == "__main__":
    main()
