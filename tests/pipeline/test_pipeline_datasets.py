"""pipeline/datasets.py: a prepared dataset must fit the run before any agent is built."""
import pytest

from data.errors import DataError


def test_data_without_the_tasks_rewards_is_refused(tmp_path):
    from pipeline import datasets
    from pipeline.config import make_run_config

    data = make_run_config("cube", overrides=["task=3"]).data
    with pytest.raises(DataError) as error:  # a Minari dataset's own rewards only
        datasets.check_dataset_matches(data, tmp_path, {"reward_keys": ["default"], "env": None})
    assert f"{tmp_path / 'metadata.json'}: field 'reward_keys' is ['default'], with no 'task3'" in str(error.value)
    assert "preprocess.py --env=FAMILY" in str(error.value)
    with pytest.raises(DataError, match=r"pick --task from \[1, 2\]"):
        datasets.check_dataset_matches(data, tmp_path, {"reward_keys": ["task1", "task2"], "env": "cube-single-play"})
    datasets.check_dataset_matches(data, tmp_path, {"reward_keys": ["task3"], "env": "cube-single-play"})


def test_given_data_of_another_env_is_refused(cube_tfrecord_dir):
    from pipeline import datasets
    from pipeline.config import make_run_config

    with pytest.raises(DataError, match=r"field 'env' is 'cube-single-play' but this run's env is 'scene-play'"):
        datasets.ensure_dataset(make_run_config("scene").data, str(cube_tfrecord_dir))
    assert datasets.ensure_dataset(make_run_config("cube").data, str(cube_tfrecord_dir)) == cube_tfrecord_dir


def test_a_prepared_dataset_under_artifacts_is_used_as_it_is(tmp_path):
    from pipeline import datasets
    from pipeline.config import make_run_config

    prepared = tmp_path / "data" / "cube-single-play-v0"
    prepared.mkdir(parents=True)
    (prepared / "metadata.json").write_text("{}")
    assert datasets.ensure_dataset(make_run_config("cube").data, artifacts=tmp_path) == prepared


def test_another_episode_count_never_takes_the_paper_size_folders(tmp_path):
    from pipeline import datasets
    from pipeline.config import make_run_config

    data = make_run_config("cube").data
    paper = tmp_path / "data" / "cube-single-play-v0"
    paper.mkdir(parents=True)
    (paper / "metadata.json").write_text("{}")
    assert datasets.ensure_dataset(data, generate_episodes=1000, artifacts=tmp_path) == paper
    # a 300-episode run does not train on the paper-size data, nor the paper run on its data later
    with pytest.raises(DataError, match="no prepared data in .*cube-single-play-v0-300ep"):
        datasets.ensure_dataset(data, generate_episodes=300, artifacts=tmp_path, prepare=False)
    small = tmp_path / "data" / "cube-single-play-v0-300ep"
    small.mkdir()
    (small / "metadata.json").write_text("{}")
    assert datasets.ensure_dataset(data, generate_episodes=300, artifacts=tmp_path) == small
    assert datasets.ensure_dataset(data, artifacts=tmp_path) == paper


def test_local_beam_args_use_every_core():
    import os
    from pipeline import datasets

    assert datasets.local_beam_args() == [f"--direct_num_workers={os.cpu_count() or 1}",
                                          "--direct_running_mode=multi_processing"]
