"""SORLAgent: one update checked against the pure losses + Adam by hand; targets, NaN guard, act, XLA."""

import math

import numpy as np
import pytest
import tensorflow as tf

from models import losses, networks, noise as noise_lib, sampling
from models.config import AgentConfig
from models.sorl import METRIC_NAMES, SORLAgent

OBS_DIM, ACTION_DIM, BATCH = 4, 2, 8


def small_config(**overrides):
    return AgentConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), batch_size=BATCH, **overrides)


def make_batch(seed=0, n=BATCH):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACTION_DIM)).astype(np.float32),
        "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "rewards": -rng.integers(0, 2, size=n).astype(np.float32),
        "masks": rng.integers(0, 2, size=n).astype(np.float32),
        "terminals": np.zeros(n, np.float32),
    }


def dataset(batch, repeat=True):
    ds = tf.data.Dataset.from_tensors(batch)
    return ds.repeat() if repeat else ds


def snapshot(model):
    return [v.numpy().copy() for v in model.weights]


def adam_first_step(grads, lr, beta_2=0.999, epsilon=1e-7):
    """Keras Adam's first update: -lr * sqrt(1 - b2) * g / (sqrt(1 - b2) |g| + eps)."""
    c = np.sqrt(1 - beta_2)
    return [-lr * c * g / (c * np.abs(g) + epsilon) for g in grads]


def clipped(grads, clip_norm):
    norm = np.sqrt(sum(float(np.sum(g.astype(np.float64) ** 2)) for g in grads))
    return [g * (clip_norm / max(norm, clip_norm)) for g in grads], norm


def reference_gradients(agent, batch, draws):
    """Gradients of the pure losses (SPEC section 3) w.r.t. critic and actor of `agent`, as numpy."""
    config = agent.config
    batch = {k: tf.constant(v) for k, v in batch.items()}
    with tf.GradientTape() as tape:
        critic_loss, _ = losses.critic_loss(
            agent.actor,
            agent.critic,
            agent.target_critic,
            batch,
            draws["critic_noise"],
            int(draws["critic_euler_steps"]),
            config.m_btt,
            config.discount,
            config.q_agg,
        )
    critic_grads = tape.gradient(critic_loss, agent.critic.trainable_variables)
    with tf.GradientTape() as tape:
        fm, _ = losses.flow_matching_loss(
            agent.actor, batch["observations"], batch["actions"], draws["fm_noise"], draws["fm_times"], 8, config.t_eps
        )
        sc, _ = losses.self_consistency_loss(
            agent.actor,
            agent.target_actor,
            batch["observations"],
            batch["actions"],
            draws["sc_noise"],
            draws["sc_times"],
            draws["sc_levels"],
            config.t_eps,
        )
        q, _ = losses.q_loss(
            agent.actor, agent.critic, batch["observations"], draws["q_noise"], int(draws["actor_euler_steps"]), config.m_btt
        )
        actor_loss = config.fm_coef * fm + config.sc_coef * sc + config.q_loss_coef * q
    actor_grads = tape.gradient(actor_loss, agent.actor.trainable_variables)
    return [g.numpy() for g in critic_grads], [g.numpy() for g in actor_grads], float(actor_loss)


def fixed_draws(critic_steps, actor_steps, seed=3):
    draws = losses.draw_loss_inputs(tf.constant([seed, 0], tf.int64), BATCH, ACTION_DIM, 8, 8)
    draws["critic_euler_steps"] = tf.constant(critic_steps)
    draws["actor_euler_steps"] = tf.constant(actor_steps)
    return draws


def test_construction():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    for online, target in ((agent.actor, agent.target_actor), (agent.critic, agent.target_critic)):
        assert not target.trainable and online.trainable
        for a, b in zip(snapshot(online), snapshot(target)):
            np.testing.assert_array_equal(a, b)
    assert isinstance(agent.actor, networks.ShortcutActor) and isinstance(agent.critic, networks.CriticEnsemble)
    assert agent.actor_optimizer.built and agent.critic_optimizer.built
    assert int(agent.training_steps.numpy()) == 0 and agent.training_steps.dtype == "int64"
    trainable = {id(v) for v in agent.trainable_variables}
    assert trainable == {id(v) for v in agent.actor.trainable_variables + agent.critic.trainable_variables}
    clone = SORLAgent.from_config(agent.get_config())
    assert clone.config == agent.config and (clone.obs_dim, clone.action_dim) == (OBS_DIM, ACTION_DIM)


