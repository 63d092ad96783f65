"""The plain JSON training API and `hybridgate.training.Client`, against a real gateway on a tiny model."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from _training import ENV, make_key, start_training_gateway, tiny_model, training_config  # noqa: F401
from hybridgate.testing.procs import Proc, write_config
from hybridgate.training import Client, TrainingAPIError

pytestmark = pytest.mark.timeout(600)

CHAT = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
]
PRICE = {"prefill_per_mtok": 100.0, "sample_per_mtok": 200.0, "train_per_mtok": 1000.0}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[dict[str, Any]]:  # noqa: F811
    work = tmp_path_factory.mktemp("gw")
    cfg = training_config(work, tiny_model, price=PRICE, max_batch_datums=8)
    write_config(cfg, work)
    keys = {
        "alice": make_key(work, "alice", tinker=False),
        "bob": make_key(work, "bob", tinker=False),
        "poor": make_key(work, "poor", tinker=True, budget=0.2),
    }
    proc = start_training_gateway(work, cfg)
    yield {"proc": proc, "keys": keys, "work": work, "model": tiny_model}
    proc.stop()


def _client(gw: dict[str, Any], who: str = "alice") -> Client:
    proc: Proc = gw["proc"]
    return Client(proc.url, gw["keys"][who])


def test_chat_examples_are_rendered_with_the_template_and_the_loss_falls(gw: dict[str, Any]) -> None:
    from transformers import AutoTokenizer

    c = _client(gw)
    run = c.create_run("tiny", rank=4, seed=1)
    assert run["status"] == "active" and run["lora"]["rank"] == 4 and run["steps"] == 0
    fb = c.forward_backward(run["id"], [{"messages": CHAT}], logprobs=True)
    tok = AutoTokenizer.from_pretrained(str(gw["model"]))
    rendered = tok.apply_chat_template(CHAT, tokenize=True)
    rendered = list(rendered["input_ids"] if hasattr(rendered, "keys") else rendered)
    assert fb["tokens_in"] == [rendered[:-1]]
    prompt_len = len(
        tok.apply_chat_template(CHAT[:1], tokenize=True, add_generation_prompt=True)["input_ids"]
    )
    # The loss is on the assistant turn only: mean = sum / (number of assistant tokens)
    n_assistant = len(rendered) - prompt_len
    assert fb["loss_mean"] == pytest.approx(fb["loss_sum"] / n_assistant)
    losses = [fb["loss_sum"]]
    c.optim_step(run["id"], learning_rate=5e-3)
    for _ in range(3):
        losses.append(
            c.forward_backward(run["id"], [{"messages": CHAT}, {"text": "Hello, world!"}])["loss_sum"]
        )
        c.optim_step(run["id"], learning_rate=5e-3)
    after = c.forward_backward(run["id"], [{"messages": CHAT}], forward_only=True)["loss_sum"]
    assert after < losses[0] * 0.8, (losses, after)
    got = c.get_run(run["id"])
    assert got["steps"] == 4 and len(got["loss_history"]) == 4
    assert got["tokens"]["train"] > 0 and got["cost_usd"] > 0
    s = c.sample(run["id"], messages=CHAT[:1], max_tokens=6, temperature=0.0)
    assert len(s["samples"]) == 1 and 1 <= len(s["samples"][0]["tokens"]) <= 6
    assert isinstance(s["samples"][0]["text"], str)
    assert run["id"] in {r["id"] for r in c.list_runs()}


def test_gradient_accumulation_gives_the_same_update_as_one_large_batch(gw: dict[str, Any]) -> None:
    from safetensors.torch import load_file

    c = _client(gw)
    a = c.create_run("tiny", rank=4, seed=7)
    b = c.create_run("tiny", rank=4, seed=7)
    ex1 = [{"text": "The quick brown fox jumps over the lazy dog."}, {"messages": CHAT}]
    ex2 = [
        {"text": "Paris is the capital of France."},
        {"tokens": [5, 9, 17, 30, 44], "weights": [0, 1, 1, 0.5, 2]},
    ]
    c.forward_backward(a["id"], ex1)
    c.forward_backward(a["id"], ex2)
    c.forward_backward(b["id"], ex1 + ex2)
    for r in (a, b):
        c.optim_step(r["id"], learning_rate=1e-2, grad_clip_norm=5.0)
    probe = [{"text": "A researcher fine-tunes a small model."}]
    la = c.forward_backward(a["id"], probe, forward_only=True, logprobs=True)
    lb = c.forward_backward(b["id"], probe, forward_only=True, logprobs=True)
    assert la["logprobs"][0] == pytest.approx(lb["logprobs"][0], abs=1e-5)
    sa, sb = c.save(a["id"], "adapter", "acc"), c.save(b["id"], "adapter", "one")
    wa = load_file(str(Path(sa["path"]) / "adapter_model.safetensors"))
    wb = load_file(str(Path(sb["path"]) / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys() and wa
    for k in wa:
        assert (wa[k] - wb[k]).abs().max().item() < 1e-5, k
    # and the update was real: a third run with the same seed and no step differs
    fresh = c.create_run("tiny", rank=4, seed=7)
    lf = c.forward_backward(fresh["id"], probe, forward_only=True, logprobs=True)
    assert lf["logprobs"][0] != pytest.approx(la["logprobs"][0], abs=1e-4)


def test_adapter_and_merged_saves_load_back_with_the_same_logits(gw: dict[str, Any]) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    c = _client(gw)
    run = c.create_run("tiny", rank=4, seed=3, target_modules=["attn", "mlp"])
    c.forward_backward(run["id"], [{"messages": CHAT}])
    c.optim_step(run["id"], learning_rate=1e-2)
    probe = c.forward_backward(
        run["id"], [{"text": "Hello, world! Paris."}], forward_only=True, logprobs=True
    )
    ids, server_lp = probe["tokens_in"][0], probe["logprobs"][0]
    text = [*ids, 0]  # the targets are the next tokens; rebuild the full sequence from the probe
    adapter = c.save(run["id"], "adapter", "final")
    merged = c.save(run["id"], "merged", "final-merged")
    assert adapter["tinker_path"].endswith("/sampler_weights/final") and merged["tinker_path"] is None
    # kept by the gateway's storage (local files here); `path` is the local copy torch reads
    assert adapter["uri"].startswith("file://") and adapter["uri"].endswith(
        "/sampler_weights/final/checkpoint.json"
    )

    def logprobs(model: Any) -> list[float]:
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()
        targets = torch.tensor(text[1:])
        lp = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
        return [float(x) for x in lp[:-1]]

    base = AutoModelForCausalLM.from_pretrained(str(gw["model"]), dtype=torch.float32)
    with_adapter = PeftModel.from_pretrained(base, adapter["path"]).eval()
    assert logprobs(with_adapter) == pytest.approx(server_lp[:-1], abs=1e-4)
    whole = AutoModelForCausalLM.from_pretrained(merged["path"], dtype=torch.float32).eval()
    assert logprobs(whole) == pytest.approx(server_lp[:-1], abs=1e-4)
    plain = AutoModelForCausalLM.from_pretrained(str(gw["model"]), dtype=torch.float32).eval()
    assert logprobs(plain) != pytest.approx(server_lp[:-1], abs=1e-4)  # the adapter changed something


def _status(fn: Any) -> tuple[int, str | None, str]:
    try:
        fn()
    except TrainingAPIError as e:
        return e.status, e.param, e.message
    raise AssertionError("no error")


def test_every_error_case_answers_its_status_never_a_500(gw: dict[str, Any]) -> None:
    proc: Proc = gw["proc"]
    alice, bob = _client(gw), _client(gw, "bob")
    run = alice.create_run("tiny", rank=2)
    rid = run["id"]
    r = httpx.get(proc.url + f"/v1/training/runs/{rid}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _status(lambda: bob.get_run(rid))[0] == 403
    assert _status(lambda: bob.forward_backward(rid, [{"text": "hi there"}]))[0] == 403
    assert rid not in {x["id"] for x in bob.list_runs()}
    assert _status(lambda: alice.get_run("run_nope"))[0] == 404
    assert _status(lambda: alice.optim_step("run_nope"))[0] == 404
    st, param, msg = _status(lambda: alice.create_run("gpt-17"))
    assert (st, param) == (400, "base_model") and "tiny" in msg
    st, _, msg = _status(lambda: alice.optim_step(rid, learning_rate=1e-3))
    assert st == 400 and "no gradients" in msg
    bad = [{"messages": [{"role": "robot", "content": "x"}]}]
    assert _status(lambda: alice.forward_backward(rid, bad))[:2] == (400, "examples[0].messages[0].role")
    no_reply = [{"messages": [{"role": "user", "content": "x"}]}]
    assert _status(lambda: alice.forward_backward(rid, no_reply))[:2] == (400, "examples[0].messages")
    assert _status(lambda: alice.forward_backward(rid, [{"tokens": [1, "a"]}]))[:2] == (
        400,
        "examples[0].tokens",
    )
    assert (
        _status(lambda: alice.forward_backward(rid, [{"tokens": [1, 99999]}]))[0] == 400
    )  # outside the vocabulary
    assert _status(lambda: alice.forward_backward(rid, []))[:2] == (400, "examples")
    st, _, msg = _status(lambda: alice.forward_backward(rid, [{"text": "x y z"}] * 9))
    assert st == 413 and "at most 8" in msg
    assert _status(lambda: alice.optim_step(rid, learning_rate=-1))[:2] == (400, "learning_rate")
    assert _status(lambda: alice.save(rid, "weird"))[:2] == (400, "kind")
    assert _status(lambda: alice.serve(rid))[:2] == (400, "checkpoint")
    r = httpx.post(
        proc.url + f"/v1/training/runs/{rid}/forward_backward",
        content=b"{not json",
        headers={"Authorization": f"Bearer {gw['keys']['alice']}"},
    )
    assert r.status_code == 400
    assert alice.delete_run(rid)["deleted"] is True
    assert _status(lambda: alice.get_run(rid))[0] == 404


def test_a_budget_stops_training_at_its_limit_and_costs_show_per_run(gw: dict[str, Any]) -> None:
    import tinker
    from tinker import types

    proc: Proc = gw["proc"]
    key = gw["keys"]["poor"]  # budget $0.20; training costs $1000 per million tokens here
    c = Client(proc.url, key)
    run = c.create_run("tiny", rank=2)
    batch = [{"text": "The quick brown fox jumps over the lazy dog. " * 3}]
    refused = None
    for _ in range(40):
        try:
            c.forward_backward(run["id"], batch)
            c.optim_step(run["id"], learning_rate=1e-3)
        except TrainingAPIError as e:
            refused = e
            break
    assert refused is not None and refused.status == 429 and refused.code == "budget_exceeded"
    got = c.get_run(run["id"])
    assert 0 < got["cost_usd"] <= 0.2 + 1e-9
    usage = httpx.get(
        proc.url + "/v1/usage?group_by=model", headers={"Authorization": f"Bearer {key}"}
    ).json()
    per_run = {row["group"]: row for row in usage["data"]}
    assert per_run[run["id"]]["cost_usd"] == pytest.approx(got["cost_usd"], rel=1e-6)
    assert per_run[run["id"]]["training_tokens"] == got["tokens"]["train"]
    # The same key through the Tinker SDK: a step over the budget is a failed future, category user
    sc = tinker.ServiceClient(base_url=proc.url + "/tinker", api_key=key)
    tc = sc.create_lora_training_client(base_model="tiny", rank=2).result()
    ids = list(range(3, 200))
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(ids[:-1]), loss_fn_inputs={"target_tokens": ids[1:]}
    )
    with pytest.raises(tinker.RequestFailedError, match="budget exceeded") as info:
        tc.forward_backward([datum], "cross_entropy").result()
    assert info.value.category == "user" or "user" in str(info.value).lower()
    sc.close("success")


def test_a_served_adapter_chats_through_the_openai_client(gw: dict[str, Any]) -> None:
    import openai

    proc: Proc = gw["proc"]
    c = _client(gw)
    run = c.create_run("tiny", rank=4, seed=5)
    for _ in range(2):
        c.forward_backward(run["id"], [{"messages": CHAT}])
        c.optim_step(run["id"], learning_rate=1e-2)
    c.save(run["id"], "adapter", "chat")
    served = c.serve(run["id"], model="tiny-chat")
    assert served["model"] == "tiny-chat"
    assert "tiny-chat" in c.get_run(run["id"])["served_as"]
    oa = openai.OpenAI(base_url=proc.base_url, api_key=gw["keys"]["alice"])
    assert "tiny-chat" in {m.id for m in oa.models.list().data}
    out = oa.chat.completions.create(model="tiny-chat", messages=CHAT[:1], max_tokens=8, temperature=0)
    text = out.choices[0].message.content
    assert out.usage is not None and out.usage.completion_tokens >= 1
    assert out.choices[0].finish_reason in ("stop", "length")
    direct = c.sample(run["id"], messages=CHAT[:1], max_tokens=8, temperature=0.0)["samples"][0]["text"]
    assert text == direct.split("<|end|>")[0] or direct.startswith(
        text
    )  # the served model is the run's adapter
    pieces = []
    t0 = time.monotonic()
    stream = oa.chat.completions.create(
        model="tiny-chat",
        messages=CHAT[:1],
        max_tokens=8,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert "".join(pieces) == text and time.monotonic() - t0 < 60
    assert _status(lambda: c.serve(run["id"], model="tiny-chat"))[:2] == (400, "model")


def test_step_rows_are_written_behind_but_every_read_and_a_shutdown_sees_them(
    tmp_path: Path,
    tiny_model: Path,  # noqa: F811
) -> None:
    """A step's rows (its future, the run's steps, tokens and cost) are queued and written together up
    to `write_delay_s` later, not committed one step at a time (benchmarks/README.md, training API). A read
    of the run writes what waits first, and a shutdown writes it too. Counted on the SQLite file itself."""
    import sqlite3

    work = tmp_path
    cfg = training_config(work, tiny_model, price=PRICE, write_delay_s=5)
    write_config(cfg, work)
    key = make_key(work, "alice", tinker=False)
    proc = start_training_gateway(work, cfg)
    db = work / "hybridgate.db"

    def stored(run_id: str) -> tuple[int, int]:
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT steps, train_tokens FROM training_runs WHERE id = ?", (run_id,)
            ).fetchone()
        return int(row[0]), int(row[1])

    try:
        c = Client(proc.url, key)
        run = c.create_run("tiny", rank=2, seed=1)
        c.forward_backward(run["id"], [{"text": "Hello, world!"}])
        c.optim_step(run["id"], learning_rate=1e-3)
        assert stored(run["id"])[0] == 0  # the optim_step's row is queued, not written: the delay is 5 s
        got = c.get_run(run["id"])  # a read writes what waits first
        assert got["steps"] == 1 and got["tokens"]["train"] > 0
        assert stored(run["id"]) == (1, got["tokens"]["train"])
        c.forward_backward(run["id"], [{"text": "Hello, world!"}])
        c.optim_step(run["id"], learning_rate=1e-3)
        assert stored(run["id"])[0] == 1
    finally:
        proc.stop()  # SIGTERM: uvicorn's graceful shutdown (it exits by the signal it caught)
    assert stored(run["id"]) == (2, 2 * got["tokens"]["train"])  # written at shutdown
