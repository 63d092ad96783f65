"""A spending cap for tests that call paid AI APIs: reserve the worst case first, settle the real cost after.

The meter sits in the HTTP transport of an openai (or any httpx) client, so every paid call is seen, whatever
SDK method made it. Before a call it reserves the most the call could cost (the request's size in bytes as
input tokens, an upper bound; max_tokens at the output price); a call that would cross the cap is refused
before it leaves the machine. After the call the reservation is replaced by the cost the usage reports.

One lock guards every check-and-reserve and is never held across I/O or an await, so threads and asyncio
tasks cannot race past the cap together.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, NoReturn

import orjson

if TYPE_CHECKING:
    import httpx

    from hybridgate.config import PriceConfig

# Paths the meter knows how to price; a POST elsewhere on a paid target is refused rather than guessed.
METERED = ("/chat/completions", "/completions", "/responses", "/embeddings", "/images/generations", "/jobs")
DEFAULT_MAX_OUTPUT_TOKENS = 4096


class PriceSpecError(ValueError):
    """A price line cannot be read; the message quotes it."""


class BudgetError(Exception):
    """A paid call was not allowed to start."""


class BudgetExceeded(BudgetError):
    """The call's worst case would take spending past the cap."""


class UnknownPrice(BudgetError):
    """No price is known for the model (or the endpoint cannot be priced), so its cost cannot be bounded."""


class PaidCallForbidden(BudgetError):
    """A paid call from a test whose tier allows only mocks (unit, integration)."""


@dataclass(frozen=True)
class ModelPrice:
    """USD per million input/output tokens plus per request, per image and per training step (generation
    models); `free` exempts the model from the cap."""

    input_per_mtok: float = 0.0
    output_per_mtok: float = 0.0
    per_request: float = 0.0
    free: bool = False
    per_image: float = 0.0
    per_step: float = 0.0
    # The worst case for a request that sets no max_tokens.
    max_output_tokens: int = DEFAULT_MAX_OUTPUT_TOKENS

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        if self.free:
            return 0.0
        return (
            input_tokens * self.input_per_mtok / 1e6
            + output_tokens * self.output_per_mtok / 1e6
            + self.per_request
        )

    @classmethod
    def parse(cls, spec: str) -> ModelPrice:
        """`free`, or `input_per_mtok=0.15 output_per_mtok=0.6 [per_request=0] [max_output_tokens=4096]`."""
        words = spec.split()
        if words == ["free"]:
            return cls(free=True)
        names = {f.name for f in fields(cls)} - {"free"}
        values: dict[str, Any] = {}
        for w in words:
            key, eq, value = w.partition("=")
            if not eq or key not in names:
                raise PriceSpecError(
                    f"{w!r} in price {spec!r}: expected 'free' or key=value, keys: {', '.join(sorted(names))}"
                )
            try:
                values[key] = int(value) if key == "max_output_tokens" else float(value)
            except ValueError:
                raise PriceSpecError(f"{w!r} in price {spec!r}: {value!r} is not a number") from None
            if values[key] < 0:
                raise PriceSpecError(f"{w!r} in price {spec!r}: prices cannot be negative")
        price = cls(**values)
        if not (
            price.input_per_mtok
            or price.output_per_mtok
            or price.per_request
            or price.per_image
            or price.per_step
        ):
            raise PriceSpecError(f"price {spec!r} is zero; write 'free' if the model really costs nothing")
        return price

    @classmethod
    def from_config(cls, p: PriceConfig) -> ModelPrice | None:
        """A gateway backend's price, or None when it bounds no single call (zero, or per hour)."""
        if p.free:
            return cls(free=True)
        if (
            p.per_hour
            or p.per_gpu_hour
            or not (p.input_per_mtok or p.output_per_mtok or p.per_request or p.per_image or p.per_step)
        ):
            return None
        # A long-context tier may apply to any call: the dearer rates bound it.
        return cls(
            max(p.input_per_mtok, p.long_input_per_mtok),
            max(p.output_per_mtok, p.long_output_per_mtok),
            p.per_request,
            per_image=p.per_image,
            per_step=p.per_step,
        )


FREE = ModelPrice(free=True)


