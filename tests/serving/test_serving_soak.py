"""A bounded soak of serving/server.py on 127.0.0.1: REST and gRPC clients at batch 1 and 64, a new
version copied in (not atomically) half-way, zero failed requests and bounded memory growth.

bench/bench_serving_soak.py runs the same load longer and records its numbers in BENCHMARKS.md.
"""
import http.client
import json
import shutil
import threading
import time

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2

from serving.limits import ServingLimits
from serving.server import ModelServer, array_to_tensor_proto

DURATION_S = 4.0  # of traffic, plus the time version 2 takes to load under it
BATCHES = (1, 64)
CLIENTS_PER_BATCH = 2  # per protocol: 2 x 2 batches x 2 protocols = 8 clients
# Resident memory may grow by the second version's graphs and allocator slack, not per request.
MAX_RSS_GROWTH_BYTES = 256 << 20


def grpc_client(port, batch, obs_dim, stop, answers, errors):
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "sorl", "act_k4"
    request.inputs["observations"].CopyFrom(
        array_to_tensor_proto(np.ones([batch, obs_dim], np.float32)))
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = channel.unary_unary("/tensorflow.serving.PredictionService/Predict",
                                   request_serializer=predict_pb2.PredictRequest.SerializeToString,
                                   response_deserializer=predict_pb2.PredictResponse.FromString)
        while not stop.is_set():
            try:
                response = stub(request, timeout=30)
                assert response.outputs["actions"].tensor_shape.dim[0].size == batch
                answers.append(response.model_spec.version.value)
            except Exception as error:  # counted, reported by the test
                errors.append(repr(error))


def rest_client(port, batch, obs_dim, stop, answers, errors):
    body = json.dumps({"signature_name": "act_k4",
                       "instances": np.ones([batch, obs_dim]).tolist()}).encode()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # one keep-alive
    while not stop.is_set():
        try:
            connection.request("POST", "/v1/models/sorl:predict", body)
            reply = connection.getresponse()
            actions = np.array(json.loads(reply.read())["predictions"])
            assert reply.status == 200 and actions.shape[0] == batch
            answers.append(1)
        except Exception as error:  # counted, reported by the test
            errors.append(repr(error))
            connection.close()
    connection.close()


def rss_after_gc(raw_clients) -> int:
    import gc
    gc.collect()
    return raw_clients.rss()


def test_soak_with_a_version_swap_has_no_failed_requests_and_bounded_memory(
        export_dir, agent, tmp_path, raw_clients):
    shutil.copytree(export_dir, tmp_path / "1")
    with ModelServer("sorl", str(tmp_path), port=0, rest_api_port=0, host="127.0.0.1",
                     file_system_poll_wait_seconds=0.2,
                     limits=ServingLimits(max_batch_size=max(BATCHES))) as server:
        stop = threading.Event()
        results = {}
        threads = []
        for kind, client, port in [("grpc", grpc_client, server.grpc_port),
                                   ("rest", rest_client, server.rest_api_port)]:
            for batch in BATCHES:
                results[kind, batch] = ([], [])
                threads += [threading.Thread(target=client, args=(
                    port, batch, agent.obs_dim, stop, *results[kind, batch]))
                    for _ in range(CLIENTS_PER_BATCH)]
        for thread in threads:
            thread.start()
        time.sleep(DURATION_S / 4)  # warm: graphs traced, pools and buffers at their size
        rss_before = rss_after_gc(raw_clients)
        shutil.copytree(export_dir, tmp_path / "2")  # seen half-copied by the poller: retried
        deadline = time.monotonic() + 120
        while server.model.current.version != 2:  # loading competes with the clients for CPU
            assert time.monotonic() < deadline, server.model.version_states()
            time.sleep(0.1)
        time.sleep(DURATION_S * 3 / 4)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        rss_after = rss_after_gc(raw_clients)
        states = server.model.version_states()
    for (kind, batch), (answers, errors) in results.items():
        print(f"{kind} batch {batch}: {len(answers)} answers, {len(errors)} errors")
        assert errors == [], errors[:3]
        assert len(answers) >= CLIENTS_PER_BATCH
    versions = results["grpc", 1][0]
    assert versions[0] == 1 and versions[-1] == 2  # the swap happened under load
    assert states == [(2, "AVAILABLE", ""), (1, "END", "")]
    print(f"RSS {rss_before / 2**20:.0f} MiB -> {rss_after / 2**20:.0f} MiB")
    assert rss_after - rss_before < MAX_RSS_GROWTH_BYTES
    assert not any(thread.is_alive() for thread in threads)
