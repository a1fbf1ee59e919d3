"""Policy evaluation in the real OGBench environments, episodes in parallel through gymnasium vector envs.

Used by `pipeline/training.py` (periodic evaluation) and `pipeline/evaluate.py` (budget sweeps and
critic diagnostics). A policy is any callable `observations [n, obs_dim] float32 -> actions [n, A]`;
`make_agent_policy` and `make_saved_model_policy` build fast ones over a trained agent or an export.

Success is OGBench's post-step success (SPEC 6): the environment is made with
`success_timing='post'`, and an episode succeeds when `info['success']` of its *last* step is true.

This module imports TensorFlow only inside the functions that need it: the vector env's worker
processes import this module to build their environments and must stay light.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import math
import os
import time
import warnings
from typing import Callable, Optional, Union

import gymnasium
import numpy as np

# Vector envs on this 2-core machine: above this many episodes in flight, extra envs only add
# per-step overhead (see bench/bench_evaluate.py for the measurement).
DEFAULT_NUM_ENVS = 10
VECTORIZATION_CHOICES = ("auto", "sync", "async")
# 'auto' uses worker processes from this many simulated steps per evaluation (50 cube episodes).
ASYNC_MIN_ENV_STEPS = 10_000

EnvSpec = Union[str, Callable[[], gymnasium.Env]]
PolicyFn = Callable[[np.ndarray], np.ndarray]


# --------------------------------------------------------------------------------------------------
# Environments


def ogbench_env_id(env: str, task: int) -> str:
    """The OGBench single-task dataset name for a dataset family and task, e.g.
    ('cube-single-play', 2) -> 'cube-single-play-singletask-task2-v0'. Short aliases ('cube') are
    resolved through models.config when it knows them."""
    family = resolve_env_family(env)
    if not isinstance(task, (int, np.integer)) or not 1 <= int(task) <= 5:
        raise ValueError(f"task={task!r}: OGBench single-task environments have tasks 1..5")
    return f"{family}-singletask-task{int(task)}-v0"


def resolve_env_family(env: str) -> str:
    """A dataset family name ('cube-single-play'); aliases go through models.config.get_config."""
    _import_ogbench()
    if _family_is_registered(env):
        return env
    try:
        from models.config import resolve_env

        family = resolve_env(env)
    except (ImportError, ValueError):
        family = None
    if family is not None and _family_is_registered(family):
        return family
    raise ValueError(
        f"env={env!r} is not an OGBench dataset family with single-task environments; use a name such as "
        "'cube-single-play', 'cube-double-play', 'scene-play', 'antmaze-large-navigate' (or a preset alias)"
    )


def _family_is_registered(family: str) -> bool:
    parts = family.split("-")
    if len(parts) < 2:
        return False
    env_name = "-".join(parts[:-1])  # drop the dataset type ('play', 'navigate', ...)
    return f"{env_name}-singletask-task1-v0" in gymnasium.registry


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
    """(picklable zero-argument factory, cache key, description) for an env family+task or a callable."""
    if isinstance(env, str):
        env_id = ogbench_env_id(env, task)
        return functools.partial(make_ogbench_env, env_id, episode_length), (env_id, episode_length), env_id
    if callable(env):
        return functools.partial(_make_custom_env, env, episode_length), (id(env), episode_length), repr(env)
    raise TypeError(f"env={env!r}: expected an OGBench dataset family name or a callable returning a gymnasium.Env")


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


def close_environments() -> None:
    """Close the cached vector env and its worker processes (they also end with this process)."""
    _CACHE.close()


def choose_vectorization(vectorization: str, num_envs: int, env_steps: Optional[int]) -> str:
    """'auto': worker processes (async) only when they can pay for themselves. Async halves the
    simulation time on two cores but costs seconds to start (a fork server, then each worker
    compiles its MuJoCo model: ~1.5 s an env here); the vector env is then cached for later calls.
    So: sync for one env, one core, or a small job (under ASYNC_MIN_ENV_STEPS simulated steps,
    e.g. the few short episodes of a smoke test); async otherwise."""
    if vectorization not in VECTORIZATION_CHOICES:
        raise ValueError(f"vectorization={vectorization!r}: expected one of {VECTORIZATION_CHOICES}")
    if vectorization != "auto":
        return vectorization
    if num_envs == 1 or (os.cpu_count() or 1) == 1 or env_steps is None or env_steps < ASYNC_MIN_ENV_STEPS:
        return "sync"
    return "async"


def _max_episode_steps(env: EnvSpec, episode_length: Optional[int]) -> Optional[int]:
    if episode_length is not None:
        return int(episode_length)
    if isinstance(env, str):  # an OGBench dataset name: its gymnasium id lacks the dataset type
        parts = env.split("-")
        at = parts.index("singletask")
        return gymnasium.spec("-".join(parts[: at - 1] + parts[at:])).max_episode_steps
    return None


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


# --------------------------------------------------------------------------------------------------
# Running episodes


def episode_seed(seed: int, episode: int) -> int:
    """The reset seed of episode `episode` of an evaluation seeded `seed` (independent of num_envs)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 0x5E7A1, int(episode)]).generate_state(1)[0])


