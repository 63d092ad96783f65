"""Tinker's wire protocol under /tinker/api/v1, so the official `tinker` SDK drives training unmodified.

`tinker.ServiceClient(base_url="http://HOST:PORT/tinker", api_key="tml-...")`. The key is a hybridgate key
created with the `tml-` prefix (the SDK refuses others), sent as `X-API-Key`. Steps answer at once with a
future (`request_id`); `retrieve_future` long-polls for the result: protobuf for forward_backward and
sample, JSON otherwise, `{"error", "category"}` for a failed step. Errors are JSON, never 5xx or 409 for a
user's mistake (the SDK retries those for minutes). Not in /openapi.json: the SDK is its documentation.

The four routes a training loop calls on every step (forward_backward, optim_step, asample,
retrieve_future) are also served without FastAPI's routing and dependency resolution (`fast_routes`): the
same endpoint functions, the same errors, about half the gateway's CPU per request on a path where each
step waits on four of them (benchmarks/README.md, training API).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from hybridgate._asgi import Receive, Scope, Send
from hybridgate.api.control._errors import bug_response, gateway_error_response
from hybridgate.auth import Authenticator, Principal
from hybridgate.protocol import (
    BadRequestError,
    GatewayError,
    NotFoundError,
    PayloadTooLargeError,
    UpstreamUnavailableError,
)
from hybridgate.training._service import (
    JSON,
    PROTO,
    Sampler,
    StepError,
    TrainingService,
    check_name,
    parse_tinker_path,
)

PREFIX = "/tinker/api/v1"
Endpoint = Callable[[Request, Principal], Awaitable[Response]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def _codec() -> Any:
    """The protobuf codec, imported on first use: the protobuf runtime comes with the training extra."""
    try:
        from hybridgate.training import _proto
    except ImportError as e:
        raise UpstreamUnavailableError(
            f"The training API needs the training extra ({e}): pip install 'hybridgate[training]'."
        ) from None
    return _proto


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type=JSON)


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _checkpoint(row: Any) -> dict[str, Any]:
    return {
        "checkpoint_id": row.checkpoint_id,
        "checkpoint_type": "training" if row.kind == "weights" else "sampler",
        "time": _iso(row.created_at),
        "tinker_path": f"tinker://{row.run_id}/{row.checkpoint_id}",
        "size_bytes": row.size_bytes,
        "public": False,
    }


def _session_of(model_id: str) -> str:
    return model_id.split(":train:")[0]


async def _body(request: Request, limit: int) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > limit:
        raise PayloadTooLargeError(f"Request body exceeds the limit of {limit} bytes.")
    try:
        data = orjson.loads(raw or b"{}")
    except orjson.JSONDecodeError as e:
        raise BadRequestError(f"The body is not valid JSON: {e}.") from None
    if not isinstance(data, dict):
        raise BadRequestError("The body must be a JSON object.")
    return data


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = ...) -> Any:
    v = data.get(name, default)
    if v is ...:
        raise BadRequestError(f"Missing required parameter: '{name}'.", param=name)
    if (
        v is not None
        and v is not default
        and (not isinstance(v, kind) or (isinstance(v, bool) and kind is int))
    ):
        raise BadRequestError(f"Invalid value for '{name}'.", param=name)
    return v


def _fast(endpoint: Endpoint, principal: Callable[[Request], Awaitable[Principal]]) -> ASGIApp:
    """One endpoint as a bare ASGI app, answering exactly as the control plane's handlers would."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        try:
            response = await endpoint(request, await principal(request))
        except GatewayError as e:
            response = gateway_error_response(e)
        except Exception as e:
            response = bug_response(scope["method"], scope["path"], e)
        await response(scope, receive, send)

    return app


