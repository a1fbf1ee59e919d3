"""Shared fixtures for the serving tests: one small real SORLAgent and its export per session,
and raw HTTP / gRPC clients that can send what no well-behaved client library would."""
import contextlib
import json
import re
import shutil
import socket
import time
from typing import Optional, Tuple

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2

from models.config import AgentConfig
from models.noise import SEED_SALT
from models.sorl import SORLAgent
from serving import export
from serving.server import ModelServer

MODEL = "sorl"
OBS_DIM, ACTION_DIM = 6, 3
SMALL_NETS = dict(actor_hidden_dims=(32, 32), critic_hidden_dims=(32, 32))


def make_agent(seed: int = 0) -> SORLAgent:
    return SORLAgent(AgentConfig(**SMALL_NETS, seed=seed), OBS_DIM, ACTION_DIM)


@pytest.fixture(scope="session")
def agent():
    return make_agent(seed=0)


@pytest.fixture(scope="session")
def agent_factory():
    """agent_factory(seed) -> a fresh small SORLAgent whose weights depend on `seed`."""
    return make_agent


@pytest.fixture(scope="session")
def export_dir(agent, tmp_path_factory):
    """RUN/export/1 of the session agent with the default budgets (1, 2, 4, 8) and best-of 4x8."""
    return export.export_saved_model(agent, str(tmp_path_factory.mktemp("export")))


@pytest.fixture(scope="module")
def serve_export(export_dir, tmp_path_factory):
    """serve_export(**ModelServer options) -> a started ModelServer on 127.0.0.1 (ephemeral ports) over
    a copy of the session export as version 1 of model MODEL, without version polling; every server
    it started stops when the test module ends."""
    with contextlib.ExitStack() as servers:
        def start(**options) -> ModelServer:
            base = tmp_path_factory.mktemp("served")
            shutil.copytree(export_dir, base / "1")
            return servers.enter_context(ModelServer(MODEL, str(base), port=0, rest_api_port=0, host="127.0.0.1",
                                                     file_system_poll_wait_seconds=-1, **options))
        yield start


def row_noise(seeds, num_samples: int) -> np.ndarray:
    """The seeded signatures' noise contract, written out independently: row i is
    stateless_normal([N, A], seed=[seeds[i], SEED_SALT])."""
    return np.stack([
        tf.random.stateless_normal([num_samples, ACTION_DIM],
                                   seed=tf.constant([int(s), SEED_SALT], tf.int64)).numpy()
        for s in seeds])


def expected_actions(agent, observations, seeds, euler_steps: int, num_samples: int) -> np.ndarray:
    """What the in-process agent answers for these observations and per-row seeds."""
    noise = row_noise(seeds, num_samples)
    return agent.act(tf.constant(observations), euler_steps=euler_steps, num_samples=num_samples,
                     noise=tf.constant(noise)).numpy()


@pytest.fixture(scope="session")
def seeded_row_noise():
    """seeded_row_noise(seeds, N) -> [len(seeds), N, A] (see row_noise)."""
    return row_noise


@pytest.fixture(scope="session")
def expected():
    """expected(agent, observations, seeds, euler_steps, num_samples) -> actions (see expected_actions)."""
    return expected_actions


@pytest.fixture
def observations():
    return np.random.default_rng(7).normal(size=[5, OBS_DIM]).astype(np.float32)


# Raw clients for the limit, property and soak tests (fixtures below hand them out).
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"


def raw_http(port: int, request: bytes, timeout: float = 30.0) -> Tuple[Optional[int], dict]:
    """Sends raw bytes to 127.0.0.1:port and reads one response.

    Returns (status, JSON body), or (None, {}) when the server closed the connection without
    answering. Send `Connection: close` so that the server ends the connection after answering.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(request)
        except OSError:  # the server may answer and close before reading everything
            pass
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if length and len(body) >= int(length.group(1)):
                break
        else:
            raise TimeoutError(f"no complete answer within {timeout} s: {data[:200]!r}")
    if not data:
        return None, {}
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body) if body else {}


def http_request(method: str, path: str, body: bytes = b"", headers: Optional[dict] = None
                 ) -> bytes:
    headers = {"Host": "127.0.0.1", "Connection": "close", "Content-Type": "application/json",
               "Content-Length": str(len(body)), **(headers or {})}
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in headers.items() if v is not None]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def raw_predict(channel: grpc.Channel):
    """Predict taking the request as bytes, so tests can send any bytes at all."""
    return channel.unary_unary(PREDICT_METHOD, request_serializer=None,
                               response_deserializer=predict_pb2.PredictResponse.FromString)


def rss_bytes(pid: str = "self", field: str = "VmRSS") -> int:
    """Resident memory (VmRSS) or its peak (VmHWM) of a process, from /proc."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


@pytest.fixture(scope="session")
def raw_clients():
    """raw_clients.http(port, bytes), .request(method, path, body, headers), .predict(channel),
    .rss(pid, field): see the functions of the same purpose above."""
    class RawClients:
        http = staticmethod(raw_http)
        request = staticmethod(http_request)
        predict = staticmethod(raw_predict)
        rss = staticmethod(rss_bytes)
    return RawClients
