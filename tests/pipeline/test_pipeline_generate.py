"""pipeline/generate.py: OGBench-format play data, byte-identical per seed, any Beam runner mode."""

import hashlib
import os
import subprocess

import numpy as np
import ogbench
import pytest

from data import envs, files, ogbench_source, play_data
from data.errors import DataError
from pipeline import generate
from pipeline.generate import generate_play_data

TRAIN, VAL = "cube-single-play-v0.npz", "cube-single-play-v0-val.npz"
MULTI_PROCESSING = ("--direct_num_workers=2", "--direct_running_mode=multi_processing")


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_files_load_with_ogbench_load_dataset(cube_npz_dir):
    raw = np.load(cube_npz_dir / TRAIN)
    assert sorted(raw.files) == ["actions", "observations", "qpos", "qvel", "terminals"]
    assert raw["terminals"].dtype == bool and raw["observations"].dtype == np.float32
    np.testing.assert_array_equal(np.flatnonzero(raw["terminals"]), [100, 201, 302])  # 3 episodes x 101 rows
    train = ogbench.utils.load_dataset(str(cube_npz_dir / TRAIN), add_info=True)
    val = ogbench.utils.load_dataset(str(cube_npz_dir / VAL), add_info=True)
    assert train["observations"].shape == (300, 28) and train["actions"].shape == (300, 5)
    assert val["observations"].shape == (100, 28)
    assert train["qpos"].shape == (300, 21) and train["next_observations"].shape == (300, 28)
    # Validation episodes are other episodes than the training ones.
    assert not np.isin(val["observations"][:, 19], train["observations"][:, 19]).any()


def test_same_seed_same_bytes_also_with_multi_processing_workers(cube_npz_dir, tmp_path):
    train, val = generate_play_data(env="cube-single", episodes=3, val_episodes=1, episode_length=101,
                                    output_dir=str(tmp_path), seed=0, pipeline_args=MULTI_PROCESSING, progress=False)
    assert (train, val) == (str(tmp_path / TRAIN), str(tmp_path / VAL))
    assert _sha(train) == _sha(cube_npz_dir / TRAIN)
    assert _sha(val) == _sha(cube_npz_dir / VAL)
    assert sorted(os.listdir(tmp_path)) == [VAL, TRAIN]  # no scratch files left


def test_another_seed_gives_other_episodes(cube_npz_dir, tmp_path):
    train, _ = generate_play_data(env="cube-single", episodes=1, val_episodes=1, episode_length=101,
                                  output_dir=str(tmp_path), seed=1, progress=False)
    first_episode = np.load(cube_npz_dir / TRAIN)["observations"][:101]
    assert not np.array_equal(np.load(train)["observations"], first_episode)


def test_cli_defaults_are_ogbench_scale_and_default_episodes_have_1001_rows(monkeypatch):
    calls = {}
    monkeypatch.setattr(generate, "generate_play_data", lambda **kwargs: calls.update(kwargs) or ("a", "b"))
    generate.main(["--output=somewhere"])
    assert calls["episodes"] == 1000 and calls["episode_length"] == 1001 and calls["val_episodes"] is None
    assert generate.default_val_episodes(1000) == 100 and generate.default_val_episodes(3) == 1
    family = envs.resolve_env("cube-single")
    rows = play_data.rollout_episode(play_data.make_env(family, generate.DEFAULT_EPISODE_LENGTH), family,
                                     play_data.EpisodeTask("train", 0, 0))
    assert len(rows["observations"]) == 1001 and rows["terminals"].sum() == 1


def test_cube_double_generates_two_cube_data(tmp_path):
    train, val = generate_play_data(env="cube-double", episodes=1, val_episodes=1, episode_length=40,
                                    output_dir=str(tmp_path), progress=False)
    assert os.path.basename(train) == "cube-double-play-v0.npz"
    data = ogbench.utils.load_dataset(train, add_info=True)
    assert data["observations"].shape == (39, 37) and data["qpos"].shape == (39, 28)


