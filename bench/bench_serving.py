"""Serving latency and throughput of the exported SORL signatures.

    python -m bench.bench_serving                       # paper nets (4 x 512), obs 28, action 5
    python -m bench.bench_serving --small --runs=2 --calls=20 --json=artifacts/bench_serving.json

For each signature: latency at batch 1 and throughput at batch 256 (rows/s), medians over
--runs runs of --calls calls, through
  tf.function      the export's signature function, called in process (polymorphic dispatch)
  concrete         its concrete function, called directly (no dispatch)
  concrete_xla     the same traced with jit_compile=True (agent.act compiled by XLA)
  saved_model      tf.saved_model.load(...).signatures[name] of the published export
  saved_model_xla  the same for an export made with jit_compile=True
  saved_model_fn_xla  that export's function attribute, tf.saved_model.load(...).<name>
                   (skips the signature's graph wrapper: one XLA launch per call)
  saved_model_direct_xla  serving.signatures.loaded_function(loaded, name): that attribute's
                   concrete function (skips tf.function's dispatch too); what serving/server.py
                   and evaluate.py --saved_model call
  grpc, rest       serving/server.py on 127.0.0.1 (PredictionService.Predict; POST :predict),
                   serving the plain export (--server_export=xla for the XLA one)
Weights are random (latency does not depend on training). In-process inputs are prepared
tensors; the server rows include request encoding and decoding on the client side.
The target at batch 1 in process (issue 4) is the authors' JAX sampler on the same CPU: pass
--reference_json=FILE (written by `python -m bench.bench_reference_jax --json=FILE` on this machine) to
print it next to each row; without it the rows show the issue's figures (0.12 ms k=1, 0.37 ms
k=8, 1.2 ms k=8 best-of-4), which were taken on another machine (see BENCHMARKS.md).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import urllib.request
from typing import Callable, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import grpc  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc  # noqa: E402

from bench.common import time_calls  # noqa: E402
from data.files import write_json  # noqa: E402
from pipeline.config import make_run_config  # noqa: E402
from models.sorl import SORLAgent  # noqa: E402
from serving import export, signatures  # noqa: E402
from serving.server import ModelServer  # noqa: E402

OBS_DIM, ACTION_DIM = 28, 5  # cube-single
ISSUE_FIGURES_MS = {"act_k1": 0.12, "act_k8": 0.37, "act_k8_best_of_4": 1.2}  # another machine's
MODES = ("tf.function", "concrete", "concrete_xla", "saved_model", "saved_model_xla",
         "saved_model_fn_xla", "saved_model_direct_xla", "grpc", "rest")


def load_targets(reference_json: Optional[str]) -> Tuple[Dict[str, float], str]:
    """(signature -> ms, label): the JAX reference measured here, or the issue's figures."""
    if reference_json is None:
        return ISSUE_FIGURES_MS, "issue's figure"
    with open(reference_json) as f:
        measured = json.load(f).get("latency_ms")
    if not measured:
        raise SystemExit(f"--reference_json={reference_json}: no 'latency_ms' in it; write it with "
                         "python -m bench.bench_reference_jax --mode=latency --json=FILE")
    return measured, "JAX reference here"


class InProcess:
    """mode -> signature -> call(observations tensor) for the in-process modes."""

    def __init__(self, agent, export_dirs: Dict[bool, str], names: Sequence[str]):
        variants = [v for v in signatures.plan_signatures([1, 2, 4, 8], [(4, 8), (8, 4)],
                                                          agent.config.inference_euler_steps)
                    if v.name in names]
        self.loaded = {jit: tf.saved_model.load(export_dirs[jit]) for jit in (False, True)}
        self.calls = {}
        for jit in (False, True):
            functions = signatures.make_signatures(agent, variants, OBS_DIM, ACTION_DIM, jit)
            if not jit:
                self.calls["tf.function"] = functions
            self.calls["concrete_xla" if jit else "concrete"] = {
                name: function.get_concrete_function() for name, function in functions.items()}
            self.calls["saved_model_xla" if jit else "saved_model"] = {
                name: (lambda x, f=self.loaded[jit].signatures[name]: f(observations=x))
                for name in names}
        self.calls["saved_model_fn_xla"] = {
            name: (lambda x, f=getattr(self.loaded[True], name): f(x)) for name in names}
        self.calls["saved_model_direct_xla"] = {
            name: (lambda x, f=signatures.loaded_function(self.loaded[True], name): f(observations=x))
            for name in names}


