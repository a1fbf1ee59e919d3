"""Vectorised writer of tf.train.Example TFRecords for fixed-length float features.

Every transition has the same features with the same lengths, so every serialized
tf.train.Example has the same bytes except the float payloads. `ExampleEncoder` builds that
layout once and then fills the payload columns of a [N, record_bytes] uint8 array with numpy,
which avoids building one proto per row (BENCHMARKS.md, data pipeline). The bytes equal
`tf.train.Example.SerializeToString(deterministic=True)` (map keys sorted); the tests check
that against TensorFlow's own protos.

TFRecord framing per record: uint64 length, uint32 masked crc32c(length), data, uint32 masked
crc32c(data), little-endian.
"""

import numpy as np

import google_crc32c

_CRC_MASK_DELTA = 0xA282EAD8


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _length_delimited(field_number: int, payload: bytes) -> bytes:
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def masked_crc32c(data) -> int:
    """TFRecord's masked CRC-32C of `data` (bytes-like)."""
    crc = google_crc32c.value(bytes(data))
    return (((crc >> 15) | (crc << 17)) + _CRC_MASK_DELTA) & 0xFFFFFFFF


def _masked_crc_array(crcs: np.ndarray) -> np.ndarray:
    crcs = crcs.astype(np.uint64)
    rotated = ((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) & np.uint64(0xFFFFFFFF)
    return ((rotated + np.uint64(_CRC_MASK_DELTA)) & np.uint64(0xFFFFFFFF)).astype("<u4")


class ExampleEncoder:
    """Encodes rows of float features as framed TFRecord bytes.

    Args:
      feature_sizes: feature name -> number of floats per row (1 for a scalar feature). The
        record stores features sorted by name, as deterministic proto serialization does.
    """

    def __init__(self, feature_sizes: dict):
        self.feature_sizes = {name: int(size) for name, size in sorted(feature_sizes.items())}
        # Build the Example bytes with zero payloads, remembering where each payload sits.
        entries, self._payload_offsets = [], {}
        features_prefix_length = 0
        for name, size in self.feature_sizes.items():
            float_list = _length_delimited(1, b"\x00" * (4 * size))  # FloatList.value, packed
            feature = _length_delimited(2, float_list)  # Feature.float_list
            entry = _length_delimited(1, name.encode()) + _length_delimited(2, feature)
            wrapped = _length_delimited(1, entry)  # Features.feature map entry
            entries.append(wrapped)
            features_prefix_length += len(wrapped)
            # The payload is the last bytes of the entry.
            self._payload_offsets[name] = features_prefix_length - (4 * size)
        features = b"".join(entries)
        example = _length_delimited(1, features)  # Example.features
        header_length = len(example) - len(features)
        self._payload_offsets = {n: header_length + o for n, o in self._payload_offsets.items()}
        self._template = np.frombuffer(example, np.uint8)
        self.record_bytes = len(example)
        length_bytes = np.uint64(self.record_bytes).astype("<u8").tobytes()
        self._frame_header = np.frombuffer(
            length_bytes + np.uint32(masked_crc32c(length_bytes)).astype("<u4").tobytes(), np.uint8
        )
        self.framed_bytes = len(self._frame_header) + self.record_bytes + 4

    def encode(self, columns: dict) -> np.ndarray:
        """[N, record_bytes] uint8: serialized Examples; columns maps name -> [N] or [N, size]."""
        num_rows = len(next(iter(columns.values())))
        records = np.empty((num_rows, self.record_bytes), np.uint8)
        records[:] = self._template
        for name, size in self.feature_sizes.items():
            values = np.ascontiguousarray(columns[name], dtype="<f4").reshape(num_rows, size)
            start = self._payload_offsets[name]
            records[:, start:start + 4 * size] = values.view(np.uint8)
        return records

    def frame(self, records: np.ndarray) -> bytes:
        """TFRecord file bytes for [N, record_bytes] serialized Examples."""
        num_rows = len(records)
        framed = np.empty((num_rows, self.framed_bytes), np.uint8)
        header = len(self._frame_header)
        framed[:, :header] = self._frame_header
        framed[:, header:header + self.record_bytes] = records
        crc = google_crc32c.value
        data_crcs = np.fromiter((crc(row) for row in records), dtype=np.uint64, count=num_rows)
        framed[:, header + self.record_bytes:] = _masked_crc_array(data_crcs).view(np.uint8).reshape(-1, 4)
        return framed.tobytes()

    def encode_and_frame(self, columns: dict) -> bytes:
        return self.frame(self.encode(columns))
