"""TF-Agents interop: files its own observer writes convert exactly, and a SORL SavedModel acts
inside its drivers with the SavedModel's own actions.

tf-agents is an optional layer (requirements-tf-agents.txt), so this file runs only where it is
installed: .ci/run builds that environment and runs this file there; elsewhere it is skipped.
"""
import importlib.util
import os

import pytest

if importlib.util.find_spec("tf_agents") is None:
    pytest.skip(
        "tf-agents is not installed: the optional TF-Agents layer (requirements-tf-agents.txt) "
        "is tested in its own environment by .ci/run",
        allow_module_level=True,
    )

from interop.tf_agents.compat import import_tf_agents  # noqa: E402

import_tf_agents()  # selects Keras 2 for tf.keras before anything touches it

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tf_agents.drivers import py_driver  # noqa: E402
from tf_agents.environments import random_py_environment, wrappers  # noqa: E402
from tf_agents.metrics import py_metrics  # noqa: E402
from tf_agents.policies import policy_saver, py_tf_eager_policy, random_py_policy  # noqa: E402
from tf_agents.specs import array_spec, tensor_spec  # noqa: E402
from tf_agents.trajectories import policy_step, trajectory  # noqa: E402
from tf_agents.trajectories import time_step as ts  # noqa: E402
from tf_agents.utils import example_encoding_dataset  # noqa: E402

from data import reader, schema, sources, tf_agents_source  # noqa: E402
from data.errors import DataError  # noqa: E402
from pipeline import preprocess  # noqa: E402

OBS_DIM, ACTION_DIM = 4, 2
CUBE_TASK1 = "cube-single-play-singletask-task1-v0"


def record_with_tf_agents(path, runs, seed):
    """Runs TF-Agents' PyDriver with a random policy, recording through its TFRecordObserver.

    The environment ends episodes both ways: a random termination (discount 0) and a time
    limit of 5 steps (truncation, discount 1). `runs` is a list of step counts; before each run
    the environment is reset, so every run but the first restarts recording mid-episode.

    Returns the transitions TF-Agents' driver itself reported to a transition observer, as
    (time_step, policy_step, next_time_step), minus the last of each run: its s' is the
    observation of the next record, which the file never gets.
    """
    env = wrappers.TimeLimit(
        random_py_environment.RandomPyEnvironment(
            array_spec.BoundedArraySpec((OBS_DIM,), np.float32, -5.0, 5.0, "observation"),
            array_spec.BoundedArraySpec((ACTION_DIM,), np.float32, -1.0, 1.0, "action"),
            reward_fn=lambda step_type, action, observation: np.float32(
                observation[0] - action.sum()),
            episode_end_probability=0.15, seed=seed),
        duration=5)
    policy = random_py_policy.RandomPyPolicy(env.time_step_spec(), env.action_spec(), seed=seed)
    observer = example_encoding_dataset.TFRecordObserver(
        str(path), policy.collect_data_spec, py_mode=True)
    expected = []
    for steps in runs:
        seen = []
        driver = py_driver.PyDriver(env, policy, [observer], transition_observers=[seen.append],
                                    max_steps=steps)
        driver.run(env.reset())
        transitions = [t for t in seen if not t[0].is_last()]  # LAST -> FIRST is a reset
        expected.extend(transitions[:-1])
    observer.close()
    return expected


def stack_transitions(transitions):
    """The project's columns for TF-Agents (time_step, policy_step, next_time_step) triples."""
    time_steps, policy_steps, next_time_steps = zip(*transitions)
    return {
        schema.OBSERVATIONS: np.stack([t.observation for t in time_steps]),
        schema.ACTIONS: np.clip(np.stack([p.action for p in policy_steps]),
                                -schema.ACTION_CLIP, schema.ACTION_CLIP),
        schema.NEXT_OBSERVATIONS: np.stack([t.observation for t in next_time_steps]),
        schema.TERMINALS: np.array([t.is_last() for t in next_time_steps], np.float32),
        schema.reward_feature("default"): np.array([t.reward for t in next_time_steps], np.float32),
        schema.mask_feature("default"): np.array([t.discount for t in next_time_steps], np.float32),
    }


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """A train file (three runs: restarts mid-episode) and a val file beside it."""
    folder = tmp_path_factory.mktemp("tf_agents_trajectories")
    train = record_with_tf_agents(folder / "traj.tfrecord", runs=[30, 12, 9], seed=1)
    val = record_with_tf_agents(folder / "traj-val.tfrecord", runs=[15], seed=2)
    return folder, stack_transitions(train), stack_transitions(val)