def parse_prices(lines: Iterable[str]) -> dict[str, ModelPrice]:
    """`MODEL = PRICE` lines (see ModelPrice.parse); blank lines and `#` comments are skipped."""
    out: dict[str, ModelPrice] = {}
    for raw in lines:
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        model, eq, spec = line.partition("=")
        if not eq or not model.strip() or not spec.strip():
            raise PriceSpecError(
                f"price line {raw.strip()!r}: expected 'MODEL = free' or "
                "'MODEL = input_per_mtok=... output_per_mtok=...'"
            )
        out[model.strip()] = ModelPrice.parse(spec)
    return out


@dataclass
class Spend:
    """What one owner (a test) did through the meter."""

    paid_calls: int = 0
    free_calls: int = 0
    refused: int = 0
    usd: float = 0.0


@dataclass
class Reservation:
    owner: str
    model: str
    price: ModelPrice
    amount: float
    settled: bool = False


class BudgetLedger:
    """The session's spending: a cap, what is spent, what is reserved by calls in flight, per owner."""

    def __init__(self, cap_usd: float) -> None:
        if cap_usd < 0:
            raise ValueError(f"the spending cap cannot be negative (got {cap_usd})")
        self.cap_usd = cap_usd
        self._lock = threading.Lock()
        self._spent = 0.0
        self._reserved = 0.0
        self._owners: dict[str, Spend] = {}

    @property
    def spent_usd(self) -> float:
        return self._spent

    @property
    def reserved_usd(self) -> float:
        return self._reserved

    def _owner(self, owner: str) -> Spend:
        return self._owners.setdefault(owner, Spend())

    def reserve(self, owner: str, model: str, price: ModelPrice, worst_case_usd: float) -> Reservation:
        """Hold `worst_case_usd` for a call, or raise BudgetExceeded if that would cross the cap."""
        with self._lock:
            left = self.cap_usd - self._spent - self._reserved
            if worst_case_usd > left + 1e-12:
                self._owner(owner).refused += 1
                raise BudgetExceeded(
                    f"hybridgate budget: a call to {model!r} could cost up to ${worst_case_usd:.6f}, "
                    "but only "
                    f"${max(left, 0):.6f} of the ${self.cap_usd:.6f} cap is left (spent ${self._spent:.6f}, "
                    f"${self._reserved:.6f} held by calls in flight); "
                    "raise --max-cost-usd or lower max_tokens"
                )
            self._reserved += worst_case_usd
            return Reservation(owner, model, price, worst_case_usd)

    def settle(self, r: Reservation, actual_usd: float | None) -> float:
        """Replace the hold by the real cost (None: unknown, so the worst case is charged). Idempotent."""
        with self._lock:
            if r.settled:
                return 0.0
            r.settled = True
            self._reserved -= r.amount
            cost = r.amount if actual_usd is None else actual_usd
            self._spent += cost
            s = self._owner(r.owner)
            s.paid_calls += 1
            s.usd += cost
            return cost

    def record_free(self, owner: str) -> None:
        with self._lock:
            self._owner(owner).free_calls += 1

    def record_refusal(self, owner: str) -> None:
        with self._lock:
            self._owner(owner).refused += 1

    def by_owner(self) -> dict[str, Spend]:
        with self._lock:
            return {k: replace(v) for k, v in self._owners.items()}


def _usage_tokens(usage: Any) -> tuple[int, int] | None:
    """(input, output) tokens from a chat/completions, responses or embeddings usage object."""
    if not isinstance(usage, dict):
        return None
    i = usage.get("prompt_tokens", usage.get("input_tokens"))
    o = usage.get("completion_tokens", usage.get("output_tokens", 0))
    if not isinstance(i, int) or not isinstance(o, int):
        return None
    return i, o


def _find_usage(obj: Any) -> Any:
    if not isinstance(obj, dict):
        return None
    if isinstance(obj.get("usage"), dict):
        return obj["usage"]
    resp = obj.get("response")  # Responses API stream events carry it in response.usage
    return resp.get("usage") if isinstance(resp, dict) and isinstance(resp.get("usage"), dict) else None