def test_from_config_reads_the_old_flat_config():
    """Keras configs saved before the split hold the flat SORLConfig (run fields, inference_steps)."""
    agent = SORLAgent(small_config(inference_euler_steps=2), OBS_DIM, ACTION_DIM)
    saved = agent.get_config()
    old_flat = dict(saved["config"], env="cube-single-play", task=2, episode_length=200, steps=1000,
                    log_every=10, eval_every=100, eval_episodes=5, checkpoint_every=100, jit_compile=False,
                    cap_step_level=True, inference_steps=2)
    del old_flat["inference_euler_steps"]
    clone = SORLAgent.from_config(dict(saved, config=old_flat))
    assert clone.config == agent.config


@pytest.mark.parametrize("critic_steps, actor_steps, clip", [(2, 1, 1.0), (8, 8, 1e-3), (1, 4, 1.0)])
def test_one_update_is_critic_step_then_actor_step_then_ema(critic_steps, actor_steps, clip):
    lr, tau = 1e-2, 0.25
    config = small_config(actor_lr=lr, critic_lr=lr, tau=tau, grad_clip_norm=clip)
    agent = SORLAgent(config, OBS_DIM, ACTION_DIM)
    reference = SORLAgent(config, OBS_DIM, ACTION_DIM)  # same seed: same initial weights
    batch, draws = make_batch(), fixed_draws(critic_steps, actor_steps)
    actor0, critic0 = snapshot(agent.actor), snapshot(agent.critic)
    target_actor0, target_critic0 = snapshot(agent.target_actor), snapshot(agent.target_critic)

    logs = agent.update({k: tf.constant(v) for k, v in batch.items()}, draws)

    # Critic: one clipped Adam step on the critic loss at the initial weights.
    critic_grads, _, _ = reference_gradients(reference, batch, draws)
    critic_grads, critic_norm = clipped(critic_grads, clip)
    for before, after, delta in zip(critic0, snapshot(agent.critic), adam_first_step(critic_grads, lr)):
        np.testing.assert_allclose(after - before, delta, atol=3e-6 * lr / 1e-2)
    np.testing.assert_allclose(float(logs["critic/grad_norm"]), critic_norm, rtol=1e-4)

    # Actor: L_actor uses the critic *after* its step (and the initial target actor).
    for variable, value in zip(reference.critic.weights, snapshot(agent.critic)):
        variable.assign(value)
    _, actor_grads, actor_loss = reference_gradients(reference, batch, draws)
    actor_grads, actor_norm = clipped(actor_grads, clip)
    for before, after, delta in zip(actor0, snapshot(agent.actor), adam_first_step(actor_grads, lr)):
        np.testing.assert_allclose(after - before, delta, atol=3e-6)
    np.testing.assert_allclose(float(logs["actor/grad_norm"]), actor_norm, rtol=1e-4)
    np.testing.assert_allclose(float(logs["actor/loss"]), actor_loss, rtol=1e-4)
    assert float(logs["actor/k"]) == actor_steps

    # Targets move by exactly tau towards the post-update online weights.
    for online, target, target0 in (
        (agent.actor, agent.target_actor, target_actor0),
        (agent.critic, agent.target_critic, target_critic0),
    ):
        for w, t, t0 in zip(snapshot(online), snapshot(target), target0):
            np.testing.assert_allclose(t, tau * w + (1 - tau) * t0, rtol=1e-6, atol=1e-7)


