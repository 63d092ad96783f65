"""The `hybridgate` pytest plugin: test tiers, a spending cap on paid calls, and real mock/gateway fixtures.

Loaded automatically once hybridgate is installed (entry point `pytest11`); `-p no:hybridgate` turns it off.

- Tiers: `@pytest.mark.unit` (mocks only), `@pytest.mark.integration` (real database and storage, mocked
  paid APIs), `@pytest.mark.e2e` (real backends; skipped unless REAL_API_TESTS=true). A paid call from a unit
  or integration test fails it.
- Budget: `--max-cost-usd X` (or HYBRIDGATE_TEST_BUDGET_USD, or the `hybridgate_max_cost_usd` ini option;
  default 0: no paid call at all). Prices: the `hybridgate_prices` ini option, one `MODEL = PRICE` per line.
  A call that would cross the cap, or to a model without a price, skips its test; the summary shows the spend.
- Fixtures: `mock_backend`, `mock_backend_factory`, `gateway`, `gateway_factory`, `gateway_config`,
  `openai_client`, `async_openai_client`, `openai_client_factory`, `hybridgate_target`, `hybridgate_prices`,
  `hybridgate_ledger`, `require_env`, and for generation: `mock_fal` and `mock_comfyui` (real mock servers,
  settings reset after each test). Image generations and job submissions through a metered client are
  capped too: `MODEL = per_image=0.003 [per_step=0.002] [per_request=0]` in hybridgate_prices.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from hybridgate.testing.spend.budget import (
    FREE,
    BudgetError,
    BudgetLedger,
    Meter,
    ModelPrice,
    PaidCallForbidden,
    PriceSpecError,
    parse_prices,
)

if TYPE_CHECKING:
    import openai

    from hybridgate.testing.procs import Proc

ENV_REAL_TESTS = "REAL_API_TESTS"
ENV_BUDGET = "HYBRIDGATE_TEST_BUDGET_USD"

MARKERS = (
    "unit: a unit test: mocks only; a paid API call fails it (hybridgate)",
    "integration: real database and storage, mocked paid APIs; a paid API call fails it (hybridgate)",
    f"e2e: calls real backends; skipped unless {ENV_REAL_TESTS}=true; paid calls count against "
    "--max-cost-usd (hybridgate)",
)

_LEDGER = pytest.StashKey[BudgetLedger]()
_PRICES = pytest.StashKey[dict[str, ModelPrice]]()


# --- options, tiers, summary --------------------------------------------------------------------------------
def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("hybridgate", "hybridgate: test tiers and the spending cap on paid AI calls")
    group.addoption(
        "--max-cost-usd",
        action="store",
        default=None,
        metavar="USD",
        help=f"Most the session may spend on paid AI calls (default: ${ENV_BUDGET}, else the "
        "hybridgate_max_cost_usd ini option, else 0: no paid call).",
    )
    parser.addini(
        "hybridgate_max_cost_usd", "Spending cap in USD when --max-cost-usd is not given.", default=""
    )
    parser.addini(
        "hybridgate_prices",
        "Model prices, one per line: 'MODEL = free' or 'MODEL = input_per_mtok=0.15 output_per_mtok=0.60 "
        "[per_request=0] [max_output_tokens=4096]' (USD per million tokens).",
        type="linelist",
        default=[],
    )
    parser.addini(
        "hybridgate_mock_models", "Models the mock_backend fixture serves.", type="args", default=["mock"]
    )


def _cap(config: pytest.Config) -> float:
    for source, value in (
        ("--max-cost-usd", config.getoption("--max-cost-usd")),
        (ENV_BUDGET, os.environ.get(ENV_BUDGET)),
        ("hybridgate_max_cost_usd", config.getini("hybridgate_max_cost_usd")),
    ):
        if value is None or str(value).strip() == "":
            continue
        try:
            cap = float(value)
        except ValueError:
            raise pytest.UsageError(f"{source}: {value!r} is not an amount in USD") from None
        if cap < 0:
            raise pytest.UsageError(f"{source}: the spending cap cannot be negative ({value})")
        return cap
    return 0.0


def pytest_configure(config: pytest.Config) -> None:
    for line in MARKERS:
        config.addinivalue_line("markers", line)
    try:
        config.stash[_PRICES] = parse_prices(config.getini("hybridgate_prices"))
    except PriceSpecError as e:
        raise pytest.UsageError(f"hybridgate_prices: {e}") from None
    config.stash[_LEDGER] = BudgetLedger(_cap(config))


def real_api_tests_enabled() -> bool:
    return os.environ.get(ENV_REAL_TESTS, "").strip().lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if real_api_tests_enabled():
        return
    skip = pytest.mark.skip(reason=f"e2e: calls real backends; set {ENV_REAL_TESTS}=true to run it")
    for item in items:
        if item.get_closest_marker("e2e") is not None:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    ledger = config.stash.get(_LEDGER, None)
    owners = ledger.by_owner() if ledger is not None else {}
    if ledger is None or not owners:
        return
    tr = terminalreporter
    tr.write_sep("-", "hybridgate spend")
    for owner, s in sorted(owners.items(), key=lambda kv: (-kv[1].usd, kv[0])):
        refused = f", {s.refused} refused" if s.refused else ""
        tr.write_line(f"${s.usd:.6f}  {s.paid_calls} paid, {s.free_calls} free{refused}  {owner}")
    tr.write_line(f"total ${ledger.spent_usd:.6f} of the ${ledger.cap_usd:.6f} cap (--max-cost-usd)")


def _skip(reason: str) -> NoReturn:
    """Skip the running test, reported at the test's own line: `pytest.skip()` called here would report
    this plugin's file in `-rs`, and the reader wants the test that was skipped."""
    try:
        skipped = pytest.skip.Exception(reason, _use_item_location=True)
    except TypeError:  # a pytest without the option: a skip all the same, reported here
        pytest.skip(reason)
    raise skipped