@dataclass
class Meter:
    """Prices one client's calls against the ledger, on behalf of one owner (a test's node id)."""

    ledger: BudgetLedger
    prices: Mapping[str, ModelPrice]
    owner: str
    # A target that costs nothing whatever the model (a mock server): calls are counted, never reserved.
    free: bool = False
    # Set (to the reason) when the owner may not make paid calls at all.
    forbid_paid: str | None = None
    on_refusal: Callable[[BudgetError], NoReturn] | None = field(default=None, repr=False)

    def refuse(self, err: BudgetError) -> NoReturn:
        if self.on_refusal is not None:
            self.on_refusal(err)
        raise err

    def worst_case(self, path: str, body: dict[str, Any], size: int, price: ModelPrice) -> float:
        """Input: the body's size in bytes (a token is at least a byte); output: the request's limit. Images
        and jobs: images times the price per image, training steps times the price per step."""
        if path.endswith(("/images/generations", "/jobs")):
            given = body.get("input") if path.endswith("/jobs") else body
            job: dict[str, Any] = given if isinstance(given, dict) else {}
            images = (
                max(int(job.get("n") or 1), 1)
                if body.get("type", "image_generation") == "image_generation"
                else 0
            )
            steps = int(job.get("steps") or 1000) if body.get("type") == "lora_training" else 0
            return images * price.per_image + steps * price.per_step + price.per_request
        if path.endswith("/embeddings"):
            out = 0
        elif path.endswith("/responses"):
            out = body.get("max_output_tokens") or price.max_output_tokens
        elif path.endswith("/chat/completions"):
            out = body.get("max_completion_tokens") or body.get("max_tokens") or price.max_output_tokens
        else:  # legacy completions: OpenAI's default is 16, once per prompt of a batch, best_of times
            prompt = body.get("prompt")
            batch = len(prompt) if isinstance(prompt, list) and prompt and isinstance(prompt[0], str) else 1
            out = (body.get("max_tokens") or 16) * max(int(body.get("best_of") or 1), 1) * batch
        n = body.get("n") or 1
        return price.cost(size, int(out) * max(int(n), 1))

    def open(self, request: httpx.Request, content: bytes) -> Reservation | None:
        """Before the call: None when there is nothing to hold (free, or not a call that costs)."""
        if request.method != "POST":
            return None
        path = request.url.path.rstrip("/")
        if path.endswith("/cancel"):  # cancelling a job costs nothing
            return None
        metered = path.endswith(METERED)
        if self.free:
            if metered:
                self.ledger.record_free(self.owner)
            return None
        try:
            body = orjson.loads(content) if content else {}
        except orjson.JSONDecodeError:
            body = {}
        model = str(body.get("model", "")) if isinstance(body, dict) else ""
        price = self.prices.get(model)
        if price is not None and price.free:
            self.ledger.record_free(self.owner)
            return None
        if not metered:
            self.ledger.record_refusal(self.owner)
            self.refuse(
                UnknownPrice(
                    f"hybridgate budget: cannot bound the cost of POST {path}; the meter prices "
                    f"{', '.join(METERED)} (mark the model free if it costs nothing)"
                )
            )
        if (
            self.forbid_paid
        ):  # before the price: in these tiers a call of unknown cost is as wrong as a paid one
            self.ledger.record_refusal(self.owner)
            self.refuse(
                PaidCallForbidden(
                    f"hybridgate budget: a call to {model!r}, not priced free, from {self.forbid_paid}"
                )
            )
        if price is None:
            self.ledger.record_refusal(self.owner)
            self.refuse(
                UnknownPrice(
                    f"hybridgate budget: no price known for model {model!r}; add "
                    f"'{model or 'MODEL'} = input_per_mtok=... output_per_mtok=...' (or '= free') "
                    "to the hybridgate_prices ini option"
                )
            )
        try:
            return self.ledger.reserve(
                self.owner, model, price, self.worst_case(path, body, len(content), price)
            )
        except BudgetExceeded as e:
            self.refuse(e)

    def settle(self, r: Reservation, usage: Any) -> float:
        tokens = _usage_tokens(usage)
        return self.ledger.settle(r, None if tokens is None else r.price.cost(*tokens))


def __getattr__(name: str) -> Any:
    # The transports need httpx; importing it lazily keeps the pytest plugin's start-up light for every run.
    if name in ("BudgetTransport", "AsyncBudgetTransport", "metered_http_client"):
        from hybridgate.testing.spend import _budget_http

        return getattr(_budget_http, name)
    raise AttributeError(name)
