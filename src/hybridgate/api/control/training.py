"""The plain JSON training API, /v1/training/runs: LoRA runs for callers who do not use Tinker's SDK.

Each call waits for its step and answers with the result (`hybridgate.training.Client` wraps it). Errors
are OpenAI-shaped: 401 no key, 403 another key's run, 404 unknown run, 400 a bad field (named) or an
unsupported base model or an optim_step with no gradients, 413 an oversized batch, 429 budget_exceeded.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from fastapi import APIRouter, Depends, Request

from hybridgate.auth import Principal
from hybridgate.protocol import (
    BadRequestError,
    BudgetExceededError,
    GatewayError,
    PayloadTooLargeError,
    UpstreamUnavailableError,
)
from hybridgate.protocol._control import ErrorResponse
from hybridgate.training._service import StepError, TrainingService, check_name, parse_tinker_path
from hybridgate.training._worker import WorkerError

if TYPE_CHECKING:
    from hybridgate.api.app import Gateway

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why}
    for code, why in (
        (400, "Invalid request: a bad field, an unsupported base model, optim_step with no gradients"),
        (403, "The run belongs to another API key"),
        (404, "No such run"),
        (413, "Batch or body too large"),
        (429, "Budget exceeded"),
    )
}
_TARGETS = ("attn", "mlp", "unembed")


def _http(e: StepError | WorkerError) -> GatewayError:
    """A refused or failed step as the HTTP error a client can act on."""
    if isinstance(e, StepError) and e.budget:
        return BudgetExceededError(e.message)
    if e.message.startswith("batch too large"):
        return PayloadTooLargeError(e.message)
    if e.category == "user":
        return BadRequestError(e.message)
    return UpstreamUnavailableError(f"The training worker failed: {e.message}")


async def _step(fn: Callable[[], Awaitable[Any]]) -> Any:
    try:
        return await fn()
    except (StepError, WorkerError) as e:
        raise _http(e) from None


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


def _num(
    data: dict[str, Any], name: str, default: float | None, lo: float, hi: float, *, integer: bool = False
) -> Any:
    v = data.get(name, default)
    if v is None:
        return None
    ok = isinstance(v, int) if integer else isinstance(v, int | float)
    # compared before any float(): an integer past a double's range must be a 400, not an OverflowError
    if isinstance(v, bool) or not ok or not lo <= v <= hi or not math.isfinite(v):
        kind = "an integer" if integer else "a number"
        raise BadRequestError(f"Invalid value for '{name}': give {kind} from {lo:g} to {hi:g}.", param=name)
    return v


def _examples(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Validate a batch: each example is {messages}, {text} or {tokens[, weights]}; errors name the field."""
    exs = data.get("examples")
    if not isinstance(exs, list) or not exs:
        raise BadRequestError("'examples' must be a non-empty list.", param="examples")
    out: list[dict[str, Any]] = []
    for i, ex in enumerate(exs):
        where = f"examples[{i}]"
        if not isinstance(ex, dict):
            raise BadRequestError(f"{where} must be an object with messages, text or tokens.", param=where)
        kinds = [k for k in ("messages", "text", "tokens") if k in ex]
        if len(kinds) != 1:
            raise BadRequestError(f"{where} must have exactly one of messages, text or tokens.", param=where)
        if "messages" in ex:
            msgs = ex["messages"]
            if not isinstance(msgs, list) or not msgs:
                raise BadRequestError(
                    f"{where}.messages must be a non-empty list.", param=f"{where}.messages"
                )
            for j, m in enumerate(msgs):
                at = f"{where}.messages[{j}]"
                if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant"):
                    raise BadRequestError(f"{at}.role must be system, user or assistant.", param=f"{at}.role")
                if not isinstance(m.get("content"), str):
                    raise BadRequestError(f"{at}.content must be a string.", param=f"{at}.content")
            if not any(m["role"] == "assistant" for m in msgs):
                raise BadRequestError(
                    f"{where}.messages has no assistant turn: the loss is on assistant turns.",
                    param=f"{where}.messages",
                )
            out.append({"messages": [{"role": m["role"], "content": m["content"]} for m in msgs]})
        elif "text" in ex:
            if not isinstance(ex["text"], str) or not ex["text"]:
                raise BadRequestError(f"{where}.text must be a non-empty string.", param=f"{where}.text")
            out.append({"text": ex["text"]})
        else:
            toks = ex["tokens"]
            if not isinstance(toks, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) for t in toks
            ):
                raise BadRequestError(f"{where}.tokens must be a list of integers.", param=f"{where}.tokens")
            w = ex.get("weights")
            if w is not None and (
                not isinstance(w, list)
                or len(w) != len(toks)
                or not all(
                    isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in w
                )
            ):
                raise BadRequestError(
                    f"{where}.weights must be a list of {len(toks)} numbers (one per token).",
                    param=f"{where}.weights",
                )
            out.append({"tokens": toks, **({"weights": w} if w is not None else {})})
    return out


