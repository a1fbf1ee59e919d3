"""Each SORL loss against numpy values computed by hand; where gradients must and must not flow."""

import numpy as np
import pytest
import tensorflow as tf

from models import losses, networks, sampling

T_EPS = 1e-5


def np_interpolate(x0, x1, t):
    t = t[:, None]
    return (1 - (1 - T_EPS) * t) * x0 + t * x1, x1 - (1 - T_EPS) * x0


def test_interpolation_path_and_velocity():
    x0 = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    x1 = np.array([[0.2, 0.4], [-1.0, 1.0]], np.float32)
    t = np.array([0.0, 0.75], np.float32)
    x_t, u = losses.interpolate(x0, x1, t, T_EPS)
    want_x, want_u = np_interpolate(x0, x1, t)
    np.testing.assert_allclose(x_t.numpy(), want_x, rtol=1e-6)
    np.testing.assert_allclose(u.numpy(), want_u, rtol=1e-6)
    np.testing.assert_allclose(x_t.numpy()[0], x0[0])  # t = 0 is pure noise


def test_flow_matching_loss_by_hand():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(4, 3)).astype(np.float32)
    x1 = rng.uniform(-1, 1, size=(4, 2)).astype(np.float32)
    x0 = rng.normal(size=(4, 2)).astype(np.float32)
    t = np.array([0, 3, 5, 7], np.float32) / 8

    def velocity(s, x, tt, d):  # depends on every input, so a wrong one changes the loss
        return 2.0 * x + tt[:, None] + d[:, None] + tf.reduce_sum(s, axis=1, keepdims=True)

    loss, info = losses.flow_matching_loss(velocity, obs, x1, x0, t, m_disc=8, t_eps=T_EPS)
    x_t, u = np_interpolate(x0, x1, t)
    prediction = 2 * x_t + t[:, None] + 3.0 + obs.sum(1, keepdims=True)  # d = log2(8) = 3
    np.testing.assert_allclose(loss.numpy(), np.mean((prediction - u) ** 2), rtol=1e-5)
    assert info["fm_loss"] is loss


def test_self_consistency_levels_split_the_batch():
    np.testing.assert_array_equal(losses.self_consistency_levels(10, 8).numpy(), [2, 2, 2, 1, 1, 1, 0, 0, 0, 0])
    levels = losses.self_consistency_levels(256, 8).numpy()
    assert [int((levels == d).sum()) for d in (2, 1, 0)] == [85, 85, 86]
    assert (levels[:85] == 2).all() and (levels[85:170] == 1).all() and (levels[170:] == 0).all()
    np.testing.assert_array_equal(losses.self_consistency_levels(2, 8).numpy(), [0, 0])  # fewer rows than levels
    np.testing.assert_array_equal(losses.self_consistency_levels(5, 16).numpy(), [3, 2, 1, 0, 0])


def test_self_consistency_loss_by_hand():
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(6, 2)).astype(np.float32)
    x1 = rng.uniform(-1, 1, size=(6, 2)).astype(np.float32)
    x0 = rng.normal(size=(6, 2)).astype(np.float32)
    d = np.array([2, 2, 1, 1, 0, 0], np.float32)
    t = np.array([0.25, 0.75, 0.0, 0.5, 0.0, 0.0], np.float32)  # multiples of h = 2^-d

    def online(s, x, tt, dd):
        return 0.5 * x + dd[:, None]

    def target(s, x, tt, dd):
        return -1.5 * x + tt[:, None] + 0.1 * dd[:, None] + s[:, :1]

    loss, _ = losses.self_consistency_loss(online, target, obs, x1, x0, t, d, T_EPS)
    x_t, _ = np_interpolate(x0, x1, t)
    half = (2.0**-d / 2)[:, None]
    v1 = -1.5 * x_t + t[:, None] + 0.1 * (d[:, None] + 1) + obs[:, :1]
    x_mid = x_t + half * v1
    v2 = -1.5 * x_mid + (t[:, None] + half) + 0.1 * (d[:, None] + 1) + obs[:, :1]
    want = np.mean((0.5 * x_t + d[:, None] - (v1 + v2) / 2) ** 2)
    np.testing.assert_allclose(loss.numpy(), want, rtol=1e-5)


