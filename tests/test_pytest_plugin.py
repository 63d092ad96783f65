"""The hybridgate pytest plugin, run the way users run it: inner pytest sessions through `pytester`."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import openai
import pytest

from hybridgate.testing.procs import Proc, start_mock_server
from hybridgate.testing.spend.budget import (
    BudgetExceeded,
    BudgetLedger,
    Meter,
    ModelPrice,
    PriceSpecError,
    UnknownPrice,
    metered_http_client,
    parse_prices,
)

pytest_plugins = ["pytester"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner session as a user would run it, without pytest-asyncio (its config warnings are noise)."""
    return pytester.runpytest("-p", "no:asyncio", *args)


@pytest.fixture(scope="module")
def paid_server() -> Iterator[Proc]:
    """A mock server standing in for a paid API: it serves `paid-model` and `free-model`."""
    p = start_mock_server(model=["paid-model", "free-model"], latency_ms=100)
    yield p
    p.stop()


@pytest.fixture
def paid_env(paid_server: Proc, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("PAID_URL", paid_server.base_url)
    monkeypatch.delenv("REAL_API_TESTS", raising=False)
    monkeypatch.delenv("HYBRIDGATE_TEST_BUDGET_USD", raising=False)
    return paid_server.base_url


# --- tiers --------------------------------------------------------------------------------------------------
def test_e2e_tests_are_skipped_with_the_reason_unless_real_api_tests_is_true(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.e2e
        def test_real_backend(): pass

        @pytest.mark.unit
        def test_unit(): pass

        @pytest.mark.integration
        def test_integration(): pass
        """
    )
    monkeypatch.delenv("REAL_API_TESTS", raising=False)
    r = run(pytester, "-rs", "--strict-markers")
    r.assert_outcomes(passed=2, skipped=1)
    r.stdout.fnmatch_lines(["*SKIPPED*e2e: calls real backends; set REAL_API_TESTS=true to run it*"])
    monkeypatch.setenv("REAL_API_TESTS", "true")
    run(pytester, "--strict-markers").assert_outcomes(passed=3)


def test_a_missing_credential_skips_and_never_errors(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        """
        import pytest
        from hybridgate.testing.pytest_plugin import require_env

        def test_with_the_function():
            require_env("HYBRIDGATE_TEST_NO_SUCH_KEY")
            raise AssertionError("not reached")

        @pytest.mark.e2e
        def test_with_the_fixture(require_env):
            require_env("HYBRIDGATE_TEST_NO_SUCH_KEY")
            raise AssertionError("not reached")
        """
    )
    monkeypatch.setenv("REAL_API_TESTS", "true")
    monkeypatch.delenv("HYBRIDGATE_TEST_NO_SUCH_KEY", raising=False)
    r = run(pytester, "-rs")
    r.assert_outcomes(skipped=2)
    # Reported at each test's own line, not at the plugin's file where the skip was raised.
    r.stdout.fnmatch_lines_random(
        [
            "SKIPPED*test_a_missing_credential_skips_and_never_errors.py:4: HYBRIDGATE_TEST_NO_SUCH_KEY is not set",
            "SKIPPED*test_a_missing_credential_skips_and_never_errors.py:8: HYBRIDGATE_TEST_NO_SUCH_KEY is not set",
        ]
    )
    assert "pytest_plugin.py" not in r.stdout.str()


# --- budget -------------------------------------------------------------------------------------------------
def test_threads_cannot_race_past_the_spending_cap(pytester: pytest.Pytester, paid_env: str) -> None:
    pytester.makeini("[pytest]\nhybridgate_prices =\n    paid-model = per_request=0.001\n")
    pytester.makepyfile(
        """
        import os, threading
        from concurrent.futures import ThreadPoolExecutor
        import pytest

        def test_ten_threads_at_once(openai_client_factory, hybridgate_ledger):
            client = openai_client_factory(os.environ["PAID_URL"])
            start = threading.Barrier(10)

            def call(_):
                start.wait()
                try:
                    client.chat.completions.create(
                        model="paid-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
                    return "ok"
                except pytest.skip.Exception:
                    return "refused"

            with ThreadPoolExecutor(10) as pool:
                results = list(pool.map(call, range(10)))
            assert sorted(results) == ["ok"] * 3 + ["refused"] * 7
            assert hybridgate_ledger.spent_usd == pytest.approx(0.003)
            assert hybridgate_ledger.reserved_usd == pytest.approx(0)
        """
    )
    r = run(pytester, "--max-cost-usd", "0.0035")
    r.assert_outcomes(passed=1)
    r.stdout.fnmatch_lines(
        ["*hybridgate spend*", "$0.003000  3 paid, 0 free, 7 refused  *test_ten_threads_at_once*"]
    )


def test_asyncio_tasks_cannot_race_past_the_spending_cap(pytester: pytest.Pytester, paid_env: str) -> None:
    pytester.makeini("[pytest]\nhybridgate_prices =\n    paid-model = per_request=0.001\n")
    pytester.makepyfile(
        """
        import asyncio, os
        import pytest

        def test_ten_tasks_at_once(openai_client_factory, hybridgate_ledger):
            client = openai_client_factory(os.environ["PAID_URL"], asynchronous=True)

            async def call():
                try:
                    await client.chat.completions.create(
                        model="paid-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
                    return "ok"
                except pytest.skip.Exception:
                    return "refused"

            async def main():
                try:
                    return await asyncio.gather(*(call() for _ in range(10)))
                finally:
                    await client.close()

            assert sorted(asyncio.run(main())) == ["ok"] * 2 + ["refused"] * 8
            assert hybridgate_ledger.spent_usd == pytest.approx(0.002)
        """
    )
    run(pytester, "--max-cost-usd", "0.0025").assert_outcomes(passed=1)


def test_over_budget_and_unpriced_calls_skip_and_the_summary_shows_spend_per_test(
    pytester: pytest.Pytester, paid_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makeini(
        "[pytest]\nhybridgate_prices =\n"
        "    paid-model = per_request=0.001  # a pretend API\n"
        "    free-model = free\n"
    )
    pytester.makepyfile(
        """
        import os

        def ask(factory, model):
            return factory(os.environ["PAID_URL"]).chat.completions.create(
                model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=5)

        def test_first_paid(openai_client_factory):
            assert ask(openai_client_factory, "paid-model").choices

        def test_second_paid_is_over_the_cap(openai_client_factory):
            ask(openai_client_factory, "paid-model")
            raise AssertionError("the call should have been refused")

        def test_free_model_is_exempt(openai_client_factory):
            for _ in range(3):
                assert ask(openai_client_factory, "free-model").choices

        def test_unpriced_model_is_refused(openai_client_factory):
            ask(openai_client_factory, "mystery-model")
            raise AssertionError("the call should have been refused")
        """
    )
    monkeypatch.setenv("HYBRIDGATE_TEST_BUDGET_USD", "0.0015")
    r = run(pytester, "-rs")
    r.assert_outcomes(passed=2, skipped=2)
    assert "pytest_plugin.py" not in r.stdout.str()  # each skip names the test that was refused
    r.stdout.fnmatch_lines_random(
        [
            "SKIPPED*test_over_budget_and_unpriced_calls_skip*.py:10: *'paid-model' could cost up to $0.001000, "
            "but only $0.000500 of the $0.001500 cap is left*",
            "*hybridgate budget: no price known for model 'mystery-model'*",
            "$0.001000  1 paid, 0 free  *::test_first_paid",
            "$0.000000  0 paid, 3 free  *::test_free_model_is_exempt",
            "$0.000000  0 paid, 0 free, 1 refused  *::test_second_paid_is_over_the_cap",
            "total $0.001000 of the $0.001500 cap (--max-cost-usd)",
        ]
    )


def test_no_cap_means_no_paid_call_at_all(pytester: pytest.Pytester, paid_env: str) -> None:
    pytester.makeini(
        "[pytest]\nhybridgate_prices =\n    paid-model = input_per_mtok=0.15 output_per_mtok=0.60\n"
    )
    pytester.makepyfile(
        """
        import os

        def test_paid(openai_client_factory):
            openai_client_factory(os.environ["PAID_URL"]).chat.completions.create(
                model="paid-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
        """
    )
    r = run(pytester, "-rs")
    r.assert_outcomes(skipped=1)
    r.stdout.fnmatch_lines(["*only $0.000000 of the $0.000000 cap is left*"])


def test_a_paid_call_fails_a_unit_or_integration_test(pytester: pytest.Pytester, paid_env: str) -> None:
    pytester.makeini("[pytest]\nhybridgate_prices =\n    paid-model = per_request=0.001\n")
    pytester.makepyfile(
        """
        import os, pytest

        @pytest.mark.unit
        def test_unit_calls_a_paid_api(openai_client_factory):
            openai_client_factory(os.environ["PAID_URL"]).chat.completions.create(
                model="paid-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5)

        @pytest.mark.integration
        def test_integration_calls_an_unpriced_model(openai_client_factory):
            openai_client_factory(os.environ["PAID_URL"]).chat.completions.create(
                model="free-model", messages=[{"role": "user", "content": "hi"}], max_tokens=5)

        @pytest.mark.integration
        def test_integration_uses_the_mock(openai_client):
            assert openai_client.chat.completions.create(
                model="mock", messages=[{"role": "user", "content": "hi"}]).choices
        """
    )
    r = run(pytester, "--max-cost-usd", "1")
    r.assert_outcomes(failed=2, passed=1)
    r.stdout.fnmatch_lines_random(
        [
            "*a call to 'paid-model', not priced free, from a unit test; unit tests must use mocks*",
            "*a call to 'free-model', not priced free, from an integration test*",
        ]
    )


def test_a_bad_price_line_stops_the_session_with_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nhybridgate_prices =\n    gpt-x = input=0.15\n")
    pytester.makepyfile("def test_nothing(): pass")
    r = run(pytester)
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*hybridgate_prices*'input=0.15'*"])


# --- fixtures -----------------------------------------------------------------------------------------------
def test_mock_backend_faults_apply_and_are_reset_between_tests(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import openai, pytest

        def ask(client):
            return client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "hi"}])

        def test_inject_failures(mock_backend, openai_client):
            assert ask(openai_client).choices[0].message.content
            mock_backend.set(fail_rate=1, fail_status=503)
            with pytest.raises(openai.InternalServerError) as e:
                ask(openai_client)
            assert e.value.status_code == 503

        def test_the_next_test_gets_a_healthy_mock(mock_backend, openai_client):
            assert mock_backend.config()["fail_rate"] == 0
            assert ask(openai_client).choices

        def test_factory_mocks_reset_to_their_start_options(mock_backend_factory):
            mb = mock_backend_factory(latency_ms=5, model=["a"])
            mb.set(fail_rate=1, latency_ms=50)
            cfg = mb.reset()
            assert (cfg["latency_ms"], cfg["fail_rate"], mb.models) == (5, 0, ["a"])
        """
    )
    run(pytester).assert_outcomes(passed=3)


def test_gateway_fixture_runs_a_config_and_the_client_follows_it(
    pytester: pytest.Pytester, paid_env: str
) -> None:
    pytester.makepyfile(
        """
        import os, openai, pytest

        @pytest.fixture
        def gateway_config(mock_backend):
            return {"backends": [{"name": "up", "kind": "openai", "base_url": mock_backend.base_url,
                                  "models": {"chat": "mock"}, "price": {"free": True}}]}

        def test_through_the_gateway(gateway, mock_backend, openai_client):
            assert str(openai_client.base_url).startswith(gateway.base_url)
            r = openai_client.chat.completions.with_raw_response.create(
                model="chat", messages=[{"role": "user", "content": "hi"}])
            assert r.headers["x-hybridgate-backend"] == "up"
            mock_backend.set(fail_rate=1)
            with pytest.raises(openai.APIStatusError) as e:
                openai_client.chat.completions.create(
                    model="chat", messages=[{"role": "user", "content": "hi"}])
            assert e.value.status_code == 503

        PAID = {"backends": [{"name": "paid", "kind": "openai", "base_url": os.environ["PAID_URL"],
                              "models": {"chat": "paid-model"},
                              "price": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}]}

        @pytest.mark.parametrize("gateway", [PAID], indirect=True)
        def test_a_paid_gateway_is_under_the_cap(gateway, openai_client):
            assert gateway.prices["chat"].output_per_mtok == 2.0
            openai_client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}],
                                                  max_tokens=5)
            raise AssertionError("the call should have been refused: the cap is 0")
        """
    )
    r = run(pytester, "-rs")
    r.assert_outcomes(passed=1, skipped=1)
    r.stdout.fnmatch_lines(["*hybridgate budget: a call to 'chat' could cost up to*"])


# --- the meter itself ---------------------------------------------------------------------------------------
def _meter(cap: float, prices: dict[str, ModelPrice], owner: str = "t") -> tuple[BudgetLedger, Meter]:
    ledger = BudgetLedger(cap)
    return ledger, Meter(ledger, prices, owner)


def test_calls_settle_to_the_cost_their_usage_reports(paid_server: Proc) -> None:
    price = ModelPrice(input_per_mtok=1000, output_per_mtok=2000)
    ledger, meter = _meter(10.0, {"paid-model": price})
    client = openai.OpenAI(
        base_url=paid_server.base_url,
        api_key="x",
        max_retries=0,
        http_client=metered_http_client(meter),
    )
    msgs = [{"role": "user", "content": "hello there"}]
    plain = client.chat.completions.create(model="paid-model", messages=msgs, max_tokens=5)  # type: ignore[arg-type]
    assert plain.usage is not None
    expected = price.cost(plain.usage.prompt_tokens, plain.usage.completion_tokens)
    assert ledger.spent_usd == pytest.approx(expected)

    chunks = list(
        client.chat.completions.create(
            model="paid-model",
            messages=msgs,
            max_tokens=5,
            stream=True,  # type: ignore[arg-type]
            stream_options={"include_usage": True},
        )
    )
    u = chunks[-1].usage
    assert u is not None
    expected += price.cost(u.prompt_tokens, u.completion_tokens)
    assert ledger.spent_usd == pytest.approx(expected)

    # Without a usage chunk the real cost is unknown: the worst case stays charged.
    before = ledger.spent_usd
    list(client.chat.completions.create(model="paid-model", messages=msgs, max_tokens=5, stream=True))  # type: ignore[arg-type]
    charged = ledger.spent_usd - before
    assert charged > price.cost(u.prompt_tokens, u.completion_tokens)
    input_bytes = (charged - price.cost(0, 5)) / (
        price.input_per_mtok / 1e6
    )  # max_tokens=5 at the output price
    assert input_bytes == pytest.approx(
        round(input_bytes)
    )  # the request body's size: an upper bound on tokens
    assert 50 < round(input_bytes) < 500
    assert ledger.reserved_usd == pytest.approx(0)
    client.close()


def test_async_streams_settle_to_their_usage_too(paid_server: Proc) -> None:
    import asyncio

    price = ModelPrice(input_per_mtok=1000, output_per_mtok=2000)
    ledger, meter = _meter(10.0, {"paid-model": price})

    async def main() -> tuple[int, int]:
        client = openai.AsyncOpenAI(
            base_url=paid_server.base_url,
            api_key="x",
            max_retries=0,
            http_client=metered_http_client(meter, asynchronous=True),
        )
        try:
            stream = await client.chat.completions.create(
                model="paid-model",
                messages=[{"role": "user", "content": "hello"}],
                max_tokens=5,
                stream=True,
                stream_options={"include_usage": True},
            )
            chunks = [c async for c in stream]
        finally:
            await client.close()
        u = chunks[-1].usage
        assert u is not None
        return u.prompt_tokens, u.completion_tokens

    tokens = asyncio.run(main())
    assert ledger.spent_usd == pytest.approx(price.cost(*tokens))
    assert ledger.reserved_usd == pytest.approx(0)


def test_errors_from_the_api_cost_nothing(paid_server: Proc) -> None:
    ledger, meter = _meter(1.0, {"paid-model": ModelPrice(per_request=0.5)})
    client = openai.OpenAI(
        base_url=paid_server.base_url,
        api_key="x",
        max_retries=0,
        http_client=metered_http_client(meter),
    )
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="paid-model", messages=[{"role": "user", "content": "hi"}], temperature=9
        )
    assert (ledger.spent_usd, ledger.reserved_usd) == (0, 0)
    client.close()


def test_the_ledger_never_lets_concurrent_reservations_past_the_cap() -> None:
    ledger = BudgetLedger(1.0)
    price = ModelPrice(per_request=0.01)
    granted: list[int] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        for _ in range(50):
            try:
                ledger.reserve("t", "m", price, 0.01)
                granted.append(1)
            except BudgetExceeded:
                pass

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 100
    assert ledger.reserved_usd == pytest.approx(1.0)
    assert ledger.by_owner()["t"].refused == 16 * 50 - 100


def test_worst_case_uses_max_tokens_or_the_models_ceiling() -> None:
    price = ModelPrice(input_per_mtok=1e6, output_per_mtok=2e6, max_output_tokens=100)  # $1 per input token
    _, meter = _meter(0, {})
    assert meter.worst_case("/v1/chat/completions", {"max_tokens": 7}, 10, price) == 10 + 14
    assert meter.worst_case("/v1/chat/completions", {"max_completion_tokens": 3, "n": 2}, 0, price) == 12
    assert meter.worst_case("/v1/chat/completions", {}, 0, price) == 200
    assert meter.worst_case("/v1/completions", {"prompt": ["a", "b"]}, 0, price) == 64  # 16 per prompt
    assert meter.worst_case("/v1/embeddings", {"input": "x"}, 5, price) == 5


def test_price_lines_parse_and_bad_ones_are_named() -> None:
    prices = parse_prices(
        ["# comment", "", "gpt-x = input_per_mtok=0.15 output_per_mtok=0.6", "local = free"]
    )
    assert prices == {"gpt-x": ModelPrice(0.15, 0.6), "local": ModelPrice(free=True)}
    for bad in ("gpt-x", "gpt-x = input_per_mtok=abc", "gpt-x = input_per_mtok=0", "gpt-x = cheap=1"):
        with pytest.raises(PriceSpecError):
            parse_prices([bad])


def test_a_post_the_meter_cannot_price_is_refused() -> None:
    import httpx

    _, meter = _meter(1.0, {"m": ModelPrice(per_request=0.1)})
    req = httpx.Request("POST", "http://x/v1/audio/speech", json={"model": "m"})
    with pytest.raises(UnknownPrice, match="cannot bound the cost of POST /v1/audio/speech"):
        meter.open(req, req.read())


# --- generation (issue 14) -------------------------------------------------------------------------------
def test_image_generations_count_against_the_cap_and_the_generation_mocks_are_fixtures(
    pytester: pytest.Pytester, paid_env: str
) -> None:
    """Through a metered client, images.generate reserves per_image x n (+ per_request) and is skipped when it
    would cross the cap; mock_fal and mock_comfyui are real servers reset after each test."""
    pytester.makeini("[pytest]\nhybridgate_prices =\n    paid-images = per_image=0.01\n")
    pytester.makepyfile(
        """
        import os
        import httpx
        import pytest

        def test_a_paid_image_call_past_the_cap_is_skipped(openai_client_factory, hybridgate_ledger):
            client = openai_client_factory(os.environ["PAID_URL"])
            with pytest.raises(pytest.skip.Exception, match="could cost up to"):
                client.images.generate(model="paid-images", prompt="x", n=4)  # $0.04 > the $0.03 cap
            assert hybridgate_ledger.spent_usd == 0 and hybridgate_ledger.reserved_usd == 0

        def test_mock_fal(mock_fal):
            assert mock_fal.set(fail_rate=1)["fail_rate"] == 1
            assert httpx.get(mock_fal.url + "/.well-known/jwks.json").json()["keys"][0]["crv"] == "Ed25519"

        def test_mock_fal_was_reset(mock_fal):
            assert httpx.get(mock_fal.url + "/_mock/config").json()["fail_rate"] == 0

        def test_mock_comfyui(mock_comfyui):
            assert httpx.get(mock_comfyui.url + "/system_stats").status_code == 200
            assert mock_comfyui.stats()["submissions"] == 0
        """
    )
    r = run(pytester, "--max-cost-usd", "0.03")
    r.assert_outcomes(passed=4)


def test_a_gateways_per_step_training_price_reaches_the_meter() -> None:
    """The plugin prices a gateway fixture's models from its config, a trainer's per-step price included, so
    a LoRA job through a metered client reserves what the gateway reserves: steps x per_step + per_request."""
    import httpx

    from hybridgate.testing.pytest_plugin import _gateway_prices

    cfg = {
        "backends": [
            {
                "name": "fal",
                "kind": "fal",
                "api_key": "k",
                "models": {"trainer": "fal-ai/flux-lora-fast-training"},
                "price": {"per_step": 0.002, "per_request": 0.001},
            }
        ]
    }
    price = _gateway_prices(cfg, {})["trainer"]
    assert price.per_step == 0.002 and price.per_request == 0.001
    _, meter = _meter(1.0, {"trainer": price})
    body = {"type": "lora_training", "model": "trainer", "input": {"name": "x", "steps": 300}}
    req = httpx.Request("POST", "http://x/v1/jobs", json=body)
    held = meter.open(req, req.read())
    assert held is not None and held.amount == pytest.approx(0.601)
    _, small = _meter(0.5, {"trainer": price})
    with pytest.raises(BudgetExceeded):  # 300 steps at $0.002 cannot fit a $0.50 cap
        small.open(req, req.read())
