"""Request bytes and cheap response checks for the load generator, per protocol.

The load generator sends pre-serialized requests through ``channel.unary_unary(path)`` /
``stream_stream(path)`` with no serializers, so one client drives aeguard, the no-op servers and
Seldon MLServer (the V2 inference protocol) alike, and spends no client CPU building or parsing
messages. Only stream responses are looked at, for aeguard's per-response ``error`` field: unary
errors arrive as gRPC status codes on every protocol.

The V2 ``ModelInferRequest`` is written by hand (a few fields of its proto, below) because
MLServer's generated classes need a protobuf major version other than ours.
"""

from __future__ import annotations

import numpy as np

AEGUARD_SCORE = "/aeguard.v1.AnomalyDetector/Score"
AEGUARD_SCORE_STREAM = "/aeguard.v1.AnomalyDetector/ScoreStream"
V2_MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"

#: Wire types of the protobuf encoding.
_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
#: ScoreResponse fields (proto/aeguard/v1/aeguard.proto): results = 3, error = 5.
_RESULTS_FIELD, _ERROR_FIELD = 3, 5


def sample_rows(rows: int, n_features: int, seed: int) -> np.ndarray:
    """The benchmark's input: standard-normal float32 rows (the model's output does not matter)."""
    return np.random.default_rng(seed).normal(size=(rows, n_features)).astype("<f4")


def aeguard_request(x: np.ndarray, columnar: bool = False) -> bytes:
    """A serialized ``aeguard.v1.ScoreRequest`` with ``x`` as its dense matrix; ``columnar`` asks for
    the results as packed columns (``ScoreResponse.columns``) instead of one message per sample."""
    from service.rpc.api import aeguard_pb2 as pb

    rows, cols = x.shape
    samples = pb.Matrix(rows=rows, cols=cols, raw=x.astype("<f4").tobytes())
    request = pb.ScoreRequest(samples=samples, columnar=columnar)
    return request.SerializeToString()


def v2_request(x: np.ndarray, model_name: str, input_name: str = "x") -> bytes:
    """A serialized V2 ``inference.ModelInferRequest``: one FP32 input ``[rows, features]`` whose
    values travel in ``raw_input_contents`` (the protocol's fast form).

    Fields used: ModelInferRequest.model_name = 1, inputs = 5, raw_input_contents = 7;
    InferInputTensor.name = 1, datatype = 2, shape = 3 (packed int64).
    """
    shape = b"".join(_varint(d) for d in x.shape)
    tensor = _len_field(1, input_name.encode()) + _len_field(2, b"FP32") + _len_field(3, shape)
    return (
        _len_field(1, model_name.encode()) + _len_field(5, tensor) + _len_field(7, x.astype("<f4").tobytes())
    )


def stream_error(response: bytes) -> str | None:
    """The error of an aeguard ``ScoreResponse`` from ScoreStream, or None when it carries results.

    Walks the top-level fields only and stops at the first result (a response with results has no
    error), so a 4096-result response costs a few steps instead of a full parse (about 1 ms); a
    columnar response is a handful of top-level fields.
    """
    pos, end = 0, len(response)
    while pos < end:
        key, pos = _read_varint(response, pos)
        field, wire = key >> 3, key & 7
        if field == _RESULTS_FIELD:
            return None
        if field == _ERROR_FIELD:
            from service.rpc.api import aeguard_pb2 as pb

            error = pb.ScoreResponse.FromString(response).error
            return f"{error.code}: {error.message}"
        pos = _skip(response, pos, wire)
    return None


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits, value = value & 0x7F, value >> 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _len_field(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | _LEN) + _varint(len(payload)) + payload


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _skip(data: bytes, pos: int, wire: int) -> int:
    if wire == _VARINT:
        return _read_varint(data, pos)[1]
    if wire == _I64:
        return pos + 8
    if wire == _I32:
        return pos + 4
    if wire == _LEN:
        length, pos = _read_varint(data, pos)
        return pos + length
    raise ValueError(f"unexpected protobuf wire type {wire}")
