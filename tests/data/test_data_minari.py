"""Minari datasets: converted transition by transition, and generate --format=minari round trips."""

import dataclasses
import os

import gymnasium
import minari
import numpy as np
import pytest
from minari.data_collector import EpisodeBuffer

from data import minari_source, reader
from data.errors import DataError
from pipeline import preprocess as preprocess_module
from pipeline.generate import generate_play_data
from pipeline.preprocess import preprocess

OBS_DIM, ACTION_DIM = 3, 2


def _episodes(rng, lengths, terminated_last=(False,)):
    episodes = []
    for index, steps in enumerate(lengths):
        terminations = np.zeros(steps, bool)
        terminations[-1] = terminated_last[index % len(terminated_last)]
        truncations = np.zeros(steps, bool)
        truncations[-1] = not terminations[-1]
        episodes.append(EpisodeBuffer(
            id=index, observations=rng.normal(size=(steps + 1, OBS_DIM)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(steps, ACTION_DIM)).astype(np.float32),
            rewards=rng.normal(size=steps), terminations=terminations, truncations=truncations))
    return episodes


def _create(dataset_id, episodes):
    minari.create_dataset_from_buffers(
        dataset_id, episodes, algorithm_name="random",
        observation_space=gymnasium.spaces.Box(-np.inf, np.inf, (OBS_DIM,), np.float32),
        action_space=gymnasium.spaces.Box(-1, 1, (ACTION_DIM,), np.float32))


