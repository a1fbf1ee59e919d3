"""SORL losses (SPEC section 3) as pure functions, each returning (loss, info).

Randomness is an explicit argument (noise, times, step counts), so a test can compute every value
by hand; `draw_loss_inputs` draws it the way training does. Networks enter as callables:
`velocity_fn(s, x, t, d) -> [B, A]`, `critic_fn(s, a, k) -> [M, B]`.
"""

import math
from typing import Mapping, Union

import tensorflow as tf

from models import sampling


def power_of_two(levels):
    """2^d as float32 for integer-valued d [B], exactly (tf.pow may be computed as exp(d log 2))."""
    return tf.cast(tf.bitwise.left_shift(1, tf.cast(tf.round(levels), tf.int32)), tf.float32)


def interpolate(noise, actions, times, t_eps: float):
    """Noise-to-data path: x_t = (1 - (1 - t_eps) t) x0 + t x1 and its velocity u = x1 - (1 - t_eps) x0.

    noise x0 and actions x1 [B, A]; times [B]. Returns (x_t [B, A], u [B, A]).
    """
    noise = tf.convert_to_tensor(noise, tf.float32)
    actions = tf.convert_to_tensor(actions, tf.float32)
    t = tf.reshape(tf.convert_to_tensor(times, tf.float32), (-1, 1))
    x_t = (1.0 - (1.0 - t_eps) * t) * noise + t * actions
    velocity = actions - (1.0 - t_eps) * noise
    return x_t, velocity


def flow_matching_loss(velocity_fn, observations, actions, noise, times, m_disc: int, t_eps: float):
    """L_FM = mean((v(s, x_t, t, log2 m_disc) - u)^2) at the finest step h = 1/m_disc.

    times [B] lie on the grid {0, 1/m_disc, ..., (m_disc - 1)/m_disc}.
    """
    x_t, target = interpolate(noise, actions, times, t_eps)
    level = tf.fill(tf.shape(times), math.log2(m_disc))
    prediction = velocity_fn(observations, x_t, times, level)
    loss = tf.reduce_mean(tf.square(prediction - target))
    return loss, {"fm_loss": loss}


def self_consistency_levels(batch_size, m_disc: int):
    """Step level d per row [B] float32: equal blocks of d = log2(m_disc) - 1, ..., 0; the remainder d = 0.

    For m_disc = 8 and B = 256: 85 rows each of d = 2, 1, 0, then 1 more row of d = 0.
    `batch_size` may be a tensor (the global batch of a distributed step).
    """
    num_levels = int(round(math.log2(m_disc)))
    batch_size = tf.cast(batch_size, tf.int32)
    rows = tf.range(batch_size)
    block = batch_size // num_levels
    level = (num_levels - 1) - rows // tf.maximum(block, 1)
    level = tf.where(rows >= block * num_levels, 0, level)
    return tf.cast(level, tf.float32)


def self_consistency_loss(
    velocity_fn, target_velocity_fn, observations, actions, noise, times, levels, t_eps: float
):
    """One step of size h = 2^-d must equal the mean of two half steps of the target network.

    levels d [B] (float), times t [B] multiples of h. With the target network (no gradient):
        v1 = v_target(s, x_t, t, d + 1);  x_mid = x_t + (h/2) v1;  v2 = v_target(s, x_mid, t + h/2, d + 1)
    L_SC = mean((v(s, x_t, t, d) - (v1 + v2) / 2)^2).
    """
    x_t, _ = interpolate(noise, actions, times, t_eps)
    half_step = 0.5 / power_of_two(levels)
    first = target_velocity_fn(observations, x_t, times, levels + 1.0)
    midpoint = x_t + half_step[:, None] * first
    second = target_velocity_fn(observations, midpoint, times + half_step, levels + 1.0)
    target = tf.stop_gradient((first + second) / 2.0)
    prediction = velocity_fn(observations, x_t, times, levels)
    loss = tf.reduce_mean(tf.square(prediction - target))
    return loss, {"sc_loss": loss}


