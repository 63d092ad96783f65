"""The official tinker SDK (0.38.0), unmodified, drives hybridgate's training API on a tiny offline model.

One real gateway process on loopback, a real SQLite file, a key created with the `tml-` prefix by the CLI.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from _training import ENV, make_key, start_training_gateway, tiny_model, training_config  # noqa: F401
from hybridgate.testing.procs import Proc

tinker = pytest.importorskip("tinker")
from tinker import types  # noqa: E402

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[tuple[Proc, str, Path]]:  # noqa: F811
    work = tmp_path_factory.mktemp("gw")
    cfg = training_config(work, tiny_model)
    # The key exists before the gateway starts (the CLI writes the database the gateway then opens).
    from hybridgate.testing.procs import write_config

    write_config(cfg, work)
    key = make_key(work, "researcher")
    proc = start_training_gateway(work, cfg)
    yield proc, key, work
    proc.stop()


def _datum(tokens: list[int], weights: list[float]) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": weights},
    )


def _batch(tok: Any) -> list[types.Datum]:
    out = []
    for text in ("The quick brown fox jumps over the lazy dog.", "Paris is the capital of France."):
        ids = tok.encode(text)
        out.append(_datum(ids, [1.0] * (len(ids) - 1)))
    return out


def test_the_official_sdk_trains_samples_saves_and_lists(gw: tuple[Proc, str, Path]) -> None:
    proc, key, _ = gw
    sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
    tc = sc.create_lora_training_client(base_model="tiny", rank=4, seed=0).result()
    assert tc.model_id.endswith(":train:0")
    info = tc.get_info()
    assert info.model_data.model_name == "tiny" and info.lora_rank == 4
    tok = tc.get_tokenizer()  # loaded from the folder the server advertises, no hub
    assert tok.decode(tok.encode("Hello, world!")) == "Hello, world!"

    batch = _batch(tok)
    losses = []
    for _ in range(3):
        fb = tc.forward_backward(batch, "cross_entropy")
        opt = tc.optim_step(types.AdamParams(learning_rate=5e-3))
        res = fb.result()
        opt.result()
        losses.append(res.metrics["loss:sum"])
        lps = [o["logprobs"].data for o in res.loss_fn_outputs]
        assert [len(x) for x in lps] == [len(d.model_input.to_ints()) for d in batch]
        # cross_entropy with unit weights: the loss is minus the sum of the target logprobs
        assert math.isclose(res.metrics["loss:sum"], -sum(sum(x) for x in lps), rel_tol=1e-4)
    assert losses[2] < losses[1] < losses[0], losses

    fwd = tc.forward(batch, "cross_entropy").result()
    assert fwd.metrics["loss:sum"] < losses[-1]  # the weights after the last step are better still

    sampler_path = tc.save_weights_for_sampler("step-3").result().path
    assert sampler_path == f"tinker://{tc.model_id}/sampler_weights/step-3"
    state_path = tc.save_state("state-3").result().path
    assert state_path == f"tinker://{tc.model_id}/weights/state-3"

    samp = sc.create_sampling_client(model_path=sampler_path).result()
    assert samp.get_base_model() == "tiny"
    prompt = types.ModelInput.from_ints(tok.encode("The quick"))
    res = samp.sample(
        prompt=prompt,
        num_samples=2,
        sampling_params=types.SamplingParams(max_tokens=5, temperature=0.7, seed=3),
    ).result()
    assert len(res.sequences) == 2
    for s in res.sequences:
        assert 1 <= len(s.tokens) <= 5 and s.logprobs is not None and len(s.logprobs) == len(s.tokens)
        assert all(lp <= 0 for lp in s.logprobs)
    again = samp.sample(
        prompt=prompt,
        num_samples=2,
        sampling_params=types.SamplingParams(max_tokens=5, temperature=0.7, seed=3),
    ).result()
    assert [s.tokens for s in again.sequences] == [s.tokens for s in res.sequences]  # seeded: reproducible

    # compute_logprobs on the sampler equals the training client's forward logprobs of the same tokens
    ids = tok.encode("Paris is the capital of France.")
    lp = samp.compute_logprobs(types.ModelInput.from_ints(ids)).result()
    assert lp[0] is None and len(lp) == len(ids)
    fwd_lp = tc.forward([_datum(ids, [1.0] * (len(ids) - 1))], "cross_entropy").result()
    assert lp[1:] == pytest.approx(fwd_lp.loss_fn_outputs[0]["logprobs"].data, abs=1e-4)

    base = sc.create_sampling_client(base_model="tiny").result()
    greedy = base.sample(prompt, 1, types.SamplingParams(max_tokens=4, temperature=0.0)).result()
    assert len(greedy.sequences[0].tokens) == 4 and greedy.sequences[0].stop_reason == "length"
    stop_id = greedy.sequences[0].tokens[1]
    stopped = base.sample(
        prompt, 1, types.SamplingParams(max_tokens=4, temperature=0.0, stop=[stop_id])
    ).result()
    first = greedy.sequences[0].tokens.index(stop_id) + 1
    assert stopped.sequences[0].tokens == greedy.sequences[0].tokens[:first]  # the stop token included
    assert stopped.sequences[0].stop_reason == "stop"

    eph = tc.save_weights_and_get_sampling_client().result()
    assert eph.sample(prompt, 1, types.SamplingParams(max_tokens=3)).result().sequences[0].tokens

    tc2 = sc.create_training_client_from_state_with_optimizer(state_path).result()
    assert tc2.model_id.endswith(":train:1")
    resumed = tc2.forward(batch, "cross_entropy").result().metrics["loss:sum"]
    assert resumed == pytest.approx(fwd.metrics["loss:sum"], rel=1e-4)  # the same weights came back
    tc2.forward_backward(batch, "cross_entropy").result()
    tc2.optim_step(types.AdamParams(learning_rate=5e-3)).result()
    tc3 = sc.create_training_client_from_state(state_path).result()
    assert tc3.forward(batch, "cross_entropy").result().metrics["loss:sum"] == pytest.approx(
        resumed, rel=1e-4
    )

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        rc = sc.create_rest_client()
    caps = rc.get_server_capabilities().result()
    assert [m.model_name for m in caps.supported_models] == ["tiny"]
    runs = rc.list_training_runs().result()
    assert {r.training_run_id for r in runs.training_runs} >= {tc.model_id, tc2.model_id, tc3.model_id}
    assert runs.cursor.total_count >= 3
    ckpts = rc.list_checkpoints(tc.model_id).result().checkpoints
    assert {(c.checkpoint_type, c.checkpoint_id) for c in ckpts} >= {
        ("sampler", "sampler_weights/step-3"),
        ("training", "weights/state-3"),
    }
    assert rc.get_training_run_by_tinker_path(sampler_path).result().training_run_id == tc.model_id
    assert len(rc.list_user_checkpoints().result().checkpoints) >= 2
    wi = rc.get_weights_info_by_tinker_path(state_path).result()
    assert wi.base_model == "tiny" and wi.is_lora and wi.lora_rank == 4
    rc.delete_checkpoint_from_tinker_path(sampler_path).result()
    left = rc.list_checkpoints(tc.model_id).result().checkpoints
    assert "sampler_weights/step-3" not in {c.checkpoint_id for c in left}
    sc.close("success")


def test_unsupported_losses_and_missing_checkpoints_fail_as_user_errors(gw: tuple[Proc, str, Path]) -> None:
    proc, key, _ = gw
    sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
    tc = sc.create_lora_training_client(base_model="tiny", rank=2).result()
    datum = _datum([5, 6, 7], [1.0, 1.0])
    with pytest.raises(tinker.RequestFailedError, match="importance_sampling"):
        tc.forward_backward(
            [
                types.Datum(
                    model_input=datum.model_input,
                    loss_fn_inputs={**datum.loss_fn_inputs, "logprobs": [0.0, 0.0], "advantages": [1.0, 1.0]},
                )
            ],
            "importance_sampling",
        ).result()
    with pytest.raises(tinker.RequestFailedError, match="no gradients"):
        tc.optim_step(types.AdamParams(learning_rate=1e-3)).result()
    with pytest.raises(tinker.RequestFailedError, match="does not exist"):
        sc.create_training_client_from_state(f"tinker://{tc.model_id}/weights/nope").result()
    with pytest.raises(tinker.RequestFailedError, match="not available for training"):
        sc.create_lora_training_client(base_model="no-such-model", rank=2).result()
    sc.close("success")


def test_a_key_without_the_tml_prefix_or_another_keys_run_is_refused(gw: tuple[Proc, str, Path]) -> None:
    proc, key, work = gw
    with pytest.raises(tinker.TinkerError, match="tml-"):
        tinker.ServiceClient(base_url=proc.url + "/tinker", api_key="hg-abc").create_lora_training_client(
            base_model="tiny", rank=2
        )
    bad = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key="tml-not-a-real-key")
    with pytest.raises(tinker.AuthenticationError, match="Invalid API key"):
        bad.create_lora_training_client(base_model="tiny", rank=2).result()

    sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
    tc = sc.create_lora_training_client(base_model="tiny", rank=2).result()
    other = make_key(work, "someone-else")  # a second hybridgate key; the gateway reloads keys within 2 s
    rc = tinker.RestClient(base_url=proc.url + "/tinker", api_key=other)
    deadline = time.monotonic() + 10
    while True:
        try:
            runs = rc.list_training_runs().result()
            break
        except tinker.AuthenticationError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert tc.model_id not in {r.training_run_id for r in runs.training_runs}
    with pytest.raises(tinker.PermissionDeniedError, match="another API key"):
        rc.get_training_run(tc.model_id).result()
    sc.close("success")


def test_the_per_step_routes_answer_errors_as_the_rest_of_the_control_plane(
    gw: tuple[Proc, str, Path],
) -> None:
    """forward_backward, optim_step, asample and retrieve_future skip FastAPI's routing (api/app.py's
    fast_routes); their refusals must still be the control plane's, in OpenAI's shape."""
    import httpx

    proc, key, _ = gw
    base = proc.url + "/tinker/api/v1"
    with httpx.Client(timeout=30) as c:
        # No key: the same 401 a FastAPI-served Tinker route gives.
        slow = c.post(base + "/create_session", json={})
        for path in ("/forward_backward", "/optim_step", "/asample", "/retrieve_future", "/retrieve_future/"):
            r = c.post(base + path, json={})
            assert r.status_code == 401 == slow.status_code, path
            assert r.json() == slow.json(), path
            assert r.json()["error"]["type"] == "authentication_error", path
        h = {"X-API-Key": key}
        r = c.post(base + "/retrieve_future", content=b"{not json", headers=h)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = c.post(base + "/retrieve_future", json={}, headers=h)
        assert r.status_code == 400 and r.json()["error"]["param"] == "request_id"
        r = c.post(base + "/retrieve_future", json={"request_id": "nope"}, headers=h)
        assert r.status_code == 404 and r.json()["error"]["param"] == "request_id"
        r = c.post(base + "/forward_backward", json={"model_id": "x"}, headers=h)
        assert r.status_code == 400 and "application/x-protobuf" in r.json()["error"]["message"]
        r = c.post(base + "/optim_step", content=b"x" * (65 * 1024 * 1024), headers=h)
        assert r.status_code == 413
        # Other methods still reach the control plane: 405 naming POST.
        r = c.get(base + "/retrieve_future", headers=h)
        assert r.status_code == 405 and "POST" in r.headers["allow"]


def test_a_resent_step_runs_once_and_another_key_cannot_take_its_sequence_number(
    gw: tuple[Proc, str, Path],
) -> None:
    """The SDK resends a submit whose answer it lost (connection errors, 5xx, 408), with the same seq_id:
    the step must run once, not twice (gradients would accumulate twice). A submit naming the same run and
    seq_id from another key is refused on its own future and does not stand in for the owner's step.
    Gradient norm (optim_step's grad_norm:mean) is the witness: twice the gradients, twice the norm."""
    import httpx
    from tinker.proto import request_conv

    proc, key, work = gw
    base = proc.url + "/tinker/api/v1"
    sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
    tok = sc.create_lora_training_client(base_model="tiny", rank=2, seed=5).result().get_tokenizer()
    batch = _batch(tok)

    def norm_after_one_step(tc: Any, resend: bool, intruder: str | None) -> float:
        req = types.ForwardBackwardRequest(
            forward_backward_input=types.ForwardBackwardInput(data=batch, loss_fn="cross_entropy"),
            model_id=tc.model_id,
            seq_id=10_000,
        )
        body = request_conv.forward_backward_request_to_proto(req).SerializeToString()
        proto = {"content-type": "application/x-protobuf"}
        with httpx.Client(timeout=60) as c:
            if intruder is not None:
                r = c.post(base + "/forward_backward", content=body, headers={**proto, "X-API-Key": intruder})
                assert r.status_code == 200, r.text
                theirs = r.json()["request_id"]
                got = c.post(
                    base + "/retrieve_future", json={"request_id": theirs}, headers={"X-API-Key": intruder}
                ).json()
                assert got["category"] == "user" and "another API key" in got["error"], got
            ids = set()
            for _ in range(2 if resend else 1):
                r = c.post(base + "/forward_backward", content=body, headers={**proto, "X-API-Key": key})
                assert r.status_code == 200, r.text
                ids.add(r.json()["request_id"])
            assert len(ids) == 1  # the resend got the first submit's future
            if intruder is not None:
                assert ids != {theirs}
            rid = ids.pop()
            while True:  # long-polled: try_again only if the step outlasts the poll
                r = c.post(base + "/retrieve_future", json={"request_id": rid}, headers={"X-API-Key": key})
                if "json" not in r.headers["content-type"] or r.json().get("type") != "try_again":
                    break
            assert r.status_code == 200 and r.headers["content-type"] == "application/x-protobuf", r.text
        return float(tc.optim_step(types.AdamParams(learning_rate=1e-3)).result().metrics["grad_norm:mean"])

    other = make_key(work, "intruder")
    probe = tinker.RestClient(base_url=proc.url + "/tinker", api_key=other)
    deadline = time.monotonic() + 10
    while True:  # the gateway reloads keys within 2 s
        try:
            probe.list_training_runs().result()
            break
        except tinker.AuthenticationError:
            assert time.monotonic() < deadline
            time.sleep(0.2)

    once = norm_after_one_step(
        sc.create_lora_training_client(base_model="tiny", rank=2, seed=5).result(), False, None
    )
    resent = norm_after_one_step(
        sc.create_lora_training_client(base_model="tiny", rank=2, seed=5).result(), True, other
    )
    assert once > 0
    assert resent == pytest.approx(once, rel=1e-3), (resent, once)
    sc.close("success")
