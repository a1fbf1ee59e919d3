"""RunConfig: presets, flags and --set, config.json in both layouts, and what a resumed run may change."""

import dataclasses
import json
import re

import pytest

from models.config import AgentConfig
from pipeline import config as run_lib
from pipeline.config import DataSpec, RunConfig, Schedule


def test_defaults_are_the_papers_cube_single_run():
    c = run_lib.make_run_config()
    assert c == RunConfig() and c.agent == AgentConfig()
    assert (c.data.env, c.data.task, c.data.episode_length) == ("cube-single-play", 2, 200)
    s = c.schedule
    assert (s.gradient_steps, s.log_every, s.eval_every, s.eval_episodes, s.checkpoint_every, s.jit_compile) == (
        1_000_000, 5_000, 100_000, 50, 100_000, True)


def test_cpu_scale_shrinks_networks_and_schedule_and_keeps_the_preset():
    paper, cpu = run_lib.make_run_config("cube-double"), run_lib.make_run_config("cube-double", scale="cpu")
    assert run_lib.make_run_config("cube-double", scale="paper") == paper
    assert cpu.agent == dataclasses.replace(paper.agent, actor_hidden_dims=(256, 256, 256),
                                            critic_hidden_dims=(256, 256, 256))
    assert cpu.data == paper.data
    assert (cpu.schedule.gradient_steps, cpu.schedule.eval_every, cpu.schedule.eval_episodes) == (100_000, 20_000, 50)
    # flags and --set still win over the scale's values
    mine = run_lib.make_run_config("cube", {"gradient_steps": 500}, ["critic_hidden_dims=64,64"], scale="cpu")
    assert (mine.schedule.gradient_steps, mine.agent.critic_hidden_dims, mine.agent.actor_hidden_dims) == (
        500, (64, 64), (256, 256, 256))
    with pytest.raises(ValueError, match="scale='gpu': use one of paper, cpu"):
        run_lib.make_run_config("cube", scale="gpu")


def test_each_family_gets_its_preset():
    c = run_lib.make_run_config("antmaze-giant")
    assert (c.agent.q_loss_coef, c.agent.discount, c.agent.q_agg) == (500, 0.995, "min")
    assert (c.data.env, c.data.task, c.data.episode_length) == ("antmaze-giant-navigate", 1, 1000)
    assert c.agent.batch_size == 256 and c.agent.inference_euler_steps == 4  # common to all envs
    assert run_lib.make_run_config("antsoccer").data.task == 4


def test_aliases_and_an_env_key_pick_the_preset():
    assert run_lib.make_run_config("cube").data.env == "cube-single-play"
    assert run_lib.make_run_config("cube-double").data.env == "cube-double-play"
    assert run_lib.make_run_config("scene").data.env == "scene-play"
    c = run_lib.make_run_config("cube", overrides=["env=antmaze-large"])
    assert (c.data.env, c.agent.q_agg, c.agent.q_loss_coef) == ("antmaze-large-navigate", "min", 500)
    assert run_lib.make_run_config("cube", {"env": "scene"}).agent.q_loss_coef == 100


def test_values_then_overrides_by_field_type():
    c = run_lib.make_run_config(
        "cube",
        {"seed": 3, "task": None, "gradient_steps": 50},  # None: a flag that was not given
        ["gradient_steps=1e3", "actor_lr=3e-4", "actor_hidden_dims=64,32", "jit_compile=false",
         "critic_layer_norm=True", "q_agg=min", "task=5", "eval_episodes=0"],
    )
    assert c.schedule.gradient_steps == 1000 and isinstance(c.schedule.gradient_steps, int)
    assert c.agent.actor_lr == 3e-4 and c.agent.actor_hidden_dims == (64, 32)
    assert c.schedule.jit_compile is False and c.agent.critic_layer_norm is True
    assert (c.agent.q_agg, c.agent.seed, c.data.task, c.schedule.eval_episodes) == ("min", 3, 5, 0)


def test_old_names_are_accepted():
    c = run_lib.make_run_config("cube", {"steps": 7}, ["inference_steps=8"])
    assert (c.schedule.gradient_steps, c.agent.inference_euler_steps) == (7, 8)
    assert run_lib.make_run_config("cube", overrides=["steps=1e6"]).schedule.gradient_steps == 1_000_000


