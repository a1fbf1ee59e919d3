"""An agent with action bounds and observation standardisation (a run on a dataset's own rewards),
exported and served: raw observations in, env-unit actions out, equal to the in-process policy."""

import json
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from models.config import AgentConfig
from models.sorl import SORLAgent
from models.units import EnvUnits
from models import sampling
from models.noise import row_seeded_noise
from pipeline import policies
from serving import export
from serving.server import ModelServer

MODEL = "own"
SMALL_NETS = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))
LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 10.0])
MEAN, STD = np.array([5.0, -3.0, 100.0]), np.array([2.0, 0.5, 0.0])  # a constant dimension: std floored


@pytest.fixture(scope="module")
def own_agent():
    units = EnvUnits(tuple(LOW), tuple(HIGH), tuple(MEAN), tuple(np.maximum(STD, 1e-3)))
    return SORLAgent(AgentConfig(**SMALL_NETS, normalize_observations=True), 3, 2, env_units=units)


@pytest.fixture(scope="module")
def served(own_agent, tmp_path_factory):
    base = tmp_path_factory.mktemp("own_export")
    export.export_saved_model(own_agent, str(base), version=1, budgets=(1, 4), best_of=((4, 8),))
    with ModelServer(MODEL, str(base), port=0, rest_api_port=0, host="127.0.0.1",
                     file_system_poll_wait_seconds=-1) as server:
        yield server


def grpc_actions(server, name, inputs):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = name
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    return tf.make_ndarray(response.outputs["actions"])


def rest_predict(server, body):
    request = urllib.request.Request(f"http://127.0.0.1:{server.rest_api_port}/v1/models/{MODEL}:predict",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_served_actions_equal_the_in_process_policy_in_env_units(own_agent, served):
    observations = (MEAN + np.random.default_rng(1).normal(size=(5, 3)) * [2.0, 0.5, 0.0]).astype(np.float32)
    seeds = np.arange(40, 45, dtype=np.int64)
    for name, k, n in (("act_k4_seeded", 4, 1), ("act_k4_best_of_8_seeded", 4, 8)):
        want = policies.make_agent_policy(own_agent, euler_steps=k, num_samples=n)(observations, seeds)
        # By hand: the [-1, 1] action of the networks on standardised inputs, mapped to [low, high].
        noise = row_seeded_noise(tf.constant(seeds), n, 2)
        unit = sampling.sample_actions(own_agent.actor, own_agent.critic,
                                       ((observations - MEAN) / np.maximum(STD, 1e-3)).astype(np.float32), noise, k,
                                       "mean").numpy()
        np.testing.assert_allclose(want, LOW + (unit + 1) * (HIGH - LOW) / 2, atol=1e-5)
        np.testing.assert_allclose(grpc_actions(served, name, {"observations": observations, "seed": seeds}), want,
                                   atol=1e-5)
        body = rest_predict(served, {"signature_name": name,
                                     "inputs": {"observations": observations.tolist(), "seed": seeds.tolist()}})
        np.testing.assert_allclose(np.array(body["outputs"], np.float32), want, atol=1e-5)
    assert np.any(want[:, 1] > 1.0)  # the second dimension's range is [0, 10]: env units, not [-1, 1]


def test_plain_signatures_answer_within_the_env_bounds(own_agent, served):
    observations = np.tile(MEAN.astype(np.float32), (64, 1))
    actions = np.array(rest_predict(served, {"instances": observations.tolist()})["predictions"])
    assert actions.shape == (64, 2) and np.all(actions >= LOW - 1e-5) and np.all(actions <= HIGH + 1e-5)
