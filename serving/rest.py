"""The REST front of `serving/server.py`: TF Serving's URLs, JSON and status codes, on waitress.

waitress (a threaded WSGI server) suits blocking TensorFlow calls and gives the byte, connection,
idle-time and keep-alive bounds built in; `RestServer` adds a deadline for receiving a whole
request (a client trickling bytes is still slow) and JSON errors for what waitress refuses itself.

Paths: `POST /v1/models/NAME[/versions/N]:predict` (`instances` rows or `inputs` columns),
`GET /v1/models/NAME[/versions/N]` (status), `GET /v1/models/NAME[/versions/N]/metadata`; labels
(`/labels/L`) are parsed and refused as TF Serving does without a label map. Everything else is
INVALID_ARGUMENT (400) "Malformed request", any method included.
"""
import json
import logging
import re
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2
from waitress import wasyncore
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask
from waitress.utilities import InternalServerError, RequestEntityTooLarge

from serving import validation
from serving.limits import DecodeBudget, ServingLimits
from serving.validation import RequestError

# TF Serving's REST paths: /v1/models/NAME[/versions/N | /labels/L][:verb | /metadata]
_REST_PATH = re.compile(
    r"^/v1/models/(?P<name>[^/:]+)"
    r"(?:/versions/(?P<version>\d{1,18})|/labels/(?P<label>[^/:]+))?"
    r"(?::(?P<verb>[a-zA-Z]+)|(?P<metadata>/metadata))?/?$")

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 500: "Internal Server Error",
            503: "Service Unavailable"}


def _proto_json(message) -> Dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _json_response(status: int, body: Dict[str, Any]) -> Tuple[str, list, bytes]:
    data = json.dumps(body).encode()
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
    return f"{status} {_REASONS.get(status, 'Error')}", headers, data


class RestApp:
    """The WSGI application: routes a request to the ServingFront and answers in JSON."""

    def __init__(self, front, limits: ServingLimits, budget: DecodeBudget):
        self.front = front
        self.limits = limits
        self.budget = budget

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "")
        try:
            if method == "GET":
                status, body = self.get(path)
            elif method == "POST":
                status, body = self.post(path, environ)
            else:
                raise self.malformed(method, path)
        except RequestError as error:
            status, body = validation.HTTP_STATUS[error.code], {"error": error.message}
        except Exception as error:  # one bad request must not stop the server
            logging.exception("REST %s %s failed", method, path)
            status, body = 500, {"error": f"internal error: {error}"}
        status_line, headers, data = _json_response(status, body)
        start_response(status_line, headers)
        return [data]

    @staticmethod
    def malformed(method: str, path: str) -> RequestError:
        return validation.invalid(f"Malformed request: {method} {path}; use GET "
                                  "/v1/models/NAME[/versions/N][/metadata] or POST "
                                  "/v1/models/NAME[/versions/N]:predict")

    def route(self, method: str, path: str) -> Tuple[str, Optional[int], str, str, bool]:
        match = _REST_PATH.match(path)
        if match is None:
            raise self.malformed(method, path)
        version = match["version"]
        return (match["name"], None if version is None else int(version), match["label"] or "",
                match["verb"] or "", bool(match["metadata"]))

    def get(self, path: str) -> Tuple[int, Dict[str, Any]]:
        name, version, label, verb, metadata = self.route("GET", path)
        if verb:
            raise validation.invalid(f"Malformed request: GET with ':{verb}'; "
                                     "use POST for :predict")
        if metadata:
            response = self.front.metadata(name, version, label)
            signature_map = get_model_metadata_pb2.SignatureDefMap()
            response.metadata["signature_def"].Unpack(signature_map)
            return 200, {"model_spec": _proto_json(response.model_spec),
                         "metadata": {"signature_def": _proto_json(signature_map)}}
        if label:
            raise validation.invalid(f"version label '{label}' is not supported")
        return 200, _proto_json(self.front.status(name, version))

    def post(self, path: str, environ) -> Tuple[int, Dict[str, Any]]:
        length = int(environ.get("CONTENT_LENGTH") or 0)  # waitress checked it is digits
        self.limits.check_body_bytes(length)
        name, version, label, verb, metadata = self.route("POST", path)
        if metadata or verb != "predict":
            raise validation.invalid(
                f"Malformed request: POST {path}; this server answers "
                f"POST /v1/models/NAME[/versions/N]:predict (classify/regress are not served)")
        with self.budget.decoding(length), self.front.serving(name, version, label) as servable:
            body = environ["wsgi.input"].read(length)
            self.limits.check_json_body(body, servable.max_row_values)
            try:
                signature_name, inputs, fmt = validation.parse_rest_predict(body,
                                                                            servable.signature)
            except RecursionError:  # nesting within the counts above but past Python's stack
                raise self.limits.too_deep() from None
            del body
            outputs = servable.predict(signature_name, inputs, self.limits.max_batch_size)
        return 200, validation.format_rest_predict(outputs, fmt)


