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


class ScriptedAgent:
    """An actor and a critic we write by hand: a_k = 1 - 1/k in every component (a_1 = 0, a_2 = 0.5,
    a_4 = 0.75, a_8 = 0.875), Q(s, a, k) = q_fn(mean of a, k). Records the critic inputs k."""

    action_dim = ACTION_DIM

    def __init__(self, q_fn):
        self.q_fn = q_fn
        self.q_calls = []

    def act(self, observations, euler_steps, num_samples, noise, cap_step_level=False):
        return tf.fill([tf.shape(observations)[0], ACTION_DIM], 1.0 - 1.0 / euler_steps)

    def q_values(self, observations, actions, euler_steps):
        self.q_calls.append(euler_steps)
        return self.q_fn(tf.reduce_mean(actions, axis=-1), float(euler_steps))


def scripted_steps(q_fn, compare, threshold=0.0, cap=8):
    observations, noise = np.zeros((3, OBS_DIM), np.float32), np.zeros((3, 1, ACTION_DIM), np.float32)
    agent = ScriptedAgent(q_fn)
    actions, steps_used = adaptive.adaptive_act(agent, observations, noise=noise, max_euler_steps=cap,
                                                threshold=threshold, compare=compare)
    return steps_used.numpy(), actions.numpy(), agent.q_calls


def test_critic_input_drift_fools_only_the_across_levels_rule():
    """Q = -10 + 0.1 log2 k ignores the action. Across levels each doubling 'gains' 0.1, so the rule
    climbs to the cap; at one critic input the actions score alike and the rule stops at k = 1."""
    q_fn = lambda a, k: -10.0 + 0.1 * np.log2(k) + 0.0 * a  # noqa: E731
    steps, actions, calls = scripted_steps(q_fn, "across_levels")
    np.testing.assert_array_equal(steps, [8, 8, 8])
    np.testing.assert_allclose(actions, np.full((3, ACTION_DIM), 0.875))
    assert calls == [1, 2, 4, 8]
    steps, actions, calls = scripted_steps(q_fn, "same_level")
    np.testing.assert_array_equal(steps, [1, 1, 1])
    np.testing.assert_allclose(actions, np.zeros((3, ACTION_DIM)))
    assert calls == [8, 8], "every action scored at the cap; all rows stop after level 2"


def test_level_penalty_hides_better_actions_from_the_across_levels_rule():
    """Q = -10 + mean(a) - 0.5 log2 k: better actions for more steps, but a critic that marks down its
    k input. Across levels: Q(a_2, 2) - Q(a_1, 1) = 0.5 - 0.5 = 0, not a gain: k = 1. At the cap:
    gains a_2 - a_1 = 0.5, a_4 - a_2 = 0.25, a_8 - a_4 = 0.125, all > 0: k = 8. With a relative
    threshold of 0.03, |Q(a_k, 8)| = 11.5 - a_k: 0.5 > 0.03 * 11.5 = 0.345 passes, 0.25 > 0.03 * 11.0
    = 0.33 does not: k = 2."""
    q_fn = lambda a, k: -10.0 + a - 0.5 * np.log2(k)  # noqa: E731
    assert scripted_steps(q_fn, "across_levels")[0].tolist() == [1, 1, 1]
    assert scripted_steps(q_fn, "same_level")[0].tolist() == [8, 8, 8]
    assert scripted_steps(q_fn, "same_level", threshold=0.03)[0].tolist() == [2, 2, 2]
    assert scripted_steps(q_fn, "across_levels", threshold=0.03)[0].tolist() == [1, 1, 1]


def test_both_rules_agree_on_a_critic_blind_to_its_k_input():
    """Q = -10 + mean(a) - 10 (mean(a) - 0.75)^2 ignores k and peaks at a_4 among a_1, a_2, a_4, a_8
    (-15.625, -10.125, -9.25, -9.28125): both rules stop at k = 4."""
    q_fn = lambda a, k: -10.0 + a - 10.0 * (a - 0.75) ** 2 + 0.0 * k  # noqa: E731
    assert scripted_steps(q_fn, "across_levels")[0].tolist() == [4, 4, 4]
    assert scripted_steps(q_fn, "same_level")[0].tolist() == [4, 4, 4]


def test_same_level_with_the_real_critic_batches_and_traces(agent, inputs):
    observations, noise = inputs
    actions, steps_used = adaptive.adaptive_act(agent, observations, noise=noise, max_euler_steps=4,
                                                compare="same_level")
    for i in range(len(observations)):
        a_i, s_i = adaptive.adaptive_act(agent, observations[i:i + 1], noise=noise[i:i + 1], max_euler_steps=4,
                                         compare="same_level")
        np.testing.assert_allclose(a_i.numpy()[0], actions.numpy()[i], atol=1e-6)
        assert int(s_i.numpy()[0]) == int(steps_used.numpy()[i])
    traced = tf.function(lambda o, n: adaptive.adaptive_act(agent, o, noise=n, max_euler_steps=4, compare="same_level"))
    np.testing.assert_array_equal(traced(observations, noise)[1].numpy(), steps_used.numpy())


def test_unknown_compare_rule_is_a_clear_error(agent, inputs):
    with pytest.raises(ValueError, match="compare='both'.*across_levels.*same_level"):
        adaptive.adaptive_act(agent, inputs[0], noise=inputs[1], compare="both")