def test_bad_requests_fail_before_any_work(cube_npz_dir, tmp_path):
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        generate_play_data(episodes=1, output_dir=str(cube_npz_dir), episode_length=20, progress=False)
    with pytest.raises(DataError, match=r"--env=scene-play: no play-data generator.*cube-single-play"):
        generate_play_data(env="scene", episodes=1, output_dir=str(tmp_path), progress=False)
    with pytest.raises(DataError, match="unknown env 'cube-9'"):
        generate_play_data(env="cube-9", episodes=1, output_dir=str(tmp_path), progress=False)
    with pytest.raises(DataError, match="--episode_length=1"):
        generate_play_data(episodes=1, episode_length=1, output_dir=str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == []


RESUME_DIR = ".generate-resume-cube-single-play-seed0-len101"


def test_a_failed_job_writes_no_outputs_and_its_rerun_gives_the_same_bytes(cube_npz_dir, tmp_path, monkeypatch):
    real_rollout = play_data.rollout_episode

    def crash_on_second_episode(env, family, task):
        if task.name == "train-000001":
            raise RuntimeError("simulated crash")
        return real_rollout(env, family, task)

    monkeypatch.setattr(play_data, "rollout_episode", crash_on_second_episode)
    with pytest.raises(RuntimeError, match="simulated crash"):
        generate_play_data(episodes=3, val_episodes=1, episode_length=101, output_dir=str(tmp_path), progress=False)
    assert set(os.listdir(tmp_path)) <= {RESUME_DIR}  # no output file, at most the episodes that finished
    monkeypatch.setattr(play_data, "rollout_episode", real_rollout)
    generate_play_data(episodes=3, val_episodes=1, episode_length=101, output_dir=str(tmp_path), progress=False)
    assert _sha(tmp_path / TRAIN) == _sha(cube_npz_dir / TRAIN) and _sha(tmp_path / VAL) == _sha(cube_npz_dir / VAL)
    assert sorted(os.listdir(tmp_path)) == [VAL, TRAIN]


def test_a_killed_job_resumes_rolling_out_only_the_missing_episodes(cube_npz_dir, tmp_path, monkeypatch):
    # What a kill leaves: one episode written whole, one cut short mid-write, the dead process's claim.
    family = envs.resolve_env("cube-single")
    episodes_dir = tmp_path / RESUME_DIR / "episodes"
    episodes_dir.mkdir(parents=True)
    first = play_data.rollout_episode(play_data.make_env(family, 101), family, play_data.EpisodeTask("train", 0, 0))
    (episodes_dir / "train-000000.npz").write_bytes(ogbench_source.npz_bytes(first, compress=False))
    (episodes_dir / ".train-000001.npz.0badc0de.tmp").write_bytes(b"half an episode")
    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / RESUME_DIR / "owner").write_text(f"{files.host_name()} {dead.pid}\n")

    rolled = []
    real_rollout = play_data.rollout_episode
    monkeypatch.setattr(play_data, "rollout_episode",
                        lambda env, family, task: rolled.append(task.name) or real_rollout(env, family, task))
    generate_play_data(episodes=3, val_episodes=1, episode_length=101, output_dir=str(tmp_path), progress=False)
    assert sorted(rolled) == ["train-000001", "train-000002", "val-000000"]
    assert _sha(tmp_path / TRAIN) == _sha(cube_npz_dir / TRAIN) and _sha(tmp_path / VAL) == _sha(cube_npz_dir / VAL)
    assert sorted(os.listdir(tmp_path)) == [VAL, TRAIN]


def test_a_second_job_on_the_same_episodes_is_refused_while_the_first_runs(tmp_path):
    (tmp_path / RESUME_DIR).mkdir()
    (tmp_path / RESUME_DIR / "owner").write_text(f"{files.host_name()} {os.getppid()}\n")  # a live process
    with pytest.raises(DataError, match=rf"another generate.py \(process {os.getppid()}\).*wait for it"):
        generate_play_data(episodes=1, val_episodes=1, episode_length=101, output_dir=str(tmp_path), progress=False)
    assert os.listdir(tmp_path) == [RESUME_DIR]


@pytest.mark.parametrize("argv, fragment", [
    (["--episodes=10000000000", "--episode_length=3"], "--episodes=10000000000 --episode_length=3: 30000000000 rows"),
    (["--episodes=1", "--val_episodes=1", "--episode_length=100000000000"], "--episodes=1 --episode_length=1000"),
    (["--episodes=1", "--val_episodes=200000000", "--episode_length=3"], "--val_episodes=200000000"),
    (["--episodes=0"], "--episodes=0 --val_episodes=1: need >= 1"),
    (["--episode_length=1"], "--episode_length=1: an episode needs at least 2 rows"),
])
def test_sizes_out_of_range_fail_in_one_line_before_any_work(tmp_path, argv, fragment):
    with pytest.raises(SystemExit) as caught:
        generate.main([*argv, f"--output={tmp_path / 'out'}", "--no_progress"])
    message = str(caught.value.code)
    assert message.startswith("generate.py: ") and "\n" not in message and fragment in message, message
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("output, data_format", [("afile", "npz"), ("afile/sub", "npz"), ("afile", "minari")])
def test_unwritable_outputs_fail_in_one_line(tmp_path, output, data_format):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as caught:
        generate.main(["--episodes=1", "--val_episodes=1", "--episode_length=3", f"--format={data_format}",
                              f"--output={tmp_path / output}", "--no_progress"])
    message = str(caught.value.code)
    assert message.startswith(f"generate.py: {tmp_path / output}: cannot write the output there"), message
    assert os.listdir(tmp_path) == ["afile"]
