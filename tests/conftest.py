"""Session-wide fixtures: one tiny cube-single dataset, generated and converted once.

    cube_npz_dir       directory with cube-single-play-v0.npz (3 episodes) and
                       cube-single-play-v0-val.npz (1 episode), 101 rows per episode,
                       made by pipeline/generate.py with seed 0: 300 + 100 transitions.
    cube_tfrecord_dir  that data converted by pipeline/preprocess.py (2 train shards, 1 val):
                       reward keys task1..task5, obs_dim 28, action_dim 5.

Both are read-only for tests: copy them before changing anything.
"""

import os
import pathlib

import pytest

# TensorFlow before MuJoCo in any process that uses both (see the common brief).
import tensorflow  # noqa: F401

def pytest_configure(config):
    # MuJoCo's GLFW import warns when there is no display; nothing here renders.
    config.addinivalue_line("filterwarnings", "ignore:.*DISPLAY environment variable is missing.*")


CUBE_TRAIN_EPISODES = 3
CUBE_VAL_EPISODES = 1
CUBE_EPISODE_LENGTH = 101
CUBE_DATASET_FILE = "cube-single-play-v0.npz"


@pytest.fixture(scope="session")
def cube_npz_dir(tmp_path_factory) -> pathlib.Path:
    from pipeline.generate import generate_play_data

    output = tmp_path_factory.mktemp("cube_npz")
    generate_play_data(env="cube-single", episodes=CUBE_TRAIN_EPISODES, val_episodes=CUBE_VAL_EPISODES,
                       episode_length=CUBE_EPISODE_LENGTH, output_dir=str(output), seed=0, progress=False)
    return output


@pytest.fixture(scope="session")
def cube_tfrecord_dir(cube_npz_dir, tmp_path_factory) -> pathlib.Path:
    from pipeline.preprocess import preprocess

    output = tmp_path_factory.mktemp("cube_tfrecord") / "dataset"
    preprocess(f"ogbench:{os.path.join(cube_npz_dir, CUBE_DATASET_FILE)}", str(output), num_shards=2)
    return output


# Datasets of a source's own rewards: episodes of data/gym_recording.py's mixed-quality scripted policy
# in a gymnasium env, converted by pipeline/preprocess.py from a Minari dataset.
PENDULUM_ID = "Pendulum-v1"
REF_SCORES = {"Pendulum-v1": (-1500.0, -150.0), "InvertedPendulum-v5": (0.0, 1000.0)}  # written into the metadata


def write_recorded_dataset(env_id, output, minari_root, train_episodes: int, val_episodes: int = 2, seed: int = 0,
                           max_steps=None) -> dict:
    """Records `env_id` episodes (env units) with data.gym_recording, writes them through minari's
    own writer with the env's spec and REF_SCORES, converts them with the Beam job to output/
    (prepared TFRecords: actions mapped to [-1, 1], bounds, eval env, scores and returns in the
    metadata) and returns {"metadata", "low", "high", "train": episodes, "val": episodes}.
    """
    import json

    import gymnasium
    import numpy as np

    from data import gym_recording
    from pipeline.preprocess import preprocess

    env = gymnasium.make(env_id)
    low, high = env.action_space.low.astype(np.float64), env.action_space.high.astype(np.float64)
    env.close()
    splits = {"train": gym_recording.record(env_id, train_episodes, seed, max_steps),
              "val": gym_recording.record(env_id, val_episodes, seed + 1_000_003, max_steps)}
    names = {"train": "sorl/recorded-v0", "val": "sorl/recorded-val-v0"}
    for split, episodes in splits.items():
        gym_recording.write_minari(names[split], episodes, env_id, root=str(minari_root), max_steps=max_steps,
                                   ref_min_score=REF_SCORES[env_id][0], ref_max_score=REF_SCORES[env_id][1])
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(minari_root)
    try:
        preprocess(f"minari:{names['train']}", str(output))
    finally:
        os.environ.pop("MINARI_DATASETS_PATH") if previous is None else os.environ.update(MINARI_DATASETS_PATH=previous)
    metadata = json.loads((pathlib.Path(output) / "metadata.json").read_text())
    return {"metadata": metadata, "low": low, "high": high, **splits}


@pytest.fixture(scope="session")
def pendulum_dataset(tmp_path_factory) -> dict:
    """write_recorded_dataset's result for 6 train and 2 val Pendulum-v1 episodes of 60 steps, plus
    "dir": the prepared TFRecords (read-only for tests)."""
    root = tmp_path_factory.mktemp("pendulum")
    result = write_recorded_dataset(PENDULUM_ID, root / "pendulum-mixed", root / "minari", train_episodes=6,
                                    val_episodes=2, max_steps=60)
    return dict(result, dir=root / "pendulum-mixed")


@pytest.fixture(scope="session")
def record_dataset():
    """write_recorded_dataset(env_id, output, minari_root, train_episodes, ...) for tests that need their own."""
    return write_recorded_dataset
