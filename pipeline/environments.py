"""Evaluation environments: OGBench single-task envs (named through data.envs) or custom callables,
wrapped to report what evaluation reads, batched in a cached gymnasium vector env.

Success is OGBench's post-step success (SPEC 6): the environment is made with
`success_timing='post'`, and an episode succeeds when `info['success']` of its *last* step is true.

This module must not import TensorFlow: the vector env's worker processes import it to build
their environments.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import warnings
from typing import Callable, Optional, Union

import gymnasium
import numpy as np

from data import envs as env_families

# Episodes in flight by default: beyond about this many, more envs add per-step overhead rather
# than throughput (bench/bench_evaluate.py measures it).
DEFAULT_NUM_ENVS = 10
VECTORIZATION_CHOICES = ("auto", "sync", "async")
# 'auto' uses worker processes from this many simulated steps per evaluation (50 cube episodes).
ASYNC_MIN_ENV_STEPS = 10_000

EnvSpec = Union[str, Callable[[], gymnasium.Env]]


class EvaluationInfo(gymnasium.Wrapper):
    """Keeps only what evaluation reads from `info`, so vector envs do not batch OGBench's ~20 keys.

    Step info: `success` (float, post-step) and `state_reward`: the reward of the state the step
    started from, i.e. the reward the offline dataset attaches to that transition (SPEC 6 relabels
    from `s`, not `s'`). It is what Monte-Carlo returns for critic diagnostics must sum.
    """

    def __init__(self, env: gymnasium.Env):
        super().__init__(env)
        self._state_reward = 0.0
        space = env.observation_space
        if isinstance(space, gymnasium.spaces.Box) and space.dtype != np.float32:
            # float32 observations (what the policy takes), half the bytes through the workers' pipes
            self.observation_space = gymnasium.spaces.Box(
                space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32)

    def reset(self, **kwargs):
        observation, _ = self.env.reset(**kwargs)
        self._state_reward = self._reward_of_current_state(None)
        return np.asarray(observation, np.float32), {}

    def step(self, action):
        observation, reward, terminated, truncated, info = self.env.step(action)
        state_reward = self._state_reward
        self._state_reward = self._reward_of_current_state(float(reward))
        out = {"success": float(info.get("success", 0.0)), "state_reward": float(state_reward)}
        return np.asarray(observation, np.float32), reward, terminated, truncated, out

    def _reward_of_current_state(self, post_step_reward: Optional[float]) -> float:
        # OGBench single-task envs can score the current state on demand: manipulation envs through
        # compute_reward (#successes - #objects), locomotion envs through compute_success (success - 1).
        # Otherwise a post-step reward is the reward of the state it led to (unknown at reset: NaN).
        base = self.env.unwrapped
        if getattr(base, "_reward_task_id", None) is not None:
            if callable(getattr(base, "compute_reward", None)):
                return float(base.compute_reward())
            if callable(getattr(base, "compute_success", None)):
                return float(base.compute_success()) - 1.0
        return float(post_step_reward) if post_step_reward is not None else math.nan


def make_ogbench_env(env_id: str, episode_length: Optional[int] = None) -> gymnasium.Env:
    """One evaluation environment (module-level so vector env workers can rebuild it by reference)."""
    kwargs = {} if episode_length is None else {"max_episode_steps": int(episode_length)}
    # OGBench's manipulation envs build a new float64-bounded action Box on every `action_space`
    # access (each reset, the env checker), and gymnasium warns each time it casts one: silence
    # that message for the process that owns the env, not only while we construct it.
    warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
    ogbench = _import_ogbench()
    with _quiet_ogbench():
        env = ogbench.make_env_and_datasets(env_id, env_only=True, success_timing="post", **kwargs)
    return EvaluationInfo(env)


@contextlib.contextmanager
def _quiet_ogbench():
    """Import-time and space-construction noise, once per process: no display (we never render)
    and OGBench's float64 observation bounds."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*DISPLAY environment variable.*")
        warnings.filterwarnings("ignore", message=".*precision lowered by casting.*")
        yield


def _import_ogbench():
    with _quiet_ogbench():
        import ogbench  # registers the environments with gymnasium
    return ogbench


