"""Loaded model versions for `serving/server.py`, kept the way TF Serving keeps them.

`Servable` is one version folder loaded with `tf.saved_model.load`: its predict signatures (read
from the SignatureDefs in saved_model.pb, as TF Serving reads them), a `predict` that runs one,
and a replay of the folder's `assets.extra/tf_serving_warmup_requests`.
`VersionedModel` watches a model base path and serves the newest integer version folder: a new
version is loaded and warmed up on the side, then swapped in with one reference assignment, so
requests keep going to the old version until the new one is ready (TF Serving's "latest" policy).
"""
import contextlib
import logging
import os
import threading
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from serving import validation
from serving.signatures import loaded_function
from serving.validation import NOT_FOUND, RequestError, SignatureSpec, TensorSpec
from serving.versions import list_versions

PREDICT_METHOD_NAME = "tensorflow/serving/predict"
WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
DEFAULT_SIGNATURE = "serving_default"


def read_serving_meta_graph(version_dir: str) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef tagged 'serve' from `version_dir`/saved_model.pb."""
    path = os.path.join(version_dir, "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    with open(path, "rb") as f:
        saved_model.ParseFromString(f.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            return meta_graph
    raise ValueError(f"{path} has no MetaGraphDef tagged 'serve'; export with tf.saved_model.save")


def _tensor_spec(tensor_info) -> TensorSpec:
    shape = tuple(None if dim.size < 0 else dim.size for dim in tensor_info.tensor_shape.dim)
    return TensorSpec(np.dtype(tf.dtypes.as_dtype(tensor_info.dtype).as_numpy_dtype), shape)


def signature_specs(meta_graph: meta_graph_pb2.MetaGraphDef) -> Dict[str, SignatureSpec]:
    """Predict signatures by name (the SavedModel's init-op pseudo signature is left out)."""
    return {
        name: SignatureSpec(
            name=name,
            inputs={alias: _tensor_spec(info) for alias, info in sig.inputs.items()},
            outputs={alias: _tensor_spec(info) for alias, info in sig.outputs.items()})
        for name, sig in meta_graph.signature_def.items()
        if sig.method_name == PREDICT_METHOD_NAME
    }


def read_warmup_requests(version_dir: str) -> List[prediction_log_pb2.PredictionLog]:
    """The PredictionLog records of the version's warm-up file ([] when it has none)."""
    path = os.path.join(version_dir, WARMUP_FILE)
    if not os.path.exists(path):
        return []
    return [prediction_log_pb2.PredictionLog.FromString(record.numpy())
            for record in tf.data.TFRecordDataset(path)]


class Servable:
    """One loaded version folder."""

    def __init__(self, model_name: str, version: int, path: str):
        self.model_name = model_name
        self.version = version
        self.path = path
        self.meta_graph = read_serving_meta_graph(path)
        self.signatures = signature_specs(self.meta_graph)
        self._loaded = tf.saved_model.load(path)
        self._functions = {name: loaded_function(self._loaded, name) for name in self.signatures}
        row_values = [validation.row_values(spec) for spec in self.signatures.values()]
        # The most numbers one row of any signature holds: bounds a request before decoding.
        self.max_row_values = None if None in row_values else max(row_values, default=0)
        self.in_flight = 0  # requests using this version; VersionedModel's lock guards it
        self.retired = False  # replaced by a newer version; END once in_flight reaches 0

    def signature(self, name: str) -> SignatureSpec:
        """The spec of signature `name` ('' means serving_default); RequestError if unknown."""
        name = name or DEFAULT_SIGNATURE
        if name not in self.signatures:
            raise validation.invalid(
                f"signature '{name}' not found in model '{self.model_name}' version "
                f"{self.version}; available: {sorted(self.signatures)}")
        return self.signatures[name]

    def predict(self, signature_name: str, inputs: Mapping[str, np.ndarray],
                max_batch_size: int, output_filter: Sequence[str] = ()) -> Dict[str, np.ndarray]:
        """Checks `inputs` against the signature and runs it; returns outputs by alias."""
        spec = self.signature(signature_name)
        inputs = validation.validate_inputs(spec, inputs, max_batch_size)
        for alias in output_filter:
            if alias not in spec.outputs:
                raise validation.invalid(f"output '{alias}' not in signature '{spec.name}'; "
                                         f"outputs are {sorted(spec.outputs)}")
        try:
            outputs = self._functions[spec.name](
                **{alias: tf.constant(value) for alias, value in inputs.items()})
        except tf.errors.InvalidArgumentError as error:  # what the checks above did not foresee
            raise validation.invalid(f"signature '{spec.name}' refused the inputs: "
                                     f"{error.message}") from None
        except tf.errors.OpError as error:
            raise RequestError(validation.INTERNAL, f"signature '{spec.name}' failed: "
                                                    f"{error.message}") from None
        wanted = output_filter or sorted(spec.outputs)
        return {alias: outputs[alias].numpy() for alias in wanted}

    def warm_up(self, max_batch_size: int) -> int:
        """Replays the warm-up file once (as TF Serving does at load); returns the record count."""
        records = read_warmup_requests(self.path)
        for record in records:
            request = record.predict_log.request
            inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
            self.predict(request.model_spec.signature_name, inputs, max_batch_size)
        return len(records)


class VersionedModel:
    """The newest version under a base path, with TF Serving's version states for status calls.

    States: LOADING while a version loads, AVAILABLE while served, UNLOADING while requests
    still use a replaced version, END once none do; a failed load is END with its error message,
    and is retried at every poll until it loads (so a copy in progress is served once complete)
    or a newer version supersedes it.
    """

    def __init__(self, model_name: str, base_path: str, max_batch_size: int):
        self.model_name = model_name
        self.base_path = os.path.abspath(base_path)
        self.max_batch_size = max_batch_size
        self._current: Optional[Servable] = None
        self._states: Dict[int, Tuple[str, str]] = {}  # version -> (state, error message)
        self._failures: Dict[int, int] = {}  # version -> failed load attempts so far
        self._last_errors: Dict[int, str] = {}
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def current(self) -> Optional[Servable]:
        return self._current

    def get(self, version: Optional[int]) -> Servable:
        """The servable for `version` (None: the newest loaded); NOT_FOUND as TF Serving."""
        servable = self._current
        if servable is None or (version is not None and version != servable.version):
            wanted = "Latest" if version is None else "Specific"
            detail = f"{self.model_name}" if version is None else f"{self.model_name}, {version}"
            served = "none loaded" if servable is None else f"serving version {servable.version}"
            raise RequestError(NOT_FOUND, f"Servable not found for request: {wanted}({detail}) "
                                          f"({served})")
        return servable

    @contextlib.contextmanager
    def serving(self, version: Optional[int]) -> Iterator[Servable]:
        """get(version), counted as in flight so that status says UNLOADING until it is done."""
        with self._lock:  # the same lock as the swap: a request never holds an END version
            servable = self.get(version)
            servable.in_flight += 1
        try:
            yield servable
        finally:
            with self._lock:
                servable.in_flight -= 1
                if servable.retired and servable.in_flight == 0:
                    self._states[servable.version] = ("END", "")

    def version_states(self, version: Optional[int] = None) -> List[Tuple[int, str, str]]:
        """(version, state, error message) newest first; one version if asked (NOT_FOUND if unknown)."""
        with self._lock:
            states = dict(self._states)
        if version is not None:
            if version not in states:
                raise RequestError(NOT_FOUND, f"Could not find version {version} of model "
                                              f"{self.model_name}")
            states = {version: states[version]}
        if not states:
            raise RequestError(NOT_FOUND, f"Could not find any versions of model "
                                          f"{self.model_name}")
        return [(v, *states[v]) for v in sorted(states, reverse=True)]

    def poll_once(self) -> Optional[int]:
        """Loads the newest version folder if it is not the one served; returns the served version."""
        with self._poll_lock:
            versions = list_versions(self.base_path)
            current = self._current
            served = None if current is None else current.version
            if not versions:
                if current is None:
                    logging.warning("no integer version folder under %s yet", self.base_path)
                return served
            newest = versions[-1]
            self._abandon_failed(except_version=newest)
            if newest == served:
                return served
            self._set_state(newest, "LOADING", self._last_errors.get(newest, ""))
            try:
                servable = Servable(self.model_name, newest, os.path.join(self.base_path,
                                                                          str(newest)))
                warmed = servable.warm_up(self.max_batch_size)
            except Exception as error:  # a bad folder must not take the server down
                self._load_failed(newest, error)
                return served
            self._failures.pop(newest, None)
            self._last_errors.pop(newest, None)
            with self._lock:  # the swap: later requests see the new version
                self._current = servable
                self._states[newest] = ("AVAILABLE", "")
                if current is not None:
                    current.retired = True
                    self._states[current.version] = (
                        "UNLOADING" if current.in_flight else "END", "")
            logging.info("serving %s version %d from %s (%d warm-up requests)",
                         self.model_name, newest, servable.path, warmed)
            return newest

    def _load_failed(self, version: int, error: Exception):
        attempts = self._failures[version] = self._failures.get(version, 0) + 1
        message = f"load failed: {error}"
        # One line per distinct error, not one per poll, while a copy is still in progress.
        level = logging.DEBUG if self._last_errors.get(version) == message else logging.ERROR
        logging.log(level, "loading %s version %d failed (attempt %d; retried at every poll): %s",
                    self.model_name, version, attempts, error)
        self._last_errors[version] = message
        self._set_state(version, "END", message)

    def _abandon_failed(self, except_version: int):
        """Failed versions other than the newest are no longer retried (TF Serving's latest policy)."""
        for version in [v for v in self._failures if v != except_version]:
            self._set_state(version, "END", self._last_errors.pop(version))
            del self._failures[version]

    def _set_state(self, version: int, state: str, message: str):
        with self._lock:
            self._states[version] = (state, message)

    def start_polling(self, poll_wait_seconds: float):
        """Polls every `poll_wait_seconds` in a daemon thread; <= 0 does not poll at all."""
        if poll_wait_seconds <= 0:
            return

        def loop():
            while not self._stop.wait(poll_wait_seconds):
                try:
                    self.poll_once()
                except Exception:  # keep polling whatever one poll ran into
                    logging.exception("polling %s failed", self.base_path)

        self._thread = threading.Thread(target=loop, name=f"poll-{self.model_name}",
                                        daemon=True)
        self._thread.start()

    def stop(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
