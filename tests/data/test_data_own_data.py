"""Own offline data end to end: episodes recorded in gymnasium envs (data/gym_recording.py), written
through minari's writer and as D4RL-style npz, converted by pipeline/preprocess.py; every stored
transition is checked against the recorded episodes, read back from the TFRecords with
tf.train.Example alone."""

import json

import gymnasium
import numpy as np
import pytest
import tensorflow as tf

from data import gym_recording, schema
from data.errors import DataError
from pipeline.preprocess import preprocess

EPISODES = 6


@pytest.fixture(scope="module")
def recorded():
    """env id -> episodes: Pendulum (time limit only) and InvertedPendulum (terminations)."""
    found = {"Pendulum-v1": gym_recording.record("Pendulum-v1", EPISODES, seed=11, max_steps=30),
             "InvertedPendulum-v5": gym_recording.record("InvertedPendulum-v5", EPISODES, seed=5, max_steps=40)}
    assert any(e.terminations.any() for e in found["InvertedPendulum-v5"])  # masks are exercised
    assert any(e.truncations.any() for e in found["InvertedPendulum-v5"])
    return found


def _read_split(directory, split) -> dict:
    """feature -> [rows, ...] float32, the split's shards in metadata order, parsed with tf.train.Example."""
    metadata = json.loads((directory / schema.METADATA_FILE).read_text())
    rows = {}
    for shard in metadata["shards"][split]:
        for record in tf.data.TFRecordDataset(str(directory / shard["file"])).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            for name, feature in example.features.feature.items():
                rows.setdefault(name, []).append(np.asarray(feature.float_list.value, np.float32))
    return {name: np.stack(values) for name, values in rows.items()}


def _expected(episodes, env_id, next_observations=True) -> dict:
    """The transitions the data semantics promise, computed from the recorded episodes."""
    space = gymnasium.make(env_id).action_space
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    rows = {name: [] for name in ("observations", "actions", "next_observations", "terminals", "rewards/default",
                                  "masks/default")}
    for episode in episodes:
        steps = episode.steps
        if not next_observations and not episode.terminations[-1]:
            steps -= 1  # the truncated last step has no recorded next state: dropped
        for t in range(steps):
            following = episode.observations[t + 1]
            if not next_observations and t == episode.steps - 1:
                following = episode.observations[t]  # terminal row without next state: its own state
            rows["observations"].append(episode.observations[t])
            rows["actions"].append(np.clip(2 * (episode.actions[t] - low) / (high - low) - 1,
                                           -schema.ACTION_CLIP, schema.ACTION_CLIP))
            rows["next_observations"].append(following)
            rows["terminals"].append([float(t == steps - 1)])
            rows["rewards/default"].append([episode.rewards[t]])
            rows["masks/default"].append([0.0 if episode.terminations[t] else 1.0])
    return {name: np.asarray(values, np.float32) for name, values in rows.items()}


def _check_dataset(directory, episodes, env_id, next_observations=True, split="train"):
    stored = _read_split(directory, split)
    expected = _expected(episodes, env_id, next_observations)
    assert sorted(stored) == sorted(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(stored[name], values, rtol=0, atol=1e-6, err_msg=name)
    metadata = json.loads((directory / schema.METADATA_FILE).read_text())
    space = gymnasium.make(env_id).action_space
    assert metadata["action_bounds"] == {"low": space.low.tolist(), "high": space.high.tolist()}
    assert metadata["reward_keys"] == ["default"]
    returns = [e.episode_return for e in episodes]
    summary = metadata["dataset_returns"][split]
    assert summary["episodes"] == len(episodes)
    assert summary["mean"] == pytest.approx(np.mean(returns)) and summary["std"] == pytest.approx(np.std(returns))
    assert summary["min"] == pytest.approx(min(returns)) and summary["max"] == pytest.approx(max(returns))
    # Normalisation statistics: per-dimension mean/std of the stored observations.
    observations = expected["observations"].astype(np.float64)
    statistics = metadata["statistics"][split]["observations"]
    np.testing.assert_allclose(statistics["mean"], observations.mean(axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(statistics["std"], observations.std(axis=0), rtol=1e-5, atol=1e-6)
    return metadata


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "InvertedPendulum-v5"])
def test_minari_dataset_converts_every_transition(recorded, env_id, minari_root, tmp_path):
    episodes = recorded[env_id]
    gym_recording.write_minari("test/own-v0", episodes, env_id, ref_min_score=-5.0, ref_max_score=7.5)
    gym_recording.write_minari("test/own-val-v0", episodes[:2], env_id)
    metadata = preprocess("minari:test/own-v0", str(tmp_path / "out"), num_shards=2)
    _check_dataset(tmp_path / "out", episodes, env_id)
    _check_dataset(tmp_path / "out", episodes[:2], env_id, split="val")
    assert metadata["eval_env"] == env_id  # the env spec's id string, nothing else of it
    assert (metadata["ref_min_score"], metadata["ref_max_score"]) == (-5.0, 7.5)
    assert metadata["env"] is None


@pytest.mark.parametrize("env_id", ["Pendulum-v1", "InvertedPendulum-v5"])
@pytest.mark.parametrize("next_observations", [True, False])
def test_npz_converts_every_transition(recorded, env_id, next_observations, tmp_path):
    episodes = recorded[env_id]
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), episodes, next_observations)
    gym_recording.write_npz(str(tmp_path / "own-val.npz"), episodes[3:], next_observations)
    metadata = preprocess(f"npz:{path}", str(tmp_path / "out"), num_shards=2, eval_env=env_id)
    _check_dataset(tmp_path / "out", episodes, env_id, next_observations)
    _check_dataset(tmp_path / "out", episodes[3:], env_id, next_observations, split="val")
    assert metadata["eval_env"] == env_id
    dropped = 0 if next_observations else sum(not e.terminations[-1] for e in episodes)
    assert metadata["counts"]["train"] == sum(e.steps for e in episodes) - dropped


def test_npz_bounds_from_flags_map_actions_and_without_bounds_actions_must_be_in_range(recorded, tmp_path):
    episodes = recorded["Pendulum-v1"]
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), episodes)
    preprocess(f"npz:{path}", str(tmp_path / "out"), action_low="-2", action_high="2")
    _check_dataset(tmp_path / "out", episodes, "Pendulum-v1")
    row = int(np.flatnonzero(np.abs(np.concatenate([e.actions for e in episodes])[:, 0]) > 1.0001)[0])
    value = np.concatenate([e.actions for e in episodes])[row, 0]
    with pytest.raises(DataError, match=rf"{path}: field 'actions' row {row} column 0 is {value}, outside \[-1, 1\], "
                                        rf"and no action bounds were given: pass the env's finite bounds with "
                                        rf"--action_low"):
        preprocess(f"npz:{path}", str(tmp_path / "bare"))


def test_dataset_values_outside_the_bounds_are_refused(recorded, tmp_path):
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), recorded["Pendulum-v1"])
    with pytest.raises(DataError, match=r"field 'actions' row \d+ column 0 is -?\d.*outside the action bounds "
                                        r"\[-1.0, 1.0\]"):
        preprocess(f"npz:{path}", str(tmp_path / "out"), action_low="-1", action_high="1")


def test_returns_of_transition_sources_split_at_terminals():
    """TF-Agents hands over transitions, not episodes: their returns are summed between terminals."""
    from data import sources

    columns = {"rewards/default": np.array([1, 2, 3, 4, 5], np.float32),
               "terminals": np.array([0, 1, 0, 0, 1], np.float32)}
    assert sources._returns_of_written(columns) == [3.0, 12.0]