def test_cap_step_level_points_at_the_inference_flags():
    for kwargs in ({"overrides": ["cap_step_level=true"]}, {"values": {"cap_step_level": True}}):
        with pytest.raises(ValueError, match=r"cap_step_level is no longer a training setting.*pass "
                                             r"--cap_step_level to pipeline/evaluate\.py or serving/export\.py"):
            run_lib.make_run_config("cube", **kwargs)


@pytest.mark.parametrize(
    "override, message",
    [
        ("lr=1", r"Unknown config key 'lr' in override 'lr=1'\. Valid keys: .*actor_lr.*gradient_steps"),
        ("gradient_steps", r"Override 'gradient_steps' must look like key=value"),
        ("steps=ten", r"Override 'steps=ten': gradient_steps='ten' is not a valid int"),
        ("gradient_steps=1.5", r"gradient_steps='1.5' is not a valid int: not an integer"),
        ("jit_compile=maybe", r"jit_compile='maybe' is not a valid bool: use true or false"),
        ("actor_hidden_dims=a,b", r"actor_hidden_dims='a,b' is not a valid comma-separated ints"),
        ("q_agg=max", r"q_agg='max' must be 'mean' or 'min'"),
        ("m_disc=6", r"m_disc=6 must be a power of two"),
        ("tau=2", r"tau=2.0 must be a number in \(0, 1\]"),
        ("task=0", r"task=0 must be an integer in \[1, 5\] \(the tasks of cube-single-play\)"),
        ("log_every=0", r"log_every=0 must be an integer >= 1"),
        ("episode_length=0", r"episode_length=0 must be an integer >= 1"),
    ],
)
def test_errors_name_the_key_and_the_value(override, message):
    with pytest.raises(ValueError, match=message):
        run_lib.make_run_config("cube", overrides=[override])


