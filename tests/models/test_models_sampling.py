"""Euler sampling, best-of-N selection and the batched == single-row property, against closed forms."""

import math

import numpy as np
import pytest
import tensorflow as tf

from models import networks, sampling


def linear_velocity(a, b):
    """v(s, x, t, d) = a * x + b (ignores s, t, d)."""
    return lambda s, x, t, d: a * x + b


def euler_closed_form(x0, a, b, k):
    """k Euler steps of x' = a x + b with h = 1/k: x_k = g^k x0 + (b/k) sum_j g^j, g = 1 + a/k."""
    g = 1.0 + a / k
    return g**k * x0 + (b / k) * sum(g**j for j in range(k))


@pytest.mark.parametrize("k", [1, 2, 3, 4, 8, 32])
def test_k_step_composition_of_a_linear_velocity(k):
    x0 = np.array([[0.3, -0.2], [0.1, 0.05]], np.float32)
    obs = np.zeros((2, 3), np.float32)
    got = sampling.euler_sample(linear_velocity(-0.7, 0.25), obs, x0, k, clip=False).numpy()
    np.testing.assert_allclose(got, euler_closed_form(x0, -0.7, 0.25, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_times_and_level_passed_to_the_network(k):
    obs = np.zeros((2, 1), np.float32)
    x0 = np.zeros((2, 1), np.float32)
    # v = t: x_k = (1/k) * sum_i i/k = (k - 1) / (2k).
    by_time = sampling.euler_sample(lambda s, x, t, d: t[:, None] + 0 * x, obs, x0, k, clip=False)
    np.testing.assert_allclose(by_time.numpy(), (k - 1) / (2 * k), atol=1e-6)
    # v = d: x_k = log2(k).
    by_level = sampling.euler_sample(lambda s, x, t, d: d[:, None] + 0 * x, obs, x0, k, clip=False)
    np.testing.assert_allclose(by_level.numpy(), math.log2(k), atol=1e-6)


@pytest.mark.parametrize("k, max_level, want", [(4, 3.0, 2.0), (8, 3.0, 3.0), (16, 3.0, 3.0), (32, 3.0, 3.0),
                                                 (16, None, 4.0)])
def test_step_level_cap_keeps_long_unrolls_at_the_finest_trained_level(k, max_level, want):
    obs = np.zeros((2, 1), np.float32)
    x0 = np.zeros((2, 1), np.float32)
    # v = d over k steps of size 1/k: x_k = d.
    got = sampling.euler_sample(lambda s, x, t, d: d[:, None] + 0 * x, obs, x0, k, clip=False, max_level=max_level)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-6)
    assert sampling.step_level(k, max_level) == want


def test_output_is_clipped_to_the_action_box():
    x0 = np.array([[0.5, -0.5]], np.float32)
    out = sampling.euler_sample(linear_velocity(0.0, 3.0), np.zeros((1, 1), np.float32), x0, 2).numpy()
    np.testing.assert_array_equal(out, [[1.0, 1.0]])


def test_zero_steps_is_an_error():
    with pytest.raises(ValueError, match="euler_steps=0"):
        sampling.euler_sample(linear_velocity(0.0, 0.0), np.zeros((1, 1)), np.zeros((1, 1)), 0)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_runtime_step_count_equals_the_static_unroll(k):
    actor = networks.ShortcutActor(3, 2, (16, 16), seed=0)
    obs = tf.random.stateless_normal([5, 3], seed=[1, 2])
    noise = tf.random.stateless_normal([5, 2], seed=[3, 4])
    static = sampling.euler_sample(actor, obs, noise, k)
    dynamic = tf.function(lambda steps: sampling.euler_sample_any(actor, obs, noise, steps, 8), jit_compile=True)
    np.testing.assert_allclose(dynamic(tf.constant(k)).numpy(), static.numpy(), atol=1e-5)
    assert sampling.step_counts(8) == [1, 2, 4, 8] and sampling.step_counts(1) == [1]


def test_aggregate_q():
    q = tf.constant([[1.0, -2.0, 3.0], [3.0, 0.0, -1.0]])
    np.testing.assert_allclose(sampling.aggregate_q(q, "mean").numpy(), [2.0, -1.0, 1.0])
    np.testing.assert_allclose(sampling.aggregate_q(q, "min").numpy(), [1.0, -2.0, -1.0])
    with pytest.raises(ValueError, match="q_agg"):
        sampling.aggregate_q(q, "max")


def test_best_of_n_picks_the_argmax_and_the_first_on_ties():
    candidates = tf.constant(np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2))
    scores = tf.constant([[0.1, 0.9, 0.5], [0.7, 0.2, 0.7]])
    np.testing.assert_array_equal(sampling.best_of_n(candidates, scores).numpy(), [[2, 3], [6, 7]])


def test_sample_actions_ranks_candidates_with_the_critic():
    # Velocity 0: each candidate is its clipped noise. The critic prefers actions near 0.3.
    noise = tf.constant([[[0.9], [0.25], [-0.4]], [[-0.1], [0.5], [2.0]]])
    obs = tf.zeros([2, 4])

    def critic(s, a, k):
        assert k.shape == (6,)
        return tf.stack([-tf.square(a[:, 0] - 0.3), -tf.square(a[:, 0] - 0.3) + k - k])

    got = sampling.sample_actions(linear_velocity(0.0, 0.0), critic, obs, noise, euler_steps=4, q_agg="min").numpy()
    np.testing.assert_allclose(got, [[0.25], [0.5]])


def test_critic_sees_the_step_count():
    seen = []

    def critic(s, a, k):
        seen.append(k)
        return tf.zeros([2, tf.shape(a)[0]])

    sampling.sample_actions(linear_velocity(0.0, 0.0), critic, tf.zeros([1, 1]), tf.zeros([1, 2, 1]), euler_steps=16)
    np.testing.assert_array_equal(seen[0].numpy(), [16.0, 16.0])


def test_batched_rows_equal_single_row_calls():
    actor = networks.ShortcutActor(6, 3, (32, 32), seed=1)
    critic = networks.CriticEnsemble(6, 3, (32, 32), seed=2)
    obs = tf.random.stateless_normal([7, 6], seed=[0, 1])
    noise = tf.random.stateless_normal([7, 5, 3], seed=[0, 2])
    for steps, n in [(1, 1), (4, 1), (8, 5), (16, 5)]:
        batched = sampling.sample_actions(actor, critic, obs, noise[:, :n], steps).numpy()
        for row in range(7):
            single = sampling.sample_actions(actor, critic, obs[row : row + 1], noise[row : row + 1, :n], steps)
            np.testing.assert_allclose(batched[row], single.numpy()[0], atol=1e-5)
