"""Critic diagnostics: does Q rank actions the way the environment does?

Two measurements of a trained agent's critic at k Euler steps:
- Q(s_t, a_t, k) of the actions the k-step policy takes in the real environment against their
  Monte-Carlo discounted returns (Pearson and Spearman correlations, mean gap);
- the TD error of the critic loss's target on the validation split.

And one of the critic's budget input, on validation states: the mean of Q(s, a_k, k) per k, the same
action a_1 scored at every k, and how often the doubled action a_2k (same noise) beats a_k, scored
across levels (Q(s, a_2k, 2k) vs Q(s, a_k, k), the adaptive rule's default) or at one input (the cap).
A critic whose k input orders the budgets against their success stalls the adaptive rule at k = 1.

`run_diagnostics` makes them for one task and writes q_vs_return_task{T}.csv and .png;
`write_diagnostics_json` writes the summaries (diagnostics.json).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from data import files
from models.noise import noise_seeds, row_seeded_noise
from pipeline import policies, rollouts
from pipeline.budget_ranking import rank_budgets

PAIRS_COLUMNS = ("episode", "t", "q", "mc_return", "episode_success")
TD_BATCH_SIZE = 256


def discounted_returns(rewards, discount: float) -> np.ndarray:
    """Monte-Carlo returns G_t = r_t + discount * G_{t+1} of one episode (G after the last step = 0).

    With the rewards the offline data uses (`state_rewards`: the reward of the state each step
    starts from), G_t is what the critic's Q(s_t, a_t) estimates, except that a truncated
    (unsuccessful) episode is missing its tail: those returns are upper bounds on the true value.
    """
    rewards = np.asarray(rewards, np.float64)
    returns = np.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * running
        returns[t] = running
    return returns


def ranks(values) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's correlation needs)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values), np.float64)
    ranked[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):  # average the ranks within each group of ties
        sums = np.bincount(inverse, weights=ranked)
        counts = np.bincount(inverse)
        ranked = (sums / counts)[inverse]
    return ranked


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than two values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / denominator) if denominator > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson's on the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


def q_versus_returns(agent, trajectories, euler_steps: int, discount: float, chunk: int = 4096) -> dict:
    """Q(s_t, a_t, k) of the actions taken and their Monte-Carlo returns, over recorded episodes
    (`rollouts.evaluate_policy(..., record=True)`). Returns arrays q, mc_return, episode, t,
    episode_success (one entry per step; steps whose return is unknown, NaN, are dropped)."""
    observations = np.concatenate([tr["observations"] for tr in trajectories])
    actions = np.concatenate([tr["actions"] for tr in trajectories])
    returns = np.concatenate([discounted_returns(tr["state_rewards"], discount) for tr in trajectories])
    episode = np.concatenate([np.full(len(tr["actions"]), e) for e, tr in enumerate(trajectories)])
    t = np.concatenate([np.arange(len(tr["actions"])) for tr in trajectories])
    success = np.concatenate([np.full(len(tr["actions"]), float(tr.get("success", math.nan)))
                              for tr in trajectories])

    q_fn = tf.function(lambda o, a: agent.q_values(o, a, int(euler_steps)))
    q = np.concatenate([q_fn(tf.constant(observations[i:i + chunk]), tf.constant(actions[i:i + chunk])).numpy()
                        for i in range(0, len(observations), chunk)])
    keep = np.isfinite(returns)
    return dict(q=q[keep], mc_return=returns[keep], episode=episode[keep], t=t[keep],
                episode_success=success[keep])


def validation_td_errors(agent, batches, euler_steps: int, seed: int = 0, cap_step_level: bool = False) -> np.ndarray:
    """TD errors Q(s, a, k) - (r + discount * mask * agg Q_target(s', a', k)) per transition of the
    validation batches (dicts as data.reader.make_dataset yields), a' = k-step action of the online
    actor at s' (the critic loss's target, SPEC 3), noise seeded from `seed` and the batch index."""
    config = agent.config
    euler_steps = int(euler_steps)

    @tf.function(reduce_retracing=True)
    def td(batch, seeds):
        observations, next_observations = batch["observations"], batch["next_observations"]
        # q_values takes raw observations and env-unit actions (as act returns them); stored actions are in [-1, 1]
        q = agent.q_values(observations, agent.env_units.to_env_actions(batch["actions"]), euler_steps)
        noise = row_seeded_noise(seeds, 1, int(agent.action_dim))
        next_actions = agent.act(next_observations, euler_steps=euler_steps, num_samples=1, noise=noise,
                                 cap_step_level=cap_step_level)
        next_q = agent.q_values(next_observations, next_actions, euler_steps, target=True)
        target = config.reward_scale * batch["rewards"] + config.discount * batch["masks"] * next_q
        return q - target

    errors = []
    for index, batch in enumerate(batches):
        size = int(batch["rewards"].shape[0])
        seeds = noise_seeds(seed, np.full(size, index), np.arange(size))
        errors.append(td({key: batch[key] for key in ("observations", "actions", "next_observations",
                                                      "rewards", "masks")}, tf.constant(seeds)).numpy())
    return np.concatenate(errors) if errors else np.zeros(0, np.float32)


def validation_td_summary(agent, data_dir, task, euler_steps, val_batches, seed, cap_step_level=False) -> dict:
    """The TD error over the first `val_batches` validation batches of `data_dir` (prepared TFRecords)."""
    from data import reader

    dataset = reader.make_dataset(str(data_dir), split="val", task=task, batch_size=TD_BATCH_SIZE, seed=seed,
                                  shuffle=False, repeat=False, cache=False, drop_remainder=False)
    errors = validation_td_errors(agent, dataset.take(val_batches), euler_steps, seed, cap_step_level)
    return dict(td_data=str(data_dir), td_transitions=int(errors.size),
                td_error_mean=float(errors.mean()), td_error_abs_mean=float(abs(errors).mean()),
                td_error_rmse=float((errors ** 2).mean() ** 0.5))


def budget_ranking(agent, observations, budgets=(1, 2, 4, 8), seed: int = 0) -> dict:
    """pipeline.budget_ranking.rank_budgets of our critic on `observations` [B, obs_dim], with
    a_k = agent.act(s, k) from one seeded noise per row for every k in `budgets` (powers of two)."""
    observations = tf.convert_to_tensor(observations, tf.float32)
    noise = tf.random.stateless_normal([int(observations.shape[0]), 1, int(agent.action_dim)], seed=[int(seed), 0])
    actions = {int(k): agent.act(observations, euler_steps=int(k), num_samples=1, noise=noise) for k in budgets}

    def q(action_k, input_k):
        return agent.q_values(observations, actions[action_k], input_k).numpy()

    return dict(budget_states=int(observations.shape[0]), **rank_budgets(budgets, q))


def validation_budget_ranking(agent, data_dir, task, seed, states: int = 1024) -> dict:
    """budget_ranking on the first `states` observations of the validation split of `data_dir`."""
    from data import reader

    dataset = reader.make_dataset(str(data_dir), split="val", task=task, batch_size=states, seed=seed,
                                  shuffle=False, repeat=False, cache=False, drop_remainder=False)
    observations = next(iter(dataset))["observations"]
    m_btt = int(agent.config.m_btt)
    return budget_ranking(agent, observations, [2**i for i in range(m_btt.bit_length())], seed)


def run_diagnostics(agent, env, task, episodes, seed, euler_steps, data_dir, val_batches, output,
                    num_envs=None, episode_length=None, vectorization="auto", show_progress=True,
                    cap_step_level=False) -> dict:
    """Q vs Monte-Carlo return of the actions the k-step policy takes on `task`, and the validation
    TD error (skipped without `data_dir`). Writes q_vs_return_task{task}.csv and .png to `output`
    and returns the summary (NaN: an undefined correlation)."""
    from tqdm import tqdm

    discount = float(agent.config.discount)
    policy = policies.make_agent_policy(agent, euler_steps, 1, cap_step_level=cap_step_level)
    with tqdm(total=episodes, unit="ep", desc=f"diagnostics: task {task} k={euler_steps}",
              disable=not show_progress, dynamic_ncols=True) as bar:
        rollout = rollouts.evaluate_policy(policy, env, task, episodes, seed, num_envs=num_envs,
                                           episode_length=episode_length, vectorization=vectorization,
                                           record=True, progress=bar.update)
    pairs = q_versus_returns(agent, rollout["trajectories"], euler_steps, discount)
    successful = pairs["episode_success"] > 0.5
    summary = dict(
        task=task, steps=euler_steps, episodes=episodes, seed=seed, discount=discount,
        success_rate=rollout["success_rate"], transitions=int(len(pairs["q"])),
        pearson_q_vs_return=pearson(pairs["q"], pairs["mc_return"]),
        spearman_q_vs_return=spearman(pairs["q"], pairs["mc_return"]),
        pearson_successful_episodes=pearson(pairs["q"][successful], pairs["mc_return"][successful]),
        spearman_successful_episodes=spearman(pairs["q"][successful], pairs["mc_return"][successful]),
        q_mean=float(pairs["q"].mean()), mc_return_mean=float(pairs["mc_return"].mean()),
        q_minus_return_mean=float((pairs["q"] - pairs["mc_return"]).mean()),
        note="Monte-Carlo returns of truncated (unsuccessful) episodes miss their tail; the *_successful_episodes "
             "correlations use complete returns only.",
    )
    if data_dir:
        summary.update(validation_td_summary(agent, data_dir, task, euler_steps, val_batches, seed, cap_step_level))
        summary.update(validation_budget_ranking(agent, data_dir, task, seed))
    else:
        summary["td_error"] = "skipped: no --data and the run records no data directory"
    output = Path(output)
    write_pairs_csv(pairs, output / f"q_vs_return_task{task}.csv")
    plot_q_vs_return(pairs, summary, output / f"q_vs_return_task{task}.png")
    return summary


def write_pairs_csv(pairs: dict, path) -> Path:
    """One row per step: episode, t, q, mc_return, episode_success."""
    from pipeline import scaling

    rows = [dict(episode=int(e), t=int(t), q=float(q), mc_return=float(g), episode_success=int(s))
            for e, t, q, g, s in zip(pairs["episode"], pairs["t"], pairs["q"], pairs["mc_return"],
                                     pairs["episode_success"])]
    return scaling.write_csv(rows, path, columns=PAIRS_COLUMNS)


def plot_q_vs_return(pairs: dict, summary: dict, path) -> Path:
    """Scatter of Q against the Monte-Carlo return, successful and unsuccessful episodes apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5))
    success = pairs["episode_success"] > 0.5
    for mask, label, color in ((success, "successful episodes", "tab:green"),
                               (~success, "unsuccessful (truncated return)", "tab:red")):
        if mask.any():
            ax.scatter(pairs["mc_return"][mask], pairs["q"][mask], s=4, alpha=0.4, label=label, color=color)
    low = float(min(pairs["q"].min(), pairs["mc_return"].min()))
    high = float(max(pairs["q"].max(), pairs["mc_return"].max()))
    ax.plot([low, high], [low, high], color="gray", linewidth=1, linestyle="--", label="Q = return")
    ax.set_xlabel("Monte-Carlo discounted return from the step")
    ax.set_ylabel(f"Q(s, a, k={summary['steps']}) of the action taken")
    ax.set_title(f"task {summary['task']}: Pearson {summary['pearson_q_vs_return']:.2f}, "
                 f"Spearman {summary['spearman_q_vs_return']:.2f}")
    ax.legend(fontsize="small", markerscale=3)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return files.save_figure(fig, path)


def json_ready(value):
    """NaN (an undefined correlation) as null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_diagnostics_json(summaries, path) -> Path:
    """The per-task summaries as diagnostics.json (NaN as null)."""
    return files.write_json(path, json_ready(summaries), indent=1)