def test_records_decode_as_tf_agents_own_reader_decodes_them(recorded):
    folder, _, _ = recorded
    path = str(folder / "traj.tfrecord")
    leaves = tf_agents_source.read_spec(path + tf_agents_source.SPEC_SUFFIX)
    ours = tf_agents_source.read_steps(path, leaves)
    theirs = list(example_encoding_dataset.load_tfrecord_dataset([path], add_batch_dim=False))
    assert len(theirs) == len(ours["step_type"]) > 0
    for name in tf_agents_source.TRANSITION_FIELDS:
        np.testing.assert_array_equal(ours[name], np.stack([getattr(t, name) for t in theirs]))
        assert ours[name].dtype == leaves[name].dtype.as_numpy_dtype


def test_source_reads_the_transitions_tf_agents_driver_made(recorded):
    folder, train, val = recorded
    source = sources.open_source(f"tf_agents:{folder / 'traj.tfrecord'}")
    assert (source.obs_dim, source.action_dim, source.reward_keys) == (OBS_DIM, ACTION_DIM, ("default",))
    assert source.inputs == {"train": (str(folder / "traj.tfrecord"),),
                             "val": (str(folder / "traj-val.tfrecord"),)}
    assert source.transitions_hint == {"train": len(train[schema.OBSERVATIONS]),
                                       "val": len(val[schema.OBSERVATIONS])}
    columns, _ = source.read("train", 0, 1)
    assert set(columns) == set(train)
    for name, values in train.items():
        np.testing.assert_array_equal(columns[name], values, err_msg=name)
    # Both kinds of episode end occurred, so masks and terminals were really told apart.
    terminals, masks = train[schema.TERMINALS], train[schema.mask_feature("default")]
    assert np.any((terminals == 1) & (masks == 0)) and np.any((terminals == 1) & (masks == 1))


def test_preprocess_converts_tf_agents_files_exactly(recorded, tmp_path):
    folder, train, val = recorded
    output = tmp_path / "dataset"
    metadata = preprocess.preprocess(f"tf_agents:{folder / 'traj.tfrecord'}", str(output))
    assert metadata["source"] == f"tf_agents:{folder / 'traj.tfrecord'}"
    assert metadata["reward_keys"] == ["default"]
    assert (metadata["obs_dim"], metadata["action_dim"]) == (OBS_DIM, ACTION_DIM)
    for split, expected in (("train", train), ("val", val)):
        count = len(expected[schema.OBSERVATIONS])
        assert metadata["counts"][split] == count
        dataset = reader.make_dataset(str(output), split=split, task="default", batch_size=count,
                                      shuffle=False, repeat=False, drop_remainder=False)
        (batch,) = list(dataset)
        features = schema.batch_features("default")
        for key, feature in features.items():
            np.testing.assert_array_equal(batch[key].numpy(), expected[feature], err_msg=f"{split} {key}")


def write_spec_only(path, spec):
    """A trajectory file with no records and the .spec TF-Agents writes for `spec`."""
    path.write_bytes(b"")
    example_encoding_dataset.encode_spec_to_file(str(path) + tf_agents_source.SPEC_SUFFIX, spec)
    return str(path)


def trajectory_spec(observation=None, action=None, reward=None):
    observation = observation or tensor_spec.TensorSpec((OBS_DIM,), tf.float32, "observation")
    action = action or tensor_spec.BoundedTensorSpec((ACTION_DIM,), tf.float32, -1.0, 1.0, "action")
    time_step_spec = ts.time_step_spec(observation, reward)
    return trajectory.from_transition(time_step_spec, policy_step.PolicyStep(action, (), ()),
                                      time_step_spec)


