"""pipeline/rollouts.py: episodes in a vector env, post-step success, seeding, recording."""

import math

import numpy as np
import pytest
import tensorflow as tf  # noqa: F401  (TF before MuJoCo)

from models.noise import noise_seeds
from pipeline import rollouts


def constant_policy(value):
    return lambda observations: np.full((len(observations), 1), value, np.float32)


class NoisyPolicy:
    """A row-seeded numpy policy: action = -x/4 + 0.1 * noise(seed of the row)."""

    row_seeded = True

    def __call__(self, observations, seeds):
        noise = np.array([np.random.default_rng(int(s)).normal() for s in seeds], np.float32)
        return (-0.25 * observations[:, :1] + 0.1 * noise[:, None]).astype(np.float32)


def test_success_is_read_after_the_last_step(line_env):
    # x: 0.2, 0.4, 0.6, 0.8, 1.0 -> the goal is reached by the last step (post-step success);
    # before the last step (pre-step) it was not.
    result = rollouts.evaluate_policy(constant_policy(0.2), line_env, None, episodes=2, seed=0,
                                      episode_length=5, vectorization="sync")
    np.testing.assert_array_equal(result["successes"], [1.0, 1.0])
    assert result["success_rate"] == 1.0
    np.testing.assert_array_equal(result["lengths"], [5, 5])
    np.testing.assert_allclose(result["returns"], [-4.0, -4.0])  # rewarded 0 on the last step only


def test_success_is_the_state_at_the_end_not_ever(line_env):
    # x: 0.5, 1.0 (goal), 1.5, 2.0, 2.5: passed through the goal, not there at the end.
    result = rollouts.evaluate_policy(constant_policy(0.5), line_env, None, episodes=3, seed=0,
                                      episode_length=5, num_envs=2, vectorization="sync")
    np.testing.assert_array_equal(result["successes"], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(result["returns"], [-4.0] * 3)


def test_episodes_that_terminate_at_the_goal_end_early_and_count(line_env):
    env = lambda: line_env(terminate_at_goal=True)  # noqa: E731
    result = rollouts.evaluate_policy(constant_policy(0.5), env, None, episodes=3, seed=0,
                                      episode_length=5, num_envs=2, vectorization="sync")
    np.testing.assert_array_equal(result["successes"], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(result["lengths"], [2, 2, 2])
    assert result["env_steps"] == 6


def test_same_seed_same_numbers_whatever_the_batching(line_env):
    env = lambda: line_env(jitter=0.3)  # noqa: E731
    kwargs = dict(episodes=7, episode_length=6, vectorization="sync", record=True)
    first = rollouts.evaluate_policy(NoisyPolicy(), env, None, seed=5, num_envs=3, **kwargs)
    again = rollouts.evaluate_policy(NoisyPolicy(), env, None, seed=5, num_envs=3, **kwargs)
    one_at_a_time = rollouts.evaluate_policy(NoisyPolicy(), env, None, seed=5, num_envs=1, **kwargs)
    other_seed = rollouts.evaluate_policy(NoisyPolicy(), env, None, seed=6, num_envs=3, **kwargs)
    for result in (again, one_at_a_time):
        for key in ("successes", "returns", "lengths"):
            np.testing.assert_array_equal(result[key], first[key])
        for a, b in zip(result["trajectories"], first["trajectories"]):
            np.testing.assert_array_equal(a["observations"], b["observations"])
            np.testing.assert_array_equal(a["actions"], b["actions"])
    start_states = lambda r: [tr["observations"][0, 0] for tr in r["trajectories"]]  # noqa: E731
    assert len(set(start_states(first))) == 7, "every episode starts from its own seeded state"
    assert start_states(other_seed) != start_states(first)


def test_recorded_trajectories_and_state_rewards(line_env):
    # state_rewards: the reward of the state each step starts from (what the offline data uses).
    # LineEnv has no compute_reward, so the start state's is unknown (NaN) and the others are the
    # previous step's post-step reward.
    result = rollouts.evaluate_policy(constant_policy(0.2), line_env, None, episodes=1, seed=0,
                                      episode_length=5, vectorization="sync", record=True)
    trajectory = result["trajectories"][0]
    np.testing.assert_allclose(trajectory["observations"][:, 0], [0.0, 0.2, 0.4, 0.6, 0.8], atol=1e-6)
    np.testing.assert_allclose(trajectory["actions"][:, 0], [0.2] * 5)
    np.testing.assert_allclose(trajectory["rewards"], [-1, -1, -1, -1, 0])
    assert math.isnan(trajectory["state_rewards"][0])
    np.testing.assert_allclose(trajectory["state_rewards"][1:], [-1, -1, -1, -1])
    assert trajectory["success"] == 1.0


def test_bad_policy_output_is_a_clear_error(line_env):
    with pytest.raises(ValueError, match="policy returned actions of shape"):
        rollouts.evaluate_policy(lambda o: np.zeros((len(o), 3)), line_env, None, episodes=1, seed=0,
                                 episode_length=2, vectorization="sync")


def test_row_seeded_policy_gets_the_noise_seeds_of_its_rows(line_env):
    """Row seeds are models.noise.noise_seeds(seed, episode, step) of the rows in flight."""
    calls = []

    class Recorder:
        row_seeded = True

        def __call__(self, observations, seeds):
            calls.append((observations[:, 1].astype(int).tolist(), np.asarray(seeds).tolist()))
            return np.zeros((len(observations), 1), np.float32)

    rollouts.evaluate_policy(Recorder(), line_env, None, episodes=3, seed=9, num_envs=2, episode_length=2,
                             vectorization="sync")
    # episodes 0 and 1 in flight for steps 0 and 1, then episode 2 alone
    steps_and_episodes = [([0, 0], [0, 1]), ([1, 1], [0, 1]), ([0], [2]), ([1], [2])]
    for (steps, seeds), (expected_steps, episodes) in zip(calls, steps_and_episodes):
        assert steps == expected_steps
        assert seeds == noise_seeds(9, episodes, expected_steps).tolist()
    assert len(calls) == 4


def test_noise_seeds_are_per_row_and_fixed():
    seeds = noise_seeds(3, [0, 0, 1], [0, 1, 0])
    assert seeds.dtype == np.int64 and np.all(seeds >= 0) and len(set(seeds.tolist())) == 3
    np.testing.assert_array_equal(seeds, noise_seeds(3, [0, 0, 1], [0, 1, 0]))
    np.testing.assert_array_equal(seeds[2:], noise_seeds(3, [1], [0]))
    assert noise_seeds(4, [0], [0])[0] != seeds[0]
