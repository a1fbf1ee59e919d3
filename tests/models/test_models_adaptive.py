"""The adaptive-budget policy: follows the critic row by row, never exceeds its cap, costs what it says."""

import numpy as np
import pytest
import tensorflow as tf

from models import adaptive
from models.config import AgentConfig
from models.sorl import SORLAgent

OBS_DIM, ACTION_DIM = 3, 2


@pytest.fixture(scope="module")
def agent():
    config = AgentConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), seed=3)
    return SORLAgent(config, OBS_DIM, ACTION_DIM)


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    observations = rng.normal(size=(6, OBS_DIM)).astype(np.float32)
    noise = rng.normal(size=(6, 1, ACTION_DIM)).astype(np.float32)
    return observations, noise


class CriticSays:
    """The real agent's actor (agent.act), with a critic we choose: q_fn(observations, steps k)."""

    def __init__(self, agent, q_fn):
        self.agent, self.q_fn = agent, q_fn
        self.action_dim = agent.action_dim
        self.q_calls = []

    def act(self, *args, **kwargs):
        return self.agent.act(*args, **kwargs)

    def q_values(self, observations, actions, euler_steps):
        self.q_calls.append(euler_steps)
        return self.q_fn(tf.convert_to_tensor(observations), float(euler_steps))


def k_step_actions(agent, observations, noise, k):
    return agent.act(observations, euler_steps=k, num_samples=1, noise=noise).numpy()


def test_flat_critic_uses_one_step(agent, inputs):
    """No gain (Q the same for every k): every row returns the 1-step action."""
    observations, noise = inputs
    flat = CriticSays(agent, lambda obs, k: tf.fill([tf.shape(obs)[0]], -5.0))
    actions, steps_used = adaptive.adaptive_act(flat, observations, noise=noise, max_euler_steps=8, threshold=0.0)
    np.testing.assert_array_equal(steps_used.numpy(), np.ones(6))
    np.testing.assert_array_equal(actions.numpy(), k_step_actions(agent, observations, noise, 1))
    assert flat.q_calls == [1, 2], "after every row stopped at level 2, no further level may run"


def test_falling_critic_uses_one_step(agent, inputs):
    observations, noise = inputs
    falling = CriticSays(agent, lambda obs, k: tf.fill([tf.shape(obs)[0]], -float(k)))
    _, steps_used = adaptive.adaptive_act(falling, observations, noise=noise, max_euler_steps=8)
    np.testing.assert_array_equal(steps_used.numpy(), np.ones(6))


@pytest.mark.parametrize("cap", [1, 2, 4, 8, 16])
def test_rising_critic_stops_at_the_cap(agent, inputs, cap):
    """Q always improving with k: every row doubles up to the cap, never beyond it."""
    observations, noise = inputs
    rising = CriticSays(agent, lambda obs, k: tf.fill([tf.shape(obs)[0]], float(k)))
    actions, steps_used = adaptive.adaptive_act(rising, observations, noise=noise, max_euler_steps=cap)
    np.testing.assert_array_equal(steps_used.numpy(), np.full(6, cap))
    np.testing.assert_allclose(actions.numpy(), k_step_actions(agent, observations, noise, cap), atol=1e-6)
    assert max(rising.q_calls) == cap


def test_rows_stop_independently(agent, inputs):
    """Rows whose first observation feature is positive keep improving until k = 4 (Q peaks there),
    the others get worse at once; each row's action is its own k-step action for that k."""
    observations, noise = inputs
    sign = np.sign(observations[:, 0])
    assert (sign > 0).any() and (sign < 0).any()

    def q_fn(obs, k):
        peak = -abs(np.log2(k) - 2.0)  # rises to k = 4, then falls
        return tf.where(obs[:, 0] > 0, peak, -float(k))

    actions, steps_used = adaptive.adaptive_act(CriticSays(agent, q_fn), observations, noise=noise, max_euler_steps=16)
    expected_steps = np.where(sign > 0, 4, 1)
    np.testing.assert_array_equal(steps_used.numpy(), expected_steps)
    for k in (1, 4):
        rows = expected_steps == k
        np.testing.assert_allclose(actions.numpy()[rows], k_step_actions(agent, observations, noise, k)[rows],
                                   atol=1e-6)


