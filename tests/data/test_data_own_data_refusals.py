"""Own data: what is refused (bad spaces, infinite bounds, missing fields, NaN), each naming file,
field and value, and the safety rule: converting a Minari dataset never runs what its env spec names."""

import json
import os

import gymnasium
import numpy as np
import pytest
from minari.serialization import serialize_space

from data import gym_recording, minari_source, ogbench_source
from data.errors import DataError
from pipeline.preprocess import preprocess


@pytest.fixture(scope="module")
def pendulum():
    return gym_recording.record("Pendulum-v1", 3, seed=2, max_steps=12)


def _edit_metadata(dataset_id, change) -> str:
    path = os.path.join(minari_source.data_path(dataset_id), "metadata.json")
    with open(path) as handle:
        metadata = json.load(handle)
    change(metadata)
    with open(path, "w") as handle:
        json.dump(metadata, handle)
    return path


def _hostile_spec(marker):
    """Changes a metadata dict's env spec to name os.system with a command that makes `marker`."""

    def change(metadata):
        spec = json.loads(metadata["env_spec"])
        spec.update(entry_point="os:system", kwargs={"command": f"touch {marker}"})
        metadata["env_spec"] = json.dumps(spec)

    return change


def _watch(monkeypatch) -> list:
    """From now on, records every call of os.system and of gymnasium's env construction in this
    process (the in-process Beam runner's workers included)."""
    calls = []
    monkeypatch.setattr(os, "system", lambda *args, **kwargs: calls.append(("os.system", args, kwargs)))
    real_make = gymnasium.make
    monkeypatch.setattr(gymnasium, "make", lambda *args, **kwargs: calls.append(("make", args)) or real_make(*args,
                                                                                                            **kwargs))
    loader = gymnasium.envs.registration.load_env_creator
    monkeypatch.setattr(gymnasium.envs.registration, "load_env_creator",
                        lambda name: calls.append(("load_env_creator", name)) or loader(name))
    return calls


def test_minari_itself_would_run_the_entry_point_of_a_dataset_without_spaces(minari_root, pendulum, tmp_path):
    """The hazard this guards against, shown with minari's own loader (in a subprocess)."""
    import subprocess
    import sys

    marker = tmp_path / "ran"
    gym_recording.write_minari("test/hostile-v0", pendulum, "Pendulum-v1")
    _edit_metadata("test/hostile-v0", lambda m: (_hostile_spec(marker)(m), m.pop("action_space")))
    subprocess.run([sys.executable, "-c", "import minari; minari.load_dataset('test/hostile-v0')"],
                   env={**os.environ, "MINARI_DATASETS_PATH": str(minari_root)}, capture_output=True)
    assert marker.exists()