def test_q_loss_coefficient_does_not_touch_the_critic():
    batch, draws = make_batch(), fixed_draws(4, 4)
    critics = []
    for coef in (0.0, 1000.0):
        agent = SORLAgent(small_config(q_loss_coef=coef), OBS_DIM, ACTION_DIM)
        agent.update({k: tf.constant(v) for k, v in batch.items()}, draws)
        critics.append(snapshot(agent.critic))
    for a, b in zip(*critics):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_skips_the_update_and_shows_in_metrics():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    batch = make_batch()
    batch["rewards"][3] = np.nan  # critic loss NaN; actor loss still finite
    critic0, actor0 = snapshot(agent.critic), snapshot(agent.actor)
    logs = agent.update({k: tf.constant(v) for k, v in batch.items()}, fixed_draws(2, 2))
    assert np.isnan(float(logs["critic/loss"])) and np.isfinite(float(logs["actor/loss"]))
    for a, b in zip(critic0, snapshot(agent.critic)):
        np.testing.assert_array_equal(a, b)
    assert int(agent.critic_optimizer.iterations.numpy()) == 0
    assert int(agent.actor_optimizer.iterations.numpy()) == 1
    assert any(not np.array_equal(a, b) for a, b in zip(actor0, snapshot(agent.actor)))

    batch = make_batch()
    batch["observations"][0, 0] = np.nan  # every loss NaN
    online = snapshot(agent.actor) + snapshot(agent.critic)
    optimizer_state = [v.numpy().copy() for v in agent.actor_optimizer.variables + agent.critic_optimizer.variables]
    logs = agent.update({k: tf.constant(v) for k, v in batch.items()}, fixed_draws(2, 2))
    assert np.isnan(float(logs["actor/loss"])) and np.isnan(float(logs["actor/grad_norm"]))
    assert all(np.isfinite(v.numpy()).all() for v in agent.variables if v.dtype == "float32")
    for a, b in zip(online, snapshot(agent.actor) + snapshot(agent.critic)):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(optimizer_state, agent.actor_optimizer.variables + agent.critic_optimizer.variables):
        np.testing.assert_array_equal(a, v.numpy())


def test_fit_and_evaluate_report_every_metric_and_evaluate_changes_nothing():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    agent.compile(jit_compile=False)
    history = agent.fit(dataset(make_batch()), steps_per_epoch=3, epochs=1, verbose=0)
    assert set(history.history) == set(METRIC_NAMES)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert int(agent.training_steps.numpy()) == 3 and int(agent.actor_optimizer.iterations.numpy()) == 3
    networks_and_optimizers = [v for v in agent.variables if v.dtype == "float32" and "sorl_agent" not in v.path]
    networks_and_optimizers += [agent.actor_optimizer.iterations, agent.critic_optimizer.iterations]
    before = [v.numpy().copy() for v in networks_and_optimizers]
    result = agent.evaluate(dataset(make_batch(1)), steps=2, verbose=0, return_dict=True)
    assert set(result) == set(METRIC_NAMES)
    for value, v in zip(before, networks_and_optimizers):
        np.testing.assert_array_equal(value, v.numpy(), err_msg=v.path)
    assert int(agent.evaluation_draws.numpy()) == 2 and int(agent.training_steps.numpy()) == 3


def test_xla_update_matches_the_plain_graph():
    # Same draws for both: XLA lowers the stateless RNG differently, so fit() runs draw other noise.
    batch = {k: tf.constant(v) for k, v in make_batch().items()}
    compiled, plain = (SORLAgent(small_config(), OBS_DIM, ACTION_DIM) for _ in range(2))
    update = tf.function(compiled.update, jit_compile=True)
    for i, (critic_steps, actor_steps) in enumerate([(8, 2), (1, 8)]):
        draws = fixed_draws(critic_steps, actor_steps, seed=i)
        xla_logs, logs = update(batch, draws), plain.update(batch, draws)
        for name in METRIC_NAMES:
            np.testing.assert_allclose(float(xla_logs[name]), float(logs[name]), rtol=1e-4, err_msg=name)
    for a, b in zip(compiled.weights, plain.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6, err_msg=a.path)


