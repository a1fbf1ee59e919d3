"""Evaluation environments: OGBench single-task envs (named through data.envs), envs registered with
gymnasium (`GymnasiumId`, the eval env of a dataset's own rewards) or custom callables, wrapped to
report what evaluation reads, batched in a cached gymnasium vector env.

A dataset names its eval env by id only. The env is built only from an id already registered with
gymnasium in this process (by gymnasium itself or an installed package such as ogbench): never from
an entry point a dataset carries, and never an id with a 'module:' prefix, which gymnasium.make
would import.

Success is OGBench's post-step success (SPEC 6): the environment is made with
`success_timing='post'`, and an episode succeeds when `info['success']` of its *last* step is true.

This module must not import TensorFlow: the vector env's worker processes import it to build
their environments.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
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



@dataclasses.dataclass(frozen=True)
class GymnasiumId:
    """An evaluation env named by its gymnasium id, e.g. 'Pendulum-v1' (see the module docstring)."""

    id: str


EnvSpec = Union[str, GymnasiumId, Callable[[], gymnasium.Env]]


class UnregisteredEnv(ValueError):
    """An eval env id that gymnasium does not know in this process; the message names where it came from."""


def check_registered(env_id, field: str = "eval_env") -> str:
    """`env_id` when gymnasium in this process has it registered (OGBench's ids once ogbench is imported);
    UnregisteredEnv naming `field` (e.g. "metadata.json: field 'eval_env'") and the value otherwise.
    Nothing the id names is imported or called."""
    if not isinstance(env_id, str) or ":" in env_id or not env_id.strip():
        raise UnregisteredEnv(f"{field} is {env_id!r}: not a gymnasium env id (ids such as 'Pendulum-v1'; a "
                              "'module:' prefix is never imported). Pass --eval_env=ID of a registered env.")
    if env_id not in gymnasium.registry:
        _import_ogbench()  # our own dependency: registers OGBench's ids
    if env_id not in gymnasium.registry:
        raise UnregisteredEnv(
            f"{field} is {env_id!r}, which is not registered with gymnasium in this process (an env is built "
            "only from an installed package's registered id, never from an entry point the dataset names): "
            "install the package that registers it, pass --eval_env=ID of a registered env, or --eval_episodes=0 "
            "to skip evaluation.")
    return env_id


def make_gymnasium_env(env_id: str, episode_length: Optional[int] = None) -> gymnasium.Env:
    """One evaluation env from a registered id (module-level so vector env workers can rebuild it)."""
    kwargs = {} if episode_length is None else {"max_episode_steps": int(episode_length)}
    return EvaluationInfo(gymnasium.make(check_registered(env_id), **kwargs))


def evaluation_env(data) -> EnvSpec:
    """The env a run (its pipeline.config.DataSpec) is evaluated in: its OGBench family, or the gymnasium
    id of a run on a dataset's own rewards (None when it names none)."""
    if data.env is not None:
        return data.env
    return None if data.eval_env is None else GymnasiumId(data.eval_env)


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
    and task (any spelling data.envs accepts; DataError for an unknown env or task), a GymnasiumId
    (UnregisteredEnv when gymnasium does not know it; `task` ignored) or a callable."""
    if isinstance(env, GymnasiumId):
        env_id = check_registered(env.id)
        max_steps = gymnasium.spec(env_id).max_episode_steps if episode_length is None else int(episode_length)
        return functools.partial(make_gymnasium_env, env_id, episode_length), (env_id, episode_length), max_steps
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
    raise TypeError(f"env={env!r}: expected an OGBench dataset family name, a GymnasiumId or a callable returning "
                    "a gymnasium.Env")


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
