"""The budget arithmetic without a server: reservations, worst-case costs, the rpm window."""

from __future__ import annotations

from typing import Any

import pytest

from hybridgate.backends.mock import count_tokens
from hybridgate.config import BackendConfig
from hybridgate.ledger import DEFAULT_MAX_TOKENS, BudgetBook, RateLimiter, prompt_token_bound, worst_case


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def backend(**price: Any) -> BackendConfig:
    return BackendConfig(name="b", kind="mock", models={"m": "m"}, price=price, timeouts={"total_s": 120})


def test_reservations_share_the_headroom_and_settle_to_the_real_cost() -> None:
    book = BudgetBook()
    a = book.try_reserve("k", 1.0, 0.6, ttl_s=60)
    assert a is not None
    assert book.try_reserve("k", 1.0, 0.6, ttl_s=60) is None  # 0.6 + 0.6 would pass 1.0
    assert book.try_reserve("other", 1.0, 0.6, ttl_s=60) is not None  # per key
    book.settle("k", a, 0.25)
    assert book.spent["k"] == 0.25 and book.in_flight("k") == 0
    assert book.try_reserve("k", 1.0, 0.75, ttl_s=60) is not None  # exactly fits
    assert book.try_reserve("k", 1.0, 0.0001, ttl_s=60) is None


def test_an_unsettled_reservation_lapses_after_its_ttl() -> None:
    clock = Clock()
    book = BudgetBook(clock=clock)
    assert book.try_reserve("k", 1.0, 1.0, ttl_s=30) is not None
    assert book.try_reserve("k", 1.0, 0.1, ttl_s=30) is None
    clock.now += 31
    assert book.try_reserve("k", 1.0, 0.1, ttl_s=30) is not None


@pytest.mark.parametrize(
    "text",
    [
        "hello",
        "In one word, can you provide me the capital of France?",
        "naïve café — 東京 🚀🚀",
        "a,b;c.d!e?f" * 20,
    ],
)
def test_the_prompt_bound_is_never_below_what_a_backend_counts(text: str) -> None:
    body = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]}
    mock_count = count_tokens("Be brief.\n" + text) + 3 * 2 + 3  # what the mock backend reports
    assert prompt_token_bound(body, "chat") >= mock_count
    assert prompt_token_bound({"prompt": text}, "completions") >= count_tokens(text)


def test_worst_case_per_token_per_request_and_per_hour() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
    inp = prompt_token_bound(body, "chat")
    wc = worst_case(backend(input_per_mtok=1, output_per_mtok=2, per_request=0.01), body, "chat", 100)
    assert wc.cost_usd == pytest.approx(inp * 1e-6 + 100 * 2e-6 + 0.01)
    # n choices: n times the output
    wc_n = worst_case(backend(output_per_mtok=2), {**body, "n": 3}, "chat", 100)
    assert wc_n.output_tokens == 300
    # per hour: the whole total timeout (and a second of slack) at the hourly price
    wc_h = worst_case(backend(per_hour=3.6), dict(body), "chat", 100)
    assert wc_h.cost_usd == pytest.approx(121 * 3.6 / 3600)


def test_without_max_tokens_output_is_capped_in_the_backend_request() -> None:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    wc = worst_case(backend(output_per_mtok=2), body, "chat", None)
    assert body["max_tokens"] == DEFAULT_MAX_TOKENS == wc.capped_at == wc.output_tokens
    # A price that does not depend on output needs no cap.
    body2: dict[str, Any] = {"messages": [{"role": "user", "content": "hi"}]}
    assert worst_case(backend(per_request=0.01), body2, "chat", None).capped_at is None
    assert "max_tokens" not in body2


def test_rpm_window_slides() -> None:
    clock = Clock()
    rl = RateLimiter(clock)
    assert rl.hit("k", 2) is None
    clock.now += 10
    assert rl.hit("k", 2) is None
    wait = rl.hit("k", 2)
    assert wait == pytest.approx(50)
    assert rl.hit("other", 2) is None
    clock.now += 50
    assert rl.hit("k", 2) is None
    assert RateLimiter.retry_after(0.2) == "1"


@pytest.mark.parametrize("n_open", [10, 10_000])
def test_expiry_cost_per_request_does_not_grow_with_the_reservations_open(n_open: int) -> None:
    # Counted heap steps, not time: walking every open reservation (as before) cost n_open per request.
    clock = Clock()
    book = BudgetBook(clock=clock)
    for _ in range(n_open):
        assert book.try_reserve("k", 1e9, 0.001, ttl_s=600) is not None
    book.expiry_steps = 0
    for i in range(1000):
        clock.now += 0.001
        rid = book.try_reserve("k", 1e9, 0.001, ttl_s=600)
        assert rid is not None
        book.settle("k", rid, 0.0005)
        if i == 500:  # one short reservation lapses: exactly one step releases it
            lapsing = book.try_reserve("k", 1e9, 0.5, ttl_s=0.1)
            assert lapsing is not None
    # 1,000 requests: one lapsed entry popped, and the stale entries of settled ones swept (each at most once).
    assert book.expiry_steps <= 1000 + 1 + n_open // 16, book.expiry_steps
    assert book.in_flight("k") == pytest.approx(n_open * 0.001)  # the lapsed 0.5 was released
    assert len(book._deadlines) <= 2 * len(book._open) + 65  # settled entries do not pile up


def test_every_lapsed_reservation_is_released_whatever_its_key_and_order() -> None:
    clock = Clock()
    book = BudgetBook(clock=clock)
    ids = [book.try_reserve(f"k{i % 3}", 10.0, 1.0, ttl_s=float(1 + i % 5)) for i in range(9)]
    assert all(r is not None for r in ids)
    book.settle("k0", ids[0], 0.0)
    clock.now += 3.5  # ttl 1, 2, 3 lapsed; 4 and 5 still open
    book.headroom("k0", 10.0)
    left = {i for i in range(9) if (1 + i % 5) > 3}
    assert set(book._open) == {ids[i] for i in left}
    for k in ("k0", "k1", "k2"):
        assert book.in_flight(k) == pytest.approx(sum(1.0 for i in left if i % 3 == int(k[1])))
