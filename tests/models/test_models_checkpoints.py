"""Run directories: config.json (current and old layout), the checkpoint manager, and load_agent."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from models import checkpoints
from models.config import AgentConfig, agent_config_to_dict
from models.sorl import SORLAgent
from pipeline.config import make_run_config, save_run_config

OBS_DIM, ACTION_DIM = 3, 2


def small_config(**overrides):
    values = dict(actor_hidden_dims=(8,), critic_hidden_dims=(8,), q_loss_coef=100.0)  # scene's preset
    return AgentConfig(**{**values, **overrides})


def save_config(workdir, agent_config):
    """config.json as training writes it, around `agent_config`."""
    run = dataclasses.replace(make_run_config("scene"), agent=agent_config)
    return save_run_config(workdir, run, OBS_DIM, ACTION_DIM, data_dir="/d", strategy="default")


def write_old_config(workdir, agent_config, **changes):
    """config.json exactly as the code before the agent/run split wrote it (flat SORLConfig)."""
    flat = agent_config_to_dict(agent_config)
    flat["inference_steps"] = flat.pop("inference_euler_steps")
    flat.update(env="scene-play", task=2, episode_length=750, steps=1000000, log_every=5000, eval_every=100000,
                eval_episodes=50, checkpoint_every=100000, jit_compile=False, cap_step_level=False)
    flat.update(changes)
    payload = {"config": flat, "obs_dim": OBS_DIM, "action_dim": ACTION_DIM, "extra": {"data": "/d", "strategy": "default"}}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")


def batch(seed=0, n=4):
    rng = np.random.default_rng(seed)
    return {
        "observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, ACTION_DIM)).astype(np.float32),
        "next_observations": rng.normal(size=(n, OBS_DIM)).astype(np.float32),
        "rewards": np.zeros(n, np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": np.zeros(n, np.float32),
    }


def trained_agent(config, steps):
    agent = SORLAgent(config, OBS_DIM, ACTION_DIM)
    agent.compile(jit_compile=False)
    agent.fit(tf.data.Dataset.from_tensors(batch()).repeat(), steps_per_epoch=steps, epochs=1, verbose=0)
    return agent


def test_read_config_file_reads_both_layouts(tmp_path):
    config = small_config(seed=4)
    save_config(tmp_path / "new", config)
    new = checkpoints.read_config_file(tmp_path / "new")
    assert new["agent"] == agent_config_to_dict(config)
    assert (new["obs_dim"], new["action_dim"], new["data_dir"], new["strategy"]) == (3, 2, "/d", "default")
    assert [p.name for p in (tmp_path / "new").iterdir()] == ["config.json"]  # no temporary left behind

    write_old_config(tmp_path / "old", config, cap_step_level=True)
    old = checkpoints.read_config_file(tmp_path / "old")
    assert old["agent"] == new["agent"]
    assert old["data"] == {"env": "scene-play", "task": 2, "episode_length": 750}
    assert old["schedule"]["gradient_steps"] == 1000000 and "cap_step_level" not in old["schedule"]
    assert (old["obs_dim"], old["action_dim"], old["data_dir"], old["strategy"]) == (3, 2, "/d", "default")


def test_read_config_file_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json does not exist"):
        checkpoints.read_config_file(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json is not valid JSON"):
        checkpoints.read_config_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"config": {}, "obs_dim": 3}))
    with pytest.raises(ValueError, match="no field 'action_dim'"):
        checkpoints.read_config_file(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"agent": {}, "data": {}, "obs_dim": 3, "action_dim": 2}))
    with pytest.raises(ValueError, match="no field 'schedule'"):
        checkpoints.read_config_file(tmp_path)


@pytest.mark.parametrize("step_of", [lambda a: a.training_steps, lambda a: a.actor_optimizer.iterations])
def test_manager_saves_by_step_and_load_agent_restores(tmp_path, step_of):
    config = small_config()
    agent = trained_agent(config, 3)
    save_config(tmp_path, config)
    manager = checkpoints.make_checkpoint_manager(agent, tmp_path, step_of(agent), max_to_keep=2)
    first = manager.save(checkpoint_number=int(step_of(agent)))
    assert first.endswith("ckpt-3") and first.startswith(str(tmp_path / "checkpoints"))
    agent.fit(tf.data.Dataset.from_tensors(batch(1)).repeat(), steps_per_epoch=2, epochs=1, verbose=0)
    manager.save(checkpoint_number=int(step_of(agent)))

    loaded, loaded_config, step = checkpoints.load_agent(tmp_path)
    assert loaded_config == config and step == 5
    for a, b in zip(agent.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    noise = tf.random.stateless_normal([4, 3, ACTION_DIM], seed=[0, 0])
    obs = batch()["observations"]
    np.testing.assert_array_equal(
        agent.act(obs, euler_steps=4, num_samples=3, noise=noise).numpy(),
        loaded.act(obs, euler_steps=4, num_samples=3, noise=noise).numpy(),
    )
    older, _, older_step = checkpoints.load_agent(tmp_path, first)
    assert older_step == 3
    assert not np.array_equal(older.actor.weights[0].numpy(), loaded.actor.weights[0].numpy())


def test_load_agent_restores_a_run_whose_config_json_has_the_old_layout(tmp_path):
    config = small_config(inference_euler_steps=2, seed=1)
    agent = trained_agent(config, 2)
    write_old_config(tmp_path, config, cap_step_level=True)
    checkpoints.make_checkpoint_manager(agent, tmp_path, agent.training_steps).save(checkpoint_number=2)
    loaded, loaded_config, step = checkpoints.load_agent(tmp_path)
    assert loaded_config == config and step == 2
    for a, b in zip(agent.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_load_agent_errors(tmp_path):
    config = small_config()
    save_config(tmp_path, config)
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        checkpoints.load_agent(tmp_path)
    agent = trained_agent(config, 1)
    path = checkpoints.make_checkpoint_manager(agent, tmp_path, agent.training_steps).save(checkpoint_number=1)
    save_config(tmp_path, small_config(actor_hidden_dims=(16,)))
    with pytest.raises(ValueError, match="Cannot restore .*ckpt-1"):
        checkpoints.load_agent(tmp_path, path)


# ------------------------------------------------------------------ damaged checkpoints and resume
DATA = "ckpt-{}.data-00000-of-00001"
INDEX = "ckpt-{}.index"


def _truncate(name, keep):
    def damage(directory, step):
        path = directory / name.format(step)
        data = path.read_bytes()
        path.write_bytes(data[: keep(len(data))])
    return damage


def _flip_byte(name):
    def damage(directory, step):
        path = directory / name.format(step)
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return damage


def _delete(name):
    return lambda directory, step: (directory / name.format(step)).unlink()


# Each way a kill, a full disk or a bad copy leaves the newest checkpoint, and the error it surfaces as.
DAMAGES = {
    "data truncated to half": _truncate(DATA, lambda n: n // 2),
    "data emptied": _truncate(DATA, lambda n: 0),
    "data one byte short": _truncate(DATA, lambda n: n - 1),
    "data byte flipped": _flip_byte(DATA),
    "data deleted": _delete(DATA),
    "index truncated to half": _truncate(INDEX, lambda n: n // 2),
    "index emptied": _truncate(INDEX, lambda n: 0),
    "index byte flipped": _flip_byte(INDEX),
    "index deleted": _delete(INDEX),
}


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory):
    """(agent config, {step: variables}) and a run directory with ckpt-1, ckpt-2, ckpt-3."""
    workdir = tmp_path_factory.mktemp("three_checkpoints")
    config = small_config()
    agent = trained_agent(config, 1)
    save_config(workdir, config)
    manager = checkpoints.make_checkpoint_manager(agent, workdir, agent.training_steps)
    weights = {}
    for step in (1, 2, 3):
        if step > 1:
            agent.fit(tf.data.Dataset.from_tensors(batch(step)).repeat(), steps_per_epoch=1, epochs=1, verbose=0)
        manager.save(checkpoint_number=step)
        weights[step] = [v.numpy() for v in agent.actor.weights]
    return workdir, config, weights


def copy_run(source, tmp_path):
    import shutil

    return Path(shutil.copytree(source, tmp_path / "run"))


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(three_checkpoints, tmp_path, damage):
    source, config, weights = three_checkpoints
    workdir = copy_run(source, tmp_path)
    directory = workdir / "checkpoints"
    DAMAGES[damage](directory, 3)
    said = []
    agent = SORLAgent(config, OBS_DIM, ACTION_DIM)
    restored = checkpoints.restore_newest(tf.train.Checkpoint(agent=agent), directory, say=said.append)
    assert restored.step == 2 and restored.path == str(directory / "ckpt-2")
    assert [step for step, _ in restored.skipped] == [3]
    assert len(said) == 1 and said[0].startswith(f"Skipping checkpoint {directory / 'ckpt-3'} (it does not restore: ")
    for got, want in zip(agent.actor.weights, weights[2]):
        np.testing.assert_array_equal(got.numpy(), want)
    # load_agent (evaluate, export) falls back the same way and says so.
    said.clear()
    loaded, _, step = checkpoints.load_agent(workdir, say=said.append)
    assert step == 2 and "ckpt-3" in said[0]


def test_two_damaged_checkpoints_fall_back_to_the_third(three_checkpoints, tmp_path):
    source, config, weights = three_checkpoints
    directory = copy_run(source, tmp_path) / "checkpoints"
    DAMAGES["data truncated to half"](directory, 3)
    DAMAGES["index deleted"](directory, 2)
    restored = checkpoints.restore_newest(tf.train.Checkpoint(agent=SORLAgent(config, OBS_DIM, ACTION_DIM)),
                                          directory, say=lambda line: None)
    assert restored.step == 1
    assert [s for s, _ in restored.skipped] == [3, 2] and "ckpt-2.index is missing" in restored.skipped[1][1]


def test_no_checkpoint_restores_names_every_file_tried(three_checkpoints, tmp_path):
    source, config, _ = three_checkpoints
    directory = copy_run(source, tmp_path) / "checkpoints"
    for step, damage in ((3, "data emptied"), (2, "index byte flipped"), (1, "data byte flipped")):
        DAMAGES[damage](directory, step)
    with pytest.raises(checkpoints.CheckpointError) as caught:
        checkpoints.restore_newest(tf.train.Checkpoint(agent=SORLAgent(config, OBS_DIM, ACTION_DIM)), directory,
                                   say=lambda line: None)
    message = str(caught.value)
    assert message.startswith(f"No checkpoint in {directory} restores: ")
    for step in (3, 2, 1):
        assert f"ckpt-{step} (ckpt-{step}.data-00000-of-00001, ckpt-{step}.index): " in message
    assert "Checksum does not match" in message and "\n" not in message


def test_the_list_comes_from_the_files_not_the_index(three_checkpoints, tmp_path):
    source, config, _ = three_checkpoints
    directory = copy_run(source, tmp_path) / "checkpoints"
    (directory / "checkpoint").unlink()
    assert list(checkpoints.checkpoint_files(directory)) == [3, 2, 1]
    restored = checkpoints.restore_newest(tf.train.Checkpoint(agent=SORLAgent(config, OBS_DIM, ACTION_DIM)), directory)
    assert restored.step == 3 and restored.skipped == []
    checkpoints.rewrite_index(directory)
    assert tf.train.latest_checkpoint(str(directory)) == str(directory / "ckpt-3")
    assert tf.train.get_checkpoint_state(str(directory)).all_model_checkpoint_paths == [
        str(directory / f"ckpt-{s}") for s in (1, 2, 3)]


def test_set_aside_moves_a_checkpoints_files(three_checkpoints, tmp_path):
    directory = copy_run(three_checkpoints[0], tmp_path) / "checkpoints"
    aside = checkpoints.set_aside(directory, [3])
    assert aside == directory / "damaged" and sorted(p.name for p in aside.iterdir()) == [DATA.format(3), INDEX.format(3)]
    assert list(checkpoints.checkpoint_files(directory)) == [2, 1]
    assert checkpoints.set_aside(directory, [7]) is None


def test_remove_unfinished_saves(tmp_path):
    directory = tmp_path / "checkpoints"
    (directory / "ckpt-8_temp").mkdir(parents=True)
    (directory / "ckpt-8_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"\0" * 10)
    (directory / "ckpt-9_temp_0123abcd").mkdir()
    (directory / "checkpoint.tmp9f86d081884c7d659a2feaa0c55ad015").write_text("model_checkpoint_path")
    for keep in ("ckpt-7.index", "ckpt-7.data-00000-of-00001", "checkpoint"):
        (directory / keep).write_text("x")
    removed = checkpoints.remove_unfinished_saves(directory)
    assert sorted(p.name for p in removed) == ["checkpoint.tmp9f86d081884c7d659a2feaa0c55ad015", "ckpt-8_temp",
                                               "ckpt-9_temp_0123abcd"]
    assert sorted(p.name for p in directory.iterdir()) == ["checkpoint", "ckpt-7.data-00000-of-00001", "ckpt-7.index"]
    assert checkpoints.remove_unfinished_saves(tmp_path / "none") == []
