"""What one request may cost the server, checked from what the request declares, before decoding.

`ServingLimits` is the one limits object both fronts of `serving/server.py` share, so REST and gRPC
refuse the same oversize request with the same status (INVALID_ARGUMENT, HTTP 400) and the same
message. The checks run in the same order on both fronts:

  1. body bytes     REST: Content-Length (or the chunks received so far); gRPC: the message length
  2. values         REST: JSON commas + 1 (an upper bound on the numbers a body holds);
                    gRPC: the element count of each TensorProto's declared shape
  3. JSON depth     REST only (protos do not nest here)
  4. rows, dtype, shape against the signature (serving/validation.py), still before decoding on gRPC

and `decode_budget` bounds how many bytes of large bodies are decoded at once, so concurrent
bodies near the limit do not add up, while small requests never wait for it.
"""
import contextlib
import dataclasses
import threading
from typing import Iterator, Optional

from serving.validation import UNAVAILABLE, RequestError, invalid

# Bodies up to this size decode without taking from the decode budget: a full batch of a SORL
# signature is far smaller, so ordinary traffic never waits behind a large body.
SMALL_BODY_BYTES = 1 << 20
# Room for the non-row JSON fields ("signature_name", keys) in the values bound.
VALUES_SLACK = 64


@dataclasses.dataclass(frozen=True)
class ServingLimits:
    """Per-request and per-server bounds; the CLI flags of serving/server.py set them."""

    max_body_bytes: int = 64 << 20  # largest request body (REST) or message (gRPC)
    max_batch_size: int = 1024  # most rows one request may send
    max_json_depth: int = 32  # deepest JSON nesting a REST body may use
    max_connections: int = 100  # open REST connections
    # gRPC calls received or running at once: gRPC reads a whole message before any server code runs,
    # so this times (max_body_bytes + 1 MiB) bounds the memory of gRPC requests in flight.
    max_grpc_calls: int = 32
    max_concurrent_requests: int = 16  # requests run at once per front (REST threads, gRPC workers)
    request_timeout_s: float = 30.0  # time to receive one whole REST request
    idle_timeout_s: float = 60.0  # keep-alive connections idle longer are closed
    max_decode_bytes: int = 128 << 20  # bytes of large bodies being decoded at once

    def __post_init__(self):
        for field in dataclasses.fields(self):
            if getattr(self, field.name) <= 0:
                raise ValueError(f"ServingLimits.{field.name} must be > 0, got "
                                 f"{getattr(self, field.name)}")
        if self.max_decode_bytes < self.max_body_bytes:
            raise ValueError(f"ServingLimits.max_decode_bytes={self.max_decode_bytes} must be at "
                             f"least max_body_bytes={self.max_body_bytes}, or no full body decodes")

    def too_large(self) -> RequestError:
        """The one answer to a request over the byte or the values bound, on both fronts.

        One message for both: the same request is about twice as long as JSON as it is as a
        TensorProto, so one front may find it over the byte bound and the other over the values
        bound; the client's remedy is the same.
        """
        return invalid(f"request is larger than this server accepts: at most "
                       f"{self.max_batch_size} rows (--max_batch_size) in at most "
                       f"{self.max_body_bytes} bytes (--max_body_bytes); split the request")

    def check_body_bytes(self, declared: int):
        if declared > self.max_body_bytes:
            raise self.too_large()

    def max_values(self, max_row_values: Optional[int]) -> int:
        """The most numbers a request may declare when one row holds `max_row_values` of them
        (None: a signature has a free non-batch dimension, so only the body size bounds them)."""
        if max_row_values is None:
            return self.max_body_bytes // 2  # every JSON number takes a digit and a comma
        return self.max_batch_size * max_row_values + VALUES_SLACK

    def check_values(self, declared: int, max_row_values: Optional[int]):
        if declared > self.max_values(max_row_values):
            raise self.too_large()

    def check_json_body(self, body: bytes, max_row_values: Optional[int]):
        """Bounds json.loads's work from byte counts alone (C speed, nothing decoded).

        Every JSON value but the first follows a comma, so commas + 1 bound the numbers; and each
        array or object is an ancestor of at least one value or is empty, so more brackets than
        (commas + 1) * max_json_depth means a deeper nesting than allowed. Commas and brackets
        inside strings only make the counts larger (stricter), never smaller.
        """
        commas = body.count(b",")
        self.check_values(commas + 1, max_row_values)
        containers = body.count(b"[") + body.count(b"{")
        if containers > (commas + 1) * self.max_json_depth:
            raise self.too_deep()

    def too_deep(self) -> RequestError:
        return invalid(f"request body nests JSON deeper than the server's limit of "
                       f"{self.max_json_depth} levels")


class DecodeBudget:
    """Bytes of large bodies being decoded at once, at most `limits.max_decode_bytes`.

    A large body that finds no room within `wait_s` gets UNAVAILABLE (retry), so waiting requests
    cannot hold every worker thread; bodies up to SMALL_BODY_BYTES pass straight through.
    """

    def __init__(self, max_bytes: int, wait_s: float = 1.0):
        self.max_bytes = max_bytes
        self.wait_s = wait_s
        self._in_use = 0
        self._cv = threading.Condition()

    @contextlib.contextmanager
    def decoding(self, nbytes: int) -> Iterator[None]:
        if nbytes <= SMALL_BODY_BYTES:
            yield
            return
        with self._cv:
            if not self._cv.wait_for(lambda: self._in_use + nbytes <= self.max_bytes,
                                     timeout=self.wait_s):
                raise RequestError(UNAVAILABLE, "the server is decoding other large requests; "
                                                "retry shortly or send smaller requests")
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._cv:
                self._in_use -= nbytes
                self._cv.notify_all()
