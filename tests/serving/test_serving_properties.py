"""Generated hostile input at both fronts of serving/server.py (hypothesis): every answer is a 4xx /
client-error status or a correct prediction; never a 5xx, a hang or a crash.

Derandomized and bounded (EXAMPLES per test) so that CI runs the same cases in seconds.
"""
import json

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2
from tensorflow_serving.apis import predict_pb2

from serving.limits import ServingLimits

MODEL, OBS_DIM, ACTION_DIM = "sorl", 6, 3
LIMITS = ServingLimits(max_body_bytes=64 << 10, max_batch_size=8, max_json_depth=8,
                       request_timeout_s=2.0, max_decode_bytes=1 << 20)
EXAMPLES = 200
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CLIENT_ERRORS = {400, 404}
GRPC_CLIENT_ERRORS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND,
                      grpc.StatusCode.FAILED_PRECONDITION}
SIGNATURES = ["", "serving_default", "act_k1", "act_k4_seeded", "act_k4_best_of_8", "nope", "\x00"]


@pytest.fixture(scope="module")
def server(serve_export):
    return serve_export(limits=LIMITS)


@pytest.fixture(scope="module")
def predict(server, raw_clients):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield raw_clients.predict(channel)


def check_actions(actions, rows):
    actions = np.asarray(actions, np.float64)
    assert actions.shape == (rows, ACTION_DIM) and np.all(np.abs(actions) <= 1.0)


# JSON values of every kind, nested, including the numbers JSON allows and Python does not.
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.text(max_size=5)
           | st.floats(allow_nan=False, allow_infinity=False, width=32))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=9)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                           max_leaves=80)
# Mostly well-formed rows (so that answers are checked too), sometimes one too many or too wide.
rows = st.tuples(st.integers(0, LIMITS.max_batch_size + 1),
                 st.sampled_from([OBS_DIM] * 4 + [OBS_DIM - 1, OBS_DIM + 1])).flatmap(
    lambda shape: st.lists(st.lists(st.floats(-1e3, 1e3, width=32), min_size=shape[1],
                                    max_size=shape[1]), min_size=shape[0], max_size=shape[0]))
bodies = st.one_of(
    st.builds(lambda s, x: {"signature_name": s, "instances": x}, st.sampled_from(SIGNATURES),
              rows),
    st.builds(lambda x: {"inputs": x}, rows),
    st.builds(lambda x: {"instances": x}, json_values),
    st.builds(lambda x, s: {"instances": [{"observations": r, "seed": s} for r in x],
                            "signature_name": "act_k4_seeded"}, rows, st.integers(-2**65, 2**65)),
    json_values)


@SETTINGS
@given(body=bodies, mangle=st.sampled_from(["none", "truncate", "nan", "bytes"]),
       noise=st.binary(max_size=8))
def test_rest_answers_generated_json_with_a_client_error_or_actions(server, raw_clients, body,
                                                                    mangle, noise):
    data = json.dumps(body).encode()
    if mangle == "truncate":
        data = data[:len(data) // 2]
    elif mangle == "nan":
        data = data.replace(b"0", b"NaN", 1)
    elif mangle == "bytes":
        data = noise + data[len(noise):]
    status, reply = raw_clients.http(server.rest_api_port,
                                     raw_clients.request("POST", f"/v1/models/{MODEL}:predict",
                                                         data), timeout=30)
    event(f"HTTP {status}")  # --hypothesis-show-statistics: how the cases spread
    assert status in CLIENT_ERRORS | {200}, (status, reply)
    if status == 200:
        predictions = reply["predictions"] if "predictions" in reply else reply["outputs"]
        check_actions(predictions, len(np.asarray(predictions)))
    else:
        assert isinstance(reply["error"], str) and reply["error"]


header_values = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12)


@SETTINGS
@given(method=st.sampled_from(["GET", "POST", "PUT", "HEAD", "X"]),
       path=st.sampled_from([f"/v1/models/{MODEL}", f"/v1/models/{MODEL}:predict",
                             f"/v1/models/{MODEL}/versions/1/metadata", "/", "/v1/models/%00",
                             f"/v1/models/{MODEL}/labels/x:predict", "/v1/models/" + "a" * 300]),
       length=st.sampled_from(["exact", "-1", "1e3", " 2", "+2", "2,2", "", "99999999999999"]),
       extra=st.dictionaries(st.sampled_from(["Transfer-Encoding", "Expect", "Connection",
                                              "Content-Type", "X-Junk", "Host"]), header_values,
                             max_size=3))