def _idle_seed(seed: int, slot: int) -> int:
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
        (those made here) is called as policy_fn(observations, seeds) with per-row noise seeds
        [n] int64, `noise_seeds(seed, episode, step)`: the policy's noise is then part of "same
        seed, same numbers", and an episode's noise does not depend on num_envs.
      env: an OGBench dataset family ('cube-single-play') or a zero-argument callable returning a
        gymnasium.Env whose step info has 'success' (tests, custom envs).
      task: OGBench task 1..5 (ignored for a callable env).
      episodes: number of episodes; episode i resets with `episode_seed(seed, i)`.
      seed: evaluation seed.
      num_envs: episodes in flight (default min(episodes, DEFAULT_NUM_ENVS)).
      episode_length: steps before truncation (default: the env's own max_episode_steps).
      vectorization: 'sync' (one process), 'async' (a worker process per env) or 'auto'.
      record: also return every episode's observations, actions, env rewards and state rewards.
      progress: called with 1 each time an episode ends (e.g. a tqdm bar's `update`).

    Returns:
      dict with success_rate, mean_return, episodes, successes [E], returns [E], lengths [E],
      env_steps, policy_calls, policy_seconds (time inside policy_fn after its first call, which
      includes tracing), policy_first_call_seconds, policy_ms_per_action (steady state, amortised
      over the batch), policy_ms_per_call, wall_seconds, num_envs, vectorization, and with `record`, trajectories: a list of E dicts of arrays
      observations [T, obs_dim], actions [T, A], rewards [T], state_rewards [T].
      Same arguments and policy, same numbers. Start states and (row-seeded) noise are per
      episode, so sync and async give the same numbers; a different num_envs changes only the
      batch shapes of the policy calls (float rounding in batched matmuls may differ).
    """
    if episodes < 1:
        raise ValueError(f"episodes={episodes}: evaluate at least one episode")
    num_envs = int(min(episodes, num_envs or DEFAULT_NUM_ENVS))
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}: need at least one environment")
    factory, key, env_id = env_factory(env, task, episode_length)
    max_steps = _max_episode_steps(env_id if isinstance(env, str) else env, episode_length)
    vectorization = choose_vectorization(vectorization, num_envs, None if max_steps is None else episodes * max_steps)
    envs = _CACHE.get(key + (num_envs, vectorization), lambda: _build_vector_env(factory, num_envs, vectorization))

    start = time.perf_counter()
    try:
        rollout = _run_episodes(envs, policy_fn, episodes, seed, record, progress)
    except BaseException:
        close_environments()  # a worker may be mid-call or dead: the next evaluation starts afresh
        raise
    successes = rollout["successes"]
    returns = rollout["returns"]
    result = dict(
        success_rate=float(np.mean(successes)),
        mean_return=float(np.mean(returns)),
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


# --------------------------------------------------------------------------------------------------
# Policies


def noise_seeds(seed: int, episodes, steps) -> np.ndarray:
    """Per-row noise seeds [n] int64 (non-negative) for rows at (episode, step) of an evaluation
    seeded `seed`: a fixed integer hash (splitmix64 finaliser), so an episode's noise never depends
    on which other episodes share its batch."""
    with np.errstate(over="ignore"):
        x = (np.uint64(int(seed) & 0xFFFFFFFFFFFF) * np.uint64(0x9E3779B97F4A7C15)
             ^ np.asarray(episodes, np.uint64) * np.uint64(0xBF58476D1CE4E5B9)
             ^ np.asarray(steps, np.uint64) * np.uint64(0x94D049BB133111EB))
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x >> np.uint64(1)).astype(np.int64)


class RowSeededPolicy:
    """observations [n, obs_dim], seeds [n] int64 -> actions [n, A] (numpy), over a TF function
    `act(observations, seeds)` traced once for any batch size. Row i's noise comes from seeds[i]
    alone (serving.signatures.seeded_noise, the export's `_seeded` signatures), so a checkpoint and
    its export evaluate to the same numbers and batching does not change an episode."""

    row_seeded = True

    def __init__(self, act, name: str):
        self._act = act
        self.name = name

    def __call__(self, observations, seeds) -> np.ndarray:
        import tensorflow as tf

        out = self._act(tf.convert_to_tensor(np.asarray(observations, np.float32)),
                        tf.convert_to_tensor(np.asarray(seeds, np.int64)))
        return self._handle(out)

    def _handle(self, out):
        if isinstance(out, dict):
            out = out["actions"]
        return out.numpy()

    def __repr__(self):
        return f"{type(self).__name__}({self.name})"


def _observation_spec(agent):
    import tensorflow as tf

    return tf.TensorSpec([None, int(agent.obs_dim)], tf.float32)


def make_agent_policy(agent, steps: int, num_samples: int = 1) -> RowSeededPolicy:
    """A fast policy over `agent.act(observations, steps, num_samples, noise)`: traced once (any
    batch size) and reading the agent's current weights at every call, so training-time
    evaluation follows training without re-tracing."""
    import tensorflow as tf
    from serving.signatures import seeded_noise

    steps, num_samples = int(steps), int(num_samples)
    action_dim = int(agent.action_dim)

    @tf.function(input_signature=[_observation_spec(agent), tf.TensorSpec([None], tf.int64)])
    def act(observations, seeds):
        noise = seeded_noise(seeds, num_samples, action_dim)
        return agent.act(observations, steps=steps, num_samples=num_samples, noise=noise)

    return RowSeededPolicy(act, f"agent k={steps} N={num_samples}")


class AdaptivePolicy(RowSeededPolicy):
    """The adaptive-budget policy (models/adaptive.py). Also records the steps it spends on every
    action, so the grid can report mean steps and network evaluations per action (`cost()`)."""

    def __init__(self, act, name: str, max_steps: int):
        super().__init__(act, name)
        self.max_steps = int(max_steps)
        self.reset_cost()

    def reset_cost(self) -> None:
        self.steps_used: list = []

    def _handle(self, out):
        actions, steps_used = (out["actions"], out["steps_used"]) if isinstance(out, dict) else out
        self.steps_used.append(np.asarray(steps_used).reshape(-1))
        return actions.numpy()

    def cost(self) -> dict:
        """Means over every action since `reset_cost()`: Euler steps of the action, actor and critic calls."""
        from models import adaptive

        steps = np.concatenate(self.steps_used) if self.steps_used else np.zeros(0, np.int64)
        if steps.size == 0:
            return dict(mean_steps=math.nan, actor_calls=math.nan, critic_calls=math.nan)
        return dict(
            mean_steps=float(steps.mean()),
            actor_calls=float(adaptive.actor_evaluations(steps, self.max_steps).mean()),
            critic_calls=float(adaptive.critic_evaluations(steps, self.max_steps).mean()),
        )


def make_adaptive_policy(agent, max_steps: int = 8, threshold: float = 0.0) -> AdaptivePolicy:
    """The adaptive-budget policy over a trained agent, traced once (noise as make_agent_policy's)."""
    import tensorflow as tf
    from models import adaptive
    from serving.signatures import seeded_noise

    action_dim = int(agent.action_dim)

    @tf.function(input_signature=[_observation_spec(agent), tf.TensorSpec([None], tf.int64)])
    def act(observations, seeds):
        noise = seeded_noise(seeds, 1, action_dim)
        return adaptive.adaptive_act(agent, observations, noise=noise, max_steps=max_steps, threshold=threshold)

    return AdaptivePolicy(act, f"adaptive k<={max_steps} thr={threshold:g}", max_steps)


class UnseededPolicy:
    """A SavedModel signature without a seed input: fresh noise on every call (not reproducible)."""

    row_seeded = False

    def __init__(self, fn, name, model=None):
        self._fn = fn
        self.name = name
        self.model = model  # keeps the loaded SavedModel (and its variables) alive

    def __call__(self, observations):
        import tensorflow as tf

        return self._fn(observations=tf.convert_to_tensor(np.asarray(observations, np.float32)))["actions"].numpy()


def load_saved_model(saved_model_dir):
    import tensorflow as tf

    return tf.saved_model.load(str(saved_model_dir))


def make_saved_model_policy(saved_model_dir, signature: str = "serving_default", loaded=None,
                            max_steps: Optional[int] = None):
    """A policy over one signature of an exported SavedModel (serving/export.py).

    Uses the signature's `_seeded` twin when there is one (input `seed` [batch] int64, one per row),
    so the evaluation is reproducible and equals the checkpoint's; otherwise the signature as it
    is, with fresh noise per call. A signature with a `steps_used` output is the adaptive policy
    (`max_steps`: its cap, for the cost accounting). `loaded`: the already loaded SavedModel.
    """
    from serving.signatures import loaded_function

    model = loaded if loaded is not None else load_saved_model(saved_model_dir)
    available = sorted(model.signatures.keys())
    if signature not in model.signatures and f"{signature}_seeded" not in model.signatures:
        raise ValueError(
            f"{saved_model_dir}: no signature {signature!r}; it has {available}. Export the budgets "
            "you want to evaluate (serving/export.py --budgets/--best_of), or evaluate the run's "
            "checkpoint with --workdir (any budget)."
        )
    seeded_name = signature if signature.endswith("_seeded") else f"{signature}_seeded"
    name = f"{saved_model_dir}:{signature}"
    if seeded_name not in model.signatures:
        return UnseededPolicy(loaded_function(model, signature), name, model=model)

    fn = loaded_function(model, seeded_name)

    def act(observations, seeds):
        return fn(observations=observations, seed=seeds)

    act.model = model  # keeps the loaded object (and its variables) alive
    if "steps_used" in fn.structured_outputs:
        return AdaptivePolicy(act, name, max_steps=max_steps or 8)
    return RowSeededPolicy(act, name)


# --------------------------------------------------------------------------------------------------
# Critic diagnostics: does Q rank actions the way the environment does?


def discounted_returns(rewards, discount: float) -> np.ndarray:
    """Monte-Carlo returns G_t = r_t + discount * G_{t+1} of one episode (G after the last step = 0).

    With the rewards the offline data uses (`state_rewards`: the reward of the state each step
    starts from), G_t is what the critic's Q(s_t, a_t) estimates, except that a truncated
    (unsuccessful) episode is missing its tail: those returns are upper bounds on the true value.
    """
    rewards = np.asarray(rewards, np.float64)
    returns = np.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        running = rewards[t] + discount * running
        returns[t] = running
    return returns


def ranks(values) -> np.ndarray:
    """Ranks 0..n-1 with ties given their average rank (as Spearman's correlation needs)."""
    values = np.asarray(values, np.float64)
    order = np.argsort(values, kind="mergesort")
    ranked = np.empty(len(values), np.float64)
    ranked[order] = np.arange(len(values), dtype=np.float64)
    unique, inverse = np.unique(values, return_inverse=True)
    if len(unique) < len(values):  # average the ranks within each group of ties
        sums = np.bincount(inverse, weights=ranked)
        counts = np.bincount(inverse)
        ranked = (sums / counts)[inverse]
    return ranked


def pearson(x, y) -> float:
    """Pearson correlation; NaN when either input is constant or has fewer than two values."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    denominator = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / denominator) if denominator > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman rank correlation: Pearson's on the (tie-averaged) ranks."""
    return pearson(ranks(x), ranks(y))


def q_versus_returns(agent, trajectories, steps: int, discount: float, chunk: int = 4096) -> dict:
    """Q(s_t, a_t, k) of the actions taken and their Monte-Carlo returns, over recorded episodes
    (`evaluate_policy(..., record=True)`). Returns arrays q, mc_return, episode, t, episode_success
    (one entry per step; steps whose return is unknown, NaN, are dropped)."""
    import tensorflow as tf

    observations = np.concatenate([tr["observations"] for tr in trajectories])
    actions = np.concatenate([tr["actions"] for tr in trajectories])
    returns = np.concatenate([discounted_returns(tr["state_rewards"], discount) for tr in trajectories])
    episode = np.concatenate([np.full(len(tr["actions"]), e) for e, tr in enumerate(trajectories)])
    t = np.concatenate([np.arange(len(tr["actions"])) for tr in trajectories])
    success = np.concatenate([np.full(len(tr["actions"]), float(tr.get("success", math.nan)))
                              for tr in trajectories])

    q_fn = tf.function(lambda o, a: agent.q_values(o, a, int(steps)))
    q = np.concatenate([q_fn(tf.constant(observations[i:i + chunk]), tf.constant(actions[i:i + chunk])).numpy()
                        for i in range(0, len(observations), chunk)])
    keep = np.isfinite(returns)
    return dict(q=q[keep], mc_return=returns[keep], episode=episode[keep], t=t[keep],
                episode_success=success[keep])


def validation_td_errors(agent, batches, steps: int, seed: int = 0) -> np.ndarray:
    """TD errors Q(s, a, k) - (r + discount * mask * agg Q_target(s', a', k)) per transition of the
    validation batches (dicts as data.reader.make_dataset yields), a' = k-step action of the online
    actor at s' (the critic loss's target, SPEC 3), noise seeded from `seed` and the batch index."""
    import tensorflow as tf
    from models import sampling
    from serving.signatures import seeded_noise

    config = agent.config
    steps = int(steps)

    @tf.function(reduce_retracing=True)
    def td(batch, seeds):
        observations, next_observations = batch["observations"], batch["next_observations"]
        q = agent.q_values(observations, batch["actions"], steps)
        noise = seeded_noise(seeds, 1, int(agent.action_dim))
        next_actions = agent.act(next_observations, steps=steps, num_samples=1, noise=noise)
        k = tf.fill(tf.shape(batch["rewards"]), float(steps))
        next_q = sampling.aggregate_q(agent.target_critic(next_observations, next_actions, k), config.q_agg)
        target = batch["rewards"] + config.discount * batch["masks"] * next_q
        return q - target

    errors = []
    for index, batch in enumerate(batches):
        size = int(batch["rewards"].shape[0])
        seeds = noise_seeds(seed, np.full(size, index), np.arange(size))
        errors.append(td({key: batch[key] for key in ("observations", "actions", "next_observations",
                                                      "rewards", "masks")}, tf.constant(seeds)).numpy())
    return np.concatenate(errors) if errors else np.zeros(0, np.float32)
