"""serving/export.py: the SavedModel's signatures, their numbers, the warm-up file, publishing."""
import os
import pathlib
import re
import subprocess
import threading

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from models import noise
from serving import export, signatures

REPO = pathlib.Path(__file__).resolve().parents[2]
SAVED_MODEL_CLI = REPO / ".venv" / "bin" / "saved_model_cli"

# (name, k, N) of the default export: budgets 1, 2, 4, 8, best-of 4x8, default k = 4.
VARIANTS = [("act_k1", 1, 1), ("act_k2", 2, 1), ("act_k4", 4, 1), ("act_k8", 8, 1),
            ("act_k4_best_of_8", 4, 8)]
ALL_SIGNATURES = ({name for name, _, _ in VARIANTS} | {f"{name}_seeded" for name, _, _ in VARIANTS}
                  | {"serving_default"})


def parse_saved_model_cli(text: str) -> dict:
    """`saved_model_cli show --all` text -> {signature: {"inputs"|"outputs": {alias: (dtype, shape)},
    "method": str}}."""
    parsed, current, section, alias = {}, None, None, None
    for line in text.splitlines():
        if match := re.match(r"signature_def\['(.+)'\]:", line.strip()):
            current = parsed.setdefault(match[1], {"inputs": {}, "outputs": {}})
        elif current is None:
            continue
        elif match := re.match(r"(inputs|outputs)\['(.+)'\] tensor_info:", line.strip()):
            section, alias = match[1], match[2]
        elif match := re.match(r"dtype: (\w+)", line.strip()):
            current[section][alias] = (match[1], None)
        elif match := re.match(r"shape: \((.*)\)", line.strip()):
            dims = tuple(int(d) for d in match[1].split(",") if d.strip())
            current[section][alias] = (current[section][alias][0], dims)
        elif match := re.match(r"Method name is: (\S+)", line.strip()):
            current["method"] = match[1]
    return parsed