# Every field of the three sections with values it must refuse: (field, bad value, allowed range).
BAD_VALUES = {
    # AgentConfig
    "actor_hidden_dims": [((), "one or more widths >= 1"), ((16, 0), "one or more widths >= 1"),
                          ((16, -4), "one or more widths >= 1"), (16, "one or more widths >= 1"),
                          ((16.5,), "one or more widths >= 1")],
    "critic_hidden_dims": [((), "one or more widths >= 1"), ((0,), "one or more widths >= 1")],
    "actor_layer_norm": [(1, "true or false"), ("yes", "true or false")],
    "critic_layer_norm": [(0, "true or false"), (None, "true or false")],
    "num_critics": [(0, "an integer >= 1"), (-1, "an integer >= 1"), (2.0, "an integer >= 1"),
                    (True, "an integer >= 1")],
    "actor_lr": [(0.0, "a finite number > 0"), (-1e-4, "a finite number > 0"), (float("nan"), "a finite number > 0"),
                 (float("inf"), "a finite number > 0"), ("1e-4", "a finite number > 0")],
    "critic_lr": [(0, "a finite number > 0"), (float("nan"), "a finite number > 0")],
    "adam_beta_1": [(1.0, r"a number in \[0, 1\)"), (-0.1, r"a number in \[0, 1\)")],
    "adam_beta_2": [(1.0, r"a number in \[0, 1\)"), (float("nan"), r"a number in \[0, 1\)")],
    "grad_clip_norm": [(-1.0, "a finite number >= 0"), (float("inf"), "a finite number >= 0")],
    "tau": [(0.0, r"a number in \(0, 1\]"), (1.5, r"a number in \(0, 1\]"), (-0.1, r"a number in \(0, 1\]"),
            (float("nan"), r"a number in \(0, 1\]")],
    "discount": [(1.0, r"a number in \[0, 1\)"), (1.5, r"a number in \[0, 1\)"), (-0.5, r"a number in \[0, 1\)"),
                 (float("nan"), r"a number in \[0, 1\)"), (True, r"a number in \[0, 1\)")],
    "q_agg": [("max", "'mean' or 'min'"), ("", "'mean' or 'min'"), (None, "'mean' or 'min'")],
    "update_rule": [("joint", "'separate' or 'reference'"), ("", "'separate' or 'reference'"),
                    (None, "'separate' or 'reference'")],
    "q_loss_coef": [(-1.0, "a finite number >= 0"), (float("nan"), "a finite number >= 0"),
                    (float("inf"), "a finite number >= 0")],
    "fm_coef": [(-0.5, "a finite number >= 0"), (float("-inf"), "a finite number >= 0")],
    "sc_coef": [(-10, "a finite number >= 0"), ("10", "a finite number >= 0")],
    "reward_scale": [(0.0, "a finite number > 0"), (-1.0, "a finite number > 0"), (float("nan"), "a finite number > 0")],
    "normalize_observations": [(1, "true or false"), ("yes", "true or false")],
    "m_disc": [(6, r"a power of two >= 2"), (1, r"a power of two >= 2"), (0, r"a power of two >= 2"),
               (8.0, r"a power of two >= 2")],
    "m_btt": [(3, r"a power of two >= 1"), (0, r"a power of two >= 1"), (-8, r"a power of two >= 1")],
    "t_eps": [(1.0, r"a number in \[0, 1\)"), (-1e-5, r"a number in \[0, 1\)"), (float("nan"), r"a number in \[0, 1\)")],
    "inference_euler_steps": [(0, "an integer >= 1"), (-2, "an integer >= 1"), (2.5, "an integer >= 1")],
    "batch_size": [(0, "an integer >= 1"), (-32, "an integer >= 1"), (32.0, "an integer >= 1"),
                   (False, "an integer >= 1")],
    "seed": [(-1, r"an integer in \[0, 2147483647\]"), (2**31, r"an integer in \[0, 2147483647\]"),
             (1.5, r"an integer in \[0, 2147483647\]")],
    # DataSpec (env is checked against the known families; an unknown one names them)
    "env": [(3, "one of antmaze-giant"), ("cubes", "one of antmaze-giant")],
    "task": [(0, r"an integer in \[1, 5\]"), (6, r"an integer in \[1, 5\]"), (2.5, r"an integer in \[1, 5\]"),
             ("2", r"an integer in \[1, 5\]"), (True, r"an integer in \[1, 5\]")],
    "episode_length": [(0, "an integer >= 1"), (-5, "an integer >= 1"), (200.5, "an integer >= 1")],
    "eval_env": [("Pendulum-v1", "null for an OGBench run")],
    # Schedule
    "gradient_steps": [(0, "an integer >= 1"), (-10, "an integer >= 1"), (1.5, "an integer >= 1")],
    "log_every": [(0, "an integer >= 1"), (-5, "an integer >= 1"), (0.5, "an integer >= 1"), (2.5, "an integer >= 1"),
                  (True, "an integer >= 1"), (None, "an integer >= 1")],
    "eval_every": [(-1, "an integer >= 0"), (2.5, "an integer >= 0")],
    "eval_episodes": [(-1, "an integer >= 0"), ("5", "an integer >= 0")],
    "checkpoint_every": [(-5, "an integer >= 0"), (float("nan"), "an integer >= 0")],
    "jit_compile": [(1, "true or false"), ("false", "true or false")],
}
SECTION_OF = {f.name: cls for cls in (AgentConfig, DataSpec, Schedule) for f in dataclasses.fields(cls)}


def test_every_field_has_bad_values_in_the_table():
    assert set(BAD_VALUES) == set(SECTION_OF)


@pytest.mark.parametrize("field, value, allowed",
                         [(f, v, a) for f, cases in BAD_VALUES.items() for v, a in cases],
                         ids=lambda x: repr(x)[:20])
def test_bad_values_name_field_value_and_range(field, value, allowed):
    cls = SECTION_OF[field]
    pattern = rf"Invalid {cls.__name__}: (.*; )?{re.escape(field)}={re.escape(repr(value))} must be {allowed}"
    with pytest.raises(ValueError, match=pattern):
        cls(**{field: value})
    # The same through make_run_config (flags and --set; None there means a flag not given): one line.
    if field != "env" and value is not None:
        with pytest.raises(ValueError, match=pattern) as caught:
            run_lib.make_run_config("cube", {field: value})
        assert "\n" not in str(caught.value)


def test_every_problem_is_reported_at_once():
    with pytest.raises(ValueError) as caught:
        run_lib.make_run_config("cube", overrides=["log_every=0", "discount=1", "tau=0", "actor_lr=nan",
                                                   "episode_length=0"])
    message = str(caught.value)
    for part in ("log_every=0 must", "discount=1.0 must", "tau=0.0 must", "actor_lr=nan must", "episode_length=0 must"):
        assert part in message, message


