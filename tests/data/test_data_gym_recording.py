"""data/gym_recording.py: seeded mixed-quality episodes in gymnasium envs, written for Minari and as npz."""

import gymnasium
import minari
import numpy as np
import pytest

from data import gym_recording
from data.errors import DataError


def test_episodes_are_seeded_consistent_and_replay_in_the_env():
    episodes = gym_recording.record("Pendulum-v1", 3, seed=7, max_steps=100)
    again = gym_recording.record("Pendulum-v1", 3, seed=7, max_steps=100)
    for first, second in zip(episodes, again):
        np.testing.assert_array_equal(first.observations, second.observations)
        np.testing.assert_array_equal(first.actions, second.actions)
    assert [e.quality for e in episodes] == [0.0, 0.5, 1.0]
    env = gymnasium.make("Pendulum-v1", max_episode_steps=100)
    for index, episode in enumerate(episodes):
        assert episode.observations.shape == (101, 3) and episode.actions.shape == (100, 1)
        assert not episode.terminations.any() and episode.truncations.tolist() == [False] * 99 + [True]
        assert np.all(np.abs(episode.actions) <= 2.0)
        # Replaying the recorded actions from the recorded reset seed reproduces every step.
        observation, _ = env.reset(seed=gym_recording._episode_seed(7, index))
        np.testing.assert_array_equal(observation, episode.observations[0])
        for t, action in enumerate(episode.actions):
            observation, reward, *_ = env.step(action)
            np.testing.assert_array_equal(observation, episode.observations[t + 1])
            assert reward == episode.rewards[t]
    # Quality matters: the controller swings up and holds the pendulum upright (reward ~0 = upright,
    # still) by the end; random actions leave it swinging (reward -(angle^2 + ...) far below 0).
    assert episodes[2].rewards[-20:].min() > -0.01
    assert episodes[0].rewards[-20:].mean() < -1.0


def test_inverted_pendulum_terminates_when_the_pole_falls_and_the_controller_balances():
    episodes = gym_recording.record("InvertedPendulum-v5", 4, seed=0, max_steps=60)
    worst, best = episodes[0], episodes[-1]
    assert worst.terminations[-1] and not worst.truncations.any() and worst.steps < 60
    assert best.steps == 60 and best.truncations[-1] and not best.terminations.any()
    assert best.episode_return == 60.0
    for episode in episodes:
        assert episode.terminations[:-1].sum() == 0 and episode.truncations[:-1].sum() == 0


def test_npz_holds_the_d4rl_layout(tmp_path):
    episodes = gym_recording.record("InvertedPendulum-v5", 3, seed=1, max_steps=30)
    path = gym_recording.write_npz(str(tmp_path / "ip.npz"), episodes)
    with np.load(path, allow_pickle=False) as data:
        assert sorted(data.files) == ["actions", "next_observations", "observations", "rewards", "terminals",
                                      "timeouts"]
        steps = sum(e.steps for e in episodes)
        assert len(data["observations"]) == steps
        np.testing.assert_array_equal(data["observations"][:episodes[0].steps], episodes[0].observations[:-1])
        np.testing.assert_array_equal(data["next_observations"][:episodes[0].steps], episodes[0].observations[1:])
        assert data["terminals"].sum() == sum(e.terminations.sum() for e in episodes)
        assert data["timeouts"].sum() == sum(e.truncations.sum() for e in episodes)
        assert data["terminals"].sum() + data["timeouts"].sum() == 3
    gym_recording.write_npz(str(tmp_path / "bare.npz"), episodes, next_observations=False)
    with np.load(tmp_path / "bare.npz") as data:
        assert "next_observations" not in data.files


def test_minari_writer_round_trips(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    episodes = gym_recording.record("Pendulum-v1", 2, seed=3, max_steps=20)
    gym_recording.write_minari("test/pendulum-mixed-v0", episodes, "Pendulum-v1", max_steps=20,
                               ref_min_score=-1000.0, ref_max_score=0.0)
    dataset = minari.load_dataset("test/pendulum-mixed-v0")
    assert dataset.spec.env_spec.id == "Pendulum-v1" and dataset.spec.env_spec.max_episode_steps == 20
    assert dataset.action_space == gymnasium.spaces.Box(-2.0, 2.0, (1,), np.float32)
    for recorded, stored in zip(episodes, dataset.iterate_episodes()):
        np.testing.assert_array_equal(stored.observations, recorded.observations)
        np.testing.assert_array_equal(stored.actions, recorded.actions)
        np.testing.assert_array_equal(stored.rewards, recorded.rewards)
        np.testing.assert_array_equal(stored.truncations, recorded.truncations)


def test_unknown_env_is_refused():
    with pytest.raises(DataError, match=r"--env=CartPole-v1: no scripted policy"):
        gym_recording.record("CartPole-v1", 1)
