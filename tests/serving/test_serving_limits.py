"""serving/server.py under oversize, slow and rude clients: bounded before decoding, same answer
from REST and gRPC, JSON errors, timeouts, a connection limit and a clean stop."""
import json
import logging
import shutil
import socket
import struct
import threading
import time

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import predict_pb2

from serving.limits import ServingLimits
from serving.server import ModelServer

MODEL = "sorl"
LIMITS = ServingLimits(max_body_bytes=256 << 10, max_batch_size=16, max_json_depth=8,
                       max_connections=6, max_concurrent_requests=4, request_timeout_s=1.5,
                       idle_timeout_s=2.0, max_decode_bytes=1 << 20)
PREDICT = f"/v1/models/{MODEL}:predict"


@pytest.fixture(scope="module")
def server(serve_export):
    return serve_export(limits=LIMITS)


@pytest.fixture(scope="module")
def channel(server):
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


def grpc_error(channel, raw_clients, request) -> grpc.RpcError:
    data = request if isinstance(request, bytes) else request.SerializeToString()
    with pytest.raises(grpc.RpcError) as caught:
        raw_clients.predict(channel)(data, timeout=30)
    return caught.value


def predict_request(observations, signature_name=""):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.model_spec.signature_name = signature_name
    request.inputs["observations"].CopyFrom(tf.make_tensor_proto(observations))
    return request


def rest_predict(server, raw_clients, body: bytes, **headers):
    return raw_clients.http(server.rest_api_port,
                            raw_clients.request("POST", PREDICT, body, headers))


def still_serving(server, raw_clients, channel):
    status, body = rest_predict(server, raw_clients, b'{"instances": [[0, 0, 0, 0, 0, 0]]}')
    assert status == 200, body
    assert raw_clients.predict(channel)(
        predict_request(np.zeros([1, 6], np.float32)).SerializeToString(), timeout=30).outputs


# The same request through both fronts: (what, observations rows)
SAME_REQUEST = [("one row over max_batch_size", LIMITS.max_batch_size + 1, "has 17 rows"),
                ("far over the values bound", 50 * LIMITS.max_batch_size, "larger than this server"),
                ("over max_body_bytes both ways", 20_000, "larger than this server")]


@pytest.mark.parametrize("what,rows,words", SAME_REQUEST, ids=[s[0] for s in SAME_REQUEST])
def test_rest_and_grpc_refuse_the_same_oversize_request_alike(server, channel, raw_clients,
                                                              what, rows, words):
    observations = np.ones([rows, 6], np.float32)
    status, body = rest_predict(server, raw_clients,
                                json.dumps({"instances": observations.tolist()}).encode())
    error = grpc_error(channel, raw_clients, predict_request(observations))
    assert (status, error.code()) == (400, grpc.StatusCode.INVALID_ARGUMENT)
    assert body["error"] == error.details()
    assert words in error.details()
    still_serving(server, raw_clients, channel)


def test_a_small_proto_declaring_a_huge_shape_is_refused_before_it_is_filled(
        server, channel, raw_clients):
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    for size in (1 << 40, 6):  # tf.make_ndarray would repeat the one value 2**42 times
        proto.tensor_shape.dim.add(size=size)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["observations"].CopyFrom(proto)
    start = time.monotonic()
    error = grpc_error(channel, raw_clients, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than this server accepts" in error.details()
    assert time.monotonic() - start < 5
    negative = predict_pb2.PredictRequest.FromString(request.SerializeToString())
    negative.inputs["observations"].tensor_shape.dim[0].size = -3
    assert "dimensions must be >= 0" in grpc_error(channel, raw_clients, negative).details()


def test_grpc_messages_over_the_limit_and_garbage_bytes_are_invalid_argument(
        server, channel, raw_clients):
    error = grpc_error(channel, raw_clients, b"\x00" * (LIMITS.max_body_bytes + 10))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "larger than this server accepts" in error.details()
    error = grpc_error(channel, raw_clients, b"\xff\xff\xff")
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a PredictRequest" in error.details()


HTTP_FRAMING = [
    ("declared length over the limit, no body sent",
     {"Content-Length": str(LIMITS.max_body_bytes + 1)}, b"", "larger than this server"),
    ("negative length", {"Content-Length": "-1"}, b"{}", "Content-Length is invalid"),
    ("two lengths", {"Content-Length": "2, 2"}, b"{}", "Content-Length is invalid"),
    ("unknown transfer encoding", {"Content-Length": None, "Transfer-Encoding": "gzip"}, b"",
     "Malformed request"),
]


@pytest.mark.parametrize("what,headers,body,words", HTTP_FRAMING, ids=[h[0] for h in HTTP_FRAMING])
def test_rest_framing_tricks_get_a_json_400(server, channel, raw_clients, what, headers, body,
                                            words):
    status, reply = rest_predict(server, raw_clients, body, **headers)
    assert status == 400 and words in reply["error"], reply
    still_serving(server, raw_clients, channel)


def test_a_chunked_body_is_cut_off_at_the_limit(server, channel, raw_clients):
    chunk = b"[" + b"0," * 30_000
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(10)) + b"0\r\n\r\n"
    status, reply = rest_predict(server, raw_clients, chunks, **{
        "Content-Length": None, "Transfer-Encoding": "chunked"})
    assert status == 400 and "larger than this server" in reply["error"]
    still_serving(server, raw_clients, channel)