def test_saved_model_cli_lists_every_signature_with_its_shapes(export_dir, agent):
    result = subprocess.run([str(SAVED_MODEL_CLI), "show", "--dir", export_dir, "--all"],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    listed = parse_saved_model_cli(result.stdout)
    assert set(listed) - {"__saved_model_init_op"} == ALL_SIGNATURES
    for name in ALL_SIGNATURES:
        inputs = {"observations": ("DT_FLOAT", (-1, agent.obs_dim))}
        if name.endswith("_seeded"):
            inputs["seed"] = ("DT_INT64", (-1,))
        assert listed[name]["inputs"] == inputs, name
        assert listed[name]["outputs"] == {"actions": ("DT_FLOAT", (-1, agent.action_dim))}, name
        assert listed[name]["method"] == "tensorflow/serving/predict", name


def test_saved_model_cli_run_answers_like_the_agent(export_dir, agent, expected, observations):
    """`saved_model_cli run` loads with the TF1 session loader, as TF Serving does."""
    rows, seeds = observations[:2], [3, 4]
    result = subprocess.run(
        [str(SAVED_MODEL_CLI), "run", "--dir", export_dir, "--tag_set", "serve",
         "--signature_def", "act_k4_best_of_8_seeded",
         "--input_exprs", f"observations={rows.tolist()};seed={seeds}"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.split("Result for output key actions:")[1]
    numbers = [float(x) for x in re.findall(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?", printed)]
    np.testing.assert_allclose(np.reshape(numbers, [2, agent.action_dim]),
                               expected(agent, rows, seeds, 4, 8), atol=1e-6)


def test_tf1_session_loader_runs_every_signature(export_dir, agent, expected, observations):
    """The graph, variables and restore op work without TF2's object loader (TF Serving's path)."""
    seeds = np.array([9, 8, 7, 6, 5], np.int64)
    want = {name: expected(agent, observations, seeds, k, n) for name, k, n in VARIANTS}
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
        for name in sorted(ALL_SIGNATURES):
            signature = meta_graph.signature_def[name]
            feed = {signature.inputs["observations"].name: observations}
            if name.endswith("_seeded"):
                feed[signature.inputs["seed"].name] = seeds
            actions = session.run(signature.outputs["actions"].name, feed)
            assert actions.shape == (len(observations), agent.action_dim), name
            if name.endswith("_seeded"):
                np.testing.assert_allclose(actions, want[name[:-len("_seeded")]], atol=1e-5,
                                           err_msg=name)


@pytest.fixture(scope="module")
def loaded(export_dir):
    return tf.saved_model.load(export_dir)


def test_loaded_signatures_have_the_serving_shapes(loaded, agent):
    assert set(loaded.signatures.keys()) == ALL_SIGNATURES
    for name in ALL_SIGNATURES:
        function = loaded.signatures[name]
        specs = function.structured_input_signature[1]
        assert specs["observations"].shape.as_list() == [None, agent.obs_dim]
        assert specs["observations"].dtype == tf.float32
        if name.endswith("_seeded"):
            assert specs["seed"].shape.as_list() == [None] and specs["seed"].dtype == tf.int64
        assert function.structured_outputs["actions"].shape.as_list() == [None, agent.action_dim]


@pytest.mark.parametrize("name,steps,num_samples", VARIANTS)
def test_seeded_signature_equals_agent_act_on_the_same_noise(loaded, agent, expected, observations,
                                                             name, steps, num_samples):
    seeds = np.array([3, 1, 4, 1, 5], np.int64)
    got = loaded.signatures[f"{name}_seeded"](observations=tf.constant(observations),
                                               seed=tf.constant(seeds))["actions"].numpy()
    want = expected(agent, observations, seeds, steps, num_samples)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert np.all(np.abs(got) <= 1.0)


def test_default_budget_is_the_configs_inference_euler_steps(agent, expected, observations, loaded):
    default = agent.config.inference_euler_steps
    planned = signatures.plan_signatures([1, 2], [], default)
    assert [v for v in planned if v.name == "serving_default"] == [
        signatures.SignatureVariant("serving_default", default, 1, False)]
    functions = signatures.make_signatures(agent, planned, agent.obs_dim, agent.action_dim)
    assert functions["serving_default"] is functions[f"act_k{default}"]
    seeds = np.arange(len(observations), dtype=np.int64)
    got = functions[f"act_k{default}_seeded"](tf.constant(observations), tf.constant(seeds))
    np.testing.assert_allclose(got["actions"].numpy(),
                               expected(agent, observations, seeds, default, 1), atol=1e-5)


@pytest.mark.parametrize("name", [f"{name}_seeded" for name, _, _ in VARIANTS])
def test_batched_rows_equal_single_row_calls(loaded, observations, name):
    seeds = np.array([10, 11, 12, 13, 14], np.int64)
    function = loaded.signatures[name]
    batched = function(observations=tf.constant(observations),
                       seed=tf.constant(seeds))["actions"].numpy()
    for row in range(len(observations)):
        single = function(observations=tf.constant(observations[row:row + 1]),
                          seed=tf.constant(seeds[row:row + 1]))["actions"].numpy()
        np.testing.assert_allclose(single[0], batched[row], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", sorted({name for name, _, _ in VARIANTS} | {"serving_default"}))
def test_unseeded_signatures_draw_fresh_noise_per_row_and_call(loaded, agent, name):
    same_observation = np.repeat(np.random.default_rng(1).normal(size=[1, agent.obs_dim]), 16, 0)
    function = loaded.signatures[name]
    first = function(observations=tf.constant(same_observation, tf.float32))["actions"].numpy()
    second = function(observations=tf.constant(same_observation, tf.float32))["actions"].numpy()
    assert first.shape == (16, agent.action_dim)
    assert np.all(np.isfinite(first)) and np.all(np.abs(first) <= 1.0)
    assert len({tuple(row) for row in first}) > 1  # rows get their own noise
    assert not np.array_equal(first, second)  # calls get new noise


def test_each_load_of_an_export_draws_its_own_fresh_noise(export_dir, agent):
    # Two server processes (or one after a restart) must not replay each other's noise: the
    # noise key is drawn from the OS when a load initialises the export, for the TF2 loader and
    # for the TF1 session loader that TF Serving uses.
    observations = np.zeros([4, agent.obs_dim], np.float32)
    first_calls = [tf.saved_model.load(export_dir).signatures["act_k1"](
        observations=tf.constant(observations))["actions"].numpy() for _ in range(2)]
    assert not np.array_equal(*first_calls)
    session_calls = []
    for _ in range(2):
        with tf.Graph().as_default(), tf.compat.v1.Session() as session:
            meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], export_dir)
            signature = meta_graph.signature_def["act_k1"]
            session_calls.append(session.run(signature.outputs["actions"].name,
                                             {signature.inputs["observations"].name: observations}))
    assert not np.array_equal(*session_calls)


def test_xla_export_is_verified_and_draws_noise_inside_the_compiled_function(agent, tmp_path):
    # jit_compile: a plain signature is one XLA computation including its noise stream; the
    # export's own verification (seeded parity with the agent, batch vs rows, TF1 loader) passes.
    version_dir = export.export_saved_model(agent, str(tmp_path), budgets=(1, 2),
                                            best_of=((2, 3),), default_euler_steps=2, jit_compile=True)
    loaded = tf.saved_model.load(version_dir)
    assert loaded.act_k2.concrete_functions[0].function_def.attr["_XlaMustCompile"].b
    # The noise stream is saved as a generic resource, not under a registered Python class, so
    # exports load whichever module defines NoiseStream (it moved from serving.signatures to models.noise).
    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString(pathlib.Path(version_dir, "saved_model.pb").read_bytes())
    nodes = saved_model.meta_graphs[0].object_graph_def.nodes
    stream = next(nodes[c.node_id] for c in nodes[0].children if c.local_name == "noise_stream")
    assert stream.WhichOneof("kind") == "resource" and not stream.registered_name
    observations = tf.zeros([5, agent.obs_dim])
    first = loaded.act_k2_best_of_3(observations)["actions"].numpy()
    second = loaded.act_k2_best_of_3(observations)["actions"].numpy()
    assert np.all(np.abs(first) <= 1) and not np.array_equal(first, second)
    assert len({tuple(row) for row in first}) > 1


@pytest.mark.parametrize("jit_compile", [False, True], ids=["graph", "xla"])
def test_concurrent_calls_never_share_noise(agent, tmp_path, jit_compile):
    # TF Serving runs requests concurrently: each call must draw its own noise (the same
    # observation from 4 threads x 150 calls gives 600 different actions).
    version_dir = export.export_saved_model(agent, str(tmp_path), budgets=(1,), best_of=(),
                                            default_euler_steps=1, jit_compile=jit_compile, verify=False)
    function = tf.saved_model.load(version_dir).signatures["act_k1"]
    observation = tf.zeros([1, agent.obs_dim])
    actions, lock = [], threading.Lock()

    def client():
        got = [function(observations=observation)["actions"].numpy()[0] for _ in range(150)]
        with lock:
            actions.extend(got)

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Equal noise gives equal actions; equal actions from different noise need every coordinate
    # clipped to the same bound, so compare the actions with no clipped coordinate.
    unclipped = [a.tobytes() for a in actions if np.all(np.abs(a) < 1.0)]
    assert len(actions) == 600 and len(unclipped) >= 100
    assert len(set(unclipped)) == len(unclipped)


def test_signatures_are_also_callable_functions_of_the_loaded_model(loaded, observations):
    seeds = tf.constant(np.arange(len(observations)), tf.int64)
    by_signature = loaded.signatures["act_k4_seeded"](observations=tf.constant(observations),
                                                      seed=seeds)["actions"].numpy()
    by_function = loaded.act_k4_seeded(tf.constant(observations), seeds)["actions"].numpy()
    np.testing.assert_array_equal(by_function, by_signature)
    assert loaded.act_k1(tf.constant(observations))["actions"].shape == observations.shape[:1] + (
        by_signature.shape[1],)


def test_loaded_function_calls_the_attribute_directly_and_answers_like_the_signature(
        loaded, observations):
    # What the server and evaluate.py --saved_model call: the attribute's concrete function,
    # not the signature's graph wrapper, with the signature's keyword inputs and dict outputs.
    seeds = tf.constant(np.arange(len(observations)), tf.int64)
    for name in sorted(ALL_SIGNATURES):
        function = signatures.loaded_function(loaded, name)
        assert function is getattr(loaded, name).concrete_functions[0], name
    inputs = dict(observations=tf.constant(observations), seed=seeds)
    got = signatures.loaded_function(loaded, "act_k4_best_of_8_seeded")(**inputs)
    want = loaded.signatures["act_k4_best_of_8_seeded"](**inputs)
    assert set(got) == set(want) == {"actions"}
    np.testing.assert_array_equal(got["actions"].numpy(), want["actions"].numpy())


def test_loaded_function_falls_back_to_the_signature(tmp_path):
    # A SavedModel with signatures only, and attributes of the same name that take other inputs,
    # or other keywords, than their SignatureDef: all are called through .signatures[name].
    spec = tf.TensorSpec([None, 3], tf.float32, name="observations")
    module = tf.Module()
    module.double = tf.function(lambda observations: {"actions": 2.0 * observations},
                                input_signature=[spec])
    module.other = tf.function(lambda x: {"actions": x + 1.0},
                               input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
    module.renamed = tf.function(lambda x: {"actions": 2.0 * x}, input_signature=[spec])
    tf.saved_model.save(module, str(tmp_path / "attributes"), signatures={
        "double": module.double, "other": module.double, "renamed": module.renamed})
    tf.saved_model.save(tf.Module(), str(tmp_path / "plain"), signatures={
        "double": module.double.get_concrete_function()})
    with_attributes = tf.saved_model.load(str(tmp_path / "attributes"))
    plain = tf.saved_model.load(str(tmp_path / "plain"))
    assert signatures.loaded_function(with_attributes, "double") is (
        with_attributes.double.concrete_functions[0])
    # "renamed": its Python argument is x, its SignatureDef input 'observations' (the spec's name).
    for loaded_model, name in ((with_attributes, "other"), (with_attributes, "renamed"), (plain, "double")):
        function = signatures.loaded_function(loaded_model, name)
        assert function is loaded_model.signatures[name]
        np.testing.assert_array_equal(
            function(observations=tf.ones([2, 3]))["actions"].numpy(), np.full([2, 3], 2.0))


def test_warmup_file_holds_one_predict_log_per_signature(export_dir, loaded, agent):
    path = os.path.join(export_dir, "assets.extra", "tf_serving_warmup_requests")
    records = [prediction_log_pb2.PredictionLog.FromString(r.numpy())
               for r in tf.data.TFRecordDataset(path)]
    names = [r.predict_log.request.model_spec.signature_name for r in records]
    assert sorted(names) == sorted(ALL_SIGNATURES)
    for record in records:
        request = record.predict_log.request
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        assert inputs["observations"].shape == (1, agent.obs_dim)
        assert inputs["observations"].dtype == np.float32
        outputs = loaded.signatures[request.model_spec.signature_name](
            **{alias: tf.constant(value) for alias, value in inputs.items()})
        assert outputs["actions"].shape == (1, agent.action_dim)


def test_next_version_is_one_above_the_largest_integer_folder(tmp_path):
    assert export.next_version(str(tmp_path / "missing")) == 1
    for name in ["1", "7", "abc", ".tmp-export-9-x", "12x"]:
        (tmp_path / name).mkdir()
    (tmp_path / "20").write_text("a file, not a version folder")
    assert export.next_version(str(tmp_path)) == 8


def test_existing_version_is_refused_and_nothing_is_written(agent, tmp_path):
    (tmp_path / "3").mkdir()
    with pytest.raises(FileExistsError, match="3"):
        export.export_saved_model(agent, str(tmp_path), version=3)
    assert sorted(os.listdir(tmp_path)) == ["3"]


class _BatchDependentAgent:
    """An agent whose batched answers drift from its single-row answers: must fail verification."""

    def __init__(self, agent):
        self.config, self.obs_dim, self.action_dim = agent.config, agent.obs_dim, agent.action_dim
        self.actor, self.critic, self._agent = agent.actor, agent.critic, agent

    def act(self, observations, **kwargs):
        actions = self._agent.act(observations, **kwargs)
        rows = tf.cast(tf.range(tf.shape(actions)[0]), tf.float32)[:, None]
        return actions * 0.5 + 0.01 * rows


def test_failed_verification_publishes_nothing(agent, tmp_path):
    with pytest.raises(export.ExportVerificationError, match="single-row"):
        export.export_saved_model(_BatchDependentAgent(agent), str(tmp_path), budgets=(1,),
                                  best_of=(), default_euler_steps=1)
    assert os.listdir(tmp_path) == []


def test_plan_refuses_bad_budgets():
    with pytest.raises(ValueError, match="budget 0"):
        signatures.plan_signatures([0], [], 4)
    with pytest.raises(ValueError, match="candidates"):
        signatures.plan_signatures([1], [(4, 1)], 4)
    assert export.parse_best_of("4x8, 8x16") == ((4, 8), (8, 16))
    with pytest.raises(ValueError, match="KxN"):
        export.parse_best_of("4-8")



def test_adaptive_signatures_equal_adaptive_act_on_the_same_noise(agent, observations,
                                                                   seeded_row_noise, tmp_path):
    from models import adaptive

    version_dir = export.export_saved_model(agent, str(tmp_path), budgets=(1,), best_of=(),
                                            default_euler_steps=1, adaptive=(4, 0.0))
    loaded = tf.saved_model.load(version_dir)
    assert set(loaded.signatures.keys()) == {"act_k1", "act_k1_seeded", "serving_default",
                                             "act_adaptive", "act_adaptive_seeded"}
    seeds = np.array([2, 7, 1, 8, 2], np.int64)
    got = loaded.signatures["act_adaptive_seeded"](observations=tf.constant(observations),
                                                   seed=tf.constant(seeds))
    actions, steps_used = adaptive.adaptive_act(
        agent, tf.constant(observations), noise=tf.constant(seeded_row_noise(seeds, 1)),
        max_euler_steps=4, threshold=0.0)
    np.testing.assert_allclose(got["actions"].numpy(), actions.numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["steps_used"].numpy(), steps_used.numpy())
    fresh = loaded.signatures["act_adaptive"](observations=tf.constant(observations))
    assert fresh["actions"].shape == (len(observations), agent.action_dim)
    assert set(fresh["steps_used"].numpy().tolist()) <= {1, 2, 4}


def save_run(workdir, agent):
    """RUN/config.json as training writes it for `agent`."""
    import dataclasses

    from pipeline.config import make_run_config, save_run_config
    run = dataclasses.replace(make_run_config("cube"), agent=agent.config)
    save_run_config(workdir, run, agent.obs_dim, agent.action_dim, data_dir=None, strategy="default")


def test_cli_exports_the_latest_checkpoint_of_a_run(agent_factory, expected, observations,
                                                    tmp_path):
    from models import checkpoints
    trained = agent_factory(seed=5)
    for weight in trained.actor.weights:  # "training": weights a fresh agent would not have
        weight.assign(weight * 1.5 + 0.01)
    workdir = str(tmp_path / "run")
    save_run(workdir, trained)
    step = tf.Variable(7, dtype=tf.int64)
    checkpoints.make_checkpoint_manager(trained, workdir, step).save(checkpoint_number=7)
    base = str(tmp_path / "models")
    export.main([f"--workdir={workdir}", f"--model_base_path={base}", "--budgets=2", "--best_of=", "--default_steps=2"])
    version_dir = os.path.join(base, "1")  # the first version under an empty base path
    loaded = tf.saved_model.load(version_dir)
    assert set(loaded.signatures.keys()) == {"act_k2", "act_k2_seeded", "serving_default"}
    seeds = np.arange(len(observations), dtype=np.int64)
    got = loaded.signatures["act_k2_seeded"](observations=tf.constant(observations),
                                             seed=tf.constant(seeds))["actions"].numpy()
    np.testing.assert_allclose(got, expected(trained, observations, seeds, 2, 1), atol=1e-5)


def test_cli_cap_step_level_applies_to_budgets_beyond_m_disc(agent_factory, observations, tmp_path):
    from models import checkpoints
    from models.sampling import euler_sample
    trained = agent_factory(seed=6)
    workdir = str(tmp_path / "run")
    save_run(workdir, trained)
    checkpoints.make_checkpoint_manager(trained, workdir, tf.Variable(1, dtype=tf.int64)).save(checkpoint_number=1)
    k = 2 * trained.config.m_disc
    export.main([f"--workdir={workdir}", f"--model_base_path={tmp_path / 'models'}",
                 f"--budgets={k}", "--best_of=", f"--default_euler_steps={k}", "--cap_step_level"])
    version_dir = str(tmp_path / "models" / "1")
    seeds = np.arange(len(observations), dtype=np.int64)
    got = tf.saved_model.load(version_dir).signatures[f"act_k{k}_seeded"](
        observations=tf.constant(observations), seed=tf.constant(seeds))["actions"].numpy()
    row_noise = noise.row_seeded_noise(tf.constant(seeds), 1, trained.action_dim)[:, 0, :]
    capped = euler_sample(trained.actor, observations, row_noise, k, max_level=np.log2(trained.config.m_disc))
    np.testing.assert_allclose(got, capped.numpy(), atol=1e-5)
    assert not np.allclose(got, euler_sample(trained.actor, observations, row_noise, k).numpy(), atol=1e-5)


def test_cap_step_level_is_an_export_argument_and_reaches_the_adaptive_policy(agent, observations, tmp_path):
    from models import adaptive

    k = 2 * agent.config.m_disc
    version_dir = export.export_saved_model(agent, str(tmp_path), budgets=(k,), best_of=(), default_euler_steps=k,
                                            adaptive=(k, 0.0), cap_step_level=True)  # verified against the agent
    loaded = tf.saved_model.load(version_dir)
    seeds = np.arange(len(observations), dtype=np.int64)
    row_noise = noise.row_seeded_noise(tf.constant(seeds), 1, agent.action_dim)
    got = loaded.signatures["act_adaptive_seeded"](observations=tf.constant(observations), seed=tf.constant(seeds))
    want, _ = adaptive.adaptive_act(agent, tf.constant(observations), noise=row_noise, max_euler_steps=k,
                                    cap_step_level=True)
    np.testing.assert_allclose(got["actions"].numpy(), want.numpy(), atol=1e-5)
    plain = loaded.signatures[f"act_k{k}_seeded"](observations=tf.constant(observations), seed=tf.constant(seeds))
    uncapped = agent.act(tf.constant(observations), euler_steps=k, noise=row_noise)
    assert not np.allclose(plain["actions"].numpy(), uncapped.numpy(), atol=1e-5)


def test_cli_accepts_the_old_flag_spellings():
    args = export.parse_args(["--workdir=run", "--default_steps=3", "--adaptive_max_steps=4"])
    assert (args.default_euler_steps, args.adaptive_max_euler_steps, args.cap_step_level) == (3, 4, False)
    args = export.parse_args(["--workdir=run", "--default_euler_steps=2", "--adaptive_max_euler_steps=8",
                              "--cap_step_level"])
    assert (args.default_euler_steps, args.adaptive_max_euler_steps, args.cap_step_level) == (2, 8, True)
