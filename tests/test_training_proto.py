"""The server's hand-written protobuf schema against the official tinker SDK's own encoder and decoder."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("tinker")
from tinker import types
from tinker.proto import request_conv, response_conv

from hybridgate.training import _proto


def _request(data: list[types.Datum], **kw: object) -> bytes:
    req = types.ForwardBackwardRequest(
        forward_backward_input=types.ForwardBackwardInput(data=data, loss_fn="cross_entropy", **kw),  # type: ignore[arg-type]
        model_id="s:train:0",
        seq_id=7,
    )
    raw: bytes = request_conv.forward_backward_request_to_proto(req).SerializeToString()
    return raw


def test_sdk_encoded_forward_backward_decodes_to_the_same_datums() -> None:
    data = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1, 2, 3, 4]),
            loss_fn_inputs={"target_tokens": [2, 3, 4, 5], "weights": [0.0, 0.0, 1.0, -0.5]},
        ),
        types.Datum(
            model_input=types.ModelInput.from_ints([10, 11]), loss_fn_inputs={"target_tokens": [11, 12]}
        ),
    ]
    got = _proto.decode_forward_backward(_request(data))
    assert got["model_id"] == "s:train:0"
    assert got["seq_id"] == 7
    assert got["loss_fn"] == "cross_entropy"
    assert got["forward_only"] is False
    assert got["data"] == [
        {"tokens": [1, 2, 3, 4], "targets": [2, 3, 4, 5], "weights": [0.0, 0.0, 1.0, -0.5]},
        {"tokens": [10, 11], "targets": [11, 12], "weights": [1.0, 1.0]},
    ]


def test_malformed_and_unsupported_requests_name_the_field() -> None:
    bad = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1, 2, 3]),
            loss_fn_inputs={"target_tokens": [2, 3], "weights": [1.0, 1.0]},
        )
    ]
    with pytest.raises(_proto.WireError, match=r"data\[0\]: model_input has 3 tokens"):
        _proto.decode_forward_backward(_request(bad))
    extra = [
        types.Datum(
            model_input=types.ModelInput.from_ints([1]),
            loss_fn_inputs={"target_tokens": [2], "advantages": [1.0]},
        )
    ]
    assert _proto.decode_forward_backward(_request(extra))["data"] == [{"unsupported_inputs": ["advantages"]}]
    with pytest.raises(_proto.WireError, match="not a ForwardBackwardRequest"):
        _proto.decode_forward_backward(b"\xff\xff\xff")


def test_forward_backward_output_decodes_in_the_sdk() -> None:
    raw = _proto.encode_forward_backward_output([[-1.5, -2.0, -0.25], [-3.0]], {"loss:sum": 6.75})
    out = response_conv.deserialize_forward_backward_output(raw)
    assert out.metrics == {"loss:sum": 6.75}
    assert [o["logprobs"].data for o in out.loss_fn_outputs] == [[-1.5, -2.0, -0.25], [-3.0]]
    assert out.loss_fn_outputs[0]["logprobs"].dtype == "float32"


def test_sample_response_decodes_in_the_sdk() -> None:
    raw = _proto.encode_sample_response(
        [
            {"tokens": [5, 6, 7], "logprobs": [-0.5, -1.0, -2.0], "stop_reason": "stop"},
            {"tokens": [9], "logprobs": [-0.125], "stop_reason": "length"},
        ],
        [math.nan, -1.25, -2.5],
    )
    out = response_conv.deserialize_sample_response(raw)
    assert [list(s.tokens) for s in out.sequences] == [[5, 6, 7], [9]]
    assert [s.stop_reason for s in out.sequences] == ["stop", "length"]
    assert list(out.sequences[1].logprobs or []) == [-0.125]
    assert out.prompt_logprobs == [None, -1.25, -2.5]
