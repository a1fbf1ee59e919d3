"""Running episodes of a policy in evaluation environments, several in flight through a vector env.

A policy is any callable `observations [n, obs_dim] float32 -> actions [n, A]`; pipeline/policies.py
makes fast ones over a trained agent or an export. Start states and policy noise come from the
evaluation seed alone (models.noise), so the same seed gives the same numbers whatever the batching.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import numpy as np

from models.noise import episode_seed, noise_seeds
from pipeline import environments
from pipeline.environments import DEFAULT_NUM_ENVS, EnvSpec

PolicyFn = Callable[[np.ndarray], np.ndarray]


def _idle_seed(seed: int, slot: int) -> int:
    """Reset seed of a slot with no episode left: fixed, so nothing random enters the run."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x1D1E, int(slot)]).generate_state(1)[0])


def evaluate_policy(
    policy_fn: PolicyFn,
    env: EnvSpec,
    task: Optional[int],
    episodes: int,
    seed: int,
    num_envs: Optional[int] = None,
    episode_length: Optional[int] = None,
    vectorization: str = "auto",
    record: bool = False,
    progress: Optional[Callable[[int], None]] = None,
) -> dict:
    """Run `episodes` episodes of `policy_fn` and return their success and return.

    Args:
      policy_fn: observations [n, obs_dim] float32 -> actions [n, action_dim] (numpy or tensor),
        called with the episodes in flight only, so n varies. A policy with `row_seeded = True`
        (pipeline/policies.py's) is called as policy_fn(observations, seeds) with per-row noise
        seeds [n] int64, `models.noise.noise_seeds(seed, episode, step)`: the policy's noise is
        then part of "same seed, same numbers", and an episode's noise does not depend on num_envs.
      env: an OGBench dataset family ('cube-single-play', or any spelling data.envs accepts), a
        pipeline.environments.GymnasiumId (an env registered with gymnasium), or a zero-argument callable returning a gymnasium.Env whose step info has 'success' (tests,
        custom envs).
      task: the family's task, 1..5 (ignored for a callable env).
      episodes: number of episodes; episode i resets with `models.noise.episode_seed(seed, i)`.
      seed: evaluation seed.
      num_envs: episodes in flight (default min(episodes, DEFAULT_NUM_ENVS)).
      episode_length: steps before truncation (default: the env's own max_episode_steps).
      vectorization: 'sync' (one process), 'async' (a worker process per env) or 'auto'.
      record: also return every episode's observations, actions, env rewards and state rewards.
      progress: called with 1 each time an episode ends (e.g. a tqdm bar's `update`).

    Returns:
      dict with success_rate, mean_return, return_std (population std over episodes), episodes, successes [E], returns [E], lengths [E],
      env_steps, policy_calls, policy_seconds (time inside policy_fn after its first call, which
      includes tracing), policy_first_call_seconds, policy_ms_per_action (steady state, amortised
      over the batch), policy_ms_per_call, wall_seconds, num_envs, vectorization, and with
      `record`, trajectories: a list of E dicts of arrays observations [T, obs_dim], actions
      [T, A], rewards [T], state_rewards [T] (plus success and episode_return).
      Same arguments and policy, same numbers. Start states and (row-seeded) noise are per
      episode, so sync and async give the same numbers; a different num_envs changes only the
      batch shapes of the policy calls (float rounding in batched matmuls may differ).
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: evaluate at least one episode")
    num_envs = int(min(episodes, num_envs or DEFAULT_NUM_ENVS))
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}: need at least one environment")
    envs, vectorization = environments.vector_env(env, task, num_envs, episodes, episode_length, vectorization)

    start = time.perf_counter()
    try:
        rollout = _run_episodes(envs, policy_fn, episodes, seed, record, progress)
    except BaseException:
        environments.close_environments()  # a worker may be mid-call or dead: the next evaluation starts afresh
        raise
    successes = rollout["successes"]
    returns = rollout["returns"]
    result = dict(
        success_rate=float(np.mean(successes)),
        mean_return=float(np.mean(returns)),
        return_std=float(np.std(returns)),
        episodes=int(episodes),
        successes=successes,
        returns=returns,
        lengths=rollout["lengths"],
        env_steps=int(rollout["lengths"].sum()),
        policy_calls=rollout["policy_calls"],
        policy_seconds=rollout["policy_seconds"],
        policy_first_call_seconds=rollout["policy_first_call_seconds"],
        policy_ms_per_action=rollout["policy_ms_per_action"],
        policy_ms_per_call=rollout["policy_ms_per_call"],
        wall_seconds=time.perf_counter() - start,
        num_envs=num_envs,
        vectorization=vectorization,
    )
    if record:
        result["trajectories"] = rollout["trajectories"]
    return result


def _run_episodes(envs, policy_fn, episodes, seed, record, progress) -> dict:
    """The vector-env loop. Each slot runs one episode at a time; a slot whose episode ends is
    reset with the next unstarted episode's seed (slots in index order, so the assignment is
    deterministic). Slots with nothing left to run are still stepped (vector envs step every slot)
    with zero actions, but neither the policy nor the statistics see them."""
    num_envs = envs.num_envs
    row_seeded = bool(getattr(policy_fn, "row_seeded", False))
    action_shape = envs.single_action_space.shape
    successes = np.zeros(episodes, np.float64)
    returns = np.zeros(episodes, np.float64)
    lengths = np.zeros(episodes, np.int64)
    buffers = [_EpisodeBuffer() for _ in range(episodes)] if record else None
    slot_episode = np.arange(num_envs)  # episode each slot runs; -1: idle
    next_episode = num_envs
    policy_calls, policy_seconds, first_call_seconds, timed_actions = 0, 0.0, 0.0, 0

    observations, _ = envs.reset(seed=[episode_seed(seed, int(e)) for e in slot_episode])
    while True:
        active = slot_episode >= 0
        if not active.any():
            break
        observations32 = np.asarray(observations, np.float32)  # ogbench observations are float64
        active_obs = observations32[active]
        t0 = time.perf_counter()
        if row_seeded:
            active_episodes = slot_episode[active]
            seeds = noise_seeds(seed, active_episodes, lengths[active_episodes])
            active_actions = np.asarray(policy_fn(active_obs, seeds), np.float32)
        else:
            active_actions = np.asarray(policy_fn(active_obs), np.float32)
        if policy_calls == 0:  # tracing and graph optimisation: not the policy's steady-state cost
            first_call_seconds = time.perf_counter() - t0
        else:
            policy_seconds += time.perf_counter() - t0
            timed_actions += len(active_obs)
        policy_calls += 1
        if active_actions.shape != (len(active_obs),) + action_shape:
            raise ValueError(
                f"policy returned actions of shape {active_actions.shape} for {len(active_obs)} observations; "
                f"expected {(len(active_obs),) + action_shape}"
            )
        actions = np.zeros((num_envs,) + action_shape, np.float32)
        actions[active] = active_actions
        observations, rewards, terminated, truncated, info = envs.step(actions)

        done_slots = []
        for slot in np.flatnonzero(active):
            e = slot_episode[slot]
            returns[e] += rewards[slot]
            lengths[e] += 1
            if record:
                buffers[e].add(observations32[slot], actions[slot], rewards[slot], info["state_reward"][slot])
            if terminated[slot] or truncated[slot]:
                successes[e] = float(info["success"][slot])  # post-step success at the episode's end
                done_slots.append(slot)
                if progress is not None:
                    progress(1)
        # Idle slots that ended a (discarded) episode need a reset too: DISABLED autoreset mode.
        idle_done = [s for s in np.flatnonzero(~active) if terminated[s] or truncated[s]]
        to_reset = done_slots + idle_done
        if not to_reset:
            continue
        reset_mask = np.zeros(num_envs, bool)
        reset_seeds: list = [None] * num_envs
        for slot in sorted(to_reset):
            reset_mask[slot] = True
            if slot in done_slots and next_episode < episodes:
                slot_episode[slot] = next_episode
                next_episode += 1
            else:
                slot_episode[slot] = -1
            # idle slots get a fixed seed too, so nothing random enters the run
            reset_seeds[slot] = (episode_seed(seed, int(slot_episode[slot])) if slot_episode[slot] >= 0
                                 else _idle_seed(seed, int(slot)))
        if not (slot_episode >= 0).any():
            break
        reset_obs, _ = envs.reset(seed=reset_seeds, options={"reset_mask": reset_mask})
        observations = np.array(observations)
        observations[reset_mask] = reset_obs[reset_mask]

    out = dict(successes=successes, returns=returns, lengths=lengths, policy_calls=policy_calls,
               policy_seconds=policy_seconds, policy_first_call_seconds=first_call_seconds,
               policy_ms_per_action=1e3 * policy_seconds / max(timed_actions, 1),
               policy_ms_per_call=1e3 * policy_seconds / max(policy_calls - 1, 1))
    if record:
        out["trajectories"] = [dict(b.arrays(), success=successes[e], episode_return=returns[e])
                               for e, b in enumerate(buffers)]
    return out


class _EpisodeBuffer:
    def __init__(self):
        self.observations, self.actions, self.rewards, self.state_rewards = [], [], [], []

    def add(self, observation, action, reward, state_reward):
        self.observations.append(np.array(observation, np.float32))
        self.actions.append(np.array(action, np.float32))
        self.rewards.append(float(reward))
        self.state_rewards.append(float(state_reward))

    def arrays(self) -> dict:
        return dict(
            observations=np.stack(self.observations),
            actions=np.stack(self.actions),
            rewards=np.asarray(self.rewards, np.float32),
            state_rewards=np.asarray(self.state_rewards, np.float32),
        )