def require_env(name: str) -> str:
    """The variable's value; skips the calling test (never errors) when it is unset or empty."""
    value = os.environ.get(name, "")
    if not value.strip():
        _skip(f"{name} is not set")
    return value


@pytest.fixture(name="require_env")
def _require_env_fixture() -> Callable[[str], str]:
    """`require_env("OPENAI_API_KEY")` in a test: the value, or a skip naming the missing variable."""
    return require_env


# --- budget -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def hybridgate_ledger(pytestconfig: pytest.Config) -> BudgetLedger:
    """The session's spending ledger (its cap is --max-cost-usd)."""
    return pytestconfig.stash[_LEDGER]


@pytest.fixture(scope="session")
def hybridgate_prices(pytestconfig: pytest.Config) -> dict[str, ModelPrice]:
    """Model prices from the hybridgate_prices ini option; override in a conftest.py to set them in code."""
    return dict(pytestconfig.stash[_PRICES])  # type: ignore[index]  # mypy and pytest's invariant Stash


def _tier_forbids_paid(node: pytest.Item) -> str | None:
    for tier in ("unit", "integration"):
        if node.get_closest_marker(tier) is not None:
            article = "an" if tier == "integration" else "a"
            return f"{article} {tier} test; {tier} tests must use mocks (mark it e2e to call a paid API)"
    return None


def _on_refusal(err: BudgetError) -> NoReturn:
    # Skipped/Failed derive from BaseException, so they pass through the SDK's retry loop and `except
    # Exception` in user code, and the test ends as a skip (budget) or a failure (wrong tier), never an error.
    if isinstance(err, PaidCallForbidden):
        pytest.fail(str(err), pytrace=False)
    _skip(str(err))