def _expected(episodes):
    """Transitions computed by hand from the buffers."""
    parts = []
    for episode in episodes:
        ends = np.zeros(len(episode.actions), np.float32)
        ends[-1] = 1
        parts.append({"observations": episode.observations[:-1], "next_observations": episode.observations[1:],
                      "actions": np.clip(episode.actions, -1 + 1e-5, 1 - 1e-5),
                      "rewards/default": episode.rewards.astype(np.float32),
                      "masks/default": 1 - episode.terminations.astype(np.float32), "terminals": ends})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_minari_dataset_converts_transition_by_transition(minari_root, tmp_path):
    rng = np.random.default_rng(0)
    train, val = _episodes(rng, [5, 9, 4], terminated_last=(True, False)), _episodes(rng, [6])
    _create("test/random-v0", train)
    _create("test/random-val-v0", val)
    metadata = preprocess("minari:test/random-v0", str(tmp_path / "out"), num_shards=2)
    assert metadata["reward_keys"] == ["default"] and metadata["env"] is None
    assert metadata["counts"] == {"train": 18, "val": 6} and metadata["episodes"] == {"train": 3, "val": 1}
    for split, episodes in (("train", train), ("val", val)):
        stored = reader.read_split(tmp_path / "out", split)
        for key, expected in _expected(episodes).items():
            np.testing.assert_array_equal(stored[key], expected.astype(np.float32), err_msg=f"{split} {key}")
    batch = next(iter(reader.make_dataset(tmp_path / "out", task="default", batch_size=4)))
    assert batch["observations"].shape == (4, OBS_DIM)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_without_a_val_dataset_the_val_split_is_empty(minari_root, tmp_path):
    _create("solo-v1", _episodes(np.random.default_rng(1), [7]))
    metadata = preprocess("minari:solo-v1", str(tmp_path / "out"))
    assert metadata["counts"] == {"train": 7, "val": 0}
    with pytest.raises(DataError, match="split 'val' has no transitions"):
        reader.make_dataset(tmp_path / "out", task="default", split="val", batch_size=2)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_bad_minari_input_fails_clearly(minari_root, tmp_path):
    with pytest.raises(DataError, match=r"minari:test/absent-v0: no local Minari dataset .*MINARI_DATASETS_PATH="):
        preprocess("minari:test/absent-v0", str(tmp_path / "out"))
    with pytest.raises(DataError, match="not a Minari dataset id"):
        preprocess("minari:no version", str(tmp_path / "out"))
    episodes = _episodes(np.random.default_rng(2), [5, 5])
    episodes[1].observations[3, 1] = np.nan
    _create("test/bad-v0", episodes)
    with pytest.raises(DataError, match=r"minari:test/bad-v0 episode 1: field 'observations' row 3 column 1 is nan"):
        preprocess("minari:test/bad-v0", str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_generated_minari_play_data_converts_like_the_npz_files(minari_root, cube_tfrecord_dir, tmp_path):
    train_dir, val_dir = generate_play_data(env="cube-single", episodes=3, val_episodes=1, episode_length=101,
                                            seed=0, data_format="minari", progress=False)
    assert train_dir == str(minari_root / "ogbench" / "cube-single-play-v0")
    dataset = minari.load_dataset("ogbench/cube-single-play-v0")
    assert dataset.total_episodes == 3 and dataset.total_steps == 300
    metadata = preprocess("minari:ogbench/cube-single-play-v0", str(tmp_path / "out"))
    assert metadata["env"] == "cube-single-play"
    assert metadata["reward_keys"] == ["task1", "task2", "task3", "task4", "task5", "default"]
    assert metadata["counts"] == {"train": 300, "val": 100}
    for split in ("train", "val"):
        from_minari = reader.read_split(tmp_path / "out", split)
        from_npz = reader.read_split(cube_tfrecord_dir, split)
        for key, expected in from_npz.items():
            np.testing.assert_array_equal(from_minari[key], expected, err_msg=f"{split} {key}")


def _replace_field(dataset_id, field, change):
    """Rewrites one field of episode 0 in a dataset's HDF5 file (None deletes it)."""
    import h5py
    with h5py.File(minari_source.data_path(dataset_id) + "/main_data.hdf5", "a") as data:
        episode = data["episode_0"]
        value = episode[field][()]
        del episode[field]
        if change is not None:
            episode[field] = change(value)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("field", ["observations", "actions", "rewards", "terminations", "truncations"])
@pytest.mark.parametrize("change, fragment", [
    (lambda v: v.astype("S8"), "has dtype |S8, expected real numbers"),
    (lambda v: v.astype(np.complex64), "has dtype complex64, expected real numbers"),
    (lambda v: v[..., None], "has shape"),
    (lambda v: v[:1], "has shape"),
    (None, "doesn't exist"),
])
def test_odd_minari_fields_fail_in_one_line(minari_root, tmp_path, field, change, fragment):
    _create("test/odd-v0", _episodes(np.random.default_rng(3), [4, 5]))
    _replace_field("test/odd-v0", field, change)
    with pytest.raises(SystemExit) as caught:
        preprocess_module.main(["--input=minari:test/odd-v0", f"--output={tmp_path / 'out'}"])
    message = str(caught.value.code)
    assert message.startswith("preprocess.py: minari:test/odd-v0") and "\n" not in message, message
    assert f"'{field}'" in message and fragment in message, message
    assert not [name for name in os.listdir(tmp_path) if "out" in name]


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_truncated_minari_file_and_env_of_another_size_fail_in_one_line(minari_root, tmp_path):
    _create("test/cut-v0", _episodes(np.random.default_rng(4), [3]))
    data_file = minari_source.data_path("test/cut-v0") + "/main_data.hdf5"
    content = open(data_file, "rb").read()
    open(data_file, "wb").write(content[: len(content) // 2])
    with pytest.raises(DataError, match=r"minari:test/cut-v0: cannot read episodes 0\.\.0 \(OSError: .*truncated"):
        preprocess("minari:test/cut-v0", str(tmp_path / "out"))
    episodes = _episodes(np.random.default_rng(5), [3])
    episodes[0] = dataclasses.replace(episodes[0], infos={"qpos": np.zeros((4, 21), np.float32)})
    _create("test/small-v0", episodes)
    with pytest.raises(DataError, match=r"minari:test/small-v0: field 'observations' has width 3, but env "
                                        r"cube-single-play records 28"):
        preprocess("minari:test/small-v0", str(tmp_path / "out"), env="cube-single")
    assert not (tmp_path / "out").exists()