class _JsonErrorTask(ErrorTask):
    """What waitress refuses before the app runs (oversize body, bad framing), answered as
    TF Serving would: INVALID_ARGUMENT (400) with {"error": ...}, the same body-size message as
    the gRPC front."""

    def execute(self):
        error = self.request.error
        if isinstance(error, RequestEntityTooLarge):
            status, message = 400, self.channel.server.limits.too_large().message
        elif isinstance(error, InternalServerError):
            status, message = 500, "internal error"
        else:
            status, message = 400, f"Malformed request: {error.reason}: {error.body}"
        status_line, headers, data = _json_response(status, {"error": message})
        self.status = status_line
        self.response_headers.extend(headers)
        self.set_close_on_finish()
        self.content_length = len(data)
        self.write(data)


class _Channel(HTTPChannel):
    """Notes when the request now being received began, for RestServer's receive deadline."""

    error_task_class = _JsonErrorTask
    request_started = 0.0

    def received(self, data):
        if self.request is None and data:
            self.request_started = time.monotonic()
        return super().received(data)


class RestServer(TcpWSGIServer):
    """waitress on one host:port with `limits`; start() serves in a thread, stop() ends it all."""

    channel_class = _Channel

    def __init__(self, app: Callable, host: str, port: int, limits: ServingLimits):
        self.limits = limits
        super().__init__(
            app, host=host, port=port,
            threads=limits.max_concurrent_requests,
            connection_limit=limits.max_connections,
            channel_timeout=limits.idle_timeout_s,
            cleanup_interval=1,  # how often idle and late requests are looked for
            max_request_body_size=limits.max_body_bytes + 1,  # waitress refuses >= this
            ident="sorl-serving",
            log_socket_errors=False,  # a client gone mid-reply: one INFO line from waitress
            asyncore_use_poll=True,  # select() fails once descriptors pass 1024
            clear_untrusted_proxy_headers=False)
        self._thread: Optional[threading.Thread] = None

    @property
    def port(self) -> int:
        return int(self.effective_port)

    def maintenance(self, now):
        super().maintenance(now)  # closes connections idle for idle_timeout_s
        started_before = time.monotonic() - self.limits.request_timeout_s
        for channel in list(self.active_channels.values()):
            if channel.request is not None and channel.request_started < started_before:
                logging.info("REST client %s took longer than %.0f s to send one request; "
                             "closing the connection", channel.addr, self.limits.request_timeout_s)
                channel.will_close = True

    def start(self) -> "RestServer":
        self._thread = threading.Thread(target=self.run, name="rest", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0):
        """Closes the listening socket and every connection, then joins the worker threads."""
        # In the I/O thread: waitress's socket map is not safe to change from another one.
        self.trigger.pull_trigger(lambda: wasyncore.close_all(self._map, ignore_all=True))
        if self._thread is not None:
            self._thread.join(timeout_s)
        self.task_dispatcher.shutdown(timeout=timeout_s)
