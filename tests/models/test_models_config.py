"""AgentConfig: defaults, validation, JSON round trip, and the old flat SORLConfig dicts it replaces."""

import dataclasses
import json

import pytest

from models import config as cfg_lib


def test_defaults_are_the_papers_cube_single_settings():
    c = cfg_lib.AgentConfig()
    assert c.actor_hidden_dims == (512,) * 4 and c.critic_hidden_dims == (512,) * 4
    assert (c.actor_layer_norm, c.critic_layer_norm, c.num_critics) == (False, True, 2)
    assert (c.actor_lr, c.critic_lr, c.adam_beta_1, c.adam_beta_2, c.grad_clip_norm) == (1e-4, 1e-4, 0.9, 0.999, 1.0)
    assert (c.tau, c.discount, c.q_agg, c.q_loss_coef, c.fm_coef, c.sc_coef) == (0.005, 0.99, "mean", 10, 10, 10)
    assert (c.m_disc, c.m_btt, c.t_eps, c.inference_euler_steps, c.batch_size, c.seed) == (8, 8, 1e-5, 4, 256, 0)


def test_holds_the_agents_hyper_parameters_only():
    names = {f.name for f in dataclasses.fields(cfg_lib.AgentConfig)}
    assert not names & set(cfg_lib.OLD_RUN_FIELDS)
    assert "inference_steps" not in names and "inference_euler_steps" in names


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("q_agg", "max", r"q_agg='max' must be 'mean' or 'min'"),
        ("m_disc", 6, r"m_disc=6 must be a power of two"),
        ("m_btt", 3, r"m_btt=3 must be a power of two"),
        ("m_disc", 1, r"m_disc=1 must be a power of two >= 2"),
        ("tau", 2.0, r"tau=2.0 must be a number in \(0, 1\]"),
        ("inference_euler_steps", 0, r"inference_euler_steps=0 must be an integer >= 1"),
        ("num_critics", 0, r"num_critics=0 must be an integer >= 1"),
        ("batch_size", 0, r"batch_size=0 must be an integer >= 1"),
        ("actor_hidden_dims", (), r"actor_hidden_dims=\(\) must be one or more widths >= 1"),
        ("discount", 1.0, r"discount=1.0 must be a number in \[0, 1\)"),
    ],
)
def test_invalid_values_name_field_value_and_range(field, value, message):
    with pytest.raises(ValueError, match=message):
        cfg_lib.AgentConfig(**{field: value})


def test_every_field_has_a_rule():
    assert set(cfg_lib.AGENT_RULES) == {f.name for f in dataclasses.fields(cfg_lib.AgentConfig)}


def test_dict_round_trip_through_json():
    c = cfg_lib.AgentConfig(actor_hidden_dims=(8, 8), seed=3, q_agg="min", q_loss_coef=500.0)
    restored = cfg_lib.agent_config_from_dict(json.loads(json.dumps(cfg_lib.agent_config_to_dict(c))))
    assert restored == c
    assert dataclasses.is_dataclass(restored)
    with pytest.raises(ValueError, match=r"Unknown AgentConfig keys \['bogus'\]"):
        cfg_lib.agent_config_from_dict({**cfg_lib.agent_config_to_dict(c), "bogus": 1})


def test_from_dict_reads_the_old_flat_sorl_config():
    # As models.config.config_to_dict wrote it into config.json before the agent/run split.
    old = {
        "env": "antmaze-large-navigate", "task": 1, "episode_length": 1000,
        "actor_hidden_dims": [16, 16], "critic_hidden_dims": [16, 16], "actor_layer_norm": False,
        "critic_layer_norm": True, "num_critics": 2, "actor_lr": 0.0001, "critic_lr": 0.0001,
        "adam_beta_1": 0.9, "adam_beta_2": 0.999, "grad_clip_norm": 1.0, "tau": 0.005,
        "discount": 0.99, "q_agg": "min", "q_loss_coef": 500, "fm_coef": 10.0, "sc_coef": 10.0,
        "m_disc": 8, "m_btt": 8, "t_eps": 1e-05, "inference_steps": 2, "cap_step_level": True,
        "batch_size": 256, "steps": 1000000, "seed": 4, "log_every": 5000, "eval_every": 100000,
        "eval_episodes": 50, "checkpoint_every": 100000, "jit_compile": True,
    }
    c = cfg_lib.agent_config_from_dict(old)
    assert c == cfg_lib.AgentConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), q_agg="min",
                                    q_loss_coef=500.0, inference_euler_steps=2, seed=4)
    assert isinstance(c.q_loss_coef, float)
    agent, run = cfg_lib.split_old_config(old)
    assert run == {"env": "antmaze-large-navigate", "task": 1, "episode_length": 1000, "gradient_steps": 1000000,
                   "log_every": 5000, "eval_every": 100000, "eval_episodes": 50, "checkpoint_every": 100000,
                   "jit_compile": True, "cap_step_level": True}
    assert agent["inference_euler_steps"] == 2 and "inference_steps" not in agent


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg_lib.AgentConfig().seed = 5
