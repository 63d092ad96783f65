"""`hybridgate.training.Client`: a small Python client for the plain JSON training API (/v1/training)."""

from __future__ import annotations

from typing import Any

import httpx


class TrainingAPIError(Exception):
    """An error answer: `status` (400, 401, 403, 404, 413, 429...), `code` and `param` as the gateway sent."""

    def __init__(self, status: int, message: str, code: str | None = None, param: str | None = None) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.code = code
        self.param = param


class Client:
    """LoRA training runs on a hybridgate gateway.

    >>> c = Client("http://127.0.0.1:8080", api_key="hg-...")
    >>> run = c.create_run("gemma-3-270m", rank=8)
    >>> c.forward_backward(run["id"], [{"messages": [{"role": "user", "content": "Hi"},
    ...                                              {"role": "assistant", "content": "Hello!"}]}])
    >>> c.optim_step(run["id"], learning_rate=1e-4)
    """

    def __init__(self, base_url: str, api_key: str | None = None, *, timeout: float = 600.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(
            base_url=base_url.rstrip("/") + "/v1/training", headers=headers, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        r = self._http.request(method, path, json=body)
        if r.status_code >= 400:
            try:
                err = r.json()["error"]
            except Exception:
                raise TrainingAPIError(r.status_code, r.text[:500]) from None
            raise TrainingAPIError(r.status_code, err.get("message", ""), err.get("code"), err.get("param"))
        return r.json()

    # --- runs -----------------------------------------------------------------------------------
    def create_run(
        self,
        base_model: str,
        *,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        target_modules: list[str] | None = None,
        seed: int | None = None,
        from_checkpoint: str | None = None,
    ) -> dict[str, Any]:
        """A new run; `target_modules` from attn, mlp, unembed (default all); `from_checkpoint` a
        tinker:// path of a saved state (continues with its optimizer) or adapter."""
        lora: dict[str, Any] = {"rank": rank, "dropout": dropout}
        if alpha is not None:
            lora["alpha"] = alpha
        if target_modules is not None:
            lora["target_modules"] = target_modules
        body: dict[str, Any] = {"base_model": base_model, "lora": lora}
        if seed is not None:
            body["seed"] = seed
        if from_checkpoint is not None:
            body["from_checkpoint"] = from_checkpoint
        return dict(self._call("POST", "/runs", body))

    def get_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/runs/{run_id}"))

    def list_runs(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/runs")["data"])

    def delete_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/runs/{run_id}"))

    # --- steps ----------------------------------------------------------------------------------
    def forward_backward(
        self,
        run_id: str,
        examples: list[dict[str, Any]],
        *,
        forward_only: bool = False,
        logprobs: bool = False,
    ) -> dict[str, Any]:
        """Accumulate gradients on examples: {"messages": [...]}, {"text": "..."} or {"tokens": [...]}."""
        body = {"examples": examples, "forward_only": forward_only, "return_logprobs": logprobs}
        return dict(self._call("POST", f"/runs/{run_id}/forward_backward", body))

    def optim_step(self, run_id: str, **adam: float) -> dict[str, Any]:
        """learning_rate, beta1, beta2, eps, weight_decay, grad_clip_norm (AdamW)."""
        return dict(self._call("POST", f"/runs/{run_id}/optim_step", dict(adam)))

    def sample(
        self,
        run_id: str,
        *,
        prompt: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        **params: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = dict(params)
        if prompt is not None:
            body["prompt"] = prompt
        if messages is not None:
            body["messages"] = messages
        return dict(self._call("POST", f"/runs/{run_id}/sample", body))

    def save(self, run_id: str, kind: str = "adapter", name: str | None = None) -> dict[str, Any]:
        """kind: adapter (LoRA weights), state (weights and optimizer, to continue), merged (a whole model)."""
        body: dict[str, Any] = {"kind": kind}
        if name is not None:
            body["name"] = name
        return dict(self._call("POST", f"/runs/{run_id}/save", body))

    def serve(
        self, run_id: str, *, checkpoint: str | None = None, model: str | None = None
    ) -> dict[str, Any]:
        """Serve a saved adapter as a model of /v1/chat/completions; returns its model name."""
        body: dict[str, Any] = {}
        if checkpoint is not None:
            body["checkpoint"] = checkpoint
        if model is not None:
            body["model"] = model
        return dict(self._call("POST", f"/runs/{run_id}/serve", body))


__all__ = ["Client", "TrainingAPIError"]
