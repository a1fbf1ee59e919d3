"""Training, evaluating and refusing runs on a dataset's own rewards (reward key 'default'), end to end
on Pendulum-v1 episodes recorded offline (tests/conftest.py's pendulum_dataset)."""

import csv
import json
import os

import numpy as np
import pytest

from data.errors import DataError
from pipeline import config as run_config
from pipeline import datasets, environments, evaluate, train

TINY = ["actor_hidden_dims=16,16", "critic_hidden_dims=16,16", "batch_size=32", "jit_compile=false",
        "log_every=10", "normalize_observations=true"]


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def own_run(pendulum_dataset, tmp_path_factory):
    """train.py --data=DIR (no --env) for 20 steps with 2 evaluation episodes, run from a scratch cwd so the
    default workdir lands there."""
    cwd = tmp_path_factory.mktemp("cwd")
    previous = os.getcwd()
    os.chdir(cwd)
    try:
        train.main([f"--data={pendulum_dataset['dir']}", "--steps=20", "--eval_every=10", "--eval_episodes=2",
                    "--seed=3", "--no_progress", "--no_export", *[f"--set={item}" for item in TINY]])
    finally:
        os.chdir(previous)
    return cwd / "artifacts" / "runs" / "pendulum-mixed-s3"


def test_train_without_env_trains_on_own_rewards_and_evaluates_in_the_datasets_env(own_run, pendulum_dataset):
    config, obs_dim, action_dim, info = run_config.load_run_config(own_run)
    assert (config.data.env, config.data.task, config.data.eval_env) == (None, None, "Pendulum-v1")
    assert config.data.reward_key == "default" and (obs_dim, action_dim) == (3, 1)
    # The generic preset: the paper's common settings (the AgentConfig defaults), with --set on top.
    assert (config.agent.q_loss_coef, config.agent.discount, config.agent.q_agg) == (10.0, 0.99, "mean")
    assert config.agent.actor_hidden_dims == (16, 16) and config.agent.normalize_observations
    assert info["dataset"]["action_bounds"] == {"low": [-2.0], "high": [2.0]}
    rows = read_csv(own_run / "eval.csv")
    assert list(rows[0]) == ["step", "steps_k", "num_samples", "mean_return", "return_std", "normalized_score",
                             "episodes", "seconds"]
    assert [(int(r["step"]), int(r["steps_k"])) for r in rows] == [(s, k) for s in (10, 20) for k in (1, 2, 4, 8)]
    low, high = pendulum_dataset["metadata"]["ref_min_score"], pendulum_dataset["metadata"]["ref_max_score"]
    for row in rows:
        mean = float(row["mean_return"])
        assert -16.3 * 200 <= mean <= 0.0  # Pendulum pays in [-16.3, 0] per step; its own 200-step episodes
        assert float(row["return_std"]) >= 0.0 and int(row["episodes"]) == 2
        assert float(row["normalized_score"]) == pytest.approx(100 * (mean - low) / (high - low))
    assert (own_run / "learning_curve.png").stat().st_size > 0


def test_the_policy_answers_in_env_units_from_raw_observations(own_run, pendulum_dataset):
    from models import checkpoints

    agent, _, step = checkpoints.load_agent(own_run)
    assert step == 20
    observations = np.stack([e.observations[0] for e in pendulum_dataset["train"]]).astype(np.float32)
    noise = np.random.default_rng(0).normal(size=(len(observations), 1, 1)).astype(np.float32)
    actions = agent.act(observations, euler_steps=4, noise=noise).numpy()
    # The same networks by hand: standardise with the training split's statistics, sample in [-1, 1], map to [-2, 2].
    stats = pendulum_dataset["metadata"]["statistics"]["train"]["observations"]
    inputs = (observations - np.array(stats["mean"])) / np.maximum(np.array(stats["std"]), 1e-3)
    from models import sampling

    unit = sampling.sample_actions(agent.actor, agent.critic, inputs.astype(np.float32), noise, 4, "mean").numpy()
    np.testing.assert_allclose(actions, -2.0 + (unit + 1.0) * 2.0, atol=1e-5)
    assert np.abs(unit).max() <= 1.0 and np.abs(actions).max() <= 2.0


def test_evaluate_py_on_an_own_reward_run(own_run, pendulum_dataset, tmp_path, capsys):
    evaluate.main([f"--workdir={own_run}", "--euler_steps=1,4", "--candidates=1,2", "--episodes=2",
                   f"--output={tmp_path}", "--no_progress"])
    rows = read_csv(tmp_path / "scaling.csv")
    assert [(r["task"], int(r["k"]), int(r["N"])) for r in rows] == [("", 1, 1), ("", 1, 2), ("", 4, 1), ("", 4, 2)]
    low, high = pendulum_dataset["metadata"]["ref_min_score"], pendulum_dataset["metadata"]["ref_max_score"]
    for row in rows:
        assert float(row["normalized_score"]) == pytest.approx(100 * (float(row["mean_return"]) - low) / (high - low),
                                                               rel=1e-5)
        assert float(row["return_std"]) >= 0.0 and row["success_rate"] == "0"
    assert {p.name for p in tmp_path.glob("*.png")} == {"return_vs_k.png", "return_vs_N.png", "return_vs_compute.png"}
    assert "score" in capsys.readouterr().out


