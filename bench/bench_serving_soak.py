"""serving/server.py under load and hostile input, on 127.0.0.1 only.

    python -m bench.bench_serving_soak --runs=3 --json=artifacts/bench_serving_soak.json

The server runs as its own process (the CLI, as deployed), so its memory is measured alone.
  soak       REST and gRPC clients at batch 1 and 64, all at once, for --duration seconds, with a
             new version copied in half-way; throughput, p50/p99 latency, failed requests
  oversize   --attackers concurrent clients per kind of oversize request (REST bodies at the limit,
             REST bodies over it, gRPC messages at the limit, tiny protos declaring huge shapes,
             deep JSON) while one client sends batch-1 requests; the server's peak memory over its
             idle memory, and the small requests' p99 latency meanwhile
Medians over --runs runs. Paper-size nets (4 x 512), obs 28, action 5; weights are random.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from typing import Callable, Dict, List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
from tensorflow.core.framework import tensor_pb2, types_pb2  # noqa: E402
from tensorflow_serving.apis import predict_pb2  # noqa: E402

from data.files import write_json  # noqa: E402
from models.sorl import SORLAgent  # noqa: E402
from pipeline.config import make_run_config  # noqa: E402
from serving import export  # noqa: E402
from serving.server import array_to_tensor_proto  # noqa: E402

OBS_DIM, ACTION_DIM = 28, 5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def memory(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


class Server:
    """serving/server.py as a subprocess on free 127.0.0.1 ports."""

    def __init__(self, base_path: str, extra_flags: List[str]):
        self.grpc_port, self.rest_port = free_port(), free_port()
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "serving", "server.py"), "--model_name=sorl",
             f"--model_base_path={base_path}", f"--port={self.grpc_port}",
             f"--rest_api_port={self.rest_port}", "--rest_api_host=127.0.0.1",
             "--file_system_poll_wait_seconds=0.5", *extra_flags],
            env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.rest_port}/v1/models/sorl", timeout=2)
                return
            except OSError:
                if time.time() > deadline or self.process.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)


def predict_request(rows: int) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name, request.model_spec.signature_name = "sorl", "act_k4"
    request.inputs["observations"].CopyFrom(
        array_to_tensor_proto(np.ones([rows, OBS_DIM], np.float32)))
    return request


def client_loop(call: Callable[[], bool], stop: threading.Event, latencies: List[float],
                errors: List[str]):
    while not stop.is_set():
        start = time.perf_counter()
        try:
            ok = call()
        except Exception as error:  # counted
            errors.append(repr(error)[:200])
            continue
        if ok:
            latencies.append(time.perf_counter() - start)
        else:
            errors.append("unexpected answer")


def grpc_call(port: int, request_bytes: bytes, expect_ok: bool = True) -> Callable[[], bool]:
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[
        ("grpc.max_send_message_length", -1),
        ("grpc.use_local_subchannel_pool", 1)])  # a connection of its own, as separate clients
    call = channel.unary_unary("/tensorflow.serving.PredictionService/Predict")

    def run():
        try:
            call(request_bytes, timeout=60)
            return expect_ok
        except grpc.RpcError as error:
            return not expect_ok and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    return run


def rest_call(port: int, body: bytes, expect_status=(200,)) -> Callable[[], bool]:
    """A keep-alive client; its call is True when the answer's status is in `expect_status`."""
    import http.client
    state = {"connection": None}

    def run():
        if state["connection"] is None:
            state["connection"] = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            state["connection"].request("POST", "/v1/models/sorl:predict", body)
            reply = state["connection"].getresponse()
            reply.read()
        except (OSError, http.client.HTTPException):
            state["connection"].close()
            state["connection"] = None  # the server may close before reading a refused body
            if 200 in expect_status:
                raise
            return True
        if reply.getheader("Connection", "").lower() == "close":
            state["connection"].close()
            state["connection"] = None
        return reply.status in expect_status
    return run


def percentiles(latencies: List[float]) -> Dict[str, float]:
    ms = np.asarray(latencies) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)) if len(ms) else float("nan"),
            "p99_ms": float(np.percentile(ms, 99)) if len(ms) else float("nan")}


def soak(server: Server, export_dir: str, base: str, duration: float, clients: int) -> List[dict]:
    stop = threading.Event()
    cells = {}
    threads = []
    for kind in ("grpc", "rest"):
        for batch in (1, 64):
            cells[kind, batch] = ([], [])
            for _ in range(clients):
                call = (grpc_call(server.grpc_port, predict_request(batch).SerializeToString())
                        if kind == "grpc" else rest_call(server.rest_port, json.dumps(
                            {"signature_name": "act_k4",
                             "instances": np.ones([batch, OBS_DIM]).tolist()}).encode()))
                threads.append(threading.Thread(target=client_loop,
                                                args=(call, stop, *cells[kind, batch])))
    for thread in threads:
        thread.start()
    time.sleep(duration / 2)
    newest = max(int(v) for v in os.listdir(base))
    shutil.copytree(export_dir, os.path.join(base, str(newest + 1)))  # a hot swap under load
    time.sleep(duration / 2)
    stop.set()
    for thread in threads:
        thread.join()
    return [dict(kind=kind, batch=batch, requests_per_s=len(lat) / duration,
                 failed=len(err), **percentiles(lat)) for (kind, batch), (lat, err) in cells.items()]


