"""pipeline/policies.py: policies over an agent draw row-seeded noise (models.noise) and pass the
inference options (Euler steps, best of N, cap_step_level) to agent.act."""

import math

import numpy as np
import pytest
import tensorflow as tf

from models import adaptive
from models.noise import row_seeded_noise
from pipeline import policies

OBS_DIM, ACTION_DIM = 3, 2


@pytest.fixture(scope="module")
def agent(tiny_agent):
    return tiny_agent(OBS_DIM, ACTION_DIM, seed=2)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    return rng.normal(size=(5, OBS_DIM)).astype(np.float32), np.array([3, 1, 4, 1, 5], np.int64)


@pytest.mark.parametrize("euler_steps,num_samples", [(1, 1), (2, 3)])
def test_agent_policy_is_agent_act_with_row_seeded_noise(agent, inputs, euler_steps, num_samples):
    observations, seeds = inputs
    policy = policies.make_agent_policy(agent, euler_steps=euler_steps, num_samples=num_samples)
    assert policy.row_seeded
    actions = policy(observations, seeds)
    noise = row_seeded_noise(tf.constant(seeds), num_samples, ACTION_DIM)
    expected = agent.act(observations, euler_steps=euler_steps, num_samples=num_samples, noise=noise).numpy()
    np.testing.assert_allclose(actions, expected, rtol=1e-5, atol=1e-6)
    # a row's action depends on its observation and seed only, not on the batch around it
    np.testing.assert_allclose(policy(observations[2:3], seeds[2:3]), actions[2:3], rtol=1e-5, atol=1e-6)


def test_cap_step_level_is_an_argument_of_the_policy(agent, inputs):
    observations, seeds = inputs
    k = 2 * agent.config.m_disc  # beyond the finest trained discretisation
    capped = policies.make_agent_policy(agent, euler_steps=k, cap_step_level=True)(observations, seeds)
    uncapped = policies.make_agent_policy(agent, euler_steps=k)(observations, seeds)
    noise = row_seeded_noise(tf.constant(seeds), 1, ACTION_DIM)
    expected = agent.act(observations, euler_steps=k, noise=noise, cap_step_level=True).numpy()
    np.testing.assert_allclose(capped, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(capped, uncapped)


def test_adaptive_policy_counts_its_cost(agent, inputs):
    observations, seeds = inputs
    policy = policies.make_adaptive_policy(agent, max_euler_steps=4, threshold=0.0)
    assert math.isnan(policy.cost()["mean_steps"])
    actions = policy(observations, seeds)
    assert actions.shape == (5, ACTION_DIM) and np.all(np.abs(actions) <= 1.0)
    steps = np.concatenate(policy.steps_used)
    assert steps.shape == (5,) and set(steps.tolist()) <= {1, 2, 4}
    cost = policy.cost()
    assert cost["mean_steps"] == pytest.approx(steps.mean())
    assert cost["actor_calls"] == pytest.approx(adaptive.actor_evaluations(steps, 4).mean())
    assert cost["critic_calls"] == pytest.approx(adaptive.critic_evaluations(steps, 4).mean())
    policy.reset_cost()
    assert math.isnan(policy.cost()["actor_calls"])
