"""pipeline/environments.py: env ids through data.envs, the vectorization choice, the real OGBench env."""

import numpy as np
import pytest
import tensorflow as tf  # noqa: F401  (TF before MuJoCo)

from data.errors import DataError
from pipeline import environments, policies, rollouts


def test_unknown_env_and_task_are_clear_errors():
    with pytest.raises(DataError, match="unknown env 'cube-sextuple-play'"):
        environments.env_factory("cube-sextuple-play", 1, None)
    with pytest.raises(DataError, match="unknown task 6 for env cube-single-play: use an integer 1..5"):
        environments.env_factory("cube-single-play", 6, None)
    factory, key, max_steps = environments.env_factory("cube", 2, None)
    assert factory.args == ("cube-single-play-singletask-task2-v0", None)
    assert key == ("cube-single-play-singletask-task2-v0", None)
    assert max_steps == 200  # cube-single's own episode length
    assert environments.env_factory("cube", 2, 8)[2] == 8


def test_auto_vectorization_uses_workers_only_for_large_jobs(monkeypatch):
    monkeypatch.setattr(environments.os, "cpu_count", lambda: 2)
    assert environments.choose_vectorization("auto", 10, environments.ASYNC_MIN_ENV_STEPS) == "async"
    assert environments.choose_vectorization("auto", 10, environments.ASYNC_MIN_ENV_STEPS - 1) == "sync"
    assert environments.choose_vectorization("auto", 1, 10 ** 6) == "sync"
    assert environments.choose_vectorization("auto", 10, None) == "sync"
    assert environments.choose_vectorization("async", 1, 1) == "async"
    with pytest.raises(ValueError, match="vectorization='threads'"):
        environments.choose_vectorization("threads", 2, 1)


def test_real_cube_env_sync_and_async_agree(tiny_agent):
    """A tiny agent in OGBench cube-single task 2: two short episodes, the same numbers in one process
    and in worker processes (forkserver), and actions inside [-1, 1]."""
    agent = tiny_agent(28, 5, hidden=(8,))
    policy = policies.make_agent_policy(agent, euler_steps=2, num_samples=2)
    kwargs = dict(env="cube-single-play", task=2, episodes=2, seed=0, num_envs=2, episode_length=8, record=True)
    try:
        sync = rollouts.evaluate_policy(policy, vectorization="sync", **kwargs)
        async_ = rollouts.evaluate_policy(policy, vectorization="async", **kwargs)
    finally:
        environments.close_environments()
    assert sync["vectorization"] == "sync" and async_["vectorization"] == "async"
    np.testing.assert_array_equal(sync["lengths"], [8, 8])
    np.testing.assert_array_equal(sync["returns"], async_["returns"])
    np.testing.assert_array_equal(sync["successes"], async_["successes"])
    for a, b in zip(sync["trajectories"], async_["trajectories"]):
        assert a["observations"].shape == (8, 28) and a["observations"].dtype == np.float32
        np.testing.assert_array_equal(a["observations"], b["observations"])
        assert np.all(np.abs(a["actions"]) <= 1.0)
        # cube-single: reward of a state is 0 (cube on target) or -1
        assert set(np.unique(a["state_rewards"]).tolist()) <= {-1.0, 0.0}
