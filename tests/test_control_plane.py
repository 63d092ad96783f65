"""The control plane (every route but the two hot ones) as a real process: OpenAI-shaped errors on every
route, the models API through the openai client, /openapi.json and an offline /docs, and schemathesis
fuzzing every documented operation of the embedded default config against its own /openapi.json."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import openai
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from hybridgate.testing.procs import Proc, start_gateway

MASTER = "master-" + "x" * 24
AUTH = {"Authorization": f"Bearer {MASTER}"}
BACKENDS: list[dict[str, Any]] = [
    {"name": "mock", "kind": "mock", "models": {"mock": "mock"}, "price": {"free": True}},
    {"name": "other", "kind": "mock", "models": {"other": "mock"}, "price": {"free": True}},
]
HOT = ("/v1/chat/completions", "/v1/completions")
# Every documented route and its methods: /openapi.json must list exactly these, a 405 must allow exactly
# these, and the fuzz test visits each.
OPERATIONS: dict[str, set[str]] = {
    "/health": {"GET"},
    "/health/backends": {"GET"},
    "/metrics": {"GET"},
    "/v1/models": {"GET"},
    "/v1/models/{model_id}": {"GET"},
    "/v1/usage": {"GET"},
    "/admin/keys": {"GET", "POST"},
    "/admin/keys/{key_id}": {"GET", "DELETE"},
    "/admin/keys/{key_id}/revoke": {"POST"},
    "/v1/chat/completions": {"POST"},
    "/v1/completions": {"POST"},
    "/v1/files/{key}": {"GET"},
    "/v1/images/generations": {"POST"},
    "/v1/jobs": {"GET", "POST"},
    "/v1/jobs/{job_id}": {"GET"},
    "/v1/jobs/{job_id}/cancel": {"POST"},
    "/v1/jobs/{job_id}/events": {"GET"},
    "/v1/jobs/webhooks/{backend}": {"POST"},
    "/v1/loras": {"GET"},
    "/v1/loras/{name}": {"GET"},
    "/v1/training/runs": {"GET", "POST"},
    "/v1/training/runs/{run_id}": {"GET", "DELETE"},
    "/v1/training/runs/{run_id}/forward_backward": {"POST"},
    "/v1/training/runs/{run_id}/optim_step": {"POST"},
    "/v1/training/runs/{run_id}/sample": {"POST"},
    "/v1/training/runs/{run_id}/save": {"POST"},
    "/v1/training/runs/{run_id}/serve": {"POST"},
}
LIFECYCLES = {"stopped", "provisioning", "warming", "ready", "draining", "failed"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """Two mock backends and a master key; the tests using it create keys but never change those."""
    proc = start_gateway(
        {"backends": BACKENDS},
        env={"HYBRIDGATE_MASTER_KEY": MASTER},
        workdir=tmp_path_factory.mktemp("control"),
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def default_gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """The embedded default config (a mock and an in-process llama.cpp model, which may still be loading
    or have failed for want of the extra: both are states the control plane must describe)."""
    proc = start_gateway(
        None, env={"HYBRIDGATE_MASTER_KEY": MASTER}, workdir=tmp_path_factory.mktemp("control-default")
    )
    yield proc
    proc.stop()


def openai_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The `error` object of an answer that must be `status` in OpenAI's shape (all four keys present)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    assert isinstance(err["message"], str) and err["message"]
    if code is not None:
        assert err["code"] == code, err
    return dict(err)


def concrete(path: str) -> str:
    return path.replace("{model_id}", "mock").replace("{key_id}", "key_doesnotexist")


def client(gw: Proc, key: str = MASTER) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)


# --- errors -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/nope", "/v1/nope", "/admin/keys/x/y", "/docs/nope"])
@pytest.mark.parametrize("auth", [True, False], ids=["master", "anonymous"])
def test_an_unknown_path_is_an_openai_shaped_404(gw: Proc, path: str, auth: bool) -> None:
    r = httpx.get(gw.url + path, headers=AUTH if auth else {})
    err = openai_error(r, 404, "not_found")
    assert err["type"] == "invalid_request_error" and "/docs" in err["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PUT", "/v1/models"),
        ("GET", "/v1/chat/completions"),
        ("GET", "/v1/completions"),
        ("DELETE", "/v1/completions/"),
        *(("PATCH", p) for p in OPERATIONS),
    ],
)
def test_a_wrong_method_is_a_405_allowing_every_method_of_the_path(gw: Proc, method: str, path: str) -> None:
    r = httpx.request(method, gw.url + concrete(path), headers=AUTH)
    err = openai_error(r, 405, "method_not_allowed")
    assert err["type"] == "invalid_request_error"
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert allowed == OPERATIONS[path.rstrip("/")], r.headers["allow"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("group_by=nope", "group_by"),
        ("bogus=1", "bogus"),
        ("from=yesterday-ish", "from"),
        ("from=2d&to=3d", "to"),
    ],
)
def test_a_bad_usage_query_is_a_400_naming_the_parameter(gw: Proc, query: str, param: str) -> None:
    # The control plane declares no parameter FastAPI itself could reject (every one is a free string),
    # so /v1/usage's own strict parser is where a bad parameter is named.
    r = httpx.get(f"{gw.base_url}/usage?{query}", headers=AUTH)
    err = openai_error(r, 400)
    assert err["type"] == "invalid_request_error" and err["param"] == param


@pytest.mark.parametrize("path", ["/v1/models", "/v1/models/mock", "/v1/usage", "/admin/keys"])
@pytest.mark.parametrize("token", [None, "wrong"])
def test_without_a_valid_key_the_control_plane_is_a_401(gw: Proc, path: str, token: str | None) -> None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    err = openai_error(httpx.get(gw.url + path, headers=headers), 401)
    assert err["type"] == "authentication_error"


def test_the_root_says_what_the_gateway_is_and_links_the_docs(gw: Proc) -> None:
    r = httpx.get(gw.url + "/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json"), r.text
    info = r.json()
    assert info["name"] == "hybridgate" and "OpenAI-compatible" in info["description"]
    assert (info["docs"], info["openapi"], info["openai_base_url"]) == ("/docs", "/openapi.json", gw.base_url)
    page = httpx.get(gw.url + "/", headers={"Accept": "text/html,application/xhtml+xml;q=0.9"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'href="/docs"' in page.text and gw.base_url in page.text
    # Not part of the API it describes: /openapi.json leaves it out, as it does /docs.
    assert "/" not in httpx.get(gw.url + "/openapi.json").json()["paths"]


# --- models through the openai client ------------------------------------------------------------------
def test_models_retrieve_through_the_openai_client(gw: Proc) -> None:
    c = client(gw)
    model = c.models.retrieve("mock")
    assert (model.id, model.object, model.owned_by) == ("mock", "model", "hybridgate")
    assert model.created > 0
    assert sorted(m.id for m in c.models.list()) == ["mock", "other"]


def test_retrieving_an_unknown_model_is_an_openai_not_found(gw: Proc) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client(gw).models.retrieve("nope")
    e = raised.value
    assert e.status_code == 404 and e.code == "model_not_found"
    assert set(e.response.json()) == {"error"}
    assert isinstance(e.body, dict) and {"message", "type", "param", "code"} <= set(e.body)
    assert "available models: mock, other" in e.body["message"]


def test_a_key_restricted_to_some_models_cannot_retrieve_the_others(gw: Proc) -> None:
    r = httpx.post(gw.url + "/admin/keys", headers=AUTH, json={"name": "only-mock", "models": ["mock"]})
    assert r.status_code == 201, r.text
    c = client(gw, r.json()["key"])
    assert c.models.retrieve("mock").id == "mock"
    assert [m.id for m in c.models.list()] == ["mock"]
    with pytest.raises(openai.NotFoundError) as raised:
        c.models.retrieve("other")
    assert raised.value.code == "model_not_found"
    # The same answer as for a model that does not exist: a key learns nothing of models it may not use.
    assert isinstance(raised.value.body, dict) and "available" not in raised.value.body["message"]


# --- /openapi.json and /docs ---------------------------------------------------------------------------
def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, f"unresolvable $ref {ref}"
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            yield node["$ref"]
        for value in node.values():
            yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def test_openapi_json_is_a_valid_document_of_every_route(gw: Proc) -> None:
    # openapi-spec-validator is not installed; schemathesis bundles the official OpenAPI 3.1 JSON Schema.
    from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

    r = httpx.get(gw.url + "/openapi.json")
    assert r.status_code == 200
    doc = r.json()
    assert doc["openapi"].startswith("3.1.")
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(doc)]
    assert not errors, "\n\n".join(errors)
    assert {p: {m.upper() for m in ops} for p, ops in doc["paths"].items()} == OPERATIONS
    for ref in set(refs(doc)):
        resolve(doc, ref)

    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            # What the gateway sends: a validation error is a 400 in OpenAI's shape, never FastAPI's 422.
            assert "422" not in op["responses"], where
            for status, answer in op["responses"].items():
                if status.startswith(("4", "5")):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, where
            if op.get("security"):  # a route that asks for a key says what happens without one
                assert "401" in op["responses"], where
    assert "HTTPValidationError" not in doc["components"]["schemas"]
    for path in HOT:
        assert doc["paths"][path]["post"]["requestBody"]["required"] is True


def test_docs_load_every_asset_from_the_gateway_itself(gw: Proc) -> None:
    r = httpx.get(gw.url + "/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "/openapi.json" in r.text
    assets = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", r.text)
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets), assets
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), f"{url}: not served by the gateway"
        asset = httpx.get(gw.url + url)
        assert asset.status_code == 200 and asset.content, url


# --- health and metrics --------------------------------------------------------------------------------
def test_health_backends_shows_each_backends_lifecycle_and_load(default_gw: Proc) -> None:
    r = httpx.get(default_gw.url + "/health/backends")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"  # the mock is always routable
    snaps = {b["name"]: b for b in body["backends"]}
    assert set(snaps) == {"mock", "local", "mock-images"}
    for b in snaps.values():
        assert b["lifecycle"] in LIFECYCLES and isinstance(b["state"], str)
        assert b["health_checks"] in ("active", "passive") and b["in_flight"] == 0
        generation = {"image_generation", "video_generation", "lora_training"}
        assert set(b["operations"]) >= ({"chat", "completions"} if b["kind"] != "mockgen" else generation)
        assert isinstance(b["model_errors"], dict) and "concurrency" in b
        if b["routable"]:
            assert b["lifecycle"] == "ready", b
        if b["lifecycle"] == "failed":  # says why, e.g. the llama.cpp extra is not installed
            assert b["last_error"] or b["model_errors"], b
    mock = snaps["mock"]
    assert mock["lifecycle"] == "ready" and mock["routable"] and mock["healthy"]
    assert mock["kind"] == "mock" and mock["models"] == ["mock"] and mock["model_errors"] == {}

    metrics = httpx.get(default_gw.url + "/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert 'hybridgate_backend_lifecycle{backend="mock",state="ready"} 1.0' in metrics.text
    assert 'hybridgate_backend_healthy{backend="mock"} 1.0' in metrics.text


# --- schemathesis --------------------------------------------------------------------------------------
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
FUZZ = settings(
    max_examples=20,
    deadline=None,  # each example is an HTTP round trip to another process
    database=None,
    # No shrinking: it would replay against a live server without bound; schemathesis prints the request.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def api(default_gw: Proc) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(default_gw.url + "/openapi.json", config=schemathesis.Config())


def to_mock(case: Case) -> Case:
    """Send a generated inference request to the mock backend, so it is served rather than a 404."""
    if isinstance(case.body, dict):
        case.body["model"] = "mock"
    return case


@pytest.mark.parametrize(
    ("method", "path"), [(m, p) for p, methods in OPERATIONS.items() for m in sorted(methods)]
)
def test_fuzzed_requests_get_no_5xx_and_answers_their_schema_allows(
    default_gw: Proc, api: schemathesis.BaseSchema, method: str, path: str
) -> None:
    op = api[path][method]
    statuses: list[int] = []
    for mode in GenerationMode:
        strategy = op.as_strategy(mode)
        if mode is GenerationMode.POSITIVE and path in HOT:
            strategy = strategy.map(to_mock)

        @FUZZ
        @given(case=strategy)
        def run(case: Case) -> None:
            r = case.call_and_validate(base_url=default_gw.url, headers=AUTH, checks=CHECKS, timeout=15)
            statuses.append(r.status_code)

        try:
            run()
        except Unsatisfiable:
            # Only an operation without parameters, body or security has no invalid request to make.
            definition = op.definition.raw
            assert mode is GenerationMode.NEGATIVE and not definition.get("parameters"), path
            assert not definition.get("requestBody") and not definition.get("security"), path
    assert statuses
    if path in HOT:  # the fuzzing reached a backend, not only the request validation
        assert 200 in statuses, statuses
    # Nothing the fuzzing stored (keys with odd names, ledger rows) breaks the routes that list it all.
    for after in ("/admin/keys", "/v1/usage?group_by=key", "/metrics", "/health/backends"):
        assert httpx.get(default_gw.url + after, headers=AUTH).status_code == 200, after


def test_a_key_expiry_past_the_calendar_is_a_400_that_stores_nothing(
    spawn: dict[str, Callable[..., Proc]],
) -> None:
    # Found by the fuzz test above: POST /admin/keys {"expires_at": 8783969193855339.0, ...}.
    gw = spawn["gateway"]({"backends": BACKENDS}, env={"HYBRIDGATE_MASTER_KEY": MASTER})
    for expires_at in (253_402_300_800, 1e20, "1e300", "inf", "nan", "99999999999d"):  # year 10000, and worse
        r = httpx.post(gw.url + "/admin/keys", headers=AUTH, json={"name": "far", "expires_at": expires_at})
        assert openai_error(r, 400)["param"] == "expires_at", expires_at
    listed = httpx.get(gw.url + "/admin/keys", headers=AUTH)
    assert listed.status_code == 200 and listed.json()["data"] == []