def q_loss(
    velocity_fn,
    critic_fn,
    observations,
    noise,
    euler_steps: Union[int, tf.Tensor],
    max_euler_steps: int,
    normaliser=None,
):
    """Normalised Q maximisation through a k-step Euler unroll (gradients flow through every step).

    a = clip(k-step sample from noise) with k = `euler_steps` (python int, or int32 scalar tensor in
    step_counts(max_euler_steps)); Q = mean over members of critic_fn(s, a, k);
    L_Q = -mean(Q) / stop_gradient(mean(|Q|)) over these rows. `normaliser`, if given, replaces
    mean(|Q|): the agent passes 1 and divides the gradient by the full-batch mean |Q| afterwards
    (the same gradient, because the normaliser is a constant; under a distribution strategy the
    full batch spans every replica). Only the actor should be updated with this loss (the caller
    differentiates w.r.t. actor weights).
    info: q_loss, q_mean = mean(Q), q_abs_mean = mean(|Q|) over these rows.
    """
    actions = sampling.euler_sample_any(velocity_fn, observations, noise, euler_steps, max_euler_steps)
    step_feature = tf.fill([tf.shape(observations)[0]], tf.cast(euler_steps, tf.float32))
    q = tf.reduce_mean(critic_fn(observations, actions, step_feature), axis=0)
    if normaliser is None:
        normaliser = tf.reduce_mean(tf.abs(q))
    loss = -tf.reduce_mean(q) / tf.stop_gradient(normaliser)
    return loss, {"q_loss": loss, "q_mean": tf.reduce_mean(q), "q_abs_mean": tf.reduce_mean(tf.abs(q))}


def critic_loss(
    velocity_fn,
    critic_fn,
    target_critic_fn,
    batch: Mapping[str, tf.Tensor],
    next_noise,
    euler_steps: Union[int, tf.Tensor],
    max_euler_steps: int,
    discount: float,
    q_agg: str,
    next_action_gradient: bool = False,
):
    """TD loss of every critic member against a target from k-step next actions.

    a' = clip(k-step sample at s') from the online actor (no gradient unless `next_action_gradient`:
    the authors' code lets the loss reach the actor through a', SPEC section 3);
    y = r + discount * mask * agg(Q_target(s', a', k)); L = mean over members and batch of (Q(s, a, k) - y)^2.
    batch: the reader's dict (observations, actions, rewards, masks, next_observations).
    """
    next_observations = batch["next_observations"]
    next_actions = sampling.euler_sample_any(velocity_fn, next_observations, next_noise, euler_steps, max_euler_steps)
    step_feature = tf.fill([tf.shape(next_observations)[0]], tf.cast(euler_steps, tf.float32))
    next_q = sampling.aggregate_q(target_critic_fn(next_observations, next_actions, step_feature), q_agg)
    target = batch["rewards"] + discount * batch["masks"] * next_q
    if not next_action_gradient:
        target = tf.stop_gradient(target)
    q = critic_fn(batch["observations"], batch["actions"], step_feature)
    loss = tf.reduce_mean(tf.square(q - target[None, :]))
    return loss, {"loss": loss, "q_mean": tf.reduce_mean(q), "target_mean": tf.reduce_mean(target)}


def draw_loss_inputs(seed, batch_size, action_dim: int, m_disc: int, m_btt: int) -> dict:
    """All random inputs of one SORL update for a batch, as a pure function of `seed` ([2] int).

    Returns a dict of per-row draws ([B] or [B, A] float32) and per-batch Euler step counts k (int32 scalars):
      critic_euler_steps, critic_noise  k and a0 for the critic target's next actions
      actor_euler_steps, q_noise        k and a0 for the Q loss unroll
      fm_noise, fm_times                x0 and t = randint(0, m_disc) / m_disc
      sc_noise, sc_times, sc_levels     x0, t = randint(0, 2^d) / 2^d, and d per row (blocks)
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=8)
    num_counts = len(sampling.step_counts(m_btt))

    def step_count(s):
        index = tf.random.stateless_uniform([], seed=s, minval=0, maxval=num_counts, dtype=tf.int32)
        return tf.bitwise.left_shift(tf.constant(1, tf.int32), index)

    def normal(s):
        return tf.random.stateless_normal([batch_size, action_dim], seed=s)

    fm_index = tf.random.stateless_uniform([batch_size], seed=seeds[5], minval=0, maxval=m_disc, dtype=tf.int32)
    levels = self_consistency_levels(batch_size, m_disc)
    sections = power_of_two(levels)
    # floor(u * 2^d) is uniform on {0, ..., 2^d - 1}: u * 2^d is an exact scaling of u in [0, 1).
    sc_index = tf.floor(tf.random.stateless_uniform([batch_size], seed=seeds[7]) * sections)
    return {
        "critic_euler_steps": step_count(seeds[0]),
        "critic_noise": normal(seeds[1]),
        "actor_euler_steps": step_count(seeds[2]),
        "q_noise": normal(seeds[3]),
        "fm_noise": normal(seeds[4]),
        "fm_times": tf.cast(fm_index, tf.float32) / m_disc,
        "sc_noise": normal(seeds[6]),
        "sc_times": sc_index / sections,
        "sc_levels": levels,
    }