# --- processes ----------------------------------------------------------------------------------------------
@dataclass
class MockBackend:
    """A running `hybridgate mock-server`: its URLs, and its faults, changeable while it runs."""

    proc: Proc
    models: list[str]
    defaults: dict[str, Any] = field(default_factory=dict)
    # The mock's --api-key, if it was started with one: its /_mock/config requires it too.
    api_key: str | None = None

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def base_url(self) -> str:
        return self.proc.base_url

    @property
    def prices(self) -> dict[str, ModelPrice]:
        return dict.fromkeys(self.models, FREE)

    def set(self, **changes: Any) -> dict[str, Any]:
        """Change faults: fail_rate, fail_status, latency_ms, ttft_ms, tokens_per_s, hang, drop_mid_stream."""
        from hybridgate.testing.procs import set_mock_behaviour

        return set_mock_behaviour(self.url, api_key=self.api_key, **changes)

    def reset(self) -> dict[str, Any]:
        return self.set(**self.defaults)

    def config(self) -> dict[str, Any]:
        """The behaviour now in force, with `requests`: how many answers it has started."""
        return self.set()


@dataclass
class Gateway:
    """A running `hybridgate serve` started by the plugin, with what its config says each model costs."""

    proc: Proc
    prices: dict[str, ModelPrice]
    api_key: str | None = None

    @property
    def url(self) -> str:
        return self.proc.url

    @property
    def base_url(self) -> str:
        return self.proc.base_url

    def log(self) -> str:
        return self.proc.log()

    def stop(self) -> int | None:
        return self.proc.stop()


def _gateway_prices(config: Any, env: Mapping[str, str]) -> dict[str, ModelPrice]:
    """Per public model: free when all its backends are, else the dearest price; unknown is left out."""
    from hybridgate.config import load_config
    from hybridgate.config._load import parse_config

    full_env = {**os.environ, **env}
    cfg = (
        parse_config(config, "<gateway fixture>", full_env)
        if isinstance(config, dict)
        else load_config(config, full_env)
    )
    per_model: dict[str, list[ModelPrice | None]] = {}
    for b in cfg.backends:
        for m, own in b.models.items():
            price = FREE if b.kind == "mock" else ModelPrice.from_config(b.price_for(own))
            per_model.setdefault(m, []).append(price)
    out: dict[str, ModelPrice] = {}
    for m, ps in per_model.items():
        if any(p is None for p in ps):
            continue  # one backend of unknown cost makes the model's cost unknown
        known = [p for p in ps if p is not None]
        if all(p.free for p in known):
            out[m] = FREE
        else:
            paid = [p for p in known if not p.free]
            out[m] = ModelPrice(
                max(p.input_per_mtok for p in paid),
                max(p.output_per_mtok for p in paid),
                max(p.per_request for p in paid),
                per_image=max(p.per_image for p in paid),
                per_step=max(p.per_step for p in paid),
            )
    return out


@pytest.fixture(scope="session")
def _hybridgate_mock_server(pytestconfig: pytest.Config) -> Iterator[Proc]:
    from hybridgate.testing.procs import start_mock_server

    proc = start_mock_server(model=list(pytestconfig.getini("hybridgate_mock_models")))
    yield proc
    proc.stop()


@pytest.fixture
def mock_backend(_hybridgate_mock_server: Proc, pytestconfig: pytest.Config) -> Iterator[MockBackend]:
    """The session's mock server, with its faults reset after each test. `mock_backend.set(fail_rate=1)`."""
    from hybridgate.backends.mock import MockBehaviour

    mb = MockBackend(
        _hybridgate_mock_server,
        list(pytestconfig.getini("hybridgate_mock_models")),
        MockBehaviour().as_dict(),
    )
    yield mb
    if _hybridgate_mock_server.popen.poll() is None:
        mb.reset()


@dataclass
class GenerationMock:
    """A running `hybridgate mock-fal` or `mock-comfyui`: `url`, `set(**faults)`, `stats()`, `reset()`."""

    proc: Proc
    defaults: dict[str, Any]

    @property
    def url(self) -> str:
        return self.proc.url

    def set(self, **changes: Any) -> dict[str, Any]:
        import httpx

        r = httpx.post(self.url + "/_mock/config", json=changes, timeout=10)
        r.raise_for_status()
        return dict(r.json())

    def reset(self) -> dict[str, Any]:
        return self.set(**self.defaults)

    def stats(self) -> dict[str, Any]:
        import httpx

        return dict(httpx.get(self.url + "/_mock/stats", timeout=10).json())


