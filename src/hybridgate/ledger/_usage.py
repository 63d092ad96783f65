"""Usage reports from the ledger: requests, usage units and cost grouped by backend, model, key, operation or day."""

from __future__ import annotations

from typing import Any

from sqlalchemy import distinct, func, select

from hybridgate.store import Store, ledger

GROUPS = ("backend", "model", "key", "day", "operation")


async def usage_report(
    store: Store,
    *,
    group_by: str = "model",
    since: float | None = None,
    until: float | None = None,
    key_id: str | None = None,
) -> dict[str, Any]:
    """The /v1/usage answer; `key_id` restricts it to one key's rows (what a non-master key sees)."""
    if group_by not in GROUPS:
        raise ValueError(f"group_by must be one of {', '.join(GROUPS)}")
    c = ledger.c
    cols = {
        "backend": [c.backend],
        "model": [c.model],
        "key": [c.key_id, c.key_name],
        "day": [c.day],
        "operation": [c.operation],
    }[group_by]
    cost = func.coalesce(func.sum(c.cost_usd), 0.0)
    q = select(
        *cols,
        func.count(distinct(c.request_id)).label("requests"),
        func.count().label("attempts"),
        func.coalesce(func.sum(c.input_tokens), 0).label("input_tokens"),
        func.coalesce(func.sum(c.output_tokens), 0).label("output_tokens"),
        func.coalesce(func.sum(c.images), 0).label("images"),
        func.coalesce(func.sum(c.gpu_seconds), 0.0).label("gpu_seconds"),
        func.coalesce(func.sum(c.training_tokens), 0).label("training_tokens"),
        cost.label("cost_usd"),
    ).group_by(*cols)
    if since is not None:
        q = q.where(c.ts >= since)
    if until is not None:
        q = q.where(c.ts < until)
    if key_id is not None:
        q = q.where(c.key_id == key_id)
    q = q.order_by(cols[0]) if group_by == "day" else q.order_by(cost.desc(), cols[0])
    async with store.engine.connect() as conn:
        rows = (await conn.execute(q)).all()
    data = []
    for r in rows:
        item: dict[str, Any] = {
            "group": r.key_name if group_by == "key" else r[0],
            "requests": int(r.requests),
            "attempts": int(r.attempts),
            "input_tokens": int(r.input_tokens),
            "output_tokens": int(r.output_tokens),
            "images": int(r.images),
            "gpu_seconds": round(float(r.gpu_seconds), 3),
            "training_tokens": int(r.training_tokens),
            "cost_usd": round(float(r.cost_usd), 8),
        }
        if group_by == "key":
            item["key_id"] = r.key_id
        data.append(item)
    return {
        "object": "list",
        "group_by": group_by,
        "from": since,
        "to": until,
        "data": data,
        "total_cost_usd": round(sum(float(r.cost_usd) for r in rows), 8),
    }


__all__ = ["GROUPS", "usage_report"]