def test_threshold_is_relative_to_q(agent, inputs):
    """Q = -10 + 0.05 log2 k: each doubling gains 0.05, i.e. 0.5% of |Q|."""
    observations, noise = inputs
    critic = CriticSays(agent, lambda obs, k: tf.fill([tf.shape(obs)[0]], -10.0 + 0.05 * float(np.log2(k))))
    _, below = adaptive.adaptive_act(critic, observations, noise=noise, max_euler_steps=8, threshold=0.004)
    _, above = adaptive.adaptive_act(critic, observations, noise=noise, max_euler_steps=8, threshold=0.006)
    np.testing.assert_array_equal(below.numpy(), np.full(6, 8))
    np.testing.assert_array_equal(above.numpy(), np.ones(6))


def test_real_critic_batch_equals_single_rows_and_traces(agent, inputs):
    """With the agent's own critic: batched rows equal single-row calls, the traced function equals
    eager, the cap holds and steps are powers of two."""
    observations, noise = inputs
    actions, steps_used = adaptive.adaptive_act(agent, observations, noise=noise, max_euler_steps=8, threshold=0.0)
    for i in range(len(observations)):
        a_i, s_i = adaptive.adaptive_act(agent, observations[i:i + 1], noise=noise[i:i + 1], max_euler_steps=8)
        np.testing.assert_allclose(a_i.numpy()[0], actions.numpy()[i], atol=1e-6)
        assert int(s_i.numpy()[0]) == int(steps_used.numpy()[i])
    assert set(steps_used.numpy().tolist()) <= {1, 2, 4, 8}
    assert np.all(np.abs(actions.numpy()) <= 1.0)

    traced = tf.function(
        lambda o, n: adaptive.adaptive_act(agent, o, noise=n, max_euler_steps=8, threshold=0.0),
        input_signature=[tf.TensorSpec([None, OBS_DIM], tf.float32), tf.TensorSpec([None, 1, ACTION_DIM], tf.float32)])
    traced_actions, traced_steps = traced(observations, noise)
    np.testing.assert_allclose(traced_actions.numpy(), actions.numpy(), atol=1e-6)
    np.testing.assert_array_equal(traced_steps.numpy(), steps_used.numpy())


def test_seeded_noise_is_reproducible(agent, inputs):
    observations, _ = inputs
    first = adaptive.adaptive_act(agent, observations, max_euler_steps=4, seed=tf.constant(7, tf.int64))
    second = adaptive.adaptive_act(agent, observations, max_euler_steps=4, seed=tf.constant(7, tf.int64))
    other = adaptive.adaptive_act(agent, observations, max_euler_steps=4, seed=tf.constant(8, tf.int64))
    np.testing.assert_array_equal(first[0].numpy(), second[0].numpy())
    assert not np.allclose(first[0].numpy(), other[0].numpy())


def test_cost_accounting_by_hand():
    # A row returning a_k tried levels 1..2k (capped): k=1 -> 1+2 = 3 actor calls and 2 Q calls;
    # k=2 -> 1+2+4 = 7 and 3; k=4 -> 1+2+4+8 = 15 and 4; k=8 (cap) -> 15 and 4.
    np.testing.assert_array_equal(adaptive.actor_evaluations([1, 2, 4, 8], 8), [3, 7, 15, 15])
    np.testing.assert_array_equal(adaptive.critic_evaluations([1, 2, 4, 8], 8), [2, 3, 4, 4])
    np.testing.assert_array_equal(adaptive.actor_evaluations([1], 1), [1])
    np.testing.assert_array_equal(adaptive.critic_evaluations([1], 1), [1])


@pytest.mark.parametrize("cap", [0, 3, 6])
def test_cap_must_be_a_power_of_two(agent, inputs, cap):
    with pytest.raises(ValueError, match="power of two"):
        adaptive.adaptive_act(agent, inputs[0], noise=inputs[1], max_euler_steps=cap)