@pytest.fixture(scope="session")
def _hybridgate_mock_fal() -> Iterator[GenerationMock]:
    import httpx

    from hybridgate.testing.procs import start_mock_fal

    proc = start_mock_fal()
    yield GenerationMock(proc, dict(httpx.get(proc.url + "/_mock/config", timeout=10).json()))
    proc.stop()


@pytest.fixture
def mock_fal(_hybridgate_mock_fal: GenerationMock) -> Iterator[GenerationMock]:
    """`hybridgate mock-fal` for the session; point a `fal` backend's base_url (and options rest_url, cdn_url,
    jwks_url) or the fal-client SDK's hosts at `mock_fal.url`. Faults reset after each test."""
    yield _hybridgate_mock_fal
    if _hybridgate_mock_fal.proc.popen.poll() is None:
        _hybridgate_mock_fal.reset()


@pytest.fixture(scope="session")
def _hybridgate_mock_comfyui() -> Iterator[GenerationMock]:
    import httpx

    from hybridgate.testing.procs import start_mock_comfyui

    proc = start_mock_comfyui()
    yield GenerationMock(proc, dict(httpx.get(proc.url + "/_mock/config", timeout=10).json()))
    proc.stop()


@pytest.fixture
def mock_comfyui(_hybridgate_mock_comfyui: GenerationMock) -> Iterator[GenerationMock]:
    """`hybridgate mock-comfyui` for the session (a `comfyui` backend's base_url). Faults reset after each test."""
    yield _hybridgate_mock_comfyui
    if _hybridgate_mock_comfyui.proc.popen.poll() is None:
        _hybridgate_mock_comfyui.reset()


@pytest.fixture
def mock_backend_factory() -> Iterator[Callable[..., MockBackend]]:
    """Start extra mock servers with options (`latency_ms=50`, `model=["a", "b"]`); stopped after the test."""
    from hybridgate.backends.mock import MockBehaviour
    from hybridgate.testing.procs import start_mock_server

    started: list[MockBackend] = []

    def start(**options: Any) -> MockBackend:
        models = options.get("model") or ["mock"]
        models = [models] if isinstance(models, str) else list(models)
        proc = start_mock_server(**{**options, "model": models})
        # reset() returns to what it was started with, every other fault off
        behaviour = MockBehaviour().as_dict()
        defaults = {**behaviour, **{k: v for k, v in options.items() if k in behaviour}}
        mb = MockBackend(proc, models, defaults, api_key=options.get("api_key"))
        started.append(mb)
        return mb

    yield start
    for mb in started:
        mb.proc.stop()


@pytest.fixture
def gateway_config() -> Any:
    """The config `gateway` runs: a dict, a YAML path, or None (the embedded default). Override it."""
    return None


@pytest.fixture
def gateway_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Gateway]]:
    """Start gateways on configs (dict, path or None), each in its own folder; stopped after the test."""
    from hybridgate.testing.procs import start_gateway

    started: list[Gateway] = []

    def start(config: Any = None, *, env: Mapping[str, str] | None = None, timeout: float = 60.0) -> Gateway:
        workdir = tmp_path_factory.mktemp("gateway")
        if isinstance(config, str | Path):
            config = Path(config).resolve()
        prices = _gateway_prices(config, env or {})
        proc = start_gateway(config, env=dict(env or {}), timeout=timeout, workdir=workdir)
        key = (env or {}).get("HYBRIDGATE_MASTER_KEY") or None
        gw = Gateway(proc, prices, key)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        gw.stop()