def test_eval_env_refusals_name_the_field_and_value(own_run, pendulum_dataset, tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(os, "system", lambda command: ran.append(command))
    # An id gymnasium does not know, from a flag or from a dataset, is refused before anything is built.
    with pytest.raises(SystemExit, match=r"--eval_env is 'NoSuchEnv-v0', which is not registered with gymnasium"):
        train.main([f"--data={pendulum_dataset['dir']}", "--eval_env=NoSuchEnv-v0", f"--workdir={tmp_path / 'a'}"])
    data = tmp_path / "data"
    data.mkdir()
    for path in pendulum_dataset["dir"].iterdir():
        (data / path.name).symlink_to(path)
    (data / "metadata.json").unlink()
    metadata = dict(pendulum_dataset["metadata"], eval_env="os:system")
    (data / "metadata.json").write_text(json.dumps(metadata))
    with pytest.raises(SystemExit, match=r"metadata.json: field 'eval_env' is 'os:system': not a gymnasium env id"):
        train.main([f"--data={data}", f"--workdir={tmp_path / 'b'}"])
    with pytest.raises(SystemExit, match=r"--eval_env is 'os:system': not a gymnasium env id"):
        evaluate.main([f"--workdir={own_run}", "--eval_env=os:system", "--episodes=1", "--no_progress"])
    assert ran == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    # The id itself is never imported: a 'module:' prefix would make gymnasium.make import the module.
    with pytest.raises(environments.UnregisteredEnv, match=r"eval_env is 'json:Env-v0'"):
        environments.env_factory(environments.GymnasiumId("json:Env-v0"), None, None)


def test_datasets_match_their_reward_keys(pendulum_dataset, cube_tfrecord_dir):
    own = run_config.make_run_config(None)
    datasets.check_dataset_matches(own.data, pendulum_dataset["dir"], pendulum_dataset["metadata"])
    cube = run_config.make_run_config("cube")
    with pytest.raises(DataError, match=r"metadata.json: field 'reward_keys' is \['default'\], with no 'task2' .*"
                                        r"leave out --env"):
        datasets.check_dataset_matches(cube.data, pendulum_dataset["dir"], pendulum_dataset["metadata"])
    from data import reader

    with pytest.raises(DataError, match=r"field 'reward_keys' is \['task1', .*with no 'default'.*--env=cube-single-play"):
        datasets.check_dataset_matches(own.data, cube_tfrecord_dir, reader.load_metadata(cube_tfrecord_dir))
    with pytest.raises(DataError, match="pass --data=DIR"):
        datasets.ensure_dataset(own.data)


def test_run_config_of_own_rewards(pendulum_dataset):
    args = train.parse_args([f"--data={pendulum_dataset['dir']}", "--preset=antmaze-large", "--set=reward_scale=0.1"])
    config = train.resolve_config(args, pendulum_dataset["metadata"])
    assert (config.agent.q_loss_coef, config.agent.discount, config.agent.q_agg) == (500.0, 0.99, "min")
    assert config.agent.reward_scale == 0.1 and config.data.eval_env == "Pendulum-v1"
    # An OGBench dataset without --env trains its own family, as --env would.
    assert train.resolve_config(train.parse_args(["--data=x"]), {"env": "cube-double-play"}).data.env == "cube-double-play"
    assert train.resolve_config(train.parse_args([]), None).data.env == "cube-single-play"
    with pytest.raises(ValueError, match=r"task=3 names an OGBench task"):
        train.resolve_config(train.parse_args(["--data=x", "--task=3"]), pendulum_dataset["metadata"])
    with pytest.raises(ValueError, match=r"eval_env='Pendulum-v1' must be null for an OGBench run"):
        train.resolve_config(train.parse_args(["--env=cube", "--eval_env=Pendulum-v1"]), None)


def test_no_eval_env_trains_without_evaluation_and_says_so_once(pendulum_dataset, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for path in pendulum_dataset["dir"].iterdir():
        if path.name != "metadata.json":
            (data / path.name).symlink_to(path)
    (data / "metadata.json").write_text(json.dumps(dict(pendulum_dataset["metadata"], eval_env=None)))
    train.main([f"--data={data}", "--steps=4", "--eval_episodes=2", f"--workdir={tmp_path / 'run'}", "--no_progress",
                "--no_export", *[f"--set={item}" for item in TINY]])
    out = capsys.readouterr().out
    assert out.count("training without in-env evaluation") == 1
    assert not (tmp_path / "run" / "eval.csv").exists() and (tmp_path / "run" / "checkpoints").is_dir()