def test_self_consistency_targets_carry_no_gradient():
    actor = networks.ShortcutActor(3, 2, (16,), seed=0)
    target = networks.ShortcutActor(3, 2, (16,), seed=1)
    obs = tf.random.stateless_normal([6, 3], seed=[0, 0])
    x1 = tf.random.stateless_uniform([6, 2], seed=[0, 1], minval=-1, maxval=1)
    x0 = tf.random.stateless_normal([6, 2], seed=[0, 2])
    d = losses.self_consistency_levels(6, 8)
    t = tf.constant([0.25, 0.5, 0.5, 0.0, 0.0, 0.0])
    with tf.GradientTape(persistent=True) as tape:
        loss, _ = losses.self_consistency_loss(actor, target, obs, x1, x0, t, d, T_EPS)
        # The same loss with the target computed outside, as a constant.
        x_t, _ = losses.interpolate(x0, x1, t, T_EPS)
        half = (2.0**-d / 2)[:, None]
        v1 = target(obs, x_t, t, d + 1)
        v2 = target(obs, x_t + half * v1, t + half[:, 0], d + 1)
        constant_target = tf.constant(((v1 + v2) / 2).numpy())
        reference = tf.reduce_mean(tf.square(actor(obs, x_t, t, d) - constant_target))
    assert all(g is None for g in tape.gradient(loss, target.trainable_variables))
    got_grads = tape.gradient(loss, actor.trainable_variables)
    for got, want in zip(got_grads, tape.gradient(reference, actor.trainable_variables)):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-5, atol=1e-7)


def member_critic(s, a, k):
    """Two members: sum(a) * k and -2 * sum(a) + 1 (k as a float feature)."""
    total = tf.reduce_sum(a, axis=1)
    return tf.stack([total * k, -2.0 * total + 1.0])


@pytest.mark.parametrize("steps", [1, 4])
def test_q_loss_by_hand(steps):
    x0 = np.array([[0.1, 0.2], [-0.4, 0.3], [0.9, 0.9]], np.float32)
    obs = np.zeros((3, 1), np.float32)
    velocity = lambda s, x, t, d: 0.0 * x + 0.25  # noqa: E731  constant: a = clip(x0 + 0.25)
    loss, info = losses.q_loss(velocity, member_critic, obs, x0, steps, max_euler_steps=8)
    a = np.clip(x0 + 0.25, -1, 1)
    q = (a.sum(1) * steps + (-2 * a.sum(1) + 1)) / 2
    np.testing.assert_allclose(loss.numpy(), -q.mean() / np.abs(q).mean(), rtol=1e-5)
    np.testing.assert_allclose(info["q_mean"].numpy(), q.mean(), rtol=1e-5)
    np.testing.assert_allclose(info["q_abs_mean"].numpy(), np.abs(q).mean(), rtol=1e-5)
    # A given normaliser replaces mean|Q|.
    fixed, _ = losses.q_loss(velocity, member_critic, obs, x0, steps, max_euler_steps=8, normaliser=2.0)
    np.testing.assert_allclose(fixed.numpy(), -q.mean() / 2.0, rtol=1e-5)


def probed_actor(max_steps):
    """A small velocity network plus a zero 'probe' row per Euler step i = round(t * 2^d)."""
    actor = networks.ShortcutActor(2, 2, (16,), seed=3)
    probe = tf.Variable(tf.zeros([max_steps, 2]))

    def velocity(s, x, t, d):
        step_index = tf.cast(tf.round(t * tf.pow(2.0, d)), tf.int32)
        return actor(s, x, t, d) + tf.gather(probe, step_index)

    return velocity, probe, actor


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_q_loss_gradient_reaches_every_euler_step(k):
    velocity, probe, actor = probed_actor(8)
    critic = networks.CriticEnsemble(2, 2, (16,), seed=4)
    obs = tf.random.stateless_normal([5, 2], seed=[5, 0])
    noise = 0.1 * tf.random.stateless_normal([5, 2], seed=[5, 1])  # small: no clipping
    results = {}
    for name, steps in [("static", k), ("runtime", tf.constant(k))]:
        with tf.GradientTape() as tape:
            loss, _ = losses.q_loss(velocity, critic, obs, noise, steps, max_euler_steps=8)
        probe_grad, *actor_grads = tape.gradient(loss, [probe] + actor.trainable_variables)
        probe_grad = tf.convert_to_tensor(probe_grad)  # gathered rows arrive as IndexedSlices
        per_step = np.abs(probe_grad.numpy()).sum(axis=1)
        assert (per_step[:k] > 0).all(), f"{name}: no gradient through some of the first {k} steps: {per_step}"
        assert (per_step[k:] == 0).all()
        results[name] = [probe_grad.numpy()] + [g.numpy() for g in actor_grads]
    for static, runtime in zip(results["static"], results["runtime"]):
        np.testing.assert_allclose(runtime, static, rtol=1e-4, atol=1e-7)
    with tf.GradientTape() as tape:
        loss, _ = losses.q_loss(velocity, critic, obs, noise, k, max_euler_steps=8)
    # The critic is a fixed judge here: a gradient exists, but the agent never applies it (see agent tests).
    assert all(g is not None for g in tape.gradient(loss, critic.trainable_variables))