def test_hostile_env_spec_without_spaces_is_refused_and_nothing_runs(minari_root, pendulum, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    gym_recording.write_minari("test/hostile-v0", pendulum, "Pendulum-v1")
    path = _edit_metadata("test/hostile-v0", lambda m: (_hostile_spec(marker)(m), m.pop("action_space")))
    no_code_runs = _watch(monkeypatch)
    with pytest.raises(DataError, match=rf"minari:test/hostile-v0: {path} has no field 'action_space' .*never by "
                                        rf"building the dataset's env"):
        preprocess("minari:test/hostile-v0", str(tmp_path / "out"))
    assert not marker.exists() and no_code_runs == []


def test_hostile_env_spec_converts_without_running_anything(minari_root, pendulum, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    gym_recording.write_minari("test/hostile-v0", pendulum, "Pendulum-v1")
    _edit_metadata("test/hostile-v0", _hostile_spec(marker))
    no_code_runs = _watch(monkeypatch)
    metadata = preprocess("minari:test/hostile-v0", str(tmp_path / "out"), num_shards=2)
    assert not marker.exists() and no_code_runs == []
    assert metadata["eval_env"] == "Pendulum-v1"  # the id string only
    assert metadata["counts"]["train"] == sum(e.steps for e in pendulum)
    assert "os:system" not in (tmp_path / "out" / "metadata.json").read_text()


def test_hostile_env_spec_in_beam_worker_processes_runs_nothing(minari_root, pendulum, tmp_path):
    marker = tmp_path / "ran"
    gym_recording.write_minari("test/hostile-v0", pendulum, "Pendulum-v1")
    _edit_metadata("test/hostile-v0", _hostile_spec(marker))
    preprocess("minari:test/hostile-v0", str(tmp_path / "out"), num_shards=2,
               pipeline_args=("--direct_num_workers=2", "--direct_running_mode=multi_processing"))
    assert not marker.exists()


def test_env_spec_id_that_is_not_an_env_id_is_refused(minari_root, pendulum, tmp_path):
    gym_recording.write_minari("test/own-v0", pendulum, "Pendulum-v1")

    def change(metadata):
        spec = json.loads(metadata["env_spec"])
        spec["id"] = "../../etc/passwd; rm"
        metadata["env_spec"] = json.dumps(spec)

    _edit_metadata("test/own-v0", change)
    with pytest.raises(DataError, match=r"field 'env_spec' has id '\.\./\.\./etc/passwd; rm', not a gymnasium env id"):
        preprocess("minari:test/own-v0", str(tmp_path / "out"))


@pytest.mark.parametrize("field, space, fragment", [
    ("observation_space", gymnasium.spaces.Dict({"a": gymnasium.spaces.Box(-1, 1, (3,))}), "field 'observations' "
                                                                                             "has space Dict"),
    ("observation_space", gymnasium.spaces.Box(0, 255, (8, 8, 3), np.uint8), "field 'observations' has space "
                                                                             r"Box\(0, 255, \(8, 8, 3\)"),
    ("action_space", gymnasium.spaces.Discrete(3), r"field 'actions' has space Discrete\(3\)"),
])
def test_dict_image_and_discrete_spaces_are_refused_naming_the_field(minari_root, pendulum, tmp_path, field, space,
                                                                     fragment):
    gym_recording.write_minari("test/own-v0", pendulum, "Pendulum-v1")
    _edit_metadata("test/own-v0", lambda m: m.update({field: serialize_space(space)}))
    with pytest.raises(DataError, match=rf"minari:test/own-v0: {fragment}.*only flat Box"):
        preprocess("minari:test/own-v0", str(tmp_path / "out"))


def test_infinite_action_bounds_are_refused_with_how_to_give_them(minari_root, pendulum, tmp_path):
    gym_recording.write_minari("test/own-v0", pendulum, "Pendulum-v1")
    unbounded = gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    _edit_metadata("test/own-v0", lambda m: m.update(action_space=serialize_space(unbounded)))
    with pytest.raises(DataError, match=r"minari:test/own-v0 field 'action_space': action bound low\[0\] is -inf; .*"
                                        r"pass the env's finite bounds with --action_low=L1,L2,\.\.\. "
                                        r"--action_high=H1,H2,\.\.\."):
        preprocess("minari:test/own-v0", str(tmp_path / "out"))
    metadata = preprocess("minari:test/own-v0", str(tmp_path / "out"), action_low="-2", action_high="2")
    assert metadata["action_bounds"] == {"low": [-2.0], "high": [2.0]}


@pytest.mark.parametrize("low, high, fragment", [
    ("-2", None, r"give both bounds"),
    ("2", "-2", r"low\[0\]=2.0 is not below high\[0\]=-2.0"),
    ("-2,-2", "2,2", r"'low' has 2 values \[-2.0, -2.0\], but the actions have 1 dimensions"),
    ("a", "2", r"--action_low='a': expected numbers"),
])
def test_bad_bound_flags_are_refused(pendulum, tmp_path, low, high, fragment):
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), pendulum)
    with pytest.raises(DataError, match=fragment):
        preprocess(f"npz:{path}", str(tmp_path / "out"), action_low=low, action_high=high)