@pytest.fixture
def gateway(request: pytest.FixtureRequest, gateway_factory: Callable[..., Gateway]) -> Gateway:
    """A running gateway on `gateway_config`, or on the config given by indirect parametrization."""
    config = request.param if hasattr(request, "param") else request.getfixturevalue("gateway_config")
    return gateway_factory(config)


# --- clients ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Where a client points and what calls there cost."""

    base_url: str
    api_key: str | None = None
    prices: Mapping[str, ModelPrice] = field(default_factory=dict)
    free: bool = False


def _as_target(t: Any) -> Target:
    if isinstance(t, Target):
        return t
    if isinstance(t, MockBackend):
        return Target(t.base_url, None, t.prices, free=True)
    if isinstance(t, Gateway):
        return Target(t.base_url, t.api_key, t.prices)
    if isinstance(t, str):
        return Target(t)
    raise TypeError(
        f"hybridgate_target must be a URL, a mock_backend, a gateway or a Target, not {type(t).__name__}"
    )


@pytest.fixture
def hybridgate_target(request: pytest.FixtureRequest) -> Any:
    """Where `openai_client` points: the `gateway` if the test uses one, else `mock_backend`. Override it."""
    if "gateway" in request.fixturenames:
        return request.getfixturevalue("gateway")
    return request.getfixturevalue("mock_backend")


ClientFactory = Callable[..., Any]


@pytest.fixture
def openai_client_factory(
    request: pytest.FixtureRequest, hybridgate_ledger: BudgetLedger, hybridgate_prices: dict[str, ModelPrice]
) -> Iterator[ClientFactory]:
    """`openai_client_factory(target, api_key=None, *, asynchronous=False, max_retries=0)`: a metered client.

    `target` is a URL (prices from hybridgate_prices), a mock_backend (free) or a gateway (prices from its
    config, hybridgate_prices first). Retries are off by default so tests see every failure they inject.
    """
    import openai

    from hybridgate.testing.spend._budget_http import metered_http_client

    clients: list[Any] = []
    forbid = _tier_forbids_paid(request.node)

    def make(
        target: Any,
        api_key: str | None = None,
        *,
        asynchronous: bool = False,
        max_retries: int = 0,
        timeout: float = 60.0,
    ) -> Any:
        t = _as_target(target)
        meter = Meter(
            hybridgate_ledger,
            {**t.prices, **hybridgate_prices},
            request.node.nodeid,
            free=t.free,
            forbid_paid=forbid,
            on_refusal=_on_refusal,
        )
        key = api_key or t.api_key or "unused"
        client: openai.OpenAI | openai.AsyncOpenAI
        if asynchronous:
            client = openai.AsyncOpenAI(
                base_url=t.base_url,
                api_key=key,
                max_retries=max_retries,
                timeout=timeout,
                http_client=metered_http_client(meter, asynchronous=True, timeout=timeout),
            )
        else:
            client = openai.OpenAI(
                base_url=t.base_url,
                api_key=key,
                max_retries=max_retries,
                timeout=timeout,
                http_client=metered_http_client(meter, timeout=timeout),
            )
        clients.append(client)
        return client

    yield make
    for c in clients:
        if isinstance(c, openai.OpenAI):
            c.close()
        # AsyncOpenAI clients are closed with their event loop; closing here would need a loop of our own.


@pytest.fixture
def openai_client(hybridgate_target: Any, openai_client_factory: ClientFactory) -> openai.OpenAI:
    """An openai client for `hybridgate_target` (the gateway if the test uses one, else the mock), metered."""
    return openai_client_factory(hybridgate_target)


@pytest.fixture
def async_openai_client(hybridgate_target: Any, openai_client_factory: ClientFactory) -> openai.AsyncOpenAI:
    """The asyncio twin of `openai_client`, through the same ledger."""
    return openai_client_factory(hybridgate_target, asynchronous=True)


__all__ = [
    "ENV_BUDGET",
    "ENV_REAL_TESTS",
    "Gateway",
    "MockBackend",
    "Target",
    "real_api_tests_enabled",
    "require_env",
]
