"""serving/server.py through TF Serving's own client APIs: gRPC stubs and plain HTTP/JSON."""
import json
import os
import shutil
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import export
from serving.server import ModelServer

MODEL = "sorl"
MAX_BATCH = 16


@pytest.fixture(scope="module")
def server(serve_export):
    return serve_export(max_batch_size=MAX_BATCH)


@pytest.fixture(scope="module")
def stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(inputs, signature_name="", model=MODEL, version=None):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = version
    for alias, value in inputs.items():
        request.inputs[alias].CopyFrom(tf.make_tensor_proto(value))
    return request


def rest(server, path, body=None):
    """(HTTP status, parsed JSON) of GET (body None) or POST (body: dict or raw bytes)."""
    url = f"http://127.0.0.1:{server.rest_api_port}{path}"
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


SEEDED = [("act_k1_seeded", 1, 1), ("act_k4_seeded", 4, 1), ("act_k8_seeded", 8, 1),
          ("act_k4_best_of_8_seeded", 4, 8)]


@pytest.mark.parametrize("signature,steps,num_samples", SEEDED)
def test_grpc_predict_returns_the_agents_actions(stub, agent, expected, observations, signature,
                                                 steps, num_samples):
    seeds = np.array([5, 6, 7, 8, 9], np.int64)
    response = stub.Predict(predict_request({"observations": observations, "seed": seeds},
                                            signature), timeout=60)
    np.testing.assert_allclose(tf.make_ndarray(response.outputs["actions"]),
                               expected(agent, observations, seeds, steps, num_samples), atol=1e-5)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 1
    assert response.model_spec.signature_name == signature


def test_grpc_default_signature_answers_without_a_signature_name(stub, agent, observations):
    response = stub.Predict(predict_request({"observations": observations}), timeout=60)
    actions = tf.make_ndarray(response.outputs["actions"])
    assert actions.shape == (len(observations), agent.action_dim)
    assert np.all(np.abs(actions) <= 1.0)
    assert response.model_spec.signature_name == "serving_default"


def test_grpc_metadata_and_status(stub, model_stub, agent):
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = MODEL
    request.metadata_field.append("signature_def")
    response = stub.GetModelMetadata(request, timeout=60)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_map)
    default = signature_map.signature_def["serving_default"]
    assert [d.size for d in default.inputs["observations"].tensor_shape.dim] == [-1, agent.obs_dim]
    assert "act_k4_best_of_8_seeded" in signature_map.signature_def
    assert response.model_spec.version.value == 1

    status = model_stub.GetModelStatus(
        get_model_status_pb2.GetModelStatusRequest(model_spec={"name": MODEL}), timeout=60)
    assert [(s.version, s.state) for s in status.model_version_status] == [
        (1, get_model_status_pb2.ModelVersionStatus.AVAILABLE)]


def test_rest_rows_and_columns_return_the_agents_actions(server, agent, expected, observations):
    seeds = [21, 22, 23, 24, 25]
    want = expected(agent, observations, seeds, 4, 8)
    rows = [{"observations": obs.tolist(), "seed": seed} for obs, seed in zip(observations, seeds)]
    status, body = rest(server, f"/v1/models/{MODEL}:predict",
                        {"signature_name": "act_k4_best_of_8_seeded", "instances": rows})
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["predictions"], np.float32), want, atol=1e-5)
    status, body = rest(server, f"/v1/models/{MODEL}/versions/1:predict",
                        {"signature_name": "act_k4_best_of_8_seeded",
                         "inputs": {"observations": observations.tolist(), "seed": seeds}})
    assert status == 200, body
    np.testing.assert_allclose(np.array(body["outputs"], np.float32), want, atol=1e-5)


def test_rest_plain_rows_use_serving_default(server, agent, observations):
    status, body = rest(server, f"/v1/models/{MODEL}:predict",
                        {"instances": observations.tolist()})
    assert status == 200, body
    actions = np.array(body["predictions"])
    assert actions.shape == (len(observations), agent.action_dim)
    assert np.all(np.abs(actions) <= 1.0)