@pytest.mark.parametrize("q_agg", ["mean", "min"])
def test_critic_loss_by_hand(q_agg):
    batch = {
        "observations": np.zeros((3, 1), np.float32),
        "actions": np.array([[0.1, -0.2], [0.5, 0.5], [-1.0, 0.3]], np.float32),
        "rewards": np.array([-1.0, 0.0, -1.0], np.float32),
        "masks": np.array([1.0, 0.0, 1.0], np.float32),
        "next_observations": np.ones((3, 1), np.float32),
    }
    next_noise = np.array([[0.2, 0.2], [0.0, -0.5], [1.5, 0.0]], np.float32)
    velocity = lambda s, x, t, d: 0.0 * x - 0.1  # noqa: E731  a' = clip(noise - 0.1)

    def target_critic(s, a, k):
        total = tf.reduce_sum(a, axis=1)
        return tf.stack([total + k, 3.0 * total])

    loss, info = losses.critic_loss(
        velocity, member_critic, target_critic, batch, next_noise, 2, max_euler_steps=8, discount=0.9, q_agg=q_agg
    )
    next_a = np.clip(next_noise - 0.1, -1, 1).sum(1)
    members = np.stack([next_a + 2.0, 3.0 * next_a])
    next_q = members.mean(0) if q_agg == "mean" else members.min(0)
    y = batch["rewards"] + 0.9 * batch["masks"] * next_q
    a = batch["actions"].sum(1)
    q = np.stack([a * 2.0, -2.0 * a + 1.0])
    np.testing.assert_allclose(loss.numpy(), np.mean((q - y[None]) ** 2), rtol=1e-5)
    np.testing.assert_allclose(info["q_mean"].numpy(), q.mean(), rtol=1e-5)


def test_critic_loss_sends_no_gradient_to_the_actor_or_the_target():
    actor = networks.ShortcutActor(2, 2, (8,), seed=0)
    critic = networks.CriticEnsemble(2, 2, (8,), seed=1)
    target = networks.CriticEnsemble(2, 2, (8,), seed=2)
    batch = {
        "observations": tf.ones([4, 2]),
        "actions": tf.zeros([4, 2]),
        "rewards": tf.ones([4]),
        "masks": tf.ones([4]),
        "next_observations": tf.ones([4, 2]),
    }
    with tf.GradientTape() as tape:
        loss, _ = losses.critic_loss(actor, critic, target, batch, tf.zeros([4, 2]), tf.constant(4), 8, 0.99, "mean")
    grads = tape.gradient(loss, actor.trainable_variables + target.trainable_variables + critic.trainable_variables)
    n_actor, n_target = len(actor.trainable_variables), len(target.trainable_variables)
    assert all(g is None for g in grads[: n_actor + n_target])
    assert all(g is not None for g in grads[n_actor + n_target :])


def test_drawn_inputs_follow_the_spec_distributions():
    draws = losses.draw_loss_inputs(tf.constant([7, 0], tf.int64), 256, 5, m_disc=8, m_btt=8)
    assert draws["fm_noise"].shape == (256, 5) and draws["q_noise"].shape == (256, 5)
    fm_grid = draws["fm_times"].numpy() * 8
    np.testing.assert_array_equal(fm_grid, np.round(fm_grid))
    assert fm_grid.min() >= 0 and fm_grid.max() <= 7 and len(np.unique(fm_grid)) == 8
    levels = draws["sc_levels"].numpy()
    sc_grid = draws["sc_times"].numpy() * 2.0**levels  # integer multiples of h, below 1
    np.testing.assert_array_equal(sc_grid, np.round(sc_grid))
    assert (draws["sc_times"].numpy() < 1).all() and (sc_grid[levels == 0] == 0).all()
    assert set(np.unique(sc_grid[levels == 2])) == {0, 1, 2, 3}
    # The same seed gives the same draws; k takes every value in {1, 2, 4, 8} over seeds.
    again = losses.draw_loss_inputs(tf.constant([7, 0], tf.int64), 256, 5, m_disc=8, m_btt=8)
    for key in draws:
        np.testing.assert_array_equal(draws[key].numpy(), again[key].numpy())
    ks = {int(losses.draw_loss_inputs(tf.constant([7, i], tf.int64), 4, 1, 8, 8)["actor_euler_steps"]) for i in range(64)}
    assert ks == {1, 2, 4, 8}
    assert sampling.step_counts(8) == sorted(ks)
