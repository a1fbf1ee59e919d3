"""The authors' critic's view of the budgets, measured as `evaluate.py --diagnostics` measures ours.

    /tmp/jaxref/bin/python -m bench.reference_budget_ranking --reference_repo=/tmp/sorl-reference \
        --run=artifacts/side_by_side_q10/reference-s0 --epoch=50000 --val=artifacts/raw/cube-single-play-v0-val.npz

`--run`: a folder of the reference's main.py (bench_side_by_side.py's reference-sSEED); its flags.json
gives the agent's configuration and params_EPOCH.pkl the weights (restored with the checkout's own
`restore_agent`, which unpickles: pass only saves your own runs wrote). On the first `--states`
observations of `--val`, a_k = its sampler's k-step action from one key (so one noise per state for
every k), and it prints pipeline/budget_ranking.py's four measurements: mean Q(s, a_k, k),
mean Q(s, a_1, k), and how often a_2k beats a_k across levels and at the largest k.
Run it in the reference's venv (bench/bench_reference_jax.py says how to make it).
"""
import argparse
import json
from pathlib import Path

from bench.bench_reference_jax import import_reference
from pipeline.budget_ranking import rank_budgets

BUDGETS = (1, 2, 4, 8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference_repo", required=True)
    p.add_argument("--run", required=True, help="the reference run's --save_dir (or the folder holding flags.json)")
    p.add_argument("--epoch", type=int, required=True, help="which params_EPOCH.pkl")
    p.add_argument("--val", required=True, help="an OGBench-layout npz whose observations to score")
    p.add_argument("--states", type=int, default=1024)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    found = sorted(Path(args.run).glob("**/flags.json"))
    if not found:
        raise SystemExit(f"reference_budget_ranking: no flags.json under --run={args.run}: pass a reference run's folder")
    run_dir = found[-1].parent
    if not (run_dir / f"params_{args.epoch}.pkl").exists():
        saves = sorted(p.name for p in run_dir.glob("params_*.pkl"))
        raise SystemExit(f"reference_budget_ranking: {run_dir} has no params_{args.epoch}.pkl (saves: {saves})")
    sorl = import_reference(args.reference_repo)
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np
    from utils.flax_utils import restore_agent  # the checkout's, importable once import_reference ran

    config = ml_collections.ConfigDict(json.loads((run_dir / "flags.json").read_text())["agent"])
    with np.load(args.val, allow_pickle=False) as data:
        observations = jnp.asarray(data["observations"][:args.states], jnp.float32)
        example_actions = jnp.asarray(data["actions"][:1], jnp.float32)
    agent = restore_agent(sorl.SORLAgent.create(args.seed, observations[:1], example_actions, config), str(run_dir), args.epoch)
    key = jax.random.PRNGKey(args.seed)
    actions = {k: agent.sample_actions(observations, seed=key, inference_timesteps=k, n=1) for k in BUDGETS}

    def q(action_k, input_k):
        steps = jnp.full((observations.shape[0], 1), input_k)
        values = agent.network.select("critic")(observations, actions=actions[action_k], timesteps=steps)
        return np.asarray(values.min(axis=0) if config["q_agg"] == "min" else values.mean(axis=0))

    result = dict(run=str(run_dir), epoch=args.epoch, budget_states=int(observations.shape[0]),
                  **rank_budgets(BUDGETS, q))
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