def test_rest_answers_generated_headers_without_a_server_error(server, raw_clients, method, path,
                                                               length, extra):
    body = b'{"instances": [[0, 0, 0, 0, 0, 0]]}'
    headers = {**extra, "Connection": "close",
               "Content-Length": str(len(body)) if length == "exact" else length}
    if "Transfer-Encoding" in extra:
        headers["Content-Length"] = None  # both at once is refused; tested on its own
    status, reply = raw_clients.http(server.rest_api_port,
                                     raw_clients.request(method, path, body, headers), timeout=30)
    event(f"HTTP {status}")
    # None: the server waited for a body the headers promised and closed at request_timeout_s.
    assert status is None or status < 500, (status, reply)


dtypes = st.sampled_from([1, 2, 3, 9, 7, 10, 19, 0, 99, 1 << 20])  # float, double, int32, ...
dims = st.lists(st.sampled_from([0, 1, 2, 5, 6, 7, 9, -1, 1 << 33, 1 << 62]), max_size=4)


@st.composite
def tensor_protos(draw):
    proto = tensor_pb2.TensorProto(dtype=draw(dtypes))
    for size in draw(dims):
        proto.tensor_shape.dim.add(size=size)
    proto.tensor_shape.unknown_rank = draw(st.booleans()) and draw(st.booleans())
    kind = draw(st.sampled_from(["content", "float_val", "int64_val", "none", "valid", "valid"]))
    if kind == "content":
        proto.tensor_content = draw(st.binary(max_size=256))
    elif kind == "float_val":
        proto.float_val.extend(draw(st.lists(st.floats(width=32), max_size=64)))
    elif kind == "int64_val":
        proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=16)))
    elif kind == "valid":
        rows = draw(st.integers(1, LIMITS.max_batch_size))
        proto = tensor_pb2.TensorProto(dtype=1, tensor_content=np.asarray(draw(st.lists(
            st.floats(-10, 10, width=32), min_size=rows * OBS_DIM, max_size=rows * OBS_DIM)),
            np.float32).tobytes())
        proto.tensor_shape.dim.add(size=rows)
        proto.tensor_shape.dim.add(size=OBS_DIM)
    return proto


def valid_observations():
    return tensor_protos().filter(lambda p: p.dtype == 1 and len(p.tensor_shape.dim) == 2
                                  and p.tensor_shape.dim[1].size == OBS_DIM
                                  and 0 < p.tensor_shape.dim[0].size <= LIMITS.max_batch_size
                                  and len(p.tensor_content) == p.tensor_shape.dim[0].size
                                  * OBS_DIM * 4)


@SETTINGS
@given(inputs=st.dictionaries(st.sampled_from(["observations", "seed", "x", ""]), tensor_protos(),
                              max_size=2) | st.fixed_dictionaries({"observations": st.one_of(
                                  valid_observations())}),
       signature=st.sampled_from(SIGNATURES), version=st.sampled_from([None, None, 1, 0, 2, -5]),
       name=st.sampled_from([MODEL, MODEL, "", "other"]), noise=st.binary(max_size=16),
       mangle=st.sampled_from(["none", "none", "truncate", "prefix"]))
def test_grpc_answers_generated_protos_with_a_client_error_or_actions(predict, inputs, signature,
                                                                      version, name, noise, mangle):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = name, signature
    if version is not None:
        request.model_spec.version.value = version
    for alias, proto in inputs.items():
        request.inputs[alias].CopyFrom(proto)
    data = request.SerializeToString()
    if mangle == "truncate":
        data = data[:len(data) // 2]
    elif mangle == "prefix":
        data = noise + data
    try:
        response = predict(data, timeout=30)
    except grpc.RpcError as error:
        event(f"gRPC {error.code().name}")
        assert error.code() in GRPC_CLIENT_ERRORS, (error.code(), error.details())
        return
    event("gRPC OK")
    actions = response.outputs["actions"]
    check_actions(np.frombuffer(actions.tensor_content, np.float32).reshape(
        [d.size for d in actions.tensor_shape.dim]), actions.tensor_shape.dim[0].size)
