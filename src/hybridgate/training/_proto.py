"""The protobuf messages of Tinker's wire protocol that this server reads and writes.

The SDK (0.25 and later) sends forward_backward requests as protobuf and accepts forward_backward and
sample results only as protobuf. The schema (`tinker_public`, proto3) is described here by hand, field
numbers being the interface, and built at import with the protobuf runtime alone: no `tinker` package and
no protoc on the server. Unknown fields (newer SDKs add some) are skipped by the parser. Only the messages
the server needs are declared; tests check them against the SDK's own encoder and decoder.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

_F = descriptor_pb2.FieldDescriptorProto
_PKG = "tinker_public"

# message -> [(field, number, type, label, message or enum type, oneof index, proto3 optional)]
_OPT, _REP = _F.LABEL_OPTIONAL, _F.LABEL_REPEATED
_MESSAGES: dict[str, list[tuple[str, int, int, int, str, int | None, bool]]] = {
    "ForwardBackwardRequest": [
        ("model_id", 1, _F.TYPE_STRING, _OPT, "", None, False),
        ("seq_id", 2, _F.TYPE_INT32, _OPT, "", None, False),
        ("data", 3, _F.TYPE_MESSAGE, _REP, "Datum", None, False),
        ("loss_fn", 4, _F.TYPE_STRING, _OPT, "", None, False),
        ("loss_fn_config", 5, _F.TYPE_MESSAGE, _REP, "ForwardBackwardRequest.LossFnConfigEntry", None, False),
        ("forward_only", 6, _F.TYPE_BOOL, _OPT, "", None, False),
        (
            "loss_fn_config_v2",
            7,
            _F.TYPE_MESSAGE,
            _REP,
            "ForwardBackwardRequest.LossFnConfigV2Entry",
            None,
            False,
        ),
    ],
    "LossConfigValue": [
        ("number", 1, _F.TYPE_DOUBLE, _OPT, "", 0, False),
        ("text", 2, _F.TYPE_STRING, _OPT, "", 0, False),
    ],
    "Datum": [
        ("model_input", 1, _F.TYPE_MESSAGE, _REP, "Chunk", None, False),
        ("loss_fn_inputs", 2, _F.TYPE_MESSAGE, _REP, "Datum.LossFnInputsEntry", None, False),
    ],
    "Chunk": [
        ("encoded_text", 1, _F.TYPE_MESSAGE, _OPT, "EncodedTextChunk", 0, False),
        ("image", 2, _F.TYPE_MESSAGE, _OPT, "OpaqueChunk", 0, False),
        ("dmel", 3, _F.TYPE_MESSAGE, _OPT, "OpaqueChunk", 0, False),
    ],
    "EncodedTextChunk": [("tokens", 1, _F.TYPE_BYTES, _OPT, "", None, False)],
    # Images and dmel are out of scope: only their presence is read, to refuse them by name.
    "OpaqueChunk": [],
    "Tensor": [
        ("dense", 1, _F.TYPE_BYTES, _OPT, "", 0, False),
        ("sparse_csr", 2, _F.TYPE_MESSAGE, _OPT, "SparseCsr", 0, False),
        ("dtype", 3, _F.TYPE_ENUM, _OPT, "DType", None, False),
        ("shape", 4, _F.TYPE_INT64, _REP, "", None, False),
    ],
    "SparseCsr": [
        ("values", 1, _F.TYPE_BYTES, _OPT, "", None, False),
        ("crow_indices", 2, _F.TYPE_BYTES, _OPT, "", None, False),
        ("col_indices", 3, _F.TYPE_BYTES, _OPT, "", None, False),
    ],
    "ForwardBackwardOutput": [
        ("loss_fn_output_type", 1, _F.TYPE_STRING, _OPT, "", None, False),
        ("loss_fn_outputs", 2, _F.TYPE_MESSAGE, _REP, "ArrayRecord", None, False),
        ("metrics", 3, _F.TYPE_MESSAGE, _REP, "ForwardBackwardOutput.MetricsEntry", None, False),
    ],
    "ArrayRecord": [
        ("type_tag", 1, _F.TYPE_STRING, _OPT, "", None, False),
        ("fields", 2, _F.TYPE_MESSAGE, _REP, "ArrayRecord.FieldsEntry", None, False),
        ("num_datums", 3, _F.TYPE_INT64, _OPT, "", None, False),
    ],
    "BatchedTensor": [
        ("data", 1, _F.TYPE_BYTES, _OPT, "", None, False),
        ("offsets", 2, _F.TYPE_BYTES, _OPT, "", None, False),
        ("dtype", 3, _F.TYPE_ENUM, _OPT, "DType", None, False),
        ("trailing_shape", 4, _F.TYPE_INT64, _REP, "", None, False),
    ],
    "SampleResponse": [
        ("sequences", 1, _F.TYPE_MESSAGE, _REP, "SampledSequence", None, False),
        ("prompt_logprobs", 2, _F.TYPE_BYTES, _OPT, "", 0, True),
        ("prompt_cache_hit_tokens", 4, _F.TYPE_INT32, _OPT, "", None, False),
    ],
    "SampledSequence": [
        ("stop_reason", 1, _F.TYPE_ENUM, _OPT, "StopReason", None, False),
        ("tokens", 2, _F.TYPE_BYTES, _OPT, "", None, False),
        ("logprobs", 3, _F.TYPE_BYTES, _OPT, "", 0, True),
    ],
}
# Map entries: message -> (entry name, key type, value type, value message)
_MAPS: dict[str, list[tuple[str, int, int, str]]] = {
    "ForwardBackwardRequest": [
        ("LossFnConfigEntry", _F.TYPE_STRING, _F.TYPE_DOUBLE, ""),
        ("LossFnConfigV2Entry", _F.TYPE_STRING, _F.TYPE_MESSAGE, "LossConfigValue"),
    ],
    "Datum": [("LossFnInputsEntry", _F.TYPE_STRING, _F.TYPE_MESSAGE, "Tensor")],
    "ForwardBackwardOutput": [("MetricsEntry", _F.TYPE_STRING, _F.TYPE_DOUBLE, "")],
    "ArrayRecord": [("FieldsEntry", _F.TYPE_STRING, _F.TYPE_MESSAGE, "BatchedTensor")],
}
_ENUMS = {
    "DType": [
        ("DTYPE_UNSPECIFIED", 0),
        ("DTYPE_FLOAT32", 1),
        ("DTYPE_INT64", 2),
        ("DTYPE_INT32", 3),
        ("DTYPE_BFLOAT16", 4),
    ],
    "StopReason": [("STOP_REASON_STOP", 0), ("STOP_REASON_LENGTH", 1)],
}
_ONEOFS = {
    "LossConfigValue": ["value"],
    "Chunk": ["chunk"],
    "Tensor": ["encoding"],
    "SampleResponse": ["_prompt_logprobs"],
    "SampledSequence": ["_logprobs"],
}

DTYPE_FLOAT32, DTYPE_INT64, DTYPE_INT32, DTYPE_BFLOAT16 = 1, 2, 3, 4
STOP, LENGTH = 0, 1


def _field(
    msg: descriptor_pb2.DescriptorProto,
    name: str,
    number: int,
    typ: int,
    label: int,
    type_name: str,
    oneof: int | None = None,
    optional: bool = False,
) -> None:
    f = msg.field.add(name=name, number=number, type=typ, label=label)
    if type_name:
        f.type_name = f".{_PKG}.{type_name}"
    if oneof is not None:
        f.oneof_index = oneof
    if optional:
        f.proto3_optional = True


def _build() -> dict[str, Any]:
    fd = descriptor_pb2.FileDescriptorProto(
        name="hybridgate_tinker_public.proto", package=_PKG, syntax="proto3"
    )
    for name, values in _ENUMS.items():
        e = fd.enum_type.add(name=name)
        for vname, vnum in values:
            e.value.add(name=vname, number=vnum)
    for name, field_list in _MESSAGES.items():
        m = fd.message_type.add(name=name)
        for oneof_name in _ONEOFS.get(name, []):
            m.oneof_decl.add(name=oneof_name)
        for entry, key_t, value_t, value_msg in _MAPS.get(name, []):
            n = m.nested_type.add(name=entry)
            n.options.map_entry = True
            _field(n, "key", 1, key_t, _OPT, "")
            _field(n, "value", 2, value_t, _OPT, value_msg)
        for fname, num, typ, label, type_name, oneof, optional in field_list:
            _field(m, fname, num, typ, label, type_name, oneof, optional)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fd)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PKG}.{name}"))
        for name in _MESSAGES
    }


_CLASSES = _build()
ForwardBackwardRequest: Any = _CLASSES["ForwardBackwardRequest"]
ForwardBackwardOutput: Any = _CLASSES["ForwardBackwardOutput"]
SampleResponse: Any = _CLASSES["SampleResponse"]

__all__ = [
    "DTYPE_BFLOAT16",
    "DTYPE_FLOAT32",
    "DTYPE_INT32",
    "DTYPE_INT64",
    "LENGTH",
    "STOP",
    "ForwardBackwardOutput",
    "ForwardBackwardRequest",
    "SampleResponse",
]


# --- what the server does with them --------------------------------------------------------------------


class WireError(ValueError):
    """A request the server cannot use; the message names the field and what to send instead."""


def _dense(t: Any, name: str, index: int) -> list[float] | list[int]:
    import numpy as np

    where = f"data[{index}].loss_fn_inputs['{name}']"
    if t.WhichOneof("encoding") != "dense":
        raise WireError(f"{where}: sparse tensors (2-D targets) are not supported; send a 1-D dense tensor")
    if len(t.shape) > 1:
        raise WireError(f"{where}: shape {list(t.shape)} is not supported; send a 1-D tensor")
    kinds = {DTYPE_FLOAT32: np.float32, DTYPE_INT64: np.int64, DTYPE_INT32: np.int32}
    if t.dtype not in kinds:
        raise WireError(f"{where}: dtype {t.dtype} is not supported (float32, int64 or int32)")
    width = np.dtype(kinds[t.dtype]).itemsize
    if len(t.dense) % width:
        raise WireError(f"{where}: {len(t.dense)} bytes is not a whole number of elements")
    values: list[float] | list[int] = np.frombuffer(t.dense, dtype=kinds[t.dtype]).tolist()
    return values


def decode_forward_backward(raw: bytes) -> dict[str, Any]:
    """A ForwardBackwardRequest as plain data: model_id, seq_id, loss_fn, forward_only and datums
    (input tokens, target tokens, weights). WireError names what is malformed or unsupported. A datum with
    inputs cross_entropy does not take is returned as {"unsupported_inputs": [...]}, for the caller to refuse
    along with the loss it belongs to."""
    import numpy as np

    msg = ForwardBackwardRequest()
    try:
        msg.ParseFromString(raw)
    except Exception as e:  # protobuf's DecodeError and friends
        raise WireError(f"the body is not a ForwardBackwardRequest protobuf: {e}") from None
    datums = []
    for i, d in enumerate(msg.data):
        tokens: list[int] = []
        for c in d.model_input:
            kind = c.WhichOneof("chunk")
            if kind != "encoded_text":
                raise WireError(
                    f"data[{i}].model_input: {kind or 'empty'} chunks are not supported; send text tokens"
                )
            if len(c.encoded_text.tokens) % 4:
                raise WireError(f"data[{i}].model_input: token bytes are not int32")
            tokens.extend(np.frombuffer(c.encoded_text.tokens, dtype="<i4").tolist())
        inputs = dict(d.loss_fn_inputs)
        unknown = sorted(set(inputs) - {"target_tokens", "weights"})
        if unknown:  # another loss's inputs: the caller refuses the loss by name
            datums.append({"unsupported_inputs": unknown})
            continue
        if "target_tokens" not in inputs:
            raise WireError(f"data[{i}].loss_fn_inputs: 'target_tokens' is missing")
        targets = [int(x) for x in _dense(inputs["target_tokens"], "target_tokens", i)]
        weights = (
            [float(x) for x in _dense(inputs["weights"], "weights", i)]
            if "weights" in inputs
            else [1.0] * len(targets)
        )
        if len(targets) != len(tokens) or len(weights) != len(tokens):
            raise WireError(
                f"data[{i}]: model_input has {len(tokens)} tokens but target_tokens has {len(targets)} "
                f"and weights {len(weights)}; they must be equal"
            )
        if not tokens:
            raise WireError(f"data[{i}]: model_input is empty")
        datums.append({"tokens": tokens, "targets": targets, "weights": weights})
    config = {k: v for k, v in msg.loss_fn_config.items()}
    for k, v in msg.loss_fn_config_v2.items():
        config[k] = v.number if v.WhichOneof("value") == "number" else v.text
    return {
        "model_id": msg.model_id,
        "seq_id": msg.seq_id,
        "loss_fn": msg.loss_fn,
        "loss_fn_config": config,
        "forward_only": msg.forward_only,
        "data": datums,
    }


def encode_forward_backward_output(logprobs: list[list[float]], metrics: dict[str, float]) -> bytes:
    """The result of a forward_backward: per-datum logprobs of the targets, and `name:reduction` metrics."""
    import numpy as np

    out = ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    rec = out.loss_fn_outputs.add(type_tag="ArrayRecord", num_datums=len(logprobs))
    flat = np.asarray([x for lp in logprobs for x in lp], dtype="<f4")
    offsets = np.cumsum([0] + [4 * len(lp) for lp in logprobs]).astype("<i8")
    bt = rec.fields["logprobs"]
    bt.data = flat.tobytes()
    bt.offsets = offsets.tobytes()
    bt.dtype = DTYPE_FLOAT32
    for k, v in metrics.items():
        out.metrics[k] = float(v)
    data: bytes = out.SerializeToString()
    return data


def encode_sample_response(sequences: list[dict[str, Any]], prompt_logprobs: list[float] | None) -> bytes:
    """Sequences (tokens, logprobs, stop_reason "stop"|"length") and optional prompt logprobs (NaN first)."""
    import numpy as np

    out = SampleResponse()
    for s in sequences:
        seq = out.sequences.add()
        seq.stop_reason = STOP if s["stop_reason"] == "stop" else LENGTH
        seq.tokens = np.asarray(s["tokens"], dtype="<i4").tobytes()
        seq.logprobs = np.asarray(s["logprobs"], dtype="<f4").tobytes()
    if prompt_logprobs is not None:
        out.prompt_logprobs = np.asarray(prompt_logprobs, dtype="<f4").tobytes()
    data: bytes = out.SerializeToString()
    return data
