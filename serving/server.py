"""Serves an exported SORL policy with TF Serving's own APIs (gRPC and REST).

The TF Serving binary is not installable here, so this server speaks its protocols on top of
`tf.saved_model.load`: clients written for TF Serving work unchanged, and a deployment can switch
to `tensorflow_model_server` on the same folder with the same flags:

    python serving/server.py --port=8500 --rest_api_port=8501 \
        --model_name=sorl --model_base_path=/abs/path/RUN/export
    tensorflow_model_server --port=8500 --rest_api_port=8501 \
        --model_name=sorl --model_base_path=/abs/path/RUN/export

gRPC: `tensorflow.serving.PredictionService` (Predict, GetModelMetadata) and
`tensorflow.serving.ModelService` (GetModelStatus). REST: `POST /v1/models/NAME[/versions/N]:predict`
(`instances` rows or `inputs` columns), `GET /v1/models/NAME[/versions/N]` (status) and
`GET /v1/models/NAME[/versions/N]/metadata`. The newest integer version folder is served and a
new one is picked up without a restart (see serving/servable.py).
"""
import argparse
import concurrent.futures
import http.server
import json
import logging
import re
import signal
import sys
import threading
from typing import Any, Dict, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import validation
from serving.servable import DEFAULT_SIGNATURE, VersionedModel
from serving.validation import NOT_FOUND, RequestError

GRPC_CODE = {
    validation.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    validation.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    validation.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    validation.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    validation.INTERNAL: grpc.StatusCode.INTERNAL,
}
MAX_REST_BODY_BYTES = 64 << 20


def tensor_proto_to_array(alias: str, proto: tensor_pb2.TensorProto) -> np.ndarray:
    try:
        return tf.make_ndarray(proto)
    except Exception as error:  # malformed protos raise many types
        raise validation.invalid(f"input '{alias}' is not a valid TensorProto: {error}") from None


