"""Env names, tasks, goals and the paper's per-family presets."""

import numpy as np
import pytest

from data import envs
from data.errors import DataError


@pytest.mark.parametrize("name", ["cube", "cube-single", "cube-single-play", "cube-single-play-v0", "cube-single-v0"])
def test_every_spelling_of_cube_single_resolves(name):
    family = envs.resolve_env(name)
    assert family.name == "cube-single-play"
    assert family.dataset_name == "cube-single-play-v0"
    assert family.env_id == "cube-single-v0"
    assert family.singletask_env_id(3) == "cube-single-singletask-task3-v0"
    assert family.eval_env_name(3) == "cube-single-play-singletask-task3-v0"


def test_unknown_env_and_task_name_the_value_and_the_choices():
    with pytest.raises(DataError, match=r"unknown env 'cube-triple'.*cube-double"):
        envs.resolve_env("cube-triple")
    family = envs.resolve_env("cube-double")
    for task in (0, 6, "two", None, True):
        with pytest.raises(DataError, match=r"unknown task .* cube-double-play: use an integer 1\.\.5"):
            envs.check_task(family, task)


def test_only_cube_families_have_a_generator():
    assert envs.resolve_env("cube-single").p_stack_range == (0.0, 0.0)
    assert envs.resolve_env("cube-double").p_stack_range == (0.0, 0.25)
    assert not envs.resolve_env("scene").can_generate


def test_cube_task_targets_are_the_task_goals():
    # SPEC 6: cube-single task 2 is 'vertical1', goal (0.50, 0.0, 0.02); cube-double task 5 stacks.
    single = envs.task_targets(envs.resolve_env("cube-single"), 2)
    assert single["task_name"] == "task2_vertical1"
    np.testing.assert_allclose(single["cube_xyzs"], [[0.50, 0.0, 0.02]])
    double = envs.task_targets(envs.resolve_env("cube-double"), 5)
    assert double["task_name"] == "task5_stack"
    np.testing.assert_allclose(double["cube_xyzs"], [[0.425, 0.0, 0.02], [0.425, 0.0, 0.06]])


def test_task_targets_leave_the_global_numpy_rng_alone():
    np.random.seed(123)
    expected = np.random.uniform()
    np.random.seed(123)
    envs._all_task_targets.cache_clear()
    envs.task_targets(envs.resolve_env("antmaze-large"), 1)
    assert np.random.uniform() == expected


# SPEC section 5, typed in by hand: (q_loss_coef, discount, q_agg, episode length).
PAPER_TABLE = {
    "cube-single-play": (10, 0.99, "mean", 200),
    "cube-double-play": (50, 0.99, "mean", 500),
    "scene-play": (100, 0.99, "mean", 750),
    "antmaze-large-navigate": (500, 0.99, "min", 1000),
    "antmaze-giant-navigate": (500, 0.995, "min", 1000),
    "humanoidmaze-medium-navigate": (100, 0.995, "mean", 2000),
    "humanoidmaze-large-navigate": (500, 0.995, "mean", 2000),
    "antsoccer-arena-navigate": (500, 0.995, "mean", 1000),
}


@pytest.mark.parametrize("name", sorted(PAPER_TABLE))
def test_presets_match_the_paper_table(name):
    family = envs.FAMILIES[name]
    assert (family.q_loss_coef, family.discount, family.q_agg, family.episode_length) == PAPER_TABLE[name]
    assert set(envs.FAMILIES) == set(PAPER_TABLE)


def test_episode_lengths_and_default_tasks_match_ogbench():
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    for family in envs.FAMILIES.values():
        env = gymnasium.make(f"{family.env_base}-singletask-v0")  # OGBench's default task
        try:
            assert family.episode_length == env.spec.max_episode_steps, family.name
            assert family.default_task == env.unwrapped._reward_task_id, family.name  # task 0 resolves to it
            assert envs.check_task(family, family.default_task) == family.default_task
        finally:
            env.close()


@pytest.mark.parametrize("name", sorted(envs.FAMILIES))
def test_family_sizes_are_those_of_the_real_environment(name):
    import gymnasium
    import ogbench  # noqa: F401  (registers the environments)

    family = envs.FAMILIES[name]
    env = gymnasium.make(family.singletask_env_id(1))
    try:
        unwrapped = env.unwrapped
        qpos = unwrapped._data.qpos if hasattr(unwrapped, "_data") else unwrapped.data.qpos
        assert (family.obs_dim, family.action_dim, family.qpos_dim) == (
            env.observation_space.shape[0], env.action_space.shape[0], qpos.shape[0])
    finally:
        env.close()


@pytest.mark.parametrize("field, sizes", [
    ("observations", (29, 5, 21)), ("actions", (28, 4, 21)), ("qpos", (28, 5, 22))])
def test_data_of_other_sizes_does_not_fit(field, sizes):
    family = envs.resolve_env("cube-single")
    envs.check_data_fits(family, "d.npz", 28, 5, 21)
    envs.check_data_fits(family, "d.npz", 28, 5, None)  # no qpos recorded: nothing to compare
    with pytest.raises(DataError, match=rf"d.npz: field '{field}' has width \d+, but env cube-single-play records"):
        envs.check_data_fits(family, "d.npz", *sizes)