@pytest.mark.parametrize("spec, message", [
    (trajectory_spec(action=tensor_spec.BoundedTensorSpec((), tf.int64, 0, 3, "action")),
     r"field action is shape \[\] dtype int64.*continuous actions"),
    (trajectory_spec(action=tensor_spec.BoundedTensorSpec((ACTION_DIM,), tf.float32, -2.0, 2.0)),
     r"field action is bounded to \[-2.0, 2.0\].*rescale"),
    (trajectory_spec(observation={"pixels": tensor_spec.TensorSpec((8, 8, 3), tf.uint8),
                                  "state": tensor_spec.TensorSpec((3,), tf.float32)}),
     r"field observation is a nest \(observation/pixels, observation/state\).*flatten"),
    (trajectory_spec(observation=tensor_spec.TensorSpec((8, 8, 3), tf.uint8)),
     r"field observation is shape \[8, 8, 3\] dtype uint8.*vector"),
    (trajectory_spec(reward=tensor_spec.TensorSpec((2,), tf.float32)),
     r"field reward is shape \[2\] dtype float32.*one reward per step"),
    ({"observation": tensor_spec.TensorSpec((OBS_DIM,), tf.float32)},
     r"no field step_type"),
])
def test_spec_that_is_no_continuous_transition_is_refused(tmp_path, spec, message):
    path = write_spec_only(tmp_path / "bad.tfrecord", spec)
    with pytest.raises(DataError, match=message) as caught:
        sources.open_source(f"tf_agents:{path}")
    assert path + tf_agents_source.SPEC_SUFFIX in str(caught.value)


def test_missing_spec_and_broken_stream_are_refused(recorded, tmp_path):
    lonely = tmp_path / "lonely.tfrecord"
    lonely.write_bytes((recorded[0] / "traj.tfrecord").read_bytes())
    with pytest.raises(DataError, match=r"lonely.tfrecord.spec: spec file not found"):
        sources.open_source(f"tf_agents:{lonely}")
    # Record 1 announces LAST but record 2 is MID: two streams interleaved.
    with pytest.raises(DataError, match=r"x.tfrecord: record 1 announces a LAST step but record 2 is MID"):
        tf_agents_source.transition_rows(np.array([0, 1, 1, 1]), np.array([1, 2, 1, 1]), "x.tfrecord")


# The policy side: a tiny SORL agent exported by serving/export.py, run by TF-Agents' drivers.


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from models.sorl import SORLAgent
    from pipeline.config import make_run_config
    from serving.export import export_saved_model

    config = make_run_config("cube", {"actor_hidden_dims": (16, 16), "critic_hidden_dims": (16, 16)}).agent
    agent = SORLAgent(config, 28, 5)  # cube-single: 28 observations, 5 actions
    base = tmp_path_factory.mktemp("export")
    return export_saved_model(agent, str(base), budgets=(2,), best_of=((2, 2),), default_euler_steps=2)


def cube_environment(seed):
    import ogbench
    from interop.tf_agents.environment import GymnasiumPyEnvironment

    env = ogbench.make_env_and_datasets(CUBE_TASK1, env_only=True, success_timing="post")
    return GymnasiumPyEnvironment(env, seed=seed)


def saved_model_actions(path, signature, observations, seeds):
    """What the SavedModel itself answers, one row per call as a single-env client sends them."""
    function = tf.saved_model.load(path).signatures[signature]
    return np.stack([
        function(observations=tf.constant(o[None]), seed=tf.constant([s], tf.int64))["actions"].numpy()[0]
        for o, s in zip(observations, seeds)
    ])