def test_rest_status_and_metadata_look_like_tf_serving(server, agent):
    assert rest(server, f"/v1/models/{MODEL}") == (200, {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]})
    status, body = rest(server, f"/v1/models/{MODEL}/versions/1/metadata")
    assert status == 200
    assert body["model_spec"] == {"name": MODEL, "version": "1", "signature_name": ""}
    signature = body["metadata"]["signature_def"]["signature_def"]["act_k2_seeded"]
    assert signature["inputs"]["seed"]["dtype"] == "DT_INT64"
    assert [d["size"] for d in signature["outputs"]["actions"]["tensor_shape"]["dim"]] == [
        "-1", str(agent.action_dim)]


def good_inputs(rows=2, obs_dim=6):
    return {"observations": np.zeros([rows, obs_dim], np.float32)}


# (what is wrong, request kwargs, gRPC code, words the message must contain)
BAD_GRPC = [
    ("unknown signature", dict(inputs=good_inputs(), signature_name="act_k3"),
     grpc.StatusCode.INVALID_ARGUMENT, "signature 'act_k3' not found"),
    ("unknown model", dict(inputs=good_inputs(), model="other"),
     grpc.StatusCode.NOT_FOUND, "other"),
    ("unknown version", dict(inputs=good_inputs(), version=9),
     grpc.StatusCode.NOT_FOUND, "Specific(sorl, 9)"),
    ("wrong dtype", dict(inputs={"observations": np.zeros([2, 6], np.float64)}),
     grpc.StatusCode.INVALID_ARGUMENT, "must be float32, got float64"),
    ("wrong width", dict(inputs={"observations": np.zeros([2, 5], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "dimension 1 is 5, expected 6"),
    ("wrong rank", dict(inputs={"observations": np.zeros([6], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "rank 2"),
    ("NaN", dict(inputs={"observations": np.full([2, 6], np.nan, np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "non-finite value nan"),
    ("empty batch", dict(inputs={"observations": np.zeros([0, 6], np.float32)}),
     grpc.StatusCode.INVALID_ARGUMENT, "empty batch"),
    ("oversize batch", dict(inputs=good_inputs(rows=MAX_BATCH + 1)),
     grpc.StatusCode.INVALID_ARGUMENT, f"max_batch_size={MAX_BATCH}"),
    ("missing seed", dict(inputs=good_inputs(), signature_name="act_k1_seeded"),
     grpc.StatusCode.INVALID_ARGUMENT, "missing: ['seed']"),
    ("extra input", dict(inputs={**good_inputs(), "seed": np.zeros([2], np.int64)}),
     grpc.StatusCode.INVALID_ARGUMENT, "unexpected: ['seed']"),
    ("seed rows differ", dict(inputs={**good_inputs(), "seed": np.zeros([3], np.int64)},
                              signature_name="act_k1_seeded"),
     grpc.StatusCode.INVALID_ARGUMENT, "different numbers of rows"),
]


@pytest.mark.parametrize("problem,kwargs,code,words", BAD_GRPC, ids=[b[0] for b in BAD_GRPC])
def test_grpc_bad_request_gets_a_clear_error_and_the_server_keeps_serving(
        stub, problem, kwargs, code, words):
    with pytest.raises(grpc.RpcError) as caught:
        stub.Predict(predict_request(**kwargs), timeout=60)
    assert caught.value.code() == code
    assert words in caught.value.details()
    assert stub.Predict(predict_request(good_inputs()), timeout=60).outputs["actions"]


OBS = [[0.0] * 6]
BAD_REST = [
    ("unknown signature", f"/v1/models/{MODEL}:predict",
     {"signature_name": "nope", "instances": OBS}, 400, "signature 'nope' not found"),
    ("unknown model", "/v1/models/other:predict", {"instances": OBS}, 404, "other"),
    ("unknown version", f"/v1/models/{MODEL}/versions/4:predict", {"instances": OBS}, 404,
     "Specific(sorl, 4)"),
    ("unknown version status", f"/v1/models/{MODEL}/versions/4", None, 404, "version 4"),
    ("wrong width", f"/v1/models/{MODEL}:predict", {"instances": [[0.0] * 5]}, 400,
     "dimension 1 is 5, expected 6"),
    ("ragged rows", f"/v1/models/{MODEL}:predict", {"instances": [[0.0] * 6, [0.0] * 5]}, 400,
     "not a dense"),
    ("strings", f"/v1/models/{MODEL}:predict", {"instances": [["a"] * 6]}, 400, "strings"),
    ("NaN", f"/v1/models/{MODEL}:predict", b'{"instances": [[NaN, 0, 0, 0, 0, 0]]}', 400,
     "non-finite"),
    ("empty batch", f"/v1/models/{MODEL}:predict", {"instances": []}, 400, "empty"),
    ("oversize batch", f"/v1/models/{MODEL}:predict", {"instances": OBS * (MAX_BATCH + 1)}, 400,
     f"max_batch_size={MAX_BATCH}"),
    ("decimal seed", f"/v1/models/{MODEL}:predict",
     {"signature_name": "act_k1_seeded", "instances": [{"observations": OBS[0], "seed": 1.5}]},
     400, "must hold int64 values"),
    ("plain rows for two inputs", f"/v1/models/{MODEL}:predict",
     {"signature_name": "act_k1_seeded", "instances": OBS}, 400, "one object per row"),
    ("not JSON", f"/v1/models/{MODEL}:predict", b"{instances", 400, "not valid JSON"),
    ("rows and columns", f"/v1/models/{MODEL}:predict", {"instances": OBS, "inputs": OBS}, 400,
     "exactly one of"),
    ("unknown path", "/v2/models", {"instances": OBS}, 400, "Malformed request"),
    ("classify", f"/v1/models/{MODEL}:classify", {"examples": []}, 400, ":predict"),
]


@pytest.mark.parametrize("problem,path,body,status,words", BAD_REST, ids=[b[0] for b in BAD_REST])
def test_rest_bad_request_gets_a_clear_error_and_the_server_keeps_serving(
        server, problem, path, body, status, words):
    got_status, got_body = rest(server, path, body)
    assert got_status == status, got_body
    assert words in got_body["error"]
    assert rest(server, f"/v1/models/{MODEL}:predict", {"instances": OBS})[0] == 200


def test_new_version_is_served_without_a_restart(export_dir, agent_factory, expected,
                                                 observations, tmp_path):
    shutil.copytree(export_dir, tmp_path / "1")
    newer_agent = agent_factory(seed=1)
    seeds = np.arange(len(observations), dtype=np.int64)
    with ModelServer(MODEL, str(tmp_path), port=0, rest_api_port=None, host="127.0.0.1",
                     file_system_poll_wait_seconds=0.2) as server, \
            grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        request = predict_request({"observations": observations, "seed": seeds}, "act_k2_seeded")
        assert stub.Predict(request, timeout=60).model_spec.version.value == 1
        # A broken folder (a copy still in progress) is reported and skipped, not served.
        (tmp_path / "2").mkdir()
        time.sleep(1.0)
        assert stub.Predict(request, timeout=60).model_spec.version.value == 1
        export.export_saved_model(newer_agent, str(tmp_path))  # version 3
        deadline = time.time() + 120
        while (response := stub.Predict(request, timeout=60)).model_spec.version.value != 3:
            assert time.time() < deadline, "version 3 was not picked up"
            time.sleep(0.2)
        np.testing.assert_allclose(tf.make_ndarray(response.outputs["actions"]),
                                   expected(newer_agent, observations, seeds, 2, 1), atol=1e-5)
        states = {v: (state, message) for v, state, message in server.model.version_states()}
        assert states[3] == ("AVAILABLE", "") and states[1] == ("END", "")
        assert states[2][0] == "END" and "load failed" in states[2][1]
    assert sorted(os.listdir(tmp_path)) == ["1", "2", "3"]  # no temporary folder left behind
