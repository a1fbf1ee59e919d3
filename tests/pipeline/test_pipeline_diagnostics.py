"""pipeline/diagnostics.py: Monte-Carlo returns and correlations by hand and against scipy, and
the q column of the diagnostics against the agent's critic."""

import math

import numpy as np
import pytest
import scipy.stats
import tensorflow as tf  # noqa: F401  (TF before MuJoCo)

from pipeline import diagnostics, environments, policies, rollouts


def test_discounted_returns_by_hand():
    np.testing.assert_allclose(diagnostics.discounted_returns([-1, -1, -1], 0.5), [-1.75, -1.5, -1.0])
    np.testing.assert_allclose(diagnostics.discounted_returns([-1, 0], 0.9), [-1.0, 0.0])


def test_correlations_against_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    y = 0.5 * x + rng.normal(size=200)
    ties_x, ties_y = np.round(x), np.round(y * 2)
    assert diagnostics.pearson(x, y) == pytest.approx(scipy.stats.pearsonr(x, y).statistic, abs=1e-12)
    assert diagnostics.spearman(x, y) == pytest.approx(scipy.stats.spearmanr(x, y).statistic, abs=1e-12)
    assert diagnostics.spearman(ties_x, ties_y) == pytest.approx(
        scipy.stats.spearmanr(ties_x, ties_y).statistic, abs=1e-12)
    assert math.isnan(diagnostics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))


def test_json_ready_writes_nan_as_null(tmp_path):
    path = diagnostics.write_diagnostics_json([dict(a=math.nan, b=[1.0, math.inf], c="x")], tmp_path / "d.json")
    assert path.read_text() == '[\n {\n  "a": null,\n  "b": [\n   1.0,\n   null\n  ],\n  "c": "x"\n }\n]\n'


def test_q_column_is_the_agents_critic(tiny_agent):
    """The q column equals agent.q_values on the recorded (observation, action) pairs."""
    agent = tiny_agent(28, 5, hidden=(16, 16), seed=5)
    policy = policies.make_agent_policy(agent, 2, 1)
    try:
        rollout = rollouts.evaluate_policy(policy, "cube-single-play", 2, episodes=1, seed=0,
                                           episode_length=4, vectorization="sync", record=True)
    finally:
        environments.close_environments()
    pairs = diagnostics.q_versus_returns(agent, rollout["trajectories"], 2, 0.99)
    trajectory = rollout["trajectories"][0]
    expected = agent.q_values(trajectory["observations"], trajectory["actions"], 2).numpy()
    np.testing.assert_allclose(pairs["q"], expected, rtol=1e-5)


class LinearBudgetAgent:
    """act(s, k) = k * s[:, 0] and Q(s, a, k) = a - k: the budget ranking can be worked out by hand."""
    action_dim = 1

    def act(self, observations, euler_steps, num_samples=1, noise=None):
        return observations[:, :1] * float(euler_steps)

    def q_values(self, observations, actions, euler_steps):
        return actions[:, 0] - float(euler_steps)


def test_budget_ranking_by_hand():
    s0 = np.array([[-1.0, 9.0], [0.5, 9.0], [2.0, 9.0], [3.0, 9.0]], np.float32)
    ranking = diagnostics.budget_ranking(LinearBudgetAgent(), s0, budgets=(1, 2, 4))
    # Q(s, a_k, k) = k (s0 - 1): mean 0.125 k. Q(s, a_1, k) = s0 - k: mean 1.125 - k.
    assert ranking["q_mean_at_own_k"] == pytest.approx({"1": 0.125, "2": 0.25, "4": 0.5})
    assert ranking["q_mean_of_a1_at_k"] == pytest.approx({"1": 0.125, "2": -0.875, "4": -2.875})
    # Across levels 2k (s0 - 1) > k (s0 - 1) iff s0 > 1 (2 of 4 rows); at one input 2k s0 > k s0 iff s0 > 0 (3 of 4).
    assert ranking["doubled_wins_across_levels"] == {"1": 0.5, "2": 0.5}
    assert ranking["doubled_wins_same_level"] == {"1": 0.75, "2": 0.75}
    assert ranking["budget_states"] == 4
