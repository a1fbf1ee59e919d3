"""Sampling actions from a shortcut policy: k Euler steps, then optional best-of-N ranked by the critic.

The ONE sampling path: training (Q loss, critic targets), evaluation and every exported signature
use these functions. A `velocity_fn(observations [B, S], x [B, A], t [B], d [B]) -> [B, A]` is the
shortcut actor; a `critic_fn(observations, actions, k [B]) -> [M, B]` is the critic ensemble.
A python-int number of Euler steps unrolls statically, a run-time one (euler_sample_any) runs a
bounded tf.while_loop; both trace into the caller's graph (no nested tf.function) and keep
gradients flowing through every Euler step.
"""

import math
from typing import Callable, List, Optional, Union

import tensorflow as tf

VelocityFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]
CriticFn = Callable[[tf.Tensor, tf.Tensor, tf.Tensor], tf.Tensor]


def step_counts(max_euler_steps: int) -> List[int]:
    """The Euler budgets trained on: powers of two up to max_euler_steps, e.g. 8 -> [1, 2, 4, 8]."""
    counts = [1]
    while counts[-1] * 2 <= max_euler_steps:
        counts.append(counts[-1] * 2)
    return counts


def step_level(euler_steps: int, max_level: Optional[float] = None) -> float:
    """The step-size input d of a k-step unroll: log2 k, or at most `max_level` when given.

    max_level = log2(m_disc), the finest level trained (by flow matching), lets k > m_disc take
    more, smaller steps of that velocity instead of feeding the network a level it never saw.
    """
    level = math.log2(int(euler_steps))
    return level if max_level is None else min(level, float(max_level))


def euler_sample(velocity_fn: VelocityFn, observations, noise, euler_steps: int, clip: bool = True,
                 max_level: Optional[float] = None):
    """k = `euler_steps` Euler steps from `noise` [B, A]: a <- a + (1/k) v(s, a, i/k, d), i = 0..k-1.

    `euler_steps` is a python int >= 1 (any k); d = step_level(k, max_level), log2 k by default (a
    float, integer for powers of two). Returns actions [B, A], clipped to [-1, 1] unless clip=False.
    """
    k = int(euler_steps)
    if k < 1:
        raise ValueError(f"euler_steps={k}: the number of Euler steps must be >= 1.")
    observations = tf.convert_to_tensor(observations, tf.float32)
    noise = tf.convert_to_tensor(noise, tf.float32)
    batch_size = tf.shape(observations)[0]
    level = tf.fill([batch_size], step_level(k, max_level))
    actions = noise
    for i in range(k):
        times = tf.fill([batch_size], i / k)
        actions = actions + velocity_fn(observations, actions, times, level) * (1.0 / k)
    if clip:
        actions = tf.clip_by_value(actions, -1.0, 1.0)
    return actions


def euler_sample_any(velocity_fn: VelocityFn, observations, noise, euler_steps: Union[int, tf.Tensor],
                     max_euler_steps: int):
    """euler_sample where `euler_steps` may also be a run-time int32 scalar: a power of two <= max_euler_steps.

    A tensor k runs the same Euler recursion in a tf.while_loop bounded by max_euler_steps, so one
    trace serves every k and runs only the k steps it needs (the agent's critic target draws k per
    batch this way; its Q loss branches over static unrolls instead, see SORLAgent._actor_gradients).
    """
    if isinstance(euler_steps, int):
        return euler_sample(velocity_fn, observations, noise, euler_steps)
    observations = tf.convert_to_tensor(observations, tf.float32)
    noise = tf.convert_to_tensor(noise, tf.float32)
    batch_size = tf.shape(observations)[0]
    steps = tf.cast(euler_steps, tf.int32)
    step_size = 1.0 / tf.cast(steps, tf.float32)  # exact for powers of two
    # log2 of a power of two, rounded so d is exactly the integer the static path uses.
    level = tf.fill([batch_size], tf.round(tf.math.log(tf.cast(steps, tf.float32)) / math.log(2.0)))

    def euler_step(i, actions):
        times = tf.fill([batch_size], tf.cast(i, tf.float32) * step_size)
        return i + 1, actions + velocity_fn(observations, actions, times, level) * step_size

    _, actions = tf.while_loop(
        lambda i, _: i < steps, euler_step, (tf.constant(0), noise), maximum_iterations=max_euler_steps
    )
    return tf.clip_by_value(actions, -1.0, 1.0)


def aggregate_q(q_values, q_agg: str):
    """[M, B] member values -> [B] by 'mean' or 'min' over members."""
    if q_agg == "mean":
        return tf.reduce_mean(q_values, axis=0)
    if q_agg == "min":
        return tf.reduce_min(q_values, axis=0)
    raise ValueError(f"q_agg={q_agg!r} must be 'mean' or 'min'.")


def best_of_n(candidates, scores):
    """candidates [B, N, A], scores [B, N] -> the highest-scoring candidate per row [B, A] (first on ties)."""
    best = tf.argmax(scores, axis=1, output_type=tf.int32)
    return tf.gather(candidates, best, axis=1, batch_dims=1)


def sample_actions(
    velocity_fn: VelocityFn, critic_fn: CriticFn, observations, noise, euler_steps: int, q_agg: str = "mean",
    max_level: Optional[float] = None,
):
    """The policy: k = `euler_steps` Euler steps from each of N noise samples, best by agg(Q(s, a, k)).

    observations [B, S]; noise [B, N, A] (N static); euler_steps a python int; max_level caps the
    step level d (see step_level). Returns actions [B, A] in [-1, 1]. Row b uses only
    observations[b] and noise[b], so batched and single-row calls agree.
    """
    observations = tf.convert_to_tensor(observations, tf.float32)
    noise = tf.convert_to_tensor(noise, tf.float32)
    num_samples = noise.shape[1]
    if num_samples is None:
        raise ValueError("noise must have a static number of samples N (shape [B, N, A]).")
    if num_samples == 1:
        return euler_sample(velocity_fn, observations, noise[:, 0, :], euler_steps, max_level=max_level)
    batch_size = tf.shape(observations)[0]
    action_dim = noise.shape[-1]
    repeated_observations = tf.repeat(observations, num_samples, axis=0)  # row b * N + n
    flat_candidates = euler_sample(velocity_fn, repeated_observations, tf.reshape(noise, (-1, action_dim)), euler_steps,
                                   max_level=max_level)
    step_feature = tf.fill([batch_size * num_samples], float(euler_steps))
    q = aggregate_q(critic_fn(repeated_observations, flat_candidates, step_feature), q_agg)
    candidates = tf.reshape(flat_candidates, (batch_size, num_samples, action_dim))
    return best_of_n(candidates, tf.reshape(q, (batch_size, num_samples)))
