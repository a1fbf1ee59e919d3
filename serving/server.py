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
`GET /v1/models/NAME[/versions/N]/metadata` (see serving/rest.py). The newest integer version
folder is served and a new one is picked up without a restart (see serving/servable.py). Both
fronts bound a request's bytes, values and rows from what it declares, before decoding it, with
one shared `ServingLimits` (see serving/limits.py).
"""
import argparse
import concurrent.futures
import contextlib
import dataclasses
import logging
import signal
import sys
from typing import Dict, Iterator, Optional, Sequence, Tuple

import grpc
import numpy as np
import tensorflow as tf
from google.protobuf.message import DecodeError
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

from serving import validation
from serving.limits import DecodeBudget, ServingLimits
from serving.rest import RestApp, RestServer
from serving.servable import Servable, VersionedModel
from serving.validation import NOT_FOUND, RequestError, SignatureSpec

GRPC_CODE = {
    validation.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    validation.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    validation.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    validation.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    validation.INTERNAL: grpc.StatusCode.INTERNAL,
}
# gRPC core refuses longer messages itself (RESOURCE_EXHAUSTED) before reading them; between
# max_body_bytes and this the server's own check answers, with REST's status and message.
GRPC_MESSAGE_SLACK_BYTES = 1 << 20


def declared_tensor(alias: str, proto: tensor_pb2.TensorProto) -> Tuple[np.dtype, Tuple[int, ...]]:
    """(dtype, shape) a TensorProto declares, read without materialising its values."""
    try:
        dtype = np.dtype(tf.dtypes.as_dtype(proto.dtype).as_numpy_dtype)
    except TypeError:
        raise validation.invalid(f"input '{alias}' has dtype enum {proto.dtype}, which is not a "
                                 f"TensorFlow dtype") from None
    if proto.tensor_shape.unknown_rank:
        raise validation.invalid(f"input '{alias}' declares an unknown rank; send its shape")
    shape = tuple(dim.size for dim in proto.tensor_shape.dim)
    if any(size < 0 for size in shape):
        raise validation.invalid(f"input '{alias}' declares shape {list(shape)}; "
                                 f"dimensions must be >= 0")
    return dtype, shape


def decode_inputs(protos, signature: SignatureSpec, servable: Servable,
                  limits: ServingLimits) -> Dict[str, np.ndarray]:
    """The request's TensorProtos as arrays, after every bound that their declared dtypes and
    shapes allow is checked: a small proto declaring a huge shape is refused, not filled."""
    declared = {alias: declared_tensor(alias, proto) for alias, proto in protos.items()}
    limits.check_values(sum(int(np.prod(shape, dtype=object)) for _, shape in declared.values()),
                        servable.max_row_values)
    validation.validate_declared(signature, declared, limits.max_batch_size)
    arrays = {}
    for alias, proto in protos.items():
        try:
            arrays[alias] = tf.make_ndarray(proto)
        except Exception as error:  # malformed protos raise many types
            raise validation.invalid(f"input '{alias}' is not a valid TensorProto: "
                                     f"{error}") from None
    return arrays


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

    @contextlib.contextmanager
    def serving(self, name: str, version: Optional[int], label: str = "") -> Iterator[Servable]:
        """resolve(...), held as in flight for the request (status says UNLOADING meanwhile)."""
        self.resolve(name, version, label)  # the checks and NOT_FOUND messages
        with self.model.serving(version) as servable:
            yield servable

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
    """tensorflow.serving.PredictionService: Predict and GetModelMetadata.

    Predict takes the request's bytes undecoded (see `add_to_server`), so that their length is
    checked against the limits before protobuf parses them.
    """

    def __init__(self, front: ServingFront, limits: ServingLimits, budget: DecodeBudget):
        self.front = front
        self.limits = limits
        self.budget = budget

    def Predict(self, request_bytes: bytes, context):
        try:
            self.limits.check_body_bytes(len(request_bytes))
            with self.budget.decoding(len(request_bytes)):
                try:
                    request = predict_pb2.PredictRequest.FromString(request_bytes)
                except DecodeError as error:
                    raise validation.invalid(f"request is not a PredictRequest: {error}") from None
                spec = request.model_spec
                with self.front.serving(spec.name, _spec_version(spec),
                                        spec.version_label) as servable:
                    signature = servable.signature(spec.signature_name)
                    inputs = decode_inputs(request.inputs, signature, servable, self.limits)
                    outputs = servable.predict(signature.name, inputs, self.limits.max_batch_size,
                                               list(request.output_filter))
        except RequestError as error:
            context.abort(GRPC_CODE[error.code], error.message)
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.model_name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.name
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

    def add_to_server(self, server: grpc.Server):
        """Registers the service as the generated code would, but with Predict's request bytes
        passed through undecoded."""
        handlers = {
            "Predict": grpc.unary_unary_rpc_method_handler(
                self.Predict, request_deserializer=None,
                response_serializer=predict_pb2.PredictResponse.SerializeToString),
            "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
                self.GetModelMetadata,
                request_deserializer=get_model_metadata_pb2.GetModelMetadataRequest.FromString,
                response_serializer=get_model_metadata_pb2.GetModelMetadataResponse
                .SerializeToString),
        }
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            "tensorflow.serving.PredictionService", handlers),))


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus (config reloads are not supported)."""

    def __init__(self, front: ServingFront):
        self.front = front

    def GetModelStatus(self, request, context):
        try:
            return self.front.status(request.model_spec.name, _spec_version(request.model_spec))
        except RequestError as error:
            context.abort(GRPC_CODE[error.code], error.message)