def test_values_are_stored_in_their_field_types():
    c = run_lib.make_run_config("cube", {"actor_lr": 1, "actor_hidden_dims": [16, 16], "discount": 0})
    assert c.agent.actor_lr == 1.0 and isinstance(c.agent.actor_lr, float)
    assert c.agent.actor_hidden_dims == (16, 16) and isinstance(c.agent.discount, float)
    assert Schedule(gradient_steps=7, log_every=5, eval_every=3, checkpoint_every=4).gradient_steps == 7


def test_unknown_env_names_it():
    with pytest.raises(ValueError, match="unknown env 'cubes'"):
        run_lib.make_run_config("cubes")
    with pytest.raises(ValueError, match="Unknown config key 'lr' in lr=1"):
        run_lib.make_run_config("cube", {"lr": 1})


def test_field_names_are_unique_across_sections():
    names = [f.name for cls in (AgentConfig, DataSpec, Schedule) for f in dataclasses.fields(cls)]
    assert len(names) == len(set(names)) == len(run_lib.FIELDS)


def test_save_and_load_round_trip(tmp_path):
    c = run_lib.make_run_config("humanoidmaze-large", {"seed": 3}, ["actor_hidden_dims=8,8", "gradient_steps=10"])
    path = run_lib.save_run_config(tmp_path / "run", c, 28, 5, data_dir="/data/x", strategy="mirrored")
    on_disk = json.loads(open(path).read())
    assert set(on_disk) == {"agent", "data", "schedule", "obs_dim", "action_dim", "data_dir", "strategy"}
    assert on_disk["agent"]["actor_hidden_dims"] == [8, 8] and on_disk["schedule"]["gradient_steps"] == 10
    loaded, obs_dim, action_dim, info = run_lib.load_run_config(tmp_path / "run")
    assert (loaded, obs_dim, action_dim, info) == (c, 28, 5, {"data_dir": "/data/x", "strategy": "mirrored",
                                                               "dataset": None})
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["config.json"]  # no temporary left behind


# config.json as the code before the agent/run split wrote it (checkpoints.write_run_config).
OLD_CONFIG_JSON = {
    "action_dim": 5,
    "config": {
        "actor_hidden_dims": [16, 16], "actor_layer_norm": False, "actor_lr": 0.0001, "adam_beta_1": 0.9,
        "adam_beta_2": 0.999, "batch_size": 32, "cap_step_level": True, "checkpoint_every": 100000,
        "critic_hidden_dims": [16, 16], "critic_layer_norm": True, "critic_lr": 0.0001, "discount": 0.99,
        "env": "cube-single-play", "episode_length": 200, "eval_episodes": 5, "eval_every": 1000,
        "fm_coef": 10.0, "grad_clip_norm": 1.0, "inference_steps": 8, "jit_compile": False, "log_every": 100,
        "m_btt": 8, "m_disc": 8, "num_critics": 2, "q_agg": "mean", "q_loss_coef": 10.0, "sc_coef": 10.0,
        "seed": 5, "steps": 2000, "t_eps": 1e-05, "task": 3, "tau": 0.005,
    },
    "extra": {"data": "artifacts/data/cube-single-play-v0", "strategy": "default"},
    "obs_dim": 28,
}


def write_old(workdir):
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(json.dumps(OLD_CONFIG_JSON, indent=2, sort_keys=True) + "\n")


def test_load_reads_the_old_flat_layout(tmp_path):
    write_old(tmp_path)
    c, obs_dim, action_dim, info = run_lib.load_run_config(tmp_path)
    assert c.agent == AgentConfig(actor_hidden_dims=(16, 16), critic_hidden_dims=(16, 16), batch_size=32, seed=5,
                                  inference_euler_steps=8)
    assert c.data == DataSpec("cube-single-play", 3, 200)
    assert c.schedule == Schedule(gradient_steps=2000, log_every=100, eval_every=1000, eval_episodes=5,
                                  checkpoint_every=100000, jit_compile=False)
    assert (obs_dim, action_dim) == (28, 5)
    assert info == {"data_dir": "artifacts/data/cube-single-play-v0", "strategy": "default", "dataset": None}