def _run_json(row: Any, ckpts: list[Any], served: list[str]) -> dict[str, Any]:
    return {
        "id": row.id,
        "object": "training.run",
        "api": row.api,
        "base_model": row.base_model,
        "lora": orjson.loads(row.lora),
        "status": row.status,
        "steps": row.steps,
        "tokens": {"train": row.train_tokens, "prefill": row.prefill_tokens, "sampled": row.sample_tokens},
        "gpu_seconds": round(row.gpu_seconds, 3),
        "cost_usd": round(row.cost_usd, 8),
        "loss_history": orjson.loads(row.loss_history),
        "checkpoints": [
            {
                "id": c.checkpoint_id,
                "kind": {"weights": "state", "sampler_weights": "adapter", "merged": "merged"}[c.kind],
                "tinker_path": f"tinker://{c.run_id}/{c.checkpoint_id}" if c.kind != "merged" else None,
                "size_bytes": c.size_bytes,
                "created_at": c.created_at,
            }
            for c in ckpts
        ],
        "served_as": served,
        "created_at": row.created_at,
        "last_request_at": row.last_request_at,
    }


def router(gw: Gateway, principal: Callable[..., Awaitable[Principal]]) -> APIRouter:
    r = APIRouter(prefix="/v1/training", tags=["training"])

    def svc() -> TrainingService:
        return gw.training_service()

    async def show(p: Principal, run_id: str) -> dict[str, Any]:
        s = svc()
        row = await s.run_row(p, run_id)
        served = [m for m, rid in s.served.items() if rid == run_id]
        return _run_json(row, await s.checkpoints(p, run_id), served)

    async def loaded(p: Principal, run_id: str) -> Any:
        s = svc()
        await s.run_row(p, run_id)  # 404 / 403 first
        try:
            return s.run(p, run_id)
        except StepError as e:
            raise BadRequestError(e.message, code="run_not_loaded") from None

    @r.post("/runs", summary="Create a LoRA training run", responses=_ERRORS)
    async def create(request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        base = data.get("base_model")
        if not isinstance(base, str) or not base:
            raise BadRequestError("Missing required parameter: 'base_model'.", param="base_model")
        s.model_path(base)
        lo = data.get("lora") or {}
        if not isinstance(lo, dict):
            raise BadRequestError("'lora' must be an object.", param="lora")
        targets = lo.get("target_modules", list(_TARGETS))
        if not isinstance(targets, list) or not targets or any(t not in _TARGETS for t in targets):
            raise BadRequestError(
                "lora.target_modules must be a non-empty list of attn, mlp and unembed.",
                param="lora.target_modules",
            )
        lora = {
            "rank": _num(lo, "rank", 8, 1, 512, integer=True),
            "alpha": _num(lo, "alpha", s.config.lora_alpha, 1e-6, 1e6),
            "dropout": _num(lo, "dropout", 0.0, 0, 0.9),
            **{f"train_{t}": t in targets for t in _TARGETS},
        }
        seed = _num(data, "seed", None, 0, 2**31 - 1, integer=True)
        run_id = "run_" + uuid.uuid4().hex[:16]
        src = data.get("from_checkpoint")
        folder = None
        if src is not None:
            src_run, kind, name = parse_tinker_path(src if isinstance(src, str) else "")
            try:
                await s.checkpoint(p, src_run, kind, name)
            except StepError as e:
                raise BadRequestError(e.message, param="from_checkpoint") from None
            folder = (await _step(lambda: s.fetch(src_run, kind, name)), kind == "weights")
        await _step(lambda: s.create_run(p, run_id, "json", base, lora, seed, None, from_folder=folder))
        return await show(p, run_id)

    @r.get("/runs", summary="Your training runs")
    async def list_runs(p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        rows, _ = await s.list_runs(p, 10_000, 0)
        return {
            "object": "list",
            "data": [_run_json(row, await s.checkpoints(p, row.id), []) for row in rows],
        }

    @r.get("/runs/{run_id}", summary="A run: status, steps, loss history, tokens, cost", responses=_ERRORS)
    async def get_run(run_id: str, p: Principal = Depends(principal)) -> dict[str, Any]:
        return await show(p, run_id)

    @r.delete(
        "/runs/{run_id}", summary="Delete a run (its checkpoints stay listed under it)", responses=_ERRORS
    )
    async def delete_run(run_id: str, p: Principal = Depends(principal)) -> dict[str, Any]:
        await svc().delete_run(p, run_id)
        return {"id": run_id, "object": "training.run", "deleted": True}

    @r.post("/runs/{run_id}/forward_backward", summary="Accumulate gradients on a batch", responses=_ERRORS)
    async def forward_backward(
        run_id: str, request: Request, p: Principal = Depends(principal)
    ) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        run = await loaded(p, run_id)
        examples = _examples(data)
        if len(examples) > s.config.max_batch_datums:
            raise PayloadTooLargeError(
                f"batch too large: {len(examples)} examples; at most {s.config.max_batch_datums} per call"
            )
        forward_only = data.get("forward_only", False)
        want_lps = data.get("return_logprobs", False)
        for name, v in (("forward_only", forward_only), ("return_logprobs", want_lps)):
            if not isinstance(v, bool):
                raise BadRequestError(f"'{name}' must be true or false.", param=name)
        datums = await _step(lambda: run.worker.call("render", examples=examples))
        wait = await _step(lambda: _now(lambda: s.submit_forward_backward(p, run, datums, forward_only)))
        res = await _step(wait)
        weights = sum(sum(d["weights"]) for d in datums)
        extra = {"logprobs": res["logprobs"], "tokens_in": [d["tokens"] for d in datums]} if want_lps else {}
        return {
            **extra,
            "loss_sum": res["loss_sum"],
            "loss_mean": res["loss_sum"] / weights if weights else res["loss_sum"],
            "tokens": res["tokens"],
            "examples": len(datums),
            "cost_usd": round(res["cost_usd"], 8),
        }

    @r.post("/runs/{run_id}/optim_step", summary="Apply the accumulated gradients (AdamW)", responses=_ERRORS)
    async def optim_step(run_id: str, request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        run = await loaded(p, run_id)
        adam = {
            "learning_rate": _num(data, "learning_rate", 1e-4, 0, 10),
            "beta1": _num(data, "beta1", 0.9, 0, 1),
            "beta2": _num(data, "beta2", 0.95, 0, 1),
            "eps": _num(data, "eps", 1e-12, 0, 1),
            "weight_decay": _num(data, "weight_decay", 0.0, 0, 10),
            "grad_clip_norm": _num(data, "grad_clip_norm", 0.0, 0, 1e6),
        }
        wait = await _step(lambda: _now(lambda: s.submit_optim_step(p, run, adam)))
        res = await _step(wait)
        return {"step": run.steps, "grad_norm": res["grad_norm"]}

    @r.post("/runs/{run_id}/sample", summary="Sample from the run's current weights", responses=_ERRORS)
    async def sample(run_id: str, request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        run = await loaded(p, run_id)
        msgs, text = data.get("messages"), data.get("prompt")
        if (msgs is None) == (text is None):
            raise BadRequestError("Give exactly one of 'prompt' (text) or 'messages'.", param="prompt")
        if msgs is not None:
            _examples({"examples": [{"messages": [*msgs, {"role": "assistant", "content": ""}]}]})
        elif not isinstance(text, str):
            raise BadRequestError("'prompt' must be a string.", param="prompt")
        stop = data.get("stop")
        if stop is not None and not (
            isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(x, str) for x in stop))
        ):
            raise BadRequestError("'stop' must be a string or a list of strings.", param="stop")
        params = {
            "max_tokens": _num(data, "max_tokens", 64, 1, s.config.max_sample_tokens, integer=True),
            "temperature": _num(data, "temperature", 1.0, 0, 10),
            "top_k": _num(data, "top_k", -1, -1, 1e9, integer=True),
            "top_p": _num(data, "top_p", 1.0, 0, 1),
            "seed": _num(data, "seed", None, 0, 2**31 - 1, integer=True),
            "stop": stop,
        }
        n = _num(data, "num_samples", 1, 1, 64, integer=True)
        prompt = await _step(lambda: run.worker.call("chat_prompt", messages=msgs, text=text))
        wait = await _step(
            lambda: _now(
                lambda: s.submit_sample(
                    p, run.worker, run.id, run.id, run.base_model, prompt, n, params, False
                )
            )
        )
        res = await _step(wait)
        texts = await _step(lambda: run.worker.call("decode", seqs=[x["tokens"] for x in res["sequences"]]))
        return {
            "samples": [{**x, "text": t} for x, t in zip(res["sequences"], texts, strict=True)],
            "prompt_tokens": len(prompt),
            "cost_usd": round(res["cost_usd"], 8),
        }

    @r.post(
        "/runs/{run_id}/save",
        summary="Save the adapter, the training state, or merged weights",
        responses=_ERRORS,
    )
    async def save(run_id: str, request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        run = await loaded(p, run_id)
        what = data.get("kind", "adapter")
        kinds = {"adapter": "sampler_weights", "state": "weights", "merged": "merged"}
        if what not in kinds:
            raise BadRequestError("'kind' must be adapter, state or merged.", param="kind")
        name = data.get("name") or f"step-{run.steps}"
        if not isinstance(name, str):
            raise BadRequestError("'name' must be a string.", param="name")
        check_name(name, "name")
        res = await _step(
            lambda: s.save(
                p, run, kinds[what], name, optimizer=what == "state", overwrite=bool(data.get("overwrite"))
            )
        )
        return {
            "id": res["checkpoint_id"],
            "kind": what,
            "path": res["folder"],
            "uri": res["uri"],
            "tinker_path": res["tinker_path"] if what != "merged" else None,
            "size_bytes": res["size_bytes"],
        }

    @r.post(
        "/runs/{run_id}/serve",
        summary="Serve a saved adapter as a model of /v1/chat/completions",
        responses=_ERRORS,
    )
    async def serve(run_id: str, request: Request, p: Principal = Depends(principal)) -> dict[str, Any]:
        s = svc()
        data = await _body(request, s.config.max_body_bytes)
        await s.run_row(p, run_id)
        name = data.get("checkpoint")
        ckpts = [c for c in await s.checkpoints(p, run_id) if c.kind in ("sampler_weights", "weights")]
        if name is not None:
            ckpts = [c for c in ckpts if c.name == name]
        if not ckpts:
            raise BadRequestError(
                f"Run '{run_id}' has no saved adapter{' named ' + repr(name) if name else ''}; save one first "
                "(POST .../save with kind adapter).",
                param="checkpoint",
            )
        c = ckpts[-1]
        model = data.get("model") or f"{run_id}-{c.name}"
        if not isinstance(model, str) or not model.strip():
            raise BadRequestError("'model' must be a non-empty string.", param="model")
        from hybridgate.training._serve import serve_checkpoint

        await _step(lambda: serve_checkpoint(gw, p, run_id, c.kind, c.name, model))
        return {
            "model": model,
            "run_id": run_id,
            "checkpoint": c.checkpoint_id,
            "object": "training.served_model",
        }

    return r


async def _now(fn: Callable[[], Any]) -> Any:
    return fn()


__all__ = ["router"]