class ModelServer:
    """gRPC and REST fronts over one VersionedModel; start() / stop(), or use as a context manager.

    Ports: 0 picks a free port (read `grpc_port` / `rest_api_port` after start); a REST port of
    None turns REST off. The first version is loaded in start(); later ones by the poller.
    `limits` bounds what a request may cost (serving/limits.py); `max_batch_size` overrides its
    field of that name.
    """

    def __init__(self, model_name: str, model_base_path: str, port: int = 8500,
                 rest_api_port: Optional[int] = 8501, host: str = "0.0.0.0",
                 file_system_poll_wait_seconds: float = 1.0,
                 max_batch_size: Optional[int] = None, limits: Optional[ServingLimits] = None):
        limits = limits or ServingLimits()
        if max_batch_size is not None:
            limits = dataclasses.replace(limits, max_batch_size=max_batch_size)
        self.limits = limits
        self.model = VersionedModel(model_name, model_base_path, limits.max_batch_size)
        self.front = ServingFront(self.model)
        self._budget = DecodeBudget(limits.max_decode_bytes)
        self._host = host
        self._requested_ports = (port, rest_api_port)
        self._poll_wait = file_system_poll_wait_seconds
        self._grpc_server = None
        self._grpc_executor = None
        self._rest_server: Optional[RestServer] = None
        self.grpc_port: Optional[int] = None
        self.rest_api_port: Optional[int] = None

    def start(self) -> "ModelServer":
        self.model.poll_once()  # the newest version now; later ones by the poller
        limits = self.limits
        self._grpc_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=limits.max_concurrent_requests, thread_name_prefix="grpc")
        self._grpc_server = grpc.server(
            self._grpc_executor,
            maximum_concurrent_rpcs=limits.max_grpc_calls,  # more are refused RESOURCE_EXHAUSTED
            options=[
                ("grpc.max_receive_message_length",
                 limits.max_body_bytes + GRPC_MESSAGE_SLACK_BYTES),
                ("grpc.max_send_message_length", -1),
                ("grpc.max_connection_idle_ms", int(limits.idle_timeout_s * 1000)),
                ("grpc.so_reuseport", 0),  # a taken port is an error, not shared
            ])
        PredictionServicer(self.front, limits, self._budget).add_to_server(self._grpc_server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(
            ModelServicer(self.front), self._grpc_server)
        grpc_port, rest_port = self._requested_ports
        self.grpc_port = self._grpc_server.add_insecure_port(f"{self._host}:{grpc_port}")
        if self.grpc_port == 0:
            raise OSError(f"cannot bind gRPC to {self._host}:{grpc_port}")
        self._grpc_server.start()
        if rest_port is not None:
            self._rest_server = RestServer(RestApp(self.front, limits, self._budget),
                                           self._host, rest_port, limits).start()
            self.rest_api_port = self._rest_server.port
        self.model.start_polling(self._poll_wait)
        logging.info("model %s: gRPC on %s:%d, REST on %s", self.model.model_name, self._host,
                     self.grpc_port, self.rest_api_port or "off")
        return self

    def stop(self):
        """Stops polling, both fronts, their sockets and threads."""
        self.model.stop()
        if self._rest_server is not None:
            self._rest_server.stop()
            self._rest_server = None
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=1.0).wait()
            self._grpc_server = None
            self._grpc_executor.shutdown(wait=True)  # grpc.Server.stop leaves its workers

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
    defaults = ServingLimits()
    # Not tensorflow_model_server flags (its batching config and gRPC options play these roles).
    parser.add_argument("--max_batch_size", type=int, default=defaults.max_batch_size,
                        help="most rows one request may send")
    parser.add_argument("--max_body_bytes", type=int, default=defaults.max_body_bytes,
                        help="largest request body (REST) or message (gRPC)")
    parser.add_argument("--max_connections", type=int, default=defaults.max_connections,
                        help="open REST connections at most")
    parser.add_argument("--max_grpc_calls", type=int, default=defaults.max_grpc_calls,
                        help="gRPC calls received or running at once; more get RESOURCE_EXHAUSTED")
    parser.add_argument("--request_timeout", type=float, default=defaults.request_timeout_s,
                        help="seconds a REST client may take to send one request")
    parser.add_argument("--idle_timeout", type=float, default=defaults.idle_timeout_s,
                        help="seconds an idle keep-alive connection stays open")
    return parser.parse_args(argv)


def limits_from_args(args: argparse.Namespace) -> ServingLimits:
    return dataclasses.replace(
        ServingLimits(), max_batch_size=args.max_batch_size, max_body_bytes=args.max_body_bytes,
        max_connections=args.max_connections, max_grpc_calls=args.max_grpc_calls,
        request_timeout_s=args.request_timeout,
        idle_timeout_s=args.idle_timeout,
        max_decode_bytes=max(ServingLimits.max_decode_bytes, args.max_body_bytes))


def main(argv: Sequence[str] = None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # docker stop: shut down cleanly
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server = ModelServer(args.model_name, args.model_base_path, port=args.port,
                         rest_api_port=args.rest_api_port or None, host=args.rest_api_host,
                         file_system_poll_wait_seconds=args.file_system_poll_wait_seconds,
                         limits=limits_from_args(args)).start()
    try:
        server.wait()
    except KeyboardInterrupt:
        logging.info("stopping")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
