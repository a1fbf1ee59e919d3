"""pipeline/scaling.py: Wilson intervals, the budget grid and its CSV and plots (a tiny agent in LineEnv)."""

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf  # noqa: F401  (TF before MuJoCo)

from pipeline import policies, scaling


@pytest.mark.parametrize("successes,trials,low,high", [
    # by hand: centre (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n)
    (0, 10, 0.0, 0.27753),
    (5, 10, 0.23659, 0.76341),
    (10, 10, 0.72247, 1.0),
    (45, 50, 0.78640, 0.95652),
])
def test_wilson_interval_by_hand_and_scipy(successes, trials, low, high):
    got = scaling.wilson_interval(successes, trials)
    np.testing.assert_allclose(got, (low, high), atol=5e-5)
    reference = scipy.stats.binomtest(successes, trials).proportion_ci(0.95, method="wilson")
    np.testing.assert_allclose(got, (reference.low, reference.high), atol=1e-9)


_POLICIES = {}


def make_line_policy(agent, cell):
    """One traced policy per cell for the whole module (tracing dominates these tests' time)."""
    if cell not in _POLICIES:
        if cell.adaptive:
            _POLICIES[cell] = policies.make_adaptive_policy(agent, cell.k, cell.threshold)
        else:
            _POLICIES[cell] = policies.make_agent_policy(agent, cell.k, cell.N)
    return _POLICIES[cell]


def grid_rows(agent, line_env, seed):
    env = lambda: line_env(jitter=0.5)  # noqa: E731
    cells = scaling.budget_grid(euler_steps=[1, 2], candidates=[1, 2], adaptive_thresholds=[0.0],
                                adaptive_max_euler_steps=4)
    return scaling.run_grid(lambda cell: make_line_policy(agent, cell), env, tasks=[1, 2], cells=cells,
                            episodes=4, seed=seed, num_envs=2, episode_length=5, vectorization="sync",
                            show_progress=False)


def test_grid_csv_columns_counts_and_values(line_agent, line_env, tmp_path):
    rows = grid_rows(line_agent, line_env, seed=0)
    path = scaling.write_csv(rows, tmp_path / "scaling.csv")
    table = scaling.read_csv(path)
    assert list(table[0].keys()) == list(scaling.CSV_COLUMNS)
    # 2 tasks x (4 fixed cells + 1 adaptive) + 5 pooled "all" rows
    assert len(table) == 15
    assert sorted({r["task"] for r in table}) == ["1", "2", "all"]
    fixed = [r for r in table if r["policy"] == "fixed"]
    assert sorted({(r["k"], r["N"]) for r in fixed}) == [("1", "1"), ("1", "2"), ("2", "1"), ("2", "2")]
    for r in fixed:
        k, n = int(r["k"]), int(r["N"])
        assert float(r["actor_calls_per_action"]) == k * n
        assert float(r["critic_calls_per_action"]) == (n if n > 1 else 0)
        assert float(r["mean_steps"]) == k
    for r in table:
        successes, episodes = int(r["successes"]), int(r["episodes"])
        assert episodes == (8 if r["task"] == "all" else 4)
        assert float(r["success_rate"]) == pytest.approx(successes / episodes)
        low, high = scaling.wilson_interval(successes, episodes)
        assert float(r["success_ci_low"]) == pytest.approx(low, abs=1e-5)
        assert float(r["success_ci_high"]) == pytest.approx(high, abs=1e-5)
    for r in (r for r in table if r["policy"] == "adaptive"):
        assert 1 <= float(r["mean_steps"]) <= 4
        assert float(r["actor_calls_per_action"]) <= 1 + 2 + 4
    plots = scaling.plot_scaling(rows, tmp_path, title="line")
    assert [p.name for p in plots] == ["success_vs_k.png", "success_vs_N.png", "success_vs_compute.png"]
    assert all(p.stat().st_size > 1000 for p in plots)
    assert len(scaling.format_table(rows).splitlines()) == 1 + 15


def test_grid_same_seed_same_numbers(line_agent, line_env):
    varying = {"policy_ms_per_action", "policy_ms_per_call", "wall_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in varying} for r in rows]  # noqa: E731
    first, second = grid_rows(line_agent, line_env, seed=3), grid_rows(line_agent, line_env, seed=3)
    assert strip(first) == strip(second)
    other = grid_rows(line_agent, line_env, seed=4)
    assert [r["mean_return"] for r in other] != [r["mean_return"] for r in first]


def test_budget_grid_rejects_empty_and_non_positive_budgets():
    with pytest.raises(ValueError, match="--euler_steps=\\[0\\]"):
        scaling.budget_grid(euler_steps=[0])
    with pytest.raises(ValueError, match="--candidates=\\[\\]"):
        scaling.budget_grid(candidates=[])


def test_adaptive_rules_are_rows_of_their_own(line_agent, line_env):
    cells = scaling.budget_grid(euler_steps=[1], candidates=[1], adaptive_thresholds=[0.0, 0.1],
                                adaptive_max_euler_steps=4, adaptive_compare=["across_levels", "same_level"])
    assert [(c.policy, c.threshold) for c in cells] == [
        ("fixed", 0.0), ("adaptive", 0.0), ("adaptive-same_level", 0.0), ("adaptive", 0.1),
        ("adaptive-same_level", 0.1)]
    assert cells[2].label == "adaptive(k<=4, thr=0, same_level)"
    rows = scaling.run_grid(
        lambda cell: policies.make_adaptive_policy(line_agent, cell.k, cell.threshold, compare=cell.compare),
        lambda: line_env(jitter=0.5), tasks=[1], cells=cells[1:3], episodes=2, seed=0, num_envs=2, episode_length=3,
        vectorization="sync", show_progress=False)
    assert [r["policy"] for r in rows] == ["adaptive", "adaptive-same_level"]
    assert all(1 <= r["mean_steps"] <= 4 for r in rows)
    with pytest.raises(ValueError, match="compare='cap'"):
        scaling.budget_grid(adaptive_thresholds=[0.0], adaptive_compare=["cap"])


def test_run_grids_gives_each_source_what_its_own_grid_gives(line_agent, line_env, tiny_agent):
    """Several sources run task by task (one vector env per task) and get the rows a grid of their own gives."""
    other = tiny_agent(2, 1, seed=2)
    env = lambda: line_env(jitter=0.5)  # noqa: E731
    cells = scaling.budget_grid(euler_steps=[1, 2], candidates=[1])
    made = {}

    def make(agent):
        return lambda cell: made.setdefault((id(agent), cell), policies.make_agent_policy(agent, cell.k, cell.N))

    kwargs = dict(episodes=3, seed=1, num_envs=2, episode_length=4, vectorization="sync", show_progress=False)
    together = scaling.run_grids([(make(line_agent), [1, 2]), (make(other), [2])], env, cells, **kwargs)
    alone = [scaling.run_grid(make(line_agent), env, [1, 2], cells, **kwargs)[:4],
             scaling.run_grid(make(other), env, [2], cells, **kwargs)]
    varying = {"policy_ms_per_action", "policy_ms_per_call", "wall_seconds"}
    strip = lambda rows: [{k: v for k, v in r.items() if k not in varying} for r in rows]  # noqa: E731
    assert [strip(rows) for rows in together] == [strip(rows) for rows in alone]
    assert [(r["task"], r["k"]) for r in together[0]] == [(1, 1), (1, 2), (2, 1), (2, 2)]