@pytest.mark.parametrize("depth", [20, 100_000])
def test_deep_json_is_refused(server, channel, raw_clients, depth):
    status, reply = rest_predict(server, raw_clients, b'{"instances": ' + b"[" * depth
                                 + b"0" + b"]" * depth + b"}")
    assert status == 400 and "deeper than the server's limit of 8" in reply["error"], reply
    still_serving(server, raw_clients, channel)


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "OPTIONS", "BREW"])
def test_unknown_methods_get_a_json_400(server, raw_clients, method):
    status, reply = raw_clients.http(server.rest_api_port, raw_clients.request(method, PREDICT))
    assert status == 400 and reply["error"].startswith(f"Malformed request: {method} ")


def test_slow_and_idle_clients_are_disconnected(server, channel, raw_clients):
    trickle = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
    idle = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
    start = time.monotonic()
    closed_after = None
    for byte in raw_clients.request("POST", PREDICT, b'{"instances": [[0, 0, 0, 0, 0, 0]]}'):
        try:
            trickle.sendall(bytes([byte]))
        except OSError:
            closed_after = time.monotonic() - start
            break
        time.sleep(0.05)  # a byte at a time keeps waitress's idle timer fresh
    assert closed_after is not None and closed_after < LIMITS.request_timeout_s + 3
    assert idle.recv(1) == b""  # closed by the server after idle_timeout_s
    assert time.monotonic() - start < LIMITS.idle_timeout_s + 3
    trickle.close(), idle.close()
    still_serving(server, raw_clients, channel)


def test_open_connections_are_bounded(server, channel, raw_clients):
    held = [socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
            for _ in range(LIMITS.max_connections)]
    time.sleep(0.3)  # let the server accept them
    extra = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
    extra.sendall(raw_clients.request("GET", f"/v1/models/{MODEL}"))
    extra.settimeout(0.5)
    with pytest.raises(socket.timeout):  # not accepted while max_connections are open
        extra.recv(1)
    for sock in held:
        sock.close()
    extra.settimeout(10)
    assert extra.recv(12) == b"HTTP/1.1 200"
    extra.close()
    still_serving(server, raw_clients, channel)


def test_a_client_gone_mid_reply_costs_at_most_a_log_line(server, channel, raw_clients, caplog):
    body = json.dumps({"instances": np.zeros([LIMITS.max_batch_size, 6]).tolist()}).encode()
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            sock = socket.create_connection(("127.0.0.1", server.rest_api_port), timeout=10)
            sock.sendall(raw_clients.request("POST", PREDICT, body))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()  # a reset, before the answer is read
        still_serving(server, raw_clients, channel)
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert len([r for r in caplog.records if r.levelno >= logging.INFO]) <= 5


def test_the_server_stops_its_threads_and_sockets(export_dir, tmp_path):
    shutil.copytree(export_dir, tmp_path / "1")
    before = {t.ident for t in threading.enumerate()}
    start = time.monotonic()
    with ModelServer(MODEL, str(tmp_path), port=0, rest_api_port=0, host="127.0.0.1",
                     file_system_poll_wait_seconds=0.2, limits=LIMITS) as server:
        ports = server.grpc_port, server.rest_api_port
        keep_alive = socket.create_connection(("127.0.0.1", ports[1]), timeout=10)
    assert time.monotonic() - start < 60
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5)
    keep_alive.close()
    deadline = time.monotonic() + 10
    while (left := [t for t in threading.enumerate() if t.ident not in before and t.is_alive()]):
        assert time.monotonic() < deadline, [t.name for t in left]
        time.sleep(0.1)


def test_grpc_calls_in_flight_are_bounded_by_their_own_limit(monkeypatch, export_dir, tmp_path):
    # gRPC buffers a whole message before the servicer runs, so the concurrent-call cap is what bounds
    # the memory of gRPC requests; it comes from --max_grpc_calls, not from the REST connection limit.
    from serving import server as server_lib

    args = server_lib.parse_args(["--model_name=m", f"--model_base_path={tmp_path}", "--max_grpc_calls=3",
                                  "--max_connections=50"])
    limits = server_lib.limits_from_args(args)
    assert (limits.max_grpc_calls, limits.max_connections) == (3, 50)
    seen = {}
    real_server = grpc.server

    def recording_server(*args, **kwargs):
        seen.update(kwargs)
        return real_server(*args, **kwargs)

    monkeypatch.setattr(server_lib.grpc, "server", recording_server)
    base = tmp_path / "models"
    shutil.copytree(export_dir, base / "1")
    with ModelServer(MODEL, str(base), port=0, rest_api_port=0, host="127.0.0.1",
                     file_system_poll_wait_seconds=-1, limits=limits):
        pass
    assert seen["maximum_concurrent_rpcs"] == 3
    assert dict(seen["options"])["grpc.max_receive_message_length"] > limits.max_body_bytes