def array_to_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Packs a numeric array as tensor_content, what tf.make_tensor_proto does for numbers."""
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in array.shape])
    return tensor_pb2.TensorProto(dtype=tf.dtypes.as_dtype(array.dtype).as_datatype_enum,
                                  tensor_shape=shape,
                                  tensor_content=np.ascontiguousarray(array).tobytes())


class ServingFront:
    """What both protocols share: resolving a model spec and running or describing a version."""

    def __init__(self, model: VersionedModel):
        self.model = model

    def resolve(self, name: str, version: Optional[int], label: str = ""):
        if not name:
            raise validation.invalid("model_spec.name is empty; name the model "
                                     f"(this server serves '{self.model.model_name}')")
        if label:
            raise validation.invalid(f"version label '{label}' is not supported; "
                                     "ask for a version number or the latest version")
        if name != self.model.model_name:
            wanted = f"Latest({name})" if version is None else f"Specific({name}, {version})"
            raise RequestError(NOT_FOUND, f"Servable not found for request: {wanted}; this "
                                          f"server serves model '{self.model.model_name}'")
        return self.model.get(version)

    def predict(self, name: str, version: Optional[int], signature_name: str,
                inputs: Dict[str, np.ndarray], output_filter: Sequence[str] = (),
                label: str = ""):
        servable = self.resolve(name, version, label)
        outputs = servable.predict(signature_name, inputs, self.model.max_batch_size,
                                   output_filter)
        return servable, outputs

    def status(self, name: str, version: Optional[int]) -> get_model_status_pb2.GetModelStatusResponse:
        if name != self.model.model_name:
            raise RequestError(NOT_FOUND, f"Could not find any versions of model {name!r}; this "
                                          f"server serves model '{self.model.model_name}'")
        response = get_model_status_pb2.GetModelStatusResponse()
        for number, state, message in self.model.version_states(version):
            entry = response.model_version_status.add(
                version=number, state=get_model_status_pb2.ModelVersionStatus.State.Value(state))
            entry.status.error_code = 2 if message else 0  # tensorflow.error.UNKNOWN / OK
            entry.status.error_message = message
        return response

    def metadata(self, name: str, version: Optional[int], label: str = ""
                 ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        servable = self.resolve(name, version, label)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature_def in servable.meta_graph.signature_def.items():
            signature_map.signature_def[key].CopyFrom(signature_def)
        response.metadata["signature_def"].Pack(signature_map)
        return response


def _spec_version(model_spec: model_pb2.ModelSpec) -> Optional[int]:
    return model_spec.version.value if model_spec.HasField("version") else None


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata."""

    def __init__(self, front: ServingFront):
        self.front = front

    def Predict(self, request: predict_pb2.PredictRequest, context):
        spec = request.model_spec
        try:
            inputs = {alias: tensor_proto_to_array(alias, proto)
                      for alias, proto in request.inputs.items()}
            servable, outputs = self.front.predict(
                spec.name, _spec_version(spec), spec.signature_name, inputs,
                list(request.output_filter), spec.version_label)
        except RequestError as error:
            context.abort(GRPC_CODE[error.code], error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = spec.signature_name or DEFAULT_SIGNATURE
        for alias, value in outputs.items():
            response.outputs[alias].CopyFrom(array_to_tensor_proto(value))
        return response

    def GetModelMetadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest, context):
        try:
            fields = list(request.metadata_field)
            if not fields:
                raise validation.invalid("metadata_field is empty; ask for ['signature_def']")
            unsupported = [f for f in fields if f != "signature_def"]
            if unsupported:
                raise validation.invalid(f"metadata_field {unsupported} is not supported; "
                                         "only 'signature_def' is")
            spec = request.model_spec
            return self.front.metadata(spec.name, _spec_version(spec), spec.version_label)
        except RequestError as error:
            context.abort(GRPC_CODE[error.code], error.message)


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus (config reloads are not supported)."""

    def __init__(self, front: ServingFront):
        self.front = front

    def GetModelStatus(self, request, context):
        try:
            return self.front.status(request.model_spec.name, _spec_version(request.model_spec))
        except RequestError as error:
            context.abort(GRPC_CODE[error.code], error.message)


# TF Serving's REST paths: /v1/models/NAME[/versions/N | /labels/L][:verb | /metadata]
_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d+)|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[a-zA-Z]+)|(?P<metadata>/metadata))?/?$")


def _proto_json(message) -> Dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


class RestHandler(http.server.BaseHTTPRequestHandler):
    """The REST front; `server.front` is the ServingFront."""

    protocol_version = "HTTP/1.1"  # keep-alive, as TF Serving
    server_version = "sorl-serving"

    def log_message(self, format, *args):  # noqa: A002 - stdlib signature
        logging.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, status: int, body: Dict[str, Any]):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _route(self) -> Tuple[str, Optional[int], str, str, bool]:
        match = _REST_PATH.match(self.path.split("?", 1)[0])
        if match is None:
            raise validation.invalid(f"Malformed request: {self.command} {self.path}; use "
                                     "/v1/models/NAME[/versions/N][:predict|/metadata]")
        version = match["version"]
        return (match["name"], None if version is None else int(version), match["label"] or "",
                match["verb"] or "", bool(match["metadata"]))

    def _handle(self, action):
        try:
            status, body = action()
        except RequestError as error:
            status, body = validation.HTTP_STATUS[error.code], {"error": error.message}
        except Exception as error:  # one bad request must not stop the server
            logging.exception("REST %s %s failed", self.command, self.path)
            status, body = 500, {"error": f"internal error: {error}"}
        self._reply(status, body)

    def do_GET(self):  # noqa: N802 - stdlib name
        def action():
            name, version, label, verb, metadata = self._route()
            if verb:
                raise validation.invalid(f"Malformed request: GET with ':{verb}'; "
                                         "use POST for :predict")
            if metadata:
                response = self.server.front.metadata(name, version, label)
                signature_map = get_model_metadata_pb2.SignatureDefMap()
                response.metadata["signature_def"].Unpack(signature_map)
                return 200, {"model_spec": _proto_json(response.model_spec),
                             "metadata": {"signature_def": _proto_json(signature_map)}}
            if label:
                raise validation.invalid(f"version label '{label}' is not supported")
            return 200, _proto_json(self.server.front.status(name, version))
        self._handle(action)

    def do_POST(self):  # noqa: N802 - stdlib name
        def action():
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REST_BODY_BYTES:
                raise validation.invalid(f"request body of {length} bytes is larger than "
                                         f"{MAX_REST_BODY_BYTES}")
            body = self.rfile.read(length)
            name, version, label, verb, metadata = self._route()
            if metadata or verb != "predict":
                raise validation.invalid(
                    f"Malformed request: POST {self.path}; this server answers "
                    f"POST /v1/models/NAME[/versions/N]:predict (classify/regress are not served)")
            servable = self.server.front.resolve(name, version, label)
            signature_name, inputs, fmt = validation.parse_rest_predict(body, servable.signature)
            outputs = servable.predict(signature_name, inputs, self.server.front.model.max_batch_size)
            return 200, validation.format_rest_predict(outputs, fmt)
        self._handle(action)


class ModelServer:
    """gRPC and REST fronts over one VersionedModel; start() / stop(), or use as a context manager.

    Ports: 0 picks a free port (read `grpc_port` / `rest_api_port` after start); a REST port of
    None turns REST off. The first version is loaded in start(); later ones by the poller.
    """

    def __init__(self, model_name: str, model_base_path: str, port: int = 8500,
                 rest_api_port: Optional[int] = 8501, host: str = "0.0.0.0",
                 file_system_poll_wait_seconds: float = 1.0, max_batch_size: int = 1024,
                 grpc_workers: int = 16):
        self.model = VersionedModel(model_name, model_base_path, max_batch_size)
        self.front = ServingFront(self.model)
        self._host = host
        self._requested_ports = (port, rest_api_port)
        self._poll_wait = file_system_poll_wait_seconds
        self._grpc_workers = grpc_workers
        self._grpc_server = None
        self._http_server = None
        self._http_thread = None
        self.grpc_port: Optional[int] = None
        self.rest_api_port: Optional[int] = None

    def start(self) -> "ModelServer":
        self.model.poll_once()  # the newest version now; later ones by the poller
        self._grpc_server = grpc.server(
            concurrent.futures.ThreadPoolExecutor(max_workers=self._grpc_workers))
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
            PredictionServicer(self.front), self._grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.front), self._grpc_server)
        grpc_port, rest_port = self._requested_ports
        self.grpc_port = self._grpc_server.add_insecure_port(f"{self._host}:{grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {self._host}:{grpc_port}")
        self._grpc_server.start()
        if rest_port is not None:
            self._http_server = http.server.ThreadingHTTPServer((self._host, rest_port),
                                                                RestHandler)
            self._http_server.daemon_threads = True
            self._http_server.front = self.front
            self.rest_api_port = self._http_server.server_address[1]
            self._http_thread = threading.Thread(target=self._http_server.serve_forever,
                                                 name="rest", daemon=True)
            self._http_thread.start()
        self.model.start_polling(self._poll_wait)
        logging.info("model %s: gRPC on %s:%d, REST on %s", self.model.model_name, self._host,
                     self.grpc_port, self.rest_api_port or "off")
        return self

    def stop(self):
        self.model.stop()
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_thread.join()
            self._http_server = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=1.0).wait()
            self._grpc_server = None

    def wait(self):
        """Blocks until the gRPC server ends (Ctrl-C in the CLI)."""
        self._grpc_server.wait_for_termination()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Serve a SavedModel base path with TF Serving's gRPC and REST APIs "
                    "(flag names as tensorflow_model_server).")
    parser.add_argument("--port", type=int, default=8500, help="gRPC port (0: any free port)")
    parser.add_argument("--rest_api_port", type=int, default=0,
                        help="REST port; 0 disables REST, as in tensorflow_model_server")
    parser.add_argument("--rest_api_host", default="0.0.0.0", help="address to bind both to")
    parser.add_argument("--model_name", default="default")
    parser.add_argument("--model_base_path", required=True,
                        help="folder holding integer version folders (1/, 2/, ...)")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0,
                        help="seconds between polls for new versions; <= 0: load the newest "
                             "version at start only")
    parser.add_argument("--max_batch_size", type=int, default=1024,
                        help="largest batch one request may send (not a tensorflow_model_server "
                             "flag; its batching config plays this role there)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] = None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker stop: shut down cleanly
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ModelServer(args.model_name, args.model_base_path, port=args.port,
                         rest_api_port=args.rest_api_port or None, host=args.rest_api_host,
                         file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                         max_batch_size=args.max_batch_size).start()
    try:
        server.wait()
    except KeyboardInterrupt:
        logging.info("stopping")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
