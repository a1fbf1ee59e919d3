"""Run directories: config.json (current and old layout), the checkpoint manager, and load_agent."""

import dataclasses
import json

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
