"""An adaptive inference budget: as many Euler steps as the critic says are worth it, per observation.

SORL's shortcut actor serves every step count k from one network (d = log2 k), so a state can be
answered with 1 step and re-answered with 2, 4, ... steps from the *same* noise. The adaptive
policy starts at k = 1 and doubles k while the critic still sees the action improving:

    improving(k -> 2k)  <=>  Q(s, a_2k, 2k) - Q(s, a_k, k) > threshold * |Q(s, a_k, k)|

The threshold is relative to |Q| so one value means the same across environments whose returns
differ in scale (cube-single: Q in [-100, 0]; reward scales differ by env). threshold = 0 doubles
while Q strictly increases. A row stops at the first k whose doubled action does not beat it by
more than the threshold and returns a_k (gains inside the threshold are treated as critic noise),
or reaches `max_euler_steps` and returns a_max_euler_steps. Rows stop independently; only rows still
improving are integrated further (gathered, run, scattered back), so easy states cost little.

The rule above (`compare="across_levels"`, the default) scores the two actions at two different critic
inputs k and 2k, so a critic whose values drift with its k input alone moves the decision, whatever
the actions. `compare="same_level"` scores every action at one input, the cap:

    improving(k -> 2k)  <=>  Q(s, a_2k, cap) - Q(s, a_k, cap) > threshold * |Q(s, a_k, cap)|

so only the actions differ. The cap, not 2k, is the common input: the kept action's score is then
reused at the next level, and both rules cost one critic call per level tried.

Cost of a row that returns a_k: it evaluated levels 1, 2, ..., min(2k, max_euler_steps), i.e.
`actor_evaluations` = 1 + 2 + ... (sum of those k) velocity calls and one Q call per level.

Everything is TensorFlow and traceable: `serving/export.py` exports it as the `act_adaptive`
signature and `pipeline/evaluate.py` evaluates it as a row of the budget grid.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from models import noise as noise_lib


def step_levels(max_euler_steps: int) -> list[int]:
    """[1, 2, 4, ..., max_euler_steps]; the cap must be a power of two (the shortcut's step sizes)."""
    max_euler_steps = int(max_euler_steps)
    if max_euler_steps < 1 or max_euler_steps & (max_euler_steps - 1):
        raise ValueError(f"max_euler_steps={max_euler_steps}: the adaptive cap must be a power of two "
                         f"(1, 2, 4, 8, ...)")
    return [2**i for i in range(max_euler_steps.bit_length())]


COMPARE_RULES = ("across_levels", "same_level")


def check_compare(compare: str) -> str:
    if compare not in COMPARE_RULES:
        raise ValueError(f"compare={compare!r}: the adaptive rule compares 'across_levels' (Q(s, a_2k, 2k) vs "
                         f"Q(s, a_k, k)) or at the 'same_level' (both at the cap)")
    return compare


def adaptive_act(agent, observations, noise=None, max_euler_steps: int = 8, threshold: float = 0.0, seed=None,
                 cap_step_level: bool = False, compare: str = "across_levels"):
    """Actions with a per-observation number of Euler steps chosen by the critic.

    Args:
      agent: a SORLAgent (uses `agent.act` and `agent.q_values`, the one sampling path).
      observations: [B, obs_dim] float32.
      noise: optional [B, 1, A] (or [B, A]) float32 starting noise, shared by every k tried for a row (so rows
        are reproducible and batched rows equal single-row calls). Drawn if None: statelessly from
        `seed` when given, else from TF's global generator.
      max_euler_steps: python int cap on k, a power of two.
      threshold: python float or scalar tensor, relative Q-gain threshold (see module docstring).
      seed: optional int scalar (tensor) for stateless noise when `noise` is None.
      cap_step_level: passed to agent.act (keeps d at most log2(m_disc) for k > m_disc).
      compare: "across_levels" scores a_k at critic input k; "same_level" scores every a_k at
        max_euler_steps (see module docstring).

    Returns:
      (actions [B, A] float32 in [-1, 1], steps_used [B] int32): the Euler steps of each returned
      action (1 <= steps_used <= max_euler_steps).
    """
    levels = step_levels(max_euler_steps)
    check_compare(compare)
    q_level = (lambda k: levels[-1]) if compare == "same_level" else (lambda k: k)
    observations = tf.convert_to_tensor(observations, tf.float32)
    batch = tf.shape(observations)[0]
    if noise is None:
        noise = _draw_noise(agent, batch, seed)
    noise = tf.convert_to_tensor(noise, tf.float32)
    if noise.shape.rank == 2:
        noise = noise[:, None, :]
    threshold = tf.cast(threshold, tf.float32)

    actions = agent.act(observations, euler_steps=1, num_samples=1, noise=noise, cap_step_level=cap_step_level)
    q_current = _q(agent, observations, actions, q_level(1))
    steps_used = tf.ones([batch], tf.int32)
    active = tf.range(batch)  # rows still improving

    for k in levels[1:]:
        def refine(actions=actions, q_current=q_current, steps_used=steps_used, active=active, k=k):
            rows = active[:, None]
            obs_k = tf.gather(observations, active)
            candidate = agent.act(obs_k, euler_steps=k, num_samples=1, noise=tf.gather(noise, active),
                                  cap_step_level=cap_step_level)
            q_candidate = _q(agent, obs_k, candidate, q_level(k))
            q_before = tf.gather(q_current, active)
            improving = q_candidate - q_before > threshold * tf.abs(q_before)
            kept = tf.boolean_mask(rows, improving)
            actions = tf.tensor_scatter_nd_update(actions, kept, tf.boolean_mask(candidate, improving))
            q_current = tf.tensor_scatter_nd_update(q_current, kept, tf.boolean_mask(q_candidate, improving))
            steps_used = tf.tensor_scatter_nd_update(
                steps_used, kept, tf.fill(tf.shape(kept)[:1], tf.constant(k, tf.int32)))
            return actions, q_current, steps_used, tf.boolean_mask(active, improving)

        def finished(actions=actions, q_current=q_current, steps_used=steps_used, active=active):
            return actions, q_current, steps_used, active

        # Skip the remaining levels outright once every row has stopped (batch 1 serving: most states).
        actions, q_current, steps_used, active = tf.cond(tf.size(active) > 0, refine, finished)
    return actions, steps_used


def _q(agent, observations, actions, euler_steps):
    """agg Q(s, a, k) as float32 [B]."""
    return tf.cast(tf.reshape(agent.q_values(observations, actions, euler_steps), [-1]), tf.float32)


def _draw_noise(agent, batch, seed):
    shape = tf.stack([batch, 1, int(agent.action_dim)])
    if seed is None:
        return tf.random.normal(shape)
    return noise_lib.seeded_normal(shape, seed, noise_lib.ADAPTIVE_SEED_WORD)


def actor_evaluations(steps_used, max_euler_steps: int) -> np.ndarray:
    """Velocity-network evaluations spent on each row, from the Euler steps of the action it returned."""
    steps_used = np.asarray(steps_used, np.int64)
    last_level = np.minimum(2 * steps_used, int(max_euler_steps))  # a row returning a_k also tried a_2k
    return 2 * last_level - 1  # 1 + 2 + ... + last_level


def critic_evaluations(steps_used, max_euler_steps: int) -> np.ndarray:
    """Q evaluations spent on each row: one per level tried."""
    steps_used = np.asarray(steps_used, np.int64)
    last_level = np.minimum(2 * steps_used, int(max_euler_steps))
    return np.log2(last_level).astype(np.int64) + 1