def _make_custom_env(factory: Callable[[], gymnasium.Env], episode_length: Optional[int]) -> gymnasium.Env:
    env = factory()
    if episode_length is not None:
        env = gymnasium.wrappers.TimeLimit(env, max_episode_steps=int(episode_length))
    return EvaluationInfo(env)


def env_factory(env: EnvSpec, task: Optional[int], episode_length: Optional[int]):
    """(picklable zero-argument factory, cache key, max episode steps or None) for an OGBench family
    and task (any spelling data.envs accepts; DataError for an unknown env or task) or a callable."""
    if isinstance(env, str):
        family = env_families.resolve_env(env)
        env_id = family.eval_env_name(task)
        if episode_length is None:
            _import_ogbench()  # registers the gymnasium ids
            max_steps = gymnasium.spec(family.singletask_env_id(task)).max_episode_steps
        else:
            max_steps = int(episode_length)
        return functools.partial(make_ogbench_env, env_id, episode_length), (env_id, episode_length), max_steps
    if callable(env):
        max_steps = None if episode_length is None else int(episode_length)
        return functools.partial(_make_custom_env, env, episode_length), (id(env), episode_length), max_steps
    raise TypeError(f"env={env!r}: expected an OGBench dataset family name or a callable returning a gymnasium.Env")


def choose_vectorization(vectorization: str, num_envs: int, env_steps: Optional[int]) -> str:
    """'auto': worker processes (async) only when they can pay for themselves. Async steps the envs
    in parallel but costs start-up (a fork server, then each worker compiles its MuJoCo model); the
    vector env is then cached for later calls. So: sync for one env, one core, or a small job
    (under ASYNC_MIN_ENV_STEPS simulated steps, e.g. the few short episodes of a smoke test);
    async otherwise."""
    if vectorization not in VECTORIZATION_CHOICES:
        raise ValueError(f"vectorization={vectorization!r}: expected one of {VECTORIZATION_CHOICES}")
    if vectorization != "auto":
        return vectorization
    if num_envs == 1 or (os.cpu_count() or 1) == 1 or env_steps is None or env_steps < ASYNC_MIN_ENV_STEPS:
        return "sync"
    return "async"


def _build_vector_env(factory, num_envs: int, vectorization: str):
    mode = gymnasium.vector.AutoresetMode.DISABLED  # we reset each slot ourselves, with its episode's seed
    if vectorization == "sync":
        return gymnasium.vector.SyncVectorEnv([factory] * num_envs, autoreset_mode=mode)
    # forkserver: the parent has TensorFlow loaded and running threads, so plain fork is unsafe;
    # unlike spawn, the entry script is imported once (in the fork server), not once per worker.
    return gymnasium.vector.AsyncVectorEnv(
        [factory] * num_envs,
        context="forkserver",
        autoreset_mode=mode,
        max_concurrency=os.cpu_count() or 1,
    )


class _VectorEnvCache:
    """Keeps the last vector env alive between calls: periodic evaluation during training and the
    budget grid would otherwise pay process start-up and MuJoCo model compilation every time."""

    def __init__(self):
        self.key = None
        self.envs = None

    def get(self, key, build):
        if key != self.key:
            self.close()
            self.envs = build()
            self.key = key
        return self.envs

    def close(self):
        if self.envs is not None:
            try:
                self.envs.close()
            finally:
                self.envs, self.key = None, None


_CACHE = _VectorEnvCache()
atexit.register(_CACHE.close)


def vector_env(env: EnvSpec, task: Optional[int], num_envs: int, episodes: int,
               episode_length: Optional[int] = None, vectorization: str = "auto"):
    """(vector env of `num_envs` evaluation envs, the vectorization chosen) for `episodes` episodes.

    The vector env is cached: the next call with the same env, task, episode length, num_envs and
    vectorization gets it back; any other closes it first. Autoreset is off (the caller resets
    each slot with its episode's seed).
    """
    factory, key, max_steps = env_factory(env, task, episode_length)
    vectorization = choose_vectorization(vectorization, num_envs, None if max_steps is None else episodes * max_steps)
    envs = _CACHE.get(key + (num_envs, vectorization), lambda: _build_vector_env(factory, num_envs, vectorization))
    return envs, vectorization


def close_environments() -> None:
    """Close the cached vector env and its worker processes (they also end with this process)."""
    _CACHE.close()
