"""Shared state of one check run: HTTP clients, the model under test, and the mapping of transport errors.

The mapping is the heart of the exit-code contract: a refused connection is the target being unreachable
(exit 2), while a timeout or a cut connection after the target answered is the target failing (exit 1).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from hybridgate.testing.check._options import CheckOptions

if TYPE_CHECKING:
    import openai


class CheckFailed(AssertionError):
    """The target answered, but not as the contract says; `metrics` still reach the report."""

    def __init__(self, message: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics


class CheckSkipped(Exception):
    """The test does not apply to this target (the reason says why)."""

    def __init__(self, message: str, metrics: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.metrics = metrics


class TargetUnreachable(Exception):
    """The target did not accept a connection or did not answer its health endpoint at all."""


@dataclass
class Probe:
    """What GET /health at the target's root answered during the preflight."""

    status: int
    latency_ms: float
    body: str


def _unreachable_cause(e: BaseException | None) -> bool:
    """A connect failure somewhere in the chain; by name, as openai 3 raises httpx2's, not httpx's, errors."""
    while e is not None:
        if any(
            c.__name__ in ("ConnectError", "ConnectTimeout") and c.__module__.startswith("httpx")
            for c in type(e).__mro__
        ):
            return True
        e = e.__cause__
    return False


@contextmanager
def guard(root: str) -> Iterator[None]:
    """Turn transport and openai-client errors into TargetUnreachable or CheckFailed."""
    try:
        yield
    except (CheckFailed, CheckSkipped, TargetUnreachable):
        raise
    except httpx.TimeoutException as e:
        if isinstance(e, httpx.ConnectTimeout):
            raise TargetUnreachable(f"connecting to {root} timed out") from e
        raise CheckFailed(f"no answer in time ({type(e).__name__})") from e
    except httpx.ConnectError as e:
        raise TargetUnreachable(f"cannot connect to {root}: {e}") from e
    except httpx.TransportError as e:
        raise CheckFailed(f"connection broke: {type(e).__name__}: {e}") from e
    except Exception as e:
        import openai

        if isinstance(e, openai.APITimeoutError):
            raise CheckFailed("the openai client timed out") from e
        if isinstance(e, openai.APIConnectionError):
            if _unreachable_cause(e):
                raise TargetUnreachable(f"cannot connect to {root}: {e.__cause__ or e}") from e
            raise CheckFailed(f"the openai client lost the connection: {e.__cause__ or e}") from e
        raise


