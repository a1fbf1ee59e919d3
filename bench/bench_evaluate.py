"""Evaluation throughput in the real cube-single env: episodes/s, sync vs async vector envs.

    python -m bench.bench_evaluate --episodes=50 --num_envs=1,5,10,25 --vectorization=sync,async
    python -m bench.bench_evaluate --policy=agent --euler_steps=4  # a fresh paper-size SORLAgent
    python -m bench.bench_evaluate --policy=agent --num_envs=10,25,50  # evaluate.py --protocol=paper's cells

Each configuration runs once to warm up (worker start-up, MuJoCo compilation, tracing; reported
as `startup_s`) and then `--repeats` times; the median is reported. `--policy=random` measures the
environment alone; `--policy=agent` adds batched SORL inference (untrained weights: same cost).
Run it on a quiet machine: the numbers are only comparable with each other. Each row also records the
CPU count and the 1-minute load average before it ran (other jobs on the machine slow every row).
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from data.files import write_json  # noqa: E402


class RandomPolicy:
    """Uniform actions, from the evaluation's per-row seeds (the environment's cost alone)."""

    row_seeded = True

    def __init__(self, action_dim):
        self.action_dim = action_dim

    def __call__(self, observations, seeds):
        return np.stack([np.random.default_rng(int(s)).uniform(-1, 1, self.action_dim) for s in seeds]).astype(
            np.float32)


def make_policy(name, env, euler_steps, num_samples):
    if name == "random":
        return RandomPolicy(5)
    import tensorflow as tf  # noqa: F401  (TF before MuJoCo)
    from models.sorl import SORLAgent
    from pipeline import policies
    from pipeline.config import make_run_config

    agent = SORLAgent(make_run_config(env).agent, obs_dim=28, action_dim=5)
    return policies.make_agent_policy(agent, euler_steps=euler_steps, num_samples=num_samples)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="cube-single-play")
    p.add_argument("--task", type=int, default=2)
    p.add_argument("--episodes", type=int, default=50)
    p.add_argument("--episode_length", type=int, default=None, help="default: the env's (200 for cube-single)")
    p.add_argument("--num_envs", default="1,5,10,25")
    p.add_argument("--vectorization", default="sync,async")
    p.add_argument("--policy", default="random", choices=["random", "agent"])
    p.add_argument("--euler_steps", "--steps", type=int, default=4, help="Euler steps of the agent policy")
    p.add_argument("--num_samples", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.policy == "agent":
        import tensorflow as tf  # noqa: F401  (TF before MuJoCo)
    from pipeline import environments, rollouts

    policy = make_policy(args.policy, args.env, args.euler_steps, args.num_samples)
    results = []
    for vectorization in args.vectorization.split(","):
        for num_envs in [int(n) for n in args.num_envs.split(",")]:
            if vectorization == "async" and num_envs == 1:
                continue
            run = lambda: rollouts.evaluate_policy(  # noqa: E731
                policy, args.env, args.task, args.episodes, seed=0, num_envs=num_envs,
                episode_length=args.episode_length, vectorization=vectorization)
            load_before = os.getloadavg()[0]
            t0 = time.perf_counter()
            run()
            startup = time.perf_counter() - t0
            times, steps, policy_seconds = [], 0, []
            for _ in range(args.repeats):
                result = run()
                times.append(result["wall_seconds"])
                policy_seconds.append(result["policy_seconds"])
                steps = result["env_steps"]
            median = statistics.median(times)
            row = dict(vectorization=vectorization, num_envs=num_envs, episodes=args.episodes,
                       env_steps=steps, seconds=round(median, 3),
                       episodes_per_s=round(args.episodes / median, 2),
                       env_steps_per_s=round(steps / median, 1),
                       policy_share=round(statistics.median(policy_seconds) / median, 3),
                       startup_s=round(startup - median, 2), cpus=os.cpu_count(), load_1m=round(load_before, 2))
            results.append(row)
            print(json.dumps(row), flush=True)
            environments.close_environments()
    if args.output:
        write_json(args.output, results, indent=1)


if __name__ == "__main__":
    main()