def test_fit_with_xla():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    agent.compile(jit_compile=True)
    history = agent.fit(dataset(make_batch()), steps_per_epoch=3, epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert int(agent.training_steps.numpy()) == 3


def test_act_shapes_range_and_noise_sources():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    obs = make_batch()["observations"]
    actions = agent.act(obs).numpy()
    assert actions.shape == (BATCH, ACTION_DIM) and np.abs(actions).max() <= 1
    same = [agent.act(obs, euler_steps=2, seed=5).numpy() for _ in range(2)]
    np.testing.assert_array_equal(same[0], same[1])
    assert not np.array_equal(same[0], agent.act(obs, euler_steps=2, seed=6).numpy())
    first, second = agent.act(obs).numpy(), agent.act(obs).numpy()  # the act stream advances
    assert not np.array_equal(first, second) and int(agent.act_draws.numpy()) == 3
    with pytest.raises(ValueError, match=r"\[batch, 4\]"):
        agent.act(np.zeros((2, 3), np.float32))


def test_act_is_the_sampler_and_best_of_n_uses_q_values():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    obs = tf.constant(make_batch()["observations"])
    noise = tf.random.stateless_normal([BATCH, 3, ACTION_DIM], seed=[1, 1])
    for steps in (1, 8, 32):
        single = agent.act(obs, euler_steps=steps, noise=noise[:, :1])
        sampled = sampling.euler_sample(agent.actor, obs, noise[:, 0], steps)
        np.testing.assert_array_equal(single.numpy(), sampled.numpy())
        candidates = [agent.act(obs, euler_steps=steps, noise=noise[:, n]) for n in range(3)]
        scores = tf.stack([agent.q_values(obs, c, steps) for c in candidates], axis=1)
        want = sampling.best_of_n(tf.stack(candidates, axis=1), scores)
        best = agent.act(obs, euler_steps=steps, num_samples=3, noise=noise)
        np.testing.assert_allclose(best.numpy(), want.numpy(), atol=1e-6)
    q = agent.q_values(obs, candidates[0], 4)
    assert q.shape == (BATCH,)
    members = agent.critic(obs, candidates[0], tf.fill([BATCH], 4.0)).numpy()
    np.testing.assert_allclose(q.numpy(), members.mean(0), rtol=1e-6)


def test_cap_step_level_changes_only_budgets_beyond_m_disc():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    obs = tf.constant(make_batch()["observations"])
    noise = tf.random.stateless_normal([BATCH, ACTION_DIM], seed=[2, 2])
    m_disc = agent.config.m_disc
    for k in (1, m_disc):
        np.testing.assert_array_equal(agent.act(obs, euler_steps=k, noise=noise, cap_step_level=True).numpy(),
                                      agent.act(obs, euler_steps=k, noise=noise).numpy())
    want = sampling.euler_sample(agent.actor, obs, noise, 2 * m_disc, max_level=math.log2(m_disc))
    capped = agent.act(obs, euler_steps=2 * m_disc, noise=noise, cap_step_level=True)
    np.testing.assert_array_equal(capped.numpy(), want.numpy())
    assert not np.array_equal(agent.act(obs, euler_steps=2 * m_disc, noise=noise).numpy(), want.numpy())
    # make_policy_fn passes it on; its noise is the act stream's next draw.
    policy = agent.make_policy_fn(euler_steps=2 * m_disc, jit_compile=False, cap_step_level=True)
    key = noise_lib.stream_key(agent.config.seed, noise_lib.ACT_STREAM, agent.act_draws.numpy())
    stream_noise = tf.random.stateless_normal([BATCH, ACTION_DIM], seed=key)
    want = sampling.euler_sample(agent.actor, obs, stream_noise, 2 * m_disc, max_level=math.log2(m_disc))
    np.testing.assert_allclose(policy(obs.numpy()), want.numpy(), atol=1e-6)


def test_act_traces_with_a_symbolic_batch():
    agent = SORLAgent(small_config(), OBS_DIM, ACTION_DIM)
    obs = make_batch()["observations"]
    for steps, num_samples in [(1, 1), (16, 4)]:
        traced = tf.function(
            lambda o, s: agent.act(o, euler_steps=steps, num_samples=num_samples, seed=s),
            input_signature=[tf.TensorSpec([None, OBS_DIM], tf.float32), tf.TensorSpec([], tf.int64)],
        )
        np.testing.assert_allclose(
            traced(obs, tf.constant(9, tf.int64)).numpy(),
            agent.act(obs, euler_steps=steps, num_samples=num_samples, seed=9).numpy(),
            atol=1e-6,
        )
        assert traced(obs[:3], tf.constant(9, tf.int64)).shape == (3, ACTION_DIM)
    policy = agent.make_policy_fn(euler_steps=2, jit_compile=False)
    assert policy(obs.astype(np.float64)).shape == (BATCH, ACTION_DIM)


def test_checkpoint_restores_everything_and_training_continues_identically(tmp_path):
    config = small_config()
    data = dataset(make_batch())
    original = SORLAgent(config, OBS_DIM, ACTION_DIM)
    original.compile(jit_compile=False)
    original.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    original.act(make_batch()["observations"])
    path = tf.train.Checkpoint(agent=original).save(str(tmp_path / "ckpt"))

    restored = SORLAgent(config, OBS_DIM, ACTION_DIM)
    restored.compile(jit_compile=False)
    restored.fit(dataset(make_batch(5)), steps_per_epoch=3, epochs=1, verbose=0)  # other weights, slots, counters
    tf.train.Checkpoint(agent=restored).restore(path).assert_consumed()
    names = sorted(v.path for v in original.variables)
    assert names == sorted(v.path for v in restored.variables)
    originals = {v.path: v.numpy() for v in original.variables}
    for v in restored.variables:
        np.testing.assert_array_equal(v.numpy(), originals[v.path], err_msg=v.path)
    for optimizer in ("actor_optimizer", "critic_optimizer"):
        for a, b in zip(getattr(original, optimizer).variables, getattr(restored, optimizer).variables):
            np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    for agent in (original, restored):
        agent.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    for a, b in zip(original.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    obs = make_batch()["observations"]
    np.testing.assert_array_equal(original.act(obs), restored.act(obs))  # the act stream continues too


# ------------------------------------------------------------- update_rule='reference' (the authors')
class KerasAdam:
    """Keras' Adam on numpy arrays, step by step (the joint optimizer runs two steps per update)."""

    def __init__(self, shapes, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-8):
        self.lr, self.b1, self.b2, self.eps, self.t = lr, beta_1, beta_2, epsilon, 0
        self.m = [np.zeros(s) for s in shapes]
        self.v = [np.zeros(s) for s in shapes]

    def deltas(self, grads):
        self.t += 1
        alpha = self.lr * np.sqrt(1 - self.b2**self.t) / (1 - self.b1**self.t)
        out = []
        for i, g in enumerate(grads):
            self.m[i] += (g - self.m[i]) * (1 - self.b1)
            self.v[i] += (g * g - self.v[i]) * (1 - self.b2)
            out.append(-alpha * self.m[i] / (np.sqrt(self.v[i]) + self.eps))
        return out


def critic_loss_through_next_action(agent, batch, draws):
    """The authors' critic loss written out: a' keeps its gradient, so the loss reaches the actor."""
    config, k = agent.config, int(draws["critic_euler_steps"])
    batch = {key: tf.constant(v) for key, v in batch.items()}
    variables = agent.critic.trainable_variables + agent.actor.trainable_variables
    with tf.GradientTape() as tape:
        next_actions = sampling.euler_sample(agent.actor, batch["next_observations"], draws["critic_noise"], k)
        steps = tf.fill([BATCH], float(k))
        next_q = tf.reduce_mean(agent.target_critic(batch["next_observations"], next_actions, steps), axis=0)
        target = batch["rewards"] + config.discount * batch["masks"] * next_q
        q = agent.critic(batch["observations"], batch["actions"], steps)
        loss = tf.reduce_mean(tf.square(q - target[None, :]))
    return [g.numpy() for g in tape.gradient(loss, variables)], float(loss)


def test_reference_update_rule_is_the_authors_two_step_joint_adam():
    """Step 1: critic loss into critic and actor (via a'); step 2: actor loss scored by the critic from
    before step 1, zero critic gradients; one Adam; targets move towards the pre-update weights."""
    lr, tau, clip = 1e-2, 0.25, 1.0
    config = small_config(actor_lr=lr, critic_lr=lr, tau=tau, grad_clip_norm=clip, update_rule="reference")
    agent, reference = SORLAgent(config, OBS_DIM, ACTION_DIM), SORLAgent(config, OBS_DIM, ACTION_DIM)
    for a in (agent, reference):  # targets unlike the online nets, so the EMA's source shows
        for t in a.target_actor.weights + a.target_critic.weights:
            t.assign(t * 0.5 + 0.01)
    batch, draws = make_batch(), fixed_draws(2, 4)
    critic0, actor0 = snapshot(agent.critic), snapshot(agent.actor)
    target_critic0, target_actor0 = snapshot(agent.target_critic), snapshot(agent.target_actor)
    n_critic = len(critic0)

    logs = agent.update({k: tf.constant(v) for k, v in batch.items()}, draws)

    adam = KerasAdam([w.shape for w in critic0 + actor0], lr)
    grads1, critic_loss = critic_loss_through_next_action(reference, batch, draws)
    assert any(np.abs(g).max() > 0 for g in grads1[n_critic:])  # the actor does get the critic loss
    grads1, norm1 = clipped(grads1, clip)
    step1 = [w + d for w, d in zip(critic0 + actor0, adam.deltas(grads1))]
    np.testing.assert_allclose(float(logs["critic/loss"]), critic_loss, rtol=1e-5)
    np.testing.assert_allclose(float(logs["critic/grad_norm"]), norm1, rtol=1e-4)

    for variable, value in zip(reference.actor.weights, step1[n_critic:]):
        variable.assign(value)  # the critic stays at its pre-update weights for the Q loss
    _, actor_grads, actor_loss = reference_gradients(reference, batch, draws)
    actor_grads, norm2 = clipped(actor_grads, clip)
    zeros = [np.zeros_like(w) for w in critic0]
    expected = [w + d for w, d in zip(step1, adam.deltas(zeros + actor_grads))]
    np.testing.assert_allclose(float(logs["actor/loss"]), actor_loss, rtol=1e-4)
    np.testing.assert_allclose(float(logs["actor/grad_norm"]), norm2, rtol=1e-4)
    for want, got in zip(expected, snapshot(agent.critic) + snapshot(agent.actor)):
        np.testing.assert_allclose(got, want, atol=2e-6)
    assert any(not np.allclose(w, s) for w, s in zip(expected[:n_critic], step1[:n_critic]))  # momentum step

    assert int(agent.joint_optimizer.iterations.numpy()) == 2
    assert int(agent.actor_optimizer.iterations.numpy()) == int(agent.critic_optimizer.iterations.numpy()) == 0
    for online0, target, target0 in ((critic0, agent.target_critic, target_critic0),
                                     (actor0, agent.target_actor, target_actor0)):
        for w0, t, t0 in zip(online0, snapshot(target), target0):
            np.testing.assert_allclose(t, tau * w0 + (1 - tau) * t0, rtol=1e-6, atol=1e-7)


def test_reference_update_rule_fits_with_xla_resumes_and_evaluates_without_change(tmp_path):
    config = small_config(update_rule="reference")
    data = dataset(make_batch())
    agent = SORLAgent(config, OBS_DIM, ACTION_DIM)
    agent.compile(jit_compile=True)
    history = agent.fit(data, steps_per_epoch=3, epochs=1, verbose=0)
    assert all(np.isfinite(v[-1]) for v in history.history.values())
    assert int(agent.joint_optimizer.iterations.numpy()) == 6
    before = [v.numpy().copy() for v in agent.variables if v.dtype == "float32" and "sorl_agent" not in v.path]
    agent.evaluate(dataset(make_batch(1)), steps=1, verbose=0)
    after = [v.numpy() for v in agent.variables if v.dtype == "float32" and "sorl_agent" not in v.path]
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)

    path = tf.train.Checkpoint(agent=agent).save(str(tmp_path / "ckpt"))
    restored = SORLAgent(config, OBS_DIM, ACTION_DIM)
    restored.compile(jit_compile=True)
    tf.train.Checkpoint(agent=restored).restore(path).assert_consumed()
    for a in (agent, restored):
        a.fit(data, steps_per_epoch=2, epochs=1, verbose=0)
    for a, b in zip(agent.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_reference_update_rule_needs_one_learning_rate():
    with pytest.raises(ValueError, match=r"update_rule='reference'.*actor_lr=0\.0003.*critic_lr=0\.0001"):
        small_config(update_rule="reference", actor_lr=3e-4, critic_lr=1e-4)
    with pytest.raises(ValueError, match=r"update_rule='joint' must be 'separate' or 'reference'"):
        small_config(update_rule="joint")