def test_load_old_layout_and_restore_its_checkpoint(tmp_path):
    import numpy as np
    import tensorflow as tf

    from models import checkpoints
    from models.sorl import SORLAgent

    write_old(tmp_path)
    c, obs_dim, action_dim, _ = run_lib.load_run_config(tmp_path)
    agent = SORLAgent(c.agent, obs_dim, action_dim)
    agent.actor.weights[0].assign(agent.actor.weights[0] + 1.0)  # not the initial weights
    agent.training_steps.assign(7)
    checkpoints.make_checkpoint_manager(agent, tmp_path, agent.training_steps).save(checkpoint_number=7)
    loaded, agent_config, step = checkpoints.load_agent(tmp_path)
    assert agent_config == c.agent and step == 7
    for a, b in zip(agent.variables, loaded.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    obs = tf.zeros([2, obs_dim])
    np.testing.assert_array_equal(agent.act(obs, seed=1).numpy(), loaded.act(obs, seed=1).numpy())


def test_load_errors_name_the_file_and_the_field(tmp_path):
    broken = json.loads(json.dumps(OLD_CONFIG_JSON))
    broken["config"]["task"] = 9
    tmp_path.joinpath("config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"config\.json: Invalid DataSpec: task=9 must be an integer in \[1, 5\]"):
        run_lib.load_run_config(tmp_path)
    broken["config"]["task"] = 3
    broken["config"]["bogus"] = 1
    tmp_path.joinpath("config.json").write_text(json.dumps(broken))
    with pytest.raises(ValueError, match=r"Unknown AgentConfig keys \['bogus'\] in .*config\.json"):
        run_lib.load_run_config(tmp_path)


def test_check_resumable_allows_schedule_changes_only(tmp_path):
    c = run_lib.make_run_config("cube", overrides=["actor_hidden_dims=8", "gradient_steps=100"])
    run_lib.save_run_config(tmp_path, c, 28, 5, data_dir="/d", strategy="default")
    run_lib.check_resumable(tmp_path, c)
    longer = dataclasses.replace(c, schedule=Schedule(gradient_steps=500, log_every=10, eval_episodes=0,
                                                      jit_compile=False))
    run_lib.check_resumable(tmp_path, longer)
    other_agent = dataclasses.replace(c, agent=dataclasses.replace(c.agent, q_loss_coef=50.0))
    with pytest.raises(ValueError, match=r"config\.json was written by a run with other settings "
                                         r"\(agent\.q_loss_coef: saved 10\.0 vs now 50\.0\); resume with the same"):
        run_lib.check_resumable(tmp_path, other_agent)
    other_task = dataclasses.replace(c, data=DataSpec(task=4))
    with pytest.raises(ValueError, match=r"data\.task: saved 2 vs now 4"):
        run_lib.check_resumable(tmp_path, other_task)


def test_check_resumable_reads_old_runs(tmp_path):
    write_old(tmp_path)
    c, _, _, _ = run_lib.load_run_config(tmp_path)
    run_lib.check_resumable(tmp_path, dataclasses.replace(c, schedule=Schedule(gradient_steps=1_000_000)))
    with pytest.raises(ValueError, match=r"agent\.seed: saved 5 vs now 6"):
        run_lib.check_resumable(tmp_path, dataclasses.replace(c, agent=dataclasses.replace(c.agent, seed=6)))


def test_check_resumable_refuses_data_with_other_action_bounds_or_observation_statistics(tmp_path):
    c = run_lib.make_run_config("cube", overrides=["gradient_steps=100"])
    record = {"action_bounds": {"low": [-2.0], "high": [2.0]},
              "observation_statistics": {"mean": [0.5, 1.0], "std": [1.0, 2.0]}, "eval_env": "Pendulum-v1"}
    run_lib.save_run_config(tmp_path, c, 2, 1, data_dir="/d", strategy="default", dataset=record)
    run_lib.check_resumable(tmp_path, c, dict(record, eval_env="Other-v0"))  # not part of the agent
    with pytest.raises(ValueError, match=r"dataset\.action_bounds: the data now given has other values"):
        run_lib.check_resumable(tmp_path, c, dict(record, action_bounds={"low": [-1.0], "high": [2.0]}))
    with pytest.raises(ValueError, match=r"dataset\.observation_statistics"):
        run_lib.check_resumable(tmp_path, c, dict(record, observation_statistics={"mean": [0.5, 1.5],
                                                                                   "std": [1.0, 2.0]}))