class Context:
    """One per run; tests take what they need from it (URLs, clients, the model) and never build their own."""

    def __init__(self, opts: CheckOptions) -> None:
        self.opts = opts
        self.target = opts.target
        self.root = opts.root
        self.headers = {"Authorization": f"Bearer {opts.api_key}"} if opts.api_key else {}
        self.http = httpx.Client(
            timeout=httpx.Timeout(opts.request_timeout_s, connect=opts.connect_timeout_s),
            headers=self.headers,
        )
        self.probe: Probe | None = None
        self.models: list[str] | None = None
        self.owners: dict[str, str] = {}  # model id -> owned_by, from GET /v1/models
        self._backends: list[dict[str, Any]] | None = None
        self._model: str | None = opts.model
        self._openai: openai.OpenAI | None = None
        # Set by the load suite, read by the runner into the report's `load_test`.
        self.load_test: dict[str, float] | None = None

    def close(self) -> None:
        self.http.close()
        if self._openai is not None:
            self._openai.close()

    def url(self, path: str) -> str:
        return f"{self.target}/{path.lstrip('/')}"

    def preflight(self) -> Probe:
        """GET /health at the root; any answer at all means reachable (a 404 too: OpenAI has no /health)."""
        t0 = time.perf_counter()
        try:
            r = self.http.get(
                self.root + "/health", timeout=httpx.Timeout(10.0, connect=self.opts.connect_timeout_s)
            )
        except httpx.TimeoutException as e:
            if isinstance(e, httpx.ConnectTimeout):
                raise TargetUnreachable(f"connecting to {self.root} timed out") from e
            raise TargetUnreachable(
                f"{self.root}/health accepted the connection but did not answer within 10s"
            ) from e
        except httpx.TransportError as e:
            raise TargetUnreachable(f"cannot connect to {self.root}: {e}") from e
        self.probe = Probe(r.status_code, (time.perf_counter() - t0) * 1000, r.text[:500])
        return self.probe

    def get(self, path: str) -> httpx.Response:
        with guard(self.root):
            return self.http.get(self.url(path))

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        with guard(self.root):
            return self.http.post(self.url(path), json=body, **kw)

    def list_models(self) -> list[str]:
        """Model ids from GET /v1/models (cached); CheckFailed when the listing is unusable."""
        if self.models is None:
            r = self.get("models")
            if r.status_code != 200:
                raise CheckFailed(f"GET /v1/models answered HTTP {r.status_code}: {r.text[:200]}")
            try:
                data = r.json()["data"]
                self.models = [str(m["id"]) for m in data]
                self.owners = {str(m["id"]): str(m.get("owned_by", "")) for m in data}
            except (ValueError, KeyError, TypeError, AttributeError) as e:
                raise CheckFailed(
                    f"GET /v1/models is not a model list: {type(e).__name__}: {r.text[:200]}"
                ) from None
        return self.models

    def backends(self) -> list[dict[str, Any]]:
        """A hybridgate gateway's backends, from GET /health/backends at the root (cached); [] elsewhere."""
        if self._backends is None:
            self._backends = []
            try:
                r = self.http.get(self.root + "/health/backends")
                if r.status_code == 200:
                    self._backends = [b for b in r.json()["backends"] if isinstance(b, dict)]
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                pass  # not a hybridgate gateway, or not one that says: nothing known
        return self._backends

    def mock_backends(self) -> set[str]:
        """Names of the gateway's backends of kind mock."""
        return {str(b.get("name")) for b in self.backends() if b.get("kind") == "mock"}

    def is_mock(self, model: str) -> bool:
        """Whether `model` is known to be a mock: a mock server lists it as its own, or every gateway
        backend that serves it is a mock. A canned answer from it proves nothing about a real model."""
        if self.owners.get(model) == "hybridgate-mock":
            return True
        serving = [b for b in self.backends() if model in (b.get("models") or ())]
        return bool(serving) and all(b.get("kind") == "mock" for b in serving)

    def _routable(self, model: str) -> bool:
        """False only when the gateway says no backend of the model can take a call now (e.g. a local
        model still loading, or failed for want of its extra)."""
        serving = [b for b in self.backends() if model in (b.get("models") or ())]
        return not serving or any(
            b.get("routable") and b.get("lifecycle", "ready") == "ready" for b in serving
        )

    @property
    def model(self) -> str:
        """The model every request uses: --model, else the first listed chat model that is not a mock and
        can be served now, else the first listed chat model (generation-only models are never picked)."""
        if self._model is None:
            models = self.list_models()
            if not models:
                raise CheckFailed("no model to test: GET /v1/models listed none and --model was not given")
            chat = [m for m in models if self._chats(m)] or models
            real = [m for m in chat if not self.is_mock(m) and self._routable(m)]
            self._model = real[0] if real else chat[0]
        return self._model

    def _chats(self, model: str) -> bool:
        """False when the gateway says no backend of the model does chat (an image or training model)."""
        serving = [b for b in self.backends() if model in (b.get("models") or ())]
        return not serving or any("chat" in (b.get("operations") or ("chat",)) for b in serving)

    @property
    def openai(self) -> openai.OpenAI:
        """The official client, without retries, so every answer it sees is the target's own."""
        if self._openai is None:
            import openai

            self._openai = openai.OpenAI(
                base_url=self.target,
                api_key=self.opts.api_key or "unused",
                max_retries=0,
                timeout=self.opts.request_timeout_s,  # a number: the SDK may be built on httpx2, not httpx
            )
        return self._openai