def server_calls(server: ModelServer, names: Sequence[str]) -> Dict[str, Dict[str, Callable]]:
    """mode -> signature -> call(observations numpy) through the server's gRPC and REST fronts."""
    channel = grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}")
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    url = f"http://127.0.0.1:{server.rest_api_port}/v1/models/sorl:predict"

    def grpc_call(observations, name):
        request = predict_pb2.PredictRequest()
        request.model_spec.name, request.model_spec.signature_name = "sorl", name
        request.inputs["observations"].CopyFrom(tf.make_tensor_proto(observations))
        return tf.make_ndarray(stub.Predict(request, timeout=60).outputs["actions"])

    def rest_call(observations, name):
        body = json.dumps({"signature_name": name, "instances": observations.tolist()}).encode()
        with urllib.request.urlopen(urllib.request.Request(url, body), timeout=60) as reply:
            return np.array(json.loads(reply.read())["predictions"], np.float32)

    return {"grpc": {n: (lambda x, n=n: grpc_call(x, n)) for n in names},
            "rest": {n: (lambda x, n=n: rest_call(x, n)) for n in names}}


def run(args) -> List[dict]:
    small = {"actor_hidden_dims": (64, 64), "critic_hidden_dims": (64, 64)} if args.small else {}
    agent = SORLAgent(make_run_config("cube", small).agent, OBS_DIM, ACTION_DIM)
    names = args.signatures.split(",")
    modes = args.modes.split(",")
    targets, target_source = load_targets(args.reference_json)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_dirs = {jit: export.export_saved_model(
            agent, os.path.join(tmp, "xla" if jit else "plain"), best_of=((4, 8), (8, 4)),
            jit_compile=jit) for jit in (False, True)}
        served = os.path.dirname(export_dirs[args.server_export == "xla"])
        server = ModelServer("sorl", served, port=0, rest_api_port=0,
                             host="127.0.0.1", file_system_poll_wait_seconds=-1,
                             max_batch_size=max(args.batches)).start()
        try:
            in_process = InProcess(agent, export_dirs, names)
            calls = dict(in_process.calls, **server_calls(server, names))
            for batch in args.batches:
                observations = np.random.default_rng(0).normal(size=[batch, OBS_DIM])
                observations = observations.astype(np.float32)
                inputs = {mode: observations if mode in ("grpc", "rest")
                          else tf.constant(observations) for mode in modes}
                for mode in modes:
                    for name in names:
                        call, x = calls[mode][name], inputs[mode]
                        per_run = time_calls(lambda: call(x), args.runs, args.calls)
                        seconds = statistics.median(per_run)
                        rows.append(dict(mode=mode, signature=name, batch=batch,
                                         ms_per_call=seconds * 1e3, rows_per_s=batch / seconds,
                                         runs=args.runs, calls=args.calls))
                        print_row(rows[-1], args.small, targets, target_source)
        finally:
            server.stop()
    return rows


def print_row(row: dict, small: bool, targets: Dict[str, float], target_source: str):
    target = targets.get(row["signature"]) if row["batch"] == 1 else None
    note = ""
    if target is not None and row["mode"] in ("concrete", "concrete_xla", "tf.function",
                                              "saved_model_fn_xla", "saved_model_direct_xla"):
        note = f"  ({target_source} {target} ms{', paper nets only' if small else ''})"
    print(f"{row['mode']:>16} {row['signature']:>18} batch {row['batch']:>4}: "
          f"{row['ms_per_call']:8.3f} ms/call {row['rows_per_s']:10.0f} rows/s{note}", flush=True)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="64x64 nets (a quick smoke run)")
    parser.add_argument("--runs", type=int, default=5, help="runs per cell; the median is reported")
    parser.add_argument("--calls", type=int, default=200, help="calls per run")
    parser.add_argument("--batches", type=lambda text: [int(b) for b in text.split(",")],
                        default=[1, 256], help="batch sizes to measure (comma list)")
    parser.add_argument("--signatures", default="act_k1,act_k8,act_k8_best_of_4,act_k4_best_of_8")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--server_export", choices=("plain", "xla"), default="plain",
                        help="which export the gRPC/REST rows serve (jit_compile off / on)")
    parser.add_argument("--json", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--reference_json", default=None,
                        help="bench_reference_jax.py's --json output: the batch-1 targets to print")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    unknown = sorted(set(args.modes.split(",")) - set(MODES))
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; choose from {list(MODES)}")
    rows = run(args)
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