@pytest.mark.parametrize("signature", ["act_k2", "act_k2_best_of_2"])
def test_py_policy_in_py_driver_acts_as_the_saved_model(saved_model, signature):
    from interop.tf_agents.policy import SavedModelPyPolicy

    env = cube_environment(seed=0)
    policy = SavedModelPyPolicy(saved_model, signature, seed=1000,
                                observation_spec=env.observation_spec())
    steps, returns, lengths, infos = [], py_metrics.AverageReturnMetric(), \
        py_metrics.AverageEpisodeLengthMetric(), []
    driver = py_driver.PyDriver(env, policy, [steps.append, returns, lengths],
                                info_observers=[infos.append], max_episodes=1)
    driver.run(env.reset())
    # info_observers get one info per driver step: the episode's last step carries OGBench's
    # success flag (the boundary step after it carries the reset's info).
    (last,) = [i for i, step in enumerate(steps) if step.is_last()]
    assert "success" in infos[last]
    steps = [step for step in steps if not step.is_boundary()]
    assert steps[-1].is_last() and 0 < len(steps) <= 200  # one whole episode (time limit 200)
    observations = np.stack([step.observation for step in steps])
    actions = np.stack([step.action for step in steps])
    expected = saved_model_actions(saved_model, signature + "_seeded", observations,
                                   1000 + np.arange(len(steps)))
    np.testing.assert_array_equal(actions, expected)
    # Fresh noise each step (the seed advances); an untrained actor saturates some rows at +-1.
    assert np.all(np.abs(actions) <= 1) and len(np.unique(actions, axis=0)) > len(actions) // 2
    assert lengths.result() == len(steps)
    assert returns.result() == pytest.approx(sum(float(step.reward) for step in steps))


def test_tf_policy_acts_as_the_saved_model_in_graph_and_in_py_driver(saved_model):
    from interop.tf_agents.policy import SavedModelTFPolicy

    policy = SavedModelTFPolicy(saved_model, "act_k2", seed=7)
    observations = tf.random.stateless_normal([3, 28], seed=[1, 2])
    time_step = ts.restart(observations, batch_size=3)
    act = tf.function(lambda: policy.action(time_step).action)
    first, second = act().numpy(), act().numpy()
    signature = tf.saved_model.load(saved_model).signatures["act_k2_seeded"]
    for actions, seeds in ((first, [7, 8, 9]), (second, [10, 11, 12])):
        expected = signature(observations=observations, seed=tf.constant(seeds, tf.int64))["actions"]
        np.testing.assert_allclose(actions, expected.numpy(), atol=1e-6, rtol=0)

    env = cube_environment(seed=1)
    steps = []
    eager = py_tf_eager_policy.PyTFEagerPolicy(SavedModelTFPolicy(saved_model, "act_k2", seed=50))
    py_driver.PyDriver(env, eager, [steps.append], max_steps=10).run(env.reset())
    observations = np.stack([step.observation for step in steps])
    expected = saved_model_actions(saved_model, "act_k2_seeded", observations, 50 + np.arange(10))
    np.testing.assert_array_equal(np.stack([step.action for step in steps]), expected)


def test_tf_policy_survives_tf_agents_policy_saver(saved_model, tmp_path):
    from interop.tf_agents.policy import SavedModelTFPolicy

    policy_saver.PolicySaver(SavedModelTFPolicy(saved_model, "act_k2", seed=90)).save(
        str(tmp_path / "policy"))
    restored = py_tf_eager_policy.SavedModelPyTFEagerPolicy(str(tmp_path / "policy"),
                                                            load_specs_from_pbtxt=True)
    observation = np.linspace(-1, 1, 28, dtype=np.float32)
    # The seed counter was saved at 90; loading makes one warm-up call on dummy data (TF-Agents'
    # SavedModelPyTFEagerPolicy does), so the first real call uses seed 91.
    action = restored.action(ts.restart(observation)).action
    np.testing.assert_array_equal(action, saved_model_actions(saved_model, "act_k2_seeded",
                                                              observation[None], [91])[0])


def test_policy_refuses_a_wrong_environment_or_signature(saved_model):
    from interop.tf_agents.policy import SavedModelPyPolicy

    with pytest.raises(ValueError, match=r"takes observations \[28\]"):
        SavedModelPyPolicy(saved_model, "act_k2",
                           observation_spec=array_spec.ArraySpec((OBS_DIM,), np.float32))
    with pytest.raises(ValueError, match=r"no signature 'serving_default_seeded'.*act_k2_seeded"):
        SavedModelPyPolicy(saved_model, "serving_default", seed=0)
    unseeded = SavedModelPyPolicy(os.path.dirname(saved_model))  # the model base path
    assert unseeded.signature.signature_name == "serving_default" and not unseeded.signature.seeded
