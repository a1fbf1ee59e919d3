"""Request checking shared by the gRPC and REST fronts of `serving/server.py`.

A request reaches the model only as a dict of numpy arrays that match one signature exactly:
known input names, the signature's dtype, rank and fixed dimensions, one batch size shared by
every batched input, 1 <= batch <= max_batch_size, finite floats. Anything else raises
`RequestError` with a TF Serving status code and a message that names the input and the value.
The JSON helpers follow TF Serving's REST conventions ("instances" rows or "inputs" columns in,
"predictions" or "outputs" out).
"""
import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import numpy as np

INVALID_ARGUMENT = "INVALID_ARGUMENT"
NOT_FOUND = "NOT_FOUND"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNAVAILABLE = "UNAVAILABLE"
INTERNAL = "INTERNAL"

# HTTP status TF Serving's REST front answers for each canonical code.
HTTP_STATUS = {
    INVALID_ARGUMENT: 400,
    FAILED_PRECONDITION: 400,
    NOT_FOUND: 404,
    UNAVAILABLE: 503,
    INTERNAL: 500,
}


class RequestError(Exception):
    """A request the server refuses; `code` is a canonical status name (see HTTP_STATUS)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> RequestError:
    return RequestError(INVALID_ARGUMENT, message)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """dtype and shape of one signature input or output; None marks a free dimension."""

    dtype: np.dtype
    shape: Tuple[Optional[int], ...]

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype.name}[{dims}]"


@dataclasses.dataclass(frozen=True)
class SignatureSpec:
    """The inputs and outputs of one served signature, by alias."""

    name: str
    inputs: Mapping[str, TensorSpec]
    outputs: Mapping[str, TensorSpec]


def row_values(signature: SignatureSpec) -> Optional[int]:
    """How many numbers one row of `signature` holds over all its inputs (unbatched inputs count
    whole); None when an input has a free dimension after the batch one."""
    total = 0
    for spec in signature.inputs.values():
        dims = spec.shape[1:] if spec.shape and spec.shape[0] is None else spec.shape
        if any(d is None for d in dims):
            return None
        total += int(np.prod(dims, dtype=np.int64))
    return total


def validate_declared(signature: SignatureSpec,
                      declared: Mapping[str, Tuple[np.dtype, Tuple[int, ...]]],
                      max_batch_size: int):
    """Checks each input's (dtype, shape) against `signature`, before any value is decoded.

    Inputs whose signature shape starts with a free dimension are batched: they must all have
    the same number of rows, at least 1 and at most `max_batch_size`.
    """
    expected = sorted(signature.inputs)
    extra = sorted(set(declared) - set(signature.inputs))
    missing = sorted(set(signature.inputs) - set(declared))
    if extra or missing:
        raise invalid(
            f"signature '{signature.name}' takes inputs {expected}; request has "
            f"{sorted(declared)} (unexpected: {extra}, missing: {missing})")
    batch_sizes = {}
    for name in expected:
        spec, (dtype, shape) = signature.inputs[name], declared[name]
        where = f"input '{name}' of signature '{signature.name}'"
        if dtype != spec.dtype:
            raise invalid(f"{where} must be {spec.dtype.name}, got {np.dtype(dtype).name}")
        if len(shape) != len(spec.shape):
            raise invalid(f"{where} must have shape {spec.describe()} (rank {len(spec.shape)}), "
                          f"got shape {list(shape)}")
        for axis, (want, got) in enumerate(zip(spec.shape, shape)):
            if want is not None and want != got:
                raise invalid(f"{where} must have shape {spec.describe()}, got shape "
                              f"{list(shape)} (dimension {axis} is {got}, expected {want})")
        if spec.shape and spec.shape[0] is None:
            batch_sizes[name] = shape[0]
    if len(set(batch_sizes.values())) > 1:
        raise invalid(f"batched inputs of signature '{signature.name}' have different numbers "
                      f"of rows: {batch_sizes}")
    for name, rows in batch_sizes.items():
        if rows == 0:
            raise invalid(f"input '{name}' of signature '{signature.name}' is an empty batch "
                          f"(0 rows); send at least one row")
        if rows > max_batch_size:
            raise invalid(f"input '{name}' of signature '{signature.name}' has {rows} rows, "
                          f"more than the server's max_batch_size={max_batch_size}; "
                          f"split the request")


def validate_inputs(signature: SignatureSpec, inputs: Mapping[str, np.ndarray],
                    max_batch_size: int) -> Dict[str, np.ndarray]:
    """Returns `inputs` unchanged when they match `signature` (validate_declared) and floats
    are finite; raises RequestError otherwise."""
    validate_declared(signature, {name: (value.dtype, value.shape)
                                  for name, value in inputs.items()}, max_batch_size)
    for name in sorted(inputs):
        value = inputs[name]
        if value.dtype.kind == "f" and value.size and not np.all(np.isfinite(value)):
            bad = np.argwhere(~np.isfinite(value))[0]
            raise invalid(f"input '{name}' of signature '{signature.name}' has a non-finite "
                          f"value {value[tuple(bad)]} at index {bad.tolist()}; send finite numbers")
    return dict(inputs)


def json_to_array(value: Any, spec: TensorSpec, where: str) -> np.ndarray:
    """Converts a JSON value (number or nested lists) to an array of `spec.dtype`.

    Strict like TF Serving: ragged lists, strings, null or booleans are refused, and integer
    inputs take only JSON integers.
    """
    try:
        array = np.array(value)
    except (ValueError, OverflowError) as error:
        raise invalid(f"{where} is not a dense (rectangular) array of numbers: {error}") from None
    if array.dtype.kind == "f" and spec.dtype.kind == "f":
        pass
    elif array.dtype.kind in "iu" and spec.dtype.kind in "fiu":
        pass
    elif array.size == 0 and array.dtype.kind == "f":  # `[]` parses as float64
        pass
    else:
        kind = {"f": "decimal numbers", "b": "booleans", "U": "strings",
                "O": "null or mixed values"}.get(array.dtype.kind, array.dtype.name)
        raise invalid(f"{where} must hold {spec.dtype.name} values, got {kind}")
    if spec.dtype.kind in "iu":
        info = np.iinfo(spec.dtype)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise invalid(f"{where} has values outside the {spec.dtype.name} range")
    if spec.dtype.kind == "f" and array.size:
        finite_in = np.isfinite(array)
        converted = array.astype(spec.dtype)
        if np.any(finite_in & ~np.isfinite(converted)):
            raise invalid(f"{where} has values too large for {spec.dtype.name}")
        return converted
    return array.astype(spec.dtype)


def parse_rest_predict(body: bytes, get_signature: Callable[[str], SignatureSpec]
                       ) -> Tuple[str, Dict[str, np.ndarray], str]:
    """Parses a TF Serving REST predict body.

    Returns (signature_name, inputs, format) where format is "row" for "instances" and
    "columnar" for "inputs". `get_signature(name)` raises RequestError for an unknown name.
    """
    import json  # local: only the REST front needs it

    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise invalid(f"request body is not valid JSON: {error}") from None
    if not isinstance(request, dict):
        raise invalid("request body must be a JSON object with 'instances' or 'inputs'")
    signature_name = request.get("signature_name", "serving_default")
    if not isinstance(signature_name, str):
        raise invalid(f"'signature_name' must be a string, got {signature_name!r}")
    signature = get_signature(signature_name)
    has_rows, has_columns = "instances" in request, "inputs" in request
    if has_rows == has_columns:
        raise invalid("request body must have exactly one of 'instances' (rows) or "
                      "'inputs' (columns)")
    if has_rows:
        return signature_name, _rows_to_inputs(request["instances"], signature), "row"
    return signature_name, _columns_to_inputs(request["inputs"], signature), "columnar"


def _rows_to_inputs(rows: Any, signature: SignatureSpec) -> Dict[str, np.ndarray]:
    if not isinstance(rows, list):
        raise invalid("'instances' must be a list with one entry per row")
    if not rows:
        raise invalid("'instances' is an empty list (0 rows); send at least one row")
    names = sorted(signature.inputs)
    if not isinstance(rows[0], dict):
        if len(names) > 1:
            raise invalid(f"'instances' is a plain list but signature '{signature.name}' takes "
                          f"several inputs {names}: send one object per row with these keys")
        name = names[0]
        return {name: json_to_array(rows, signature.inputs[name], f"'instances' ({name})")}
    columns = {name: [] for name in names}
    for index, row in enumerate(rows):
        if not isinstance(row, dict) or sorted(row) != names:
            raise invalid(f"'instances'[{index}] must be an object with keys {names}, got "
                          f"{sorted(row) if isinstance(row, dict) else type(row).__name__}")
        for name in names:
            columns[name].append(row[name])
    return {name: json_to_array(values, signature.inputs[name], f"'instances' key '{name}'")
            for name, values in columns.items()}


def _columns_to_inputs(columns: Any, signature: SignatureSpec) -> Dict[str, np.ndarray]:
    names = sorted(signature.inputs)
    if not isinstance(columns, dict):
        if len(names) > 1:
            raise invalid(f"'inputs' is a plain value but signature '{signature.name}' takes "
                          f"several inputs {names}: send an object with these keys")
        columns = {names[0]: columns}
    unknown = sorted(set(columns) - set(names))
    if unknown:
        raise invalid(f"signature '{signature.name}' has no input {unknown}; it takes {names}")
    return {name: json_to_array(value, signature.inputs[name], f"'inputs' key '{name}'")
            for name, value in columns.items()}


def array_to_json(array: np.ndarray) -> Any:
    """Nested lists for JSON; float32 values in their shortest round-trip form, as TF Serving."""
    if array.dtype == np.float32:
        return np.vectorize(float, otypes=[object])(array.astype(str)).tolist()
    return array.tolist()


def format_rest_predict(outputs: Mapping[str, np.ndarray], fmt: str) -> Dict[str, Any]:
    """TF Serving's response: {"predictions": rows} for row requests, {"outputs": ...} else.

    With one output the rows (or the column) are the bare values; with several they are keyed
    by output alias.
    """
    if fmt == "row":
        if len(outputs) == 1:
            return {"predictions": array_to_json(next(iter(outputs.values())))}
        columns = {name: array_to_json(value) for name, value in outputs.items()}
        rows = len(next(iter(columns.values())))
        return {"predictions": [{name: columns[name][i] for name in columns}
                                for i in range(rows)]}
    if len(outputs) == 1:
        return {"outputs": array_to_json(next(iter(outputs.values())))}
    return {"outputs": {name: array_to_json(value) for name, value in outputs.items()}}
