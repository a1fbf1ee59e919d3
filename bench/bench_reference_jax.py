"""Time the authors' JAX SORL agent on this machine, with the protocol of our own benchmarks.

The issues set their bars relative to the reference JAX code "on this CPU" (training steps/s of
bench_train_step.py, batch-1 latency of bench_serving.py). This script measures that code here,
so the comparison is between two programs on one machine, not between two machines. It imports
the reference from a checkout you provide; none of its code is in this repository.

    python -m venv /tmp/jaxref
    /tmp/jaxref/bin/pip install -r bench/requirements-reference-jax.txt
    # a checkout of the paper's code (linked from nico-espinosadice.github.io/projects/sorl):
    git clone <the SORL repository> /tmp/sorl-reference
    /tmp/jaxref/bin/python -m bench.bench_reference_jax --reference_repo=/tmp/sorl-reference
    /tmp/jaxref/bin/python -m bench.bench_reference_jax --reference_repo=... --mode=latency

What it needs from the checkout: `agents/sorl.py` with `get_config()` and `SORLAgent.create(seed,
ex_observations, ex_actions, config)`, `agent.update(batch) -> (agent, info)`,
`agent.sample_actions(observations, seed=key, inference_timesteps=k, n=N)` and, for
--stop_next_action_gradient, `SORLAgent.sample_k_step_actions_for_critic`. The published update
back-propagates the critic loss into the actor through the next action a' (SPEC section 3 lists it
among the differences we do not copy); --stop_next_action_gradient times the same update with a'
held constant, which is the algorithm and the FLOPs of bench_train_step.py.
Configuration: the checkout's own defaults (batch 256, 4 x 512 networks, M_BTT 8 for
cube-single), on cube-single's shapes (observation 28, action 5) and a synthetic batch held in
memory, like bench_train_step.py. Reported: steps/s per window of `--window_steps` updates (wall
clock, after the first update compiles), CPU-ms per update, the median; for latency, ms per call
of the jitted sampler at batch 1 (k = 1, k = 8, k = 8 best of 4), median of `--runs` runs.
"""
import argparse
import os
import statistics
import sys
import time

# Plain Python, so they import in the JAX venv too (run from the repository root with -m).
from bench.common import time_calls
from data.files import write_json


def synthetic_batch(rng, batch_size: int, obs_dim: int, action_dim: int):
    import jax.numpy as jnp

    return {
        "observations": jnp.asarray(rng.normal(size=(batch_size, obs_dim)), jnp.float32),
        "next_observations": jnp.asarray(rng.normal(size=(batch_size, obs_dim)), jnp.float32),
        "actions": jnp.asarray(rng.uniform(-1, 1, size=(batch_size, action_dim)), jnp.float32),
        "rewards": jnp.asarray(rng.normal(size=(batch_size,)), jnp.float32),
        "masks": jnp.ones((batch_size,), jnp.float32),
    }


def import_reference(reference_repo: str):
    """The checkout's agents/sorl.py module; the checkout goes first on sys.path (a foreign repository,
    whose `agents` and `utils` packages then import as its own code expects)."""
    sys.path.insert(0, os.path.abspath(reference_repo))
    from agents import sorl

    return sorl


def make_agent(reference_repo: str, obs_dim: int, action_dim: int, stop_next_action_gradient: bool):
    import jax
    import numpy as np

    sorl = import_reference(reference_repo)

    if stop_next_action_gradient:
        # SPEC section 3: a' carries no gradient. The reference's critic loss back-propagates into
        # the actor through a'; wrapping its next-action sampler in stop_gradient makes its update
        # the same algorithm (and the same FLOPs) as ours, without editing the checkout.
        sample = sorl.SORLAgent.sample_k_step_actions_for_critic
        sorl.SORLAgent.sample_k_step_actions_for_critic = (
            lambda self, *args, **kwargs: jax.lax.stop_gradient(sample(self, *args, **kwargs)))

    config = sorl.get_config()
    agent = sorl.SORLAgent.create(0, np.zeros((1, obs_dim), np.float32),
                                  np.zeros((1, action_dim), np.float32), config)
    return agent, int(config["batch_size"])


def train_rates(agent, batches, windows: int, window_steps: int) -> dict:
    import jax

    start = time.perf_counter()
    agent, info = agent.update(batches[0])
    jax.block_until_ready(info)
    compile_s = time.perf_counter() - start
    rates, cpu_ms = [], []
    for window in range(windows):
        wall, cpu = time.perf_counter(), time.process_time()
        for i in range(window_steps):
            agent, info = agent.update(batches[i % len(batches)])
        jax.block_until_ready(info)
        rates.append(window_steps / (time.perf_counter() - wall))
        cpu_ms.append((time.process_time() - cpu) / window_steps * 1e3)
        print(f"window {window}: {rates[-1]:.2f} steps/s, {cpu_ms[-1]:.0f} CPU-ms/step", flush=True)
    return {"compile_s": round(compile_s, 1), "steps_per_s": [round(r, 2) for r in rates],
            "median_steps_per_s": round(statistics.median(rates), 2),
            "median_cpu_ms_per_step": round(statistics.median(cpu_ms), 1)}


def latencies(agent, obs_dim: int, runs: int, calls: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    observations = jnp.asarray(np.random.default_rng(1).normal(size=(1, obs_dim)), jnp.float32)
    key = jax.random.PRNGKey(1)
    result = {}
    for steps, candidates in ((1, 1), (8, 1), (8, 4)):
        def call():
            return agent.sample_actions(observations, seed=key, inference_timesteps=steps,
                                        n=candidates).block_until_ready()

        per_run = [seconds * 1e3 for seconds in time_calls(call, runs, calls, warmup=20)]
        name = f"act_k{steps}" + (f"_best_of_{candidates}" if candidates > 1 else "")
        result[name] = round(statistics.median(per_run), 3)
        print(f"{name:>18} batch 1: {result[name]:.3f} ms/call (runs {[round(r, 3) for r in per_run]})",
              flush=True)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference_repo", required=True,
                        help="checkout of the authors' SORL code (has agents/sorl.py)")
    parser.add_argument("--mode", choices=("train", "latency", "both"), default="both")
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window_steps", type=int, default=40)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--obs_dim", type=int, default=28)
    parser.add_argument("--action_dim", type=int, default=5)
    parser.add_argument("--stop_next_action_gradient", action="store_true",
                        help="time the reference with no gradient through the critic's next action "
                             "(SPEC section 3, what sorl-tf trains); default: as published")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.reference_repo, "agents", "sorl.py")):
        raise SystemExit(f"--reference_repo={args.reference_repo}: no agents/sorl.py there; pass a "
                         "checkout of the authors' SORL code")

    import jax
    import numpy as np

    agent, batch_size = make_agent(args.reference_repo, args.obs_dim, args.action_dim,
                                   args.stop_next_action_gradient)
    results = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()],
               "stop_next_action_gradient": args.stop_next_action_gradient}
    if args.mode in ("train", "both"):
        rng = np.random.default_rng(0)
        batches = [synthetic_batch(rng, batch_size, args.obs_dim, args.action_dim) for _ in range(8)]
        results["train"] = train_rates(agent, batches, args.windows, args.window_steps)
        print(f"median {results['train']['median_steps_per_s']} steps/s, "
              f"{results['train']['median_cpu_ms_per_step']} CPU-ms/step", flush=True)
    if args.mode in ("latency", "both"):
        results["latency_ms"] = latencies(agent, args.obs_dim, args.runs, args.calls)
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