def oversize(server: Server, attackers: int, duration: float, max_body: int) -> dict:
    pid = server.process.pid
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # resets the peak (VmHWM) to the present resident size
    idle = memory(pid, "VmRSS")
    valid_row = json.dumps({"instances": [[0.0] * OBS_DIM]}).encode()
    at_limit_json = valid_row[:-1] + b" " * (max_body - len(valid_row)) + b"}"  # parses: 1 row
    over_values_json = b'{"instances": [' + b"0," * (max_body // 2 - 16) + b"0]}"
    huge_shape = predict_pb2.PredictRequest()
    huge_shape.model_spec.name = "sorl"
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_FLOAT, float_val=[1.0])
    proto.tensor_shape.dim.add(size=1 << 40)
    proto.tensor_shape.dim.add(size=OBS_DIM)
    huge_shape.inputs["observations"].CopyFrom(proto)
    at_limit_proto = predict_pb2.PredictRequest()
    at_limit_proto.model_spec.name = "sorl"
    at_limit_proto.inputs["observations"].CopyFrom(array_to_tensor_proto(
        np.zeros([(max_body - 1024) // (4 * OBS_DIM), OBS_DIM], np.float32)))
    deep = b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    at_limit_proto, huge_shape = at_limit_proto.SerializeToString(), huge_shape.SerializeToString()
    attacks = {  # name -> a new client (one per thread)
        # 503: the decode budget is taken by other large bodies; retry
        "rest_body_at_limit": lambda: rest_call(server.rest_port, at_limit_json, (200, 503)),
        "rest_values_over_limit": lambda: rest_call(server.rest_port, over_values_json,
                                                    (400, 503)),
        "rest_body_over_limit": lambda: rest_call(server.rest_port, at_limit_json + b" " * 1024,
                                                  (400,)),
        "rest_deep_json": lambda: rest_call(server.rest_port, deep, (400,)),
        "grpc_message_at_limit": lambda: grpc_call(server.grpc_port, at_limit_proto,
                                                   expect_ok=False),
        "grpc_huge_declared_shape": lambda: grpc_call(server.grpc_port, huge_shape,
                                                      expect_ok=False),
    }
    stop = threading.Event()
    results = {name: ([], []) for name in list(attacks) + ["small_rest", "small_grpc"]}
    threads = [threading.Thread(target=client_loop, args=(client(), stop, *results[name]))
               for name, client in attacks.items() for _ in range(attackers)]
    threads += [threading.Thread(target=client_loop, args=(
        rest_call(server.rest_port, valid_row), stop, *results["small_rest"])),
        threading.Thread(target=client_loop, args=(
            grpc_call(server.grpc_port, predict_request(1).SerializeToString()), stop,
            *results["small_grpc"]))]
    for thread in threads:
        thread.start()
    time.sleep(duration)
    stop.set()
    for thread in threads:
        thread.join()
    peak = memory(pid, "VmHWM")
    return {"idle_rss_mib": idle / 2**20, "peak_rss_mib": peak / 2**20,
            "peak_over_idle_mib": (peak - idle) / 2**20,
            **{f"{name}_requests": len(lat) for name, (lat, _) in results.items()},
            **{f"{name}_failed": len(err) for name, (_, err) in results.items()},
            **{f"{name}_first_error": err[0] for name, (_, err) in results.items() if err},
            **{f"small_{kind}_{k}": v for kind in ("rest", "grpc")
               for k, v in percentiles(results[f"small_{kind}"][0]).items()}}


def median_rows(runs: List[List[dict]], keys=("kind", "batch")) -> List[dict]:
    rows = []
    for cells in zip(*runs):
        row = {k: cells[0][k] for k in keys}
        for field in cells[0]:
            if field not in keys and isinstance(cells[0][field], (int, float)):
                row[field] = statistics.median(cell[field] for cell in cells)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="64x64 nets (a quick smoke run)")
    parser.add_argument("--runs", type=int, default=3, help="runs; medians are reported")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per soak run")
    parser.add_argument("--clients", type=int, default=2, help="clients per protocol and batch")
    parser.add_argument("--attackers", type=int, default=4, help="clients per oversize kind")
    parser.add_argument("--attack_duration", type=float, default=15.0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    small = {"actor_hidden_dims": (64, 64), "critic_hidden_dims": (64, 64)} if args.small else {}
    agent = SORLAgent(make_run_config("cube", small).agent, OBS_DIM, ACTION_DIM)
    max_body = 64 << 20
    soak_runs, oversize_runs = [], []
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = export.export_saved_model(agent, os.path.join(tmp, "export"))
        for run in range(args.runs):
            base = os.path.join(tmp, f"served{run}")
            shutil.copytree(export_dir, os.path.join(base, "1"))
            server = Server(base, ["--max_batch_size=64", f"--max_body_bytes={max_body}"])
            try:
                soak_runs.append(soak(server, export_dir, base, args.duration, args.clients))
                oversize_runs.append([oversize(server, args.attackers, args.attack_duration,
                                               max_body)])
            finally:
                server.stop()
            for row in soak_runs[-1]:
                print(f"run {run} soak {row['kind']:>4} batch {row['batch']:>2}: "
                      f"{row['requests_per_s']:7.1f} req/s p50 {row['p50_ms']:7.2f} ms "
                      f"p99 {row['p99_ms']:7.2f} ms failed {row['failed']}", flush=True)
            print(f"run {run} oversize: {json.dumps(oversize_runs[-1][0])}", flush=True)
    result = {"soak": median_rows(soak_runs), "oversize": median_rows(oversize_runs, keys=())[0],
              "runs": args.runs, "duration_s": args.duration, "clients": args.clients,
              "attackers": args.attackers, "small": args.small}
    print(json.dumps(result, indent=1))
    if args.json:
        write_json(args.json, result)


if __name__ == "__main__":
    main()