def router(
    auth: Authenticator,
    svc: Callable[[], TrainingService],
    fast_routes: dict[tuple[str, str], ASGIApp] | None = None,
) -> APIRouter:
    """The Tinker routes; `fast_routes`, when given, receives the per-step ones (FAST) as bare ASGI apps."""
    r = APIRouter(prefix=PREFIX, include_in_schema=False)

    async def principal(request: Request) -> Principal:
        key = request.headers.get("x-api-key")
        return await auth.authenticate(f"Bearer {key}" if key else request.headers.get("authorization"))

    def limit() -> int:
        return svc().config.max_body_bytes

    async def submit(
        p: Principal,
        type_: str,
        run_id: str | None,
        dedupe: str | None,
        work: Callable[[], Awaitable[tuple[str, bytes]]] | None,
        refusal: StepError | None = None,
    ) -> Response:
        s = svc()
        rec, new = await s.new_future(p, type_, run_id, dedupe)
        if new:
            if refusal is not None:
                s.fail_future(rec, refusal.message, refusal.category)
            else:
                assert work is not None
                s.run_future(rec, work())
        return _submitted(rec.request_id, run_id)

    def _submitted(request_id: str, run_id: str | None) -> Response:
        return _json(
            {"request_id": request_id} if run_id is None else {"request_id": request_id, "model_id": run_id}
        )

    # --- session and background -----------------------------------------------------------------
    @r.post("/client/config")
    async def client_config() -> Response:
        return _json({"pjwt_auth_enabled": False})

    @r.post("/client/dynamic_config")
    async def dynamic_config() -> Response:
        return _json({})

    @r.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @r.post("/create_session")
    async def create_session(p: Principal = Depends(principal)) -> Response:
        sid = await svc().create_session(p)
        return _json({"session_id": sid, "type": "create_session"})

    @r.post("/session_heartbeat")
    async def heartbeat(request: Request, p: Principal = Depends(principal)) -> Response:
        data = await _body(request, limit())
        await svc().heartbeat(p, str(_field(data, "session_id", str)))
        return _json({"type": "session_heartbeat"})

    @r.post("/sessions/{session_id}/finish")
    async def finish(session_id: str, request: Request, p: Principal = Depends(principal)) -> Response:
        data = await _body(request, limit())
        reason: dict[str, Any] = data["reason"] if isinstance(data.get("reason"), dict) else {}
        await svc().heartbeat(p, session_id, finish=str(reason.get("type") or "success"))
        return _json({})

    @r.post("/telemetry")
    async def telemetry(p: Principal = Depends(principal)) -> Response:
        return _json({"status": "accepted"})

    @r.post("/cancel_future")
    async def cancel_future(p: Principal = Depends(principal)) -> Response:
        return _json({})

    @r.get("/get_server_capabilities")
    async def capabilities(p: Principal = Depends(principal)) -> Response:
        models = [{"model_name": m, "trainable": True, "sampleable": True} for m in svc().config.models]
        return _json({"supported_models": models})

    # --- training -------------------------------------------------------------------------------
    @r.post("/create_model")
    async def create_model(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        sid = str(_field(data, "session_id", str))
        await s.session(p, sid)
        seq = _field(data, "model_seq_id", int)
        base = str(_field(data, "base_model", str))
        lc = _field(data, "lora_config", dict, {}) or {}
        run_id = f"{sid}:train:{seq}"
        refusal = None
        lora: dict[str, Any] = {}
        try:
            rank = lc.get("rank", 32)
            if not isinstance(rank, int) or isinstance(rank, bool) or not 1 <= rank <= 512:
                raise StepError(f"lora_config.rank must be an integer from 1 to 512, not {rank!r}")
            lora = {
                "rank": rank,
                "train_attn": bool(lc.get("train_attn", True)),
                "train_mlp": bool(lc.get("train_mlp", True)),
                "train_unembed": bool(lc.get("train_unembed", True)),
            }
            opt = data.get("optimizer_config") or {}
            if isinstance(opt, dict) and opt.get("type", "adamw") not in ("adamw", "adam"):
                raise StepError(
                    f"optimizer {opt.get('type')!r} is not supported; this server trains with adamw"
                )
            s.model_path(base)
        except StepError as e:
            refusal = e
        except GatewayError as e:
            refusal = StepError(e.message)

        async def work() -> tuple[str, bytes]:
            await s.create_run(p, run_id, "tinker", base, lora, lc.get("seed"), data.get("user_metadata"))
            return JSON, orjson.dumps({"model_id": run_id, "type": "create_model"})

        return await submit(p, "create_model", run_id, f"create:{run_id}", work, refusal)

    @r.post("/get_info")
    async def get_info(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        model_id = str(_field(data, "model_id", str))
        try:
            run = s.run(p, model_id)
        except StepError as e:
            raise NotFoundError(e.message, param="model_id") from None
        info = run.worker.info
        return _json(
            {
                "type": "get_info",
                "model_id": model_id,
                "model_data": {
                    "model_name": run.base_model,
                    "arch": info.get("arch"),
                    "tokenizer_id": info.get("tokenizer_dir"),
                },
                "is_lora": True,
                "lora_rank": run.lora.get("rank"),
                "model_name": run.base_model,
                "optimizer_config": {"type": "adamw"},
            }
        )

    @r.post("/forward_backward")
    async def forward_backward(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        raw = await request.body()
        if len(raw) > limit():
            raise PayloadTooLargeError(f"Request body exceeds the limit of {limit()} bytes.")
        if "zstd" in request.headers.get("content-encoding", ""):
            import zstandard

            try:
                raw = zstandard.ZstdDecompressor().decompress(raw, max_output_size=limit())
            except zstandard.ZstdError as e:
                raise BadRequestError(f"The zstd body cannot be decompressed: {e}.") from None
        if "protobuf" not in request.headers.get("content-type", ""):
            raise BadRequestError(
                "forward_backward takes a ForwardBackwardRequest as application/x-protobuf."
            )
        codec = _codec()
        try:
            req = codec.decode_forward_backward(raw)
        except codec.WireError as e:
            raise BadRequestError(str(e)) from None
        run_id = req["model_id"]
        kind = "forward" if req["forward_only"] else "forward_backward"
        dedupe = f"{run_id}:fb:{req['seq_id']}"
        if (prior := s.seen(p, dedupe)) is not None:  # a resent submit: its step is queued already
            return _submitted(prior.request_id, run_id)
        refusal = None
        wait = None
        try:
            run = s.run(p, run_id)
            if req["loss_fn"] != "cross_entropy":
                raise StepError(
                    f"loss_fn {req['loss_fn']!r} is not supported: this server implements cross_entropy (with "
                    "per-token weights, which also carries forward_backward_custom)"
                )
            extra = next((d["unsupported_inputs"] for d in req["data"] if "unsupported_inputs" in d), None)
            if extra:
                raise StepError(
                    f"loss_fn_inputs {extra} are not inputs of cross_entropy (target_tokens, weights)"
                )
            if req["loss_fn_config"]:
                raise StepError(
                    f"loss_fn_config {sorted(req['loss_fn_config'])} is not supported for cross_entropy"
                )
            wait = s.submit_forward_backward(p, run, req["data"], req["forward_only"])
        except StepError as e:
            refusal = e

        async def work() -> tuple[str, bytes]:
            assert wait is not None
            res = await wait()
            return PROTO, _codec().encode_forward_backward_output(
                res["logprobs"], {"loss:sum": res["loss_sum"]}
            )

        return await submit(p, kind, run_id, dedupe, work, refusal)

    @r.post("/optim_step")
    async def optim_step(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        run_id = str(_field(data, "model_id", str))
        dedupe = f"{run_id}:opt:{data.get('seq_id')}"
        if (prior := s.seen(p, dedupe)) is not None:
            return _submitted(prior.request_id, run_id)
        refusal = None
        wait = None
        try:
            run = s.run(p, run_id)
            adam = data.get("adam_params")
            if not isinstance(adam, dict):
                other = (
                    (data.get("optimizer_params") or {}).get("type")
                    if isinstance(data.get("optimizer_params"), dict)
                    else None
                )
                raise StepError(f"optimizer {other or '(none)'} is not supported; send adam_params (AdamW)")
            wait = s.submit_optim_step(p, run, adam)
        except StepError as e:
            refusal = e

        async def work() -> tuple[str, bytes]:
            assert wait is not None
            res = await wait()
            return JSON, orjson.dumps({"metrics": {"grad_norm:mean": res["grad_norm"]}, "type": "optim_step"})

        return await submit(p, "optim_step", run_id, dedupe, work, refusal)

    async def _save(request: Request, p: Principal, sampler: bool) -> Response:
        s = svc()
        data = await _body(request, limit())
        run_id = str(_field(data, "model_id", str))
        seq = data.get("seq_id")
        path = data.get("path")
        refusal = None
        try:
            run = s.run(p, run_id)
            if path is not None:
                check_name(str(path))
        except StepError as e:
            refusal = e
        except GatewayError as e:
            refusal = StepError(e.message)
        kind = "sampler_weights" if sampler else "weights"
        type_ = "save_weights_for_sampler" if sampler else "save_weights"

        async def work() -> tuple[str, bytes]:
            if path is None:
                if not sampler:
                    raise StepError("save_weights needs a path (a checkpoint name)")
                seq_s = data.get("sampling_session_seq_id")
                name = f"ephemeral-{uuid.uuid4().hex[:12]}"
                await s.save(p, run, kind, name, optimizer=False)
                _, adapter, base = await s.load_adapter(p, run.id, kind, name)
                sid = f"{_session_of(run.id)}:sample:{seq_s}"
                await s.add_sampler(
                    p, Sampler(sid, p.key_id, base, adapter, f"tinker://{run.id}/{kind}/{name}")
                )
                return JSON, orjson.dumps({"sampling_session_id": sid, "type": type_})
            res = await s.save(
                p, run, kind, str(path), optimizer=not sampler, overwrite=bool(data.get("overwrite"))
            )
            return JSON, orjson.dumps({"path": res["tinker_path"], "type": type_})

        return await submit(p, type_, run_id, f"{run_id}:{type_}:{seq}", work, refusal)

    @r.post("/save_weights")
    async def save_weights(request: Request, p: Principal = Depends(principal)) -> Response:
        return await _save(request, p, False)

    @r.post("/save_weights_for_sampler")
    async def save_weights_for_sampler(request: Request, p: Principal = Depends(principal)) -> Response:
        return await _save(request, p, True)

    @r.post("/load_weights")
    async def load_weights(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        path = str(_field(data, "path", str))
        optimizer = bool(data.get("optimizer", False))
        if data.get("model_id"):
            run_id = str(data["model_id"])
            dedupe = f"{run_id}:load:{data.get('seq_id')}"
        else:
            sid = str(_field(data, "session_id", str))
            await s.session(p, sid)
            run_id = f"{sid}:train:{_field(data, 'model_seq_id', int)}"
            dedupe = f"create:{run_id}"
        refusal = None
        try:
            src, kind, name = parse_tinker_path(path)
        except GatewayError as e:
            refusal = StepError(e.message)

        async def work() -> tuple[str, bytes]:
            await s.checkpoint(p, src, kind, name)
            meta = await s.read_meta(src, kind, name)
            base = meta["base_model"]
            if data.get("base_model") and data["base_model"] != base:
                raise StepError(f"checkpoint {path} is for base model {base}, not {data['base_model']}")
            if data.get("model_id"):
                s.run(p, run_id)
            await s.create_run(
                p,
                run_id,
                "tinker",
                base,
                meta["lora"],
                None,
                data.get("user_metadata"),
                from_folder=(await s.fetch(src, kind, name), optimizer),
            )
            return JSON, orjson.dumps({"type": "load_weights", "path": path, "model_id": run_id})

        return await submit(p, "load_weights", run_id, dedupe, work, refusal)

    # --- sampling -------------------------------------------------------------------------------
    @r.post("/create_sampling_session")
    async def create_sampling_session(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        sid = str(_field(data, "session_id", str))
        await s.session(p, sid)
        seq = _field(data, "sampling_session_seq_id", int)
        sampler_id = f"{sid}:sample:{seq}"
        model_path = data.get("model_path")
        try:
            if model_path:
                run_id, kind, name = parse_tinker_path(str(model_path))
                _, adapter, base = await s.load_adapter(p, run_id, kind, name)
            else:
                base = str(_field(data, "base_model", str))
                s.model_path(base)
                await s.worker(base)
                adapter = None
        except StepError as e:
            raise NotFoundError(e.message, param="model_path") from None
        await s.add_sampler(p, Sampler(sampler_id, p.key_id, base, adapter, model_path))
        return _json({"sampling_session_id": sampler_id, "type": "create_sampling_session"})

    @r.get("/samplers/{sampler_id}")
    async def get_sampler(sampler_id: str, p: Principal = Depends(principal)) -> Response:
        try:
            smp = svc().sampler(p, sampler_id)
        except StepError as e:
            raise NotFoundError(e.message) from None
        return _json({"sampler_id": smp.id, "base_model": smp.base_model, "model_path": smp.model_path})

    @r.post("/asample")
    async def asample(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        sid = str(_field(data, "sampling_session_id", str))
        n = _field(data, "num_samples", int, 1)
        if n is None or not 1 <= n <= 64:
            raise BadRequestError("num_samples must be an integer from 1 to 64.", param="num_samples")
        dedupe = f"{sid}:sample:{data.get('seq_id')}"
        if (prior := s.seen(p, dedupe)) is not None:
            return _sampled(prior.request_id, n)
        prompt_lp = bool(data.get("prompt_logprobs"))
        refusal = None
        wait = None
        try:
            smp = s.sampler(p, sid)
            for name in ("topk_prompt_logprobs", "topk_sample_logprobs", "prompt_alt_tokens_k"):
                if data.get(name):
                    raise StepError(f"{name} is not supported by this server")
            for name in ("target_prompt_logprobs", "prompt_logprobs_last_n"):
                if data.get(name) is not None:
                    raise StepError(f"{name} is not supported by this server")
            tokens: list[int] = []
            for c in (data.get("prompt") or {}).get("chunks") or []:
                if c.get("type", "encoded_text") != "encoded_text":
                    raise StepError(
                        f"prompt chunks of type {c.get('type')!r} are not supported; send text tokens"
                    )
                tokens.extend(int(t) for t in c.get("tokens") or [])
            params = data.get("sampling_params") or {}
            w = s.workers.get(smp.base_model)
            if w is None:
                raise StepError(f"no worker for {smp.base_model}")
            wait = s.submit_sample(
                p,
                w,
                smp.adapter,
                smp.model_path.split("/")[2] if smp.model_path else sid,
                smp.base_model,
                tokens,
                n,
                params,
                prompt_lp,
            )
        except StepError as e:
            refusal = e
        except (TypeError, ValueError, AttributeError) as e:
            refusal = StepError(f"malformed asample request: {e}")

        async def work() -> tuple[str, bytes]:
            assert wait is not None
            res = await wait()
            return PROTO, _codec().encode_sample_response(res["sequences"], res["prompt_logprobs"])

        rec, new = await s.new_future(p, "sample", None, dedupe)
        if new:
            if refusal is not None:
                s.fail_future(rec, refusal.message, refusal.category)
            else:
                s.run_future(rec, work())
        return _sampled(rec.request_id, n)

    def _sampled(request_id: str, n: int) -> Response:
        return _json(
            {"request_id": request_id, "sample_sequence_ids": [f"{request_id}:{i}" for i in range(n)]}
        )

    @r.post("/retrieve_future")
    async def retrieve_future(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        rid = str(_field(data, "request_id", str))
        rec = await s.retrieve(p, rid, s.config.long_poll_s)
        if rec is None:
            raise NotFoundError(f"No future '{rid}'.", param="request_id")
        if rec.status == "pending":
            return _json({"type": "try_again", "request_id": rid, "queue_state": "active"})
        if rec.status == "failed":
            return _json({"error": rec.error, "category": rec.category or "unknown"})
        return Response(rec.payload or b"", 200, media_type=rec.content_type or JSON)

    # --- REST listings --------------------------------------------------------------------------
    async def _run_json(p: Principal, row: Any) -> dict[str, Any]:
        ckpts = await svc().checkpoints(p, row.id)
        train = [c for c in ckpts if c.kind == "weights"]
        samp = [c for c in ckpts if c.kind == "sampler_weights"]
        lora = orjson.loads(row.lora)
        return {
            "training_run_id": row.id,
            "base_model": row.base_model,
            "model_owner": row.key_name,
            "is_lora": True,
            "corrupted": False,
            "lora_rank": lora.get("rank"),
            "last_request_time": _iso(row.last_request_at),
            "last_checkpoint": _checkpoint(train[-1]) if train else None,
            "last_sampler_checkpoint": _checkpoint(samp[-1]) if samp else None,
            "user_metadata": orjson.loads(row.user_metadata) if row.user_metadata else None,
        }

    def _page(request: Request, default: int) -> tuple[int, int]:
        try:
            lim = int(request.query_params.get("limit", default))
            off = int(request.query_params.get("offset", 0))
        except ValueError:
            raise BadRequestError("limit and offset must be integers.") from None
        if lim < 1 or off < 0:
            raise BadRequestError("limit must be positive and offset non-negative.")
        return lim, off

    @r.get("/training_runs")
    async def training_runs(request: Request, p: Principal = Depends(principal)) -> Response:
        lim, off = _page(request, 20)
        rows, total = await svc().list_runs(p, lim, off)
        return _json(
            {
                "training_runs": [await _run_json(p, row) for row in rows],
                "cursor": {"offset": off, "limit": lim, "total_count": total},
            }
        )

    @r.get("/training_runs/{run_id}")
    async def training_run(run_id: str, p: Principal = Depends(principal)) -> Response:
        return _json(await _run_json(p, await svc().run_row(p, run_id)))

    @r.get("/training_runs/{run_id}/checkpoints")
    async def run_checkpoints(run_id: str, p: Principal = Depends(principal)) -> Response:
        await svc().run_row(p, run_id)
        return _json(
            {
                "checkpoints": [
                    _checkpoint(c) for c in await svc().checkpoints(p, run_id) if c.kind != "merged"
                ]
            }
        )

    @r.get("/checkpoints")
    async def user_checkpoints(request: Request, p: Principal = Depends(principal)) -> Response:
        lim, off = _page(request, 100)
        rows = [c for c in await svc().checkpoints(p, None) if c.kind != "merged"]
        return _json(
            {
                "checkpoints": [_checkpoint(c) for c in rows[off : off + lim]],
                "cursor": {"offset": off, "limit": lim, "total_count": len(rows)},
            }
        )

    @r.post("/weights_info")
    async def weights_info(request: Request, p: Principal = Depends(principal)) -> Response:
        s = svc()
        data = await _body(request, limit())
        run_id, kind, name = parse_tinker_path(str(_field(data, "tinker_path", str)))
        try:
            await s.checkpoint(p, run_id, kind, name)
        except StepError as e:
            raise NotFoundError(e.message, param="tinker_path") from None
        try:
            meta = await s.read_meta(run_id, kind, name)
        except StepError as e:
            raise UpstreamUnavailableError(e.message, code="storage_unavailable") from None
        lora = meta["lora"]
        return _json(
            {
                "base_model": meta["base_model"],
                "is_lora": True,
                "lora_rank": lora.get("rank"),
                "train_unembed": lora.get("train_unembed"),
                "train_mlp": lora.get("train_mlp"),
                "train_attn": lora.get("train_attn"),
                "optimizer_config": {"type": "adamw"},
            }
        )

    @r.delete("/training_runs/{run_id}/checkpoints/{checkpoint_id:path}")
    async def delete_checkpoint(
        run_id: str, checkpoint_id: str, p: Principal = Depends(principal)
    ) -> Response:
        kind, _, name = checkpoint_id.partition("/")
        if kind not in ("weights", "sampler_weights") or not name:
            raise BadRequestError(f"'{checkpoint_id}' is not weights/NAME or sampler_weights/NAME.")
        await svc().delete_checkpoint(p, run_id, kind, name)
        return _json({})

    if fast_routes is not None:
        for path, endpoint in (
            ("/forward_backward", forward_backward),
            ("/optim_step", optim_step),
            ("/asample", asample),
            ("/retrieve_future", retrieve_future),
        ):
            fast_routes[("POST", PREFIX + path)] = _fast(endpoint, principal)

    return r


__all__ = ["PREFIX", "router"]