def test_unregistered_eval_env_is_refused(pendulum, tmp_path):
    path = gym_recording.write_npz(str(tmp_path / "own.npz"), pendulum)
    with pytest.raises(DataError, match=r"--eval_env=os:system: not a registered gymnasium env id"):
        preprocess(f"npz:{path}", str(tmp_path / "out"), eval_env="os:system")


def _npz(tmp_path, pendulum, change):
    arrays = gym_recording.d4rl_arrays(pendulum)
    change(arrays)
    path = str(tmp_path / "own.npz")
    (tmp_path / "own.npz").write_bytes(ogbench_source.npz_bytes(arrays))
    return path


@pytest.mark.parametrize("change, fragment", [
    (lambda a: a.pop("rewards"), r"missing field 'rewards' \(found \['actions', 'next_observations', "
                                 r"'observations', 'terminals', 'timeouts'\]\)"),
    (lambda a: a["rewards"].__setitem__(7, np.nan), r"field 'rewards' row 7 is nan; datasets must be finite"),
    (lambda a: a["observations"].__setitem__((4, 2), np.inf), r"field 'observations' row 4 column 2 is inf"),
    (lambda a: a["next_observations"].__setitem__((5, 1), -np.inf), r"field 'next_observations' row 5 column 1 is "
                                                                    r"-inf"),
    (lambda a: a.update(rewards=a["rewards"][:-1]), r"field 'rewards' has 35 rows but 'observations' has 36"),
    (lambda a: a.update(observations=np.zeros((36, 2, 2))), r"field 'observations' has shape \[36, 2, 2\], expected "
                                                            r"2 dimensions"),
    (lambda a: a.update(terminals=np.full(36, 2)), r"field 'terminals' row 0 is 2, expected 0/1"),
    (lambda a: a.update(rewards=np.array(["x"] * 36)), r"field 'rewards' has dtype <U1, expected real numbers"),
])
def test_bad_npz_files_are_refused_naming_file_field_and_value(pendulum, tmp_path, change, fragment):
    path = _npz(tmp_path, pendulum, change)
    with pytest.raises(DataError, match=rf"{path}: {fragment}"):
        preprocess(f"npz:{path}", str(tmp_path / "out"), eval_env="Pendulum-v1")


def test_npz_with_an_object_array_is_not_unpickled(pendulum, tmp_path):
    arrays = gym_recording.d4rl_arrays(pendulum)
    path = tmp_path / "own.npz"
    np.savez(path, **{**arrays, "rewards": np.array([object()] * 36, dtype=object)})
    with pytest.raises(DataError, match=rf"{path}: field 'rewards' has dtype object, expected real numbers"):
        preprocess(f"npz:{path}", str(tmp_path / "out"), eval_env="Pendulum-v1")


def test_nan_reward_in_a_minari_episode_is_refused(minari_root, pendulum, tmp_path):
    episodes = [gym_recording.Episode(e.observations, e.actions, e.rewards.copy(), e.terminations, e.truncations,
                                      e.quality) for e in pendulum]
    episodes[1].rewards[3] = np.nan
    gym_recording.write_minari("test/own-v0", episodes, "Pendulum-v1")
    with pytest.raises(DataError, match=r"minari:test/own-v0 episode 1: field 'rewards' row 3 is nan"):
        preprocess("minari:test/own-v0", str(tmp_path / "out"))


def test_flags_that_do_not_apply_are_refused(cube_npz_dir, tmp_path):
    with pytest.raises(DataError, match=r"--eval_env=Pendulum-v1: not for ogbench:"):
        preprocess(f"ogbench:{cube_npz_dir}/cube-single-play-v0.npz", str(tmp_path / "out"), eval_env="Pendulum-v1")
