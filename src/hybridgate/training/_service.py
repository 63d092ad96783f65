"""Training runs without HTTP: workers per base model, runs, futures, checkpoints, costs and budgets.

Both the Tinker-compatible API and the plain JSON API call this. A step is submitted in two halves: the
synchronous half (checks, budget reservation, the command queued to the model's worker) runs before the
request handler awaits anything, so commands reach the worker in the order requests arrived; the rest
(waiting for the worker, recording the result, cost and ledger row) runs in a task. Futures and their
results are written to the database, so a result outlives a restart; work in flight at a crash is marked
failed at the next start, and saved checkpoints stay usable.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Executable, Update, bindparam, delete, insert, select, update

from hybridgate.protocol import (
    BadRequestError,
    GatewayError,
    NotFoundError,
    PermissionDeniedError,
    UpstreamUnavailableError,
)
from hybridgate.storage import StorageError
from hybridgate.training._checkpoints import CheckpointError, CheckpointFiles, CheckpointStore
from hybridgate.training._config import TrainingConfig
from hybridgate.training._tables import (
    sampling_sessions,
    training_checkpoints,
    training_futures,
    training_runs,
    training_sessions,
)
from hybridgate.training._worker import Worker, WorkerError

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncConnection

    from hybridgate.auth import Principal
    from hybridgate.ledger import Ledger
    from hybridgate.storage import Storage
    from hybridgate.store import Store

log = logging.getLogger("hybridgate.training")

JSON = "application/json"
PROTO = "application/x-protobuf"
_KEEP_FUTURES = 5000


# The statements every step runs, built once with bound parameters: building and hashing a fresh
# statement cost as much CPU as the database work itself.
_F = training_futures.c
_NEW_FUTURE = insert(training_futures).values(
    request_id=bindparam("request_id"),
    key_id=bindparam("key_id"),
    run_id=bindparam("run_id"),
    dedupe=bindparam("dedupe"),
    type=bindparam("type"),
    status="pending",
    created_at=bindparam("created_at"),
)
_FINISH_FUTURE = (
    update(training_futures)
    .where(_F.request_id == bindparam("rid"))
    .values(
        status=bindparam("status"),
        content_type=bindparam("content_type"),
        payload=bindparam("payload"),
        error=bindparam("error"),
        category=bindparam("category"),
        finished_at=bindparam("finished_at"),
    )
)
_R = training_runs.c
_RUN_COUNTERS: dict[str, Any] = {
    "train_tokens": _R.train_tokens + bindparam("train", type_=_R.train_tokens.type),
    "prefill_tokens": _R.prefill_tokens + bindparam("prefill", type_=_R.prefill_tokens.type),
    "sample_tokens": _R.sample_tokens + bindparam("sampled", type_=_R.sample_tokens.type),
    "gpu_seconds": _R.gpu_seconds + bindparam("seconds", type_=_R.gpu_seconds.type),
    "cost_usd": _R.cost_usd + bindparam("cost", type_=_R.cost_usd.type),
    "last_request_at": bindparam("now", type_=_R.last_request_at.type),
}
# settle's UPDATE of the run, by the extra columns it sets: none, the step count, the loss history
_SETTLE_RUN: dict[tuple[str, ...], Update] = {
    extra: update(training_runs)
    .where(_R.id == bindparam("run_id"))
    .values(**_RUN_COUNTERS, **{c: bindparam(c) for c in extra})
    for extra in ((), ("steps",), ("loss_history",))
}


def _batched(
    writes: list[tuple[Executable, dict[str, Any]]],
) -> list[tuple[Executable, list[dict[str, Any]]]]:
    """Queued rows as one executemany per statement, statements in the order they first appear: each
    statement costs a round trip through the database driver's thread, which cost more than SQLite's work.

    Reordering across statements is safe for what is queued (`_write_soon`): a future's row is inserted
    before it is finished, and every later statement of a kind follows every earlier one of it; the runs'
    counters are added, and `steps` and `loss_history` are each set by one statement only."""
    groups: dict[int, tuple[Executable, list[dict[str, Any]]]] = {}
    for stmt, params in writes:
        g = groups.get(id(stmt))
        if g is None:
            groups[id(stmt)] = (stmt, [params])
        else:
            g[1].append(params)
    return list(groups.values())


class StepError(Exception):
    """A step refused or failed: category "user" (the request is wrong, or over budget) or "server"."""

    def __init__(self, message: str, category: str = "user", *, budget: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.budget = budget


@dataclass
class FutureRec:
    request_id: str
    type: str
    key_id: str | None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    status: str = "pending"
    content_type: str | None = None
    payload: bytes | None = None
    error: str | None = None
    category: str | None = None
    dedupe: str | None = None  # its key in TrainingService._dedupe


@dataclass
class Run:
    """A run whose adapter lives in a worker now."""

    id: str
    key_id: str | None
    key_name: str
    base_model: str
    lora: dict[str, Any]
    worker: Worker
    steps: int = 0
    # What `training_runs.loss_history` holds (the row is written fresh when the run is created).
    loss_history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Sampler:
    id: str
    key_id: str | None
    base_model: str
    adapter: str | None  # the worker's name for the adapter sampled from; None: the base model
    model_path: str | None = None


@dataclass
class Usage:
    prefill: int = 0
    sampled: int = 0
    train: int = 0
    seconds: float = 0.0


def parse_tinker_path(path: str) -> tuple[str, str, str]:
    """tinker://RUN/KIND/NAME -> (run, kind, name); BadRequestError when it is not one."""
    if not isinstance(path, str) or not path.startswith("tinker://"):
        raise BadRequestError(f"'{path}' is not a tinker:// checkpoint path", param="path")
    parts = path[len("tinker://") :].split("/")
    if len(parts) != 3 or parts[1] not in ("weights", "sampler_weights") or not parts[0] or not parts[2]:
        raise BadRequestError(
            f"'{path}' is not tinker://RUN/weights/NAME or tinker://RUN/sampler_weights/NAME", param="path"
        )
    return parts[0], parts[1], parts[2]


def check_name(name: str, param: str = "path") -> str:
    if not name or len(name) > 120 or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in name):
        raise BadRequestError(
            f"checkpoint name {name!r} must be 1-120 characters of letters, digits, '-', '_' or '.'",
            param=param,
        )
    return name


class TrainingService:
    def __init__(self, config: TrainingConfig, store: Store, ledger: Ledger, storage: Storage) -> None:
        self.config = config
        self.store = store
        self.ledger = ledger
        # Local folders (the workers' side, a cache) and the storage layer, where checkpoints live
        self.files = CheckpointStore(storage, CheckpointFiles(config.data_dir))
        self.workers: dict[str, Worker] = {}
        self._starting: dict[str, asyncio.Task[Worker]] = {}
        self.runs: dict[str, Run] = {}
        self.samplers: dict[str, Sampler] = {}
        self.futures: collections.OrderedDict[str, FutureRec] = collections.OrderedDict()
        self._dedupe: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        # Steps' rows wait here (in order) to be written together, at most `write_delay_s` later
        # (`_write_soon`); every other write of training tables goes after them (`_tx`).
        self._unwritten: list[tuple[Executable, dict[str, Any]]] = []
        self._flush_timer: asyncio.TimerHandle | None = None
        # Writes take turns here rather than in SQLite's busy handler, which sleeps a millisecond or more
        # when two transactions want the write lock at once.
        self._write_turn = asyncio.Lock()
        self.served: dict[str, str] = {}  # public model name -> run id, for the data plane

    # --- lifespan -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Mark what a previous process left in flight: its futures failed, its runs interrupted."""
        now = time.time()
        async with self.store.engine.begin() as conn:
            await conn.execute(
                update(training_futures)
                .where(training_futures.c.status == "pending")
                .values(
                    status="failed",
                    category="server",
                    error="the gateway restarted while this request ran; its result is lost. Saved "
                    "checkpoints are intact: continue from the last saved state",
                    finished_at=now,
                )
            )
            await conn.execute(
                update(training_runs).where(training_runs.c.status == "active").values(status="interrupted")
            )

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        try:
            await self.flush()
        except Exception:
            log.exception("training: %d rows could not be written at shutdown", len(self._unwritten))
        for t in self._starting.values():
            t.cancel()
        await asyncio.gather(*self._starting.values(), return_exceptions=True)
        await asyncio.gather(*(w.close() for w in self.workers.values()), return_exceptions=True)
        self.workers.clear()

    # --- models and workers ---------------------------------------------------------------------
    def model_path(self, name: str) -> str:
        path = self.config.models.get(name)
        if path is None:
            raise BadRequestError(
                f"base model '{name}' is not available for training here; this gateway trains: "
                f"{', '.join(self.config.models) or '(none: set training.models in the config)'}",
                param="base_model",
                code="unsupported_base_model",
            )
        if path == "packaged":
            from hybridgate.backends.llamacpp._model_file import ModelFileError, packaged_model_path

            try:
                return str(packaged_model_path())
            except ModelFileError as e:
                raise BadRequestError(f"base model '{name}': {e}", param="base_model") from None
        return str(Path(path).expanduser())

    async def worker(self, model: str) -> Worker:
        w = self.workers.get(model)
        if w is not None and w.alive:
            return w
        task = self._starting.get(model)
        if task is None:
            path = self.model_path(model)
            new = Worker(
                model,
                path,
                self.config.device,
                str(self.files.local_root),
                self.config.threads,
                self.config.cache_dir,
            )

            async def start() -> Worker:
                await new.start()
                return new

            task = self._starting[model] = asyncio.ensure_future(start())
        try:
            w = await asyncio.shield(task)
        except WorkerError as e:
            raise StepError(e.message, "server") from None
        finally:
            if self._starting.get(model) is task and task.done():
                del self._starting[model]
        old = self.workers.get(model)
        if old is not w:
            # A worker that died took its adapters with it: those runs are interrupted.
            for rid in [r.id for r in self.runs.values() if r.worker is old]:
                del self.runs[rid]
            self.samplers = {k: s for k, s in self.samplers.items() if s.base_model != model}
            self.workers[model] = w
        return w

    # --- futures --------------------------------------------------------------------------------
    def seen(self, p: Principal, dedupe: str | None) -> FutureRec | None:
        """The future of a submit this key made before under `dedupe` (the SDK resends a submit whose
        answer it lost), while it is still kept; checked before a step is queued, so it runs once."""
        if dedupe is None:
            return None
        rid = self._dedupe.get(f"{p.key_id}:{dedupe}")
        return None if rid is None else self.futures.get(rid)

    async def new_future(
        self, p: Principal, type_: str, run_id: str | None, dedupe: str | None
    ) -> tuple[FutureRec, bool]:
        """A future for a submit; (existing one, False) when this key sent the same submit before (a retry).

        `dedupe` names the submit within the key (run and sequence number): another key sending the same
        name gets its own future, so it cannot stand in for the owner's step."""
        prior = self.seen(p, dedupe)
        if prior is not None:
            return prior, False
        rec = FutureRec(uuid.uuid4().hex, type_, p.key_id)
        self.futures[rec.request_id] = rec
        if dedupe is not None:
            rec.dedupe = f"{p.key_id}:{dedupe}"
            self._dedupe[rec.dedupe] = rec.request_id
        while len(self.futures) > _KEEP_FUTURES:
            old_id, old = self.futures.popitem(last=False)
            if not old.done.is_set():  # still running: keep it
                self.futures[old_id] = old
                self.futures.move_to_end(old_id, last=False)
                break
            if old.dedupe is not None and self._dedupe.get(old.dedupe) == old_id:
                del self._dedupe[old.dedupe]
        new = {
            "request_id": rec.request_id,
            "key_id": p.key_id,
            "run_id": run_id,
            "dedupe": dedupe,
            "type": type_,
            "created_at": time.time(),
        }
        self._write_soon([(_NEW_FUTURE, new)])
        return rec, True

    def run_future(self, rec: FutureRec, work: Awaitable[tuple[str, bytes]]) -> None:
        """Finish `rec` with what `work` returns (content type, payload), or fail it with its error."""

        async def go() -> None:
            try:
                ctype, payload = await work
                rec.status, rec.content_type, rec.payload = "done", ctype, payload
            except StepError as e:
                rec.status, rec.error, rec.category = "failed", e.message, e.category
            except WorkerError as e:
                rec.status, rec.error, rec.category = "failed", e.message, e.category
            except GatewayError as e:
                rec.status, rec.error, rec.category = "failed", e.message, "user"
            except Exception as e:
                log.exception("training future %s failed", rec.request_id)
                rec.status, rec.error, rec.category = "failed", f"{type(e).__name__}: {e}", "server"
            finish = {
                "rid": rec.request_id,
                "status": rec.status,
                "content_type": rec.content_type,
                "payload": rec.payload,
                "error": rec.error,
                "category": rec.category,
                "finished_at": time.time(),
            }
            self._write_soon([(_FINISH_FUTURE, finish)])  # after the step's own rows, queued by settle
            rec.done.set()

        t = asyncio.ensure_future(go())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    def fail_future(self, rec: FutureRec, message: str, category: str = "user") -> None:
        async def fail() -> tuple[str, bytes]:
            raise StepError(message, category)

        self.run_future(rec, fail())

    async def retrieve(self, p: Principal, request_id: str, wait_s: float) -> FutureRec | None:
        """The future, waited on up to `wait_s`; None when no such future is the caller's."""
        rec = self.futures.get(request_id)
        if rec is not None:
            if rec.key_id != p.key_id and not p.is_master:
                return None
            if not rec.done.is_set():
                try:
                    async with asyncio.timeout(wait_s):
                        await rec.done.wait()
                except TimeoutError:
                    pass
            return rec
        await self.flush()
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(training_futures).where(training_futures.c.request_id == request_id)
                )
            ).first()
        if row is None or (row.key_id != p.key_id and not p.is_master):
            return None
        rec = FutureRec(row.request_id, row.type, row.key_id, status=row.status)
        rec.content_type, rec.payload, rec.error, rec.category = (
            row.content_type,
            row.payload,
            row.error,
            row.category,
        )
        if rec.status != "pending":
            rec.done.set()
        return rec

    # --- money ----------------------------------------------------------------------------------
    def price(self, u: Usage) -> float:
        pr = self.config.price
        return (
            u.prefill * pr.prefill_per_mtok + u.sampled * pr.sample_per_mtok + u.train * pr.train_per_mtok
        ) / 1e6 + u.seconds * pr.per_gpu_second

    def reserve(self, p: Principal, worst: Usage) -> int | None:
        """Reserve a step's worst case against the key's budget; StepError(budget) when it does not fit."""
        if p.budget_usd is None or p.key_id is None:
            return None
        if self.config.price.per_gpu_second:
            worst = Usage(worst.prefill, worst.sampled, worst.train, self.config.reserve_seconds)
        amount = self.price(worst)
        if not amount:
            return None
        book = self.ledger.book
        rid = book.try_reserve(p.key_id, p.budget_usd, amount, ttl_s=self.config.reserve_seconds + 300)
        if rid is None:
            left = max(0.0, book.headroom(p.key_id, p.budget_usd))
            raise StepError(
                f"budget exceeded: API key '{p.name}' has ${left:.6f} left of its ${p.budget_usd:g} budget "
                f"and this step may cost up to ${amount:.6f}",
                "user",
                budget=True,
            )
        return rid

    # --- writing --------------------------------------------------------------------------------
    def _write_soon(self, writes: list[tuple[Executable, dict[str, Any]]]) -> None:
        """Queue statements to be written within `write_delay_s`, in one transaction with what else waits.

        A step's answer does not wait for its rows: the client has the result from memory, and a tiny
        model's step (tens of ms) cannot afford a commit of its own on the event loop (benchmarks/README.md,
        training API). If the gateway dies in between, the rows of that moment are lost, as the step's
        in-memory state is: on restart the run is "interrupted" and continues from its last saved
        checkpoint, whose rows were written before `save` answered (`_tx`)."""
        self._unwritten.extend(writes)
        if self._flush_timer is None:
            loop = asyncio.get_running_loop()
            self._flush_timer = loop.call_later(self.config.write_delay_s, self._flush_in_background)

    def _flush_in_background(self) -> None:
        self._flush_timer = None
        t = asyncio.ensure_future(self._background_flush())
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _background_flush(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("training: writing %d rows failed; trying again in 1 s", len(self._unwritten))

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[AsyncConnection]:
        """A transaction that first writes the queued rows, so every write keeps its order; if it fails,
        the rows stay queued."""
        async with self._write_turn:
            writes, self._unwritten = self._unwritten, []
            if writes and self._flush_timer is not None:
                self._flush_timer.cancel()
                self._flush_timer = None
            try:
                async with self.store.engine.begin() as conn:
                    for stmt, many in _batched(writes):
                        await conn.execute(stmt, many)
                    yield conn
            except BaseException:
                if writes:
                    self._unwritten[:0] = writes
                    if self._flush_timer is None:  # tried again in a second
                        loop = asyncio.get_running_loop()
                        self._flush_timer = loop.call_later(1.0, self._flush_in_background)
                raise

    async def flush(self) -> None:
        """Write the queued rows now (reads of training tables call this first: they see every step)."""
        if self._unwritten:
            async with self._tx():
                pass

    async def settle(
        self,
        p: Principal,
        reservation: int | None,
        run_id: str,
        base_model: str,
        u: Usage,
        ok: bool,
        op: str,
        *,
        steps: int | None = None,
        loss_history: str | None = None,
    ) -> float:
        """Settle the reservation, add the ledger row, update the run's counters (and steps or loss history)."""
        cost = self.price(u) if ok else 0.0
        self.ledger.book.settle(p.key_id, reservation, cost)
        now = time.time()
        self.ledger.recorder.add(
            {
                "ts": now,
                "day": time.strftime("%Y-%m-%d", time.gmtime(now)),
                "request_id": uuid.uuid4().hex,
                "key_id": p.key_id,
                "key_name": p.name,
                # Per run: /v1/usage?group_by=model lists each training run's cost.
                "model": run_id[:200],
                "backend": "training",
                "backend_model": base_model[:200],
                "input_tokens": u.prefill,
                "output_tokens": u.sampled,
                "estimated": False,
                "duration_s": u.seconds,
                "status": 200 if ok else 500,
                "ok": ok,
                "streamed": False,
                "error": None if ok else op,
                "cost_usd": cost,
                "operation": "lora_training",
                "images": 0,
                "gpu_seconds": u.seconds,
                "training_tokens": u.train,
            }
        )
        params: dict[str, Any] = {
            "run_id": run_id,
            "train": u.train,
            "prefill": u.prefill,
            "sampled": u.sampled,
            "seconds": u.seconds,
            "cost": cost,
            "now": now,
        }
        extra: tuple[str, ...] = ()
        if steps is not None:
            extra, params["steps"] = ("steps",), steps
        elif loss_history is not None:
            extra, params["loss_history"] = ("loss_history",), loss_history
        self._write_soon([(_SETTLE_RUN[extra], params)])
        return cost

    # --- runs -----------------------------------------------------------------------------------
    def run(self, p: Principal, run_id: str) -> Run:
        r = self.runs.get(run_id)
        if r is None:
            raise StepError(
                f"training run {run_id} is not loaded: it does not exist, was deleted, or the gateway "
                "restarted since (continue from its last saved state)",
                "user",
            )
        if r.key_id != p.key_id and not p.is_master:
            raise StepError(f"training run {run_id} belongs to another API key", "user")
        return r

    async def run_row(self, p: Principal, run_id: str) -> Any:
        """The stored run; NotFoundError / PermissionDeniedError (403) for an unknown or foreign run."""
        await self.flush()
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(training_runs).where(training_runs.c.id == run_id))).first()
        if row is None or row.status == "deleted":
            raise NotFoundError(f"No training run '{run_id}'.", param="run_id")
        if row.key_id != p.key_id and not p.is_master:
            raise PermissionDeniedError(
                f"Training run '{run_id}' belongs to another API key.", code="forbidden"
            )
        return row

    async def create_run(
        self,
        p: Principal,
        run_id: str,
        api: str,
        base_model: str,
        lora: dict[str, Any],
        seed: int | None,
        user_metadata: dict[str, Any] | None,
        from_folder: tuple[Path, bool] | None = None,
    ) -> Run:
        """Start a worker for the base model if needed, add the run's adapter (fresh or from a checkpoint)."""
        self.model_path(base_model)
        w = await self.worker(base_model)
        lora = {"alpha": self.config.lora_alpha, "dropout": 0.0, **lora}
        if from_folder is not None:
            folder, optimizer = from_folder
            try:
                res = await w.call("load", run=run_id, folder=str(folder), optimizer=optimizer)
            except WorkerError as e:
                raise StepError(e.message, e.category) from None
            lora = res["lora"]
        else:
            try:
                await w.call("create", run=run_id, lora=lora, seed=seed)
            except WorkerError as e:
                raise StepError(e.message, e.category) from None
        run = Run(run_id, p.key_id, p.name, base_model, lora, w)
        self.runs[run_id] = run
        now = time.time()
        async with self._tx() as conn:
            await conn.execute(delete(training_runs).where(training_runs.c.id == run_id))
            await conn.execute(
                insert(training_runs).values(
                    id=run_id,
                    key_id=p.key_id,
                    key_name=p.name,
                    api=api,
                    base_model=base_model,
                    lora=orjson.dumps(lora).decode(),
                    status="active",
                    user_metadata=orjson.dumps(user_metadata).decode() if user_metadata else None,
                    created_at=now,
                    last_request_at=now,
                )
            )
        return run

    def submit_forward_backward(
        self, p: Principal, run: Run, data: list[dict[str, Any]], forward_only: bool
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        """Check and queue a forward_backward now; the returned coroutine function waits for it."""
        tokens = sum(len(d["tokens"]) for d in data)
        if len(data) > self.config.max_batch_datums or tokens > self.config.max_batch_tokens:
            raise StepError(
                f"batch too large: {len(data)} datums and {tokens} tokens; this gateway takes at most "
                f"{self.config.max_batch_datums} datums and {self.config.max_batch_tokens} tokens per call",
                "user",
            )
        worst = Usage(prefill=tokens) if forward_only else Usage(train=tokens)
        reservation = self.reserve(p, worst)
        fut = run.worker.submit("forward_backward", run=run.id, data=data, forward_only=forward_only)

        async def wait() -> dict[str, Any]:
            try:
                res: dict[str, Any] = await fut
            except BaseException:
                await self.settle(p, reservation, run.id, run.base_model, Usage(), False, "forward_backward")
                raise
            history = None
            if forward_only:
                u = Usage(prefill=tokens, seconds=res["seconds"])
            else:
                u = Usage(train=tokens, seconds=res["seconds"])
                loss_sum, weight_sum = res["loss_sum"], res["weight_sum"]
                mean = loss_sum / weight_sum if weight_sum else loss_sum
                run.loss_history.append({"step": run.steps, "loss_sum": loss_sum, "loss_mean": mean})
                del run.loss_history[:-1000]
                history = orjson.dumps(run.loss_history).decode()
            res["cost_usd"] = await self.settle(
                p, reservation, run.id, run.base_model, u, True, "forward_backward", loss_history=history
            )
            return res

        return wait

    def submit_optim_step(
        self, p: Principal, run: Run, adam: dict[str, Any]
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        reservation = self.reserve(p, Usage())
        fut = run.worker.submit("optim_step", run=run.id, adam=adam)

        async def wait() -> dict[str, Any]:
            try:
                res: dict[str, Any] = await fut
            except BaseException:
                await self.settle(p, reservation, run.id, run.base_model, Usage(), False, "optim_step")
                raise
            run.steps += 1
            u = Usage(seconds=res["seconds"])
            await self.settle(p, reservation, run.id, run.base_model, u, True, "optim_step", steps=run.steps)
            return res

        return wait

    def submit_sample(
        self,
        p: Principal,
        worker: Worker,
        adapter: str | None,
        run_id: str,
        base_model: str,
        prompt: list[int],
        num_samples: int,
        params: dict[str, Any],
        prompt_logprobs: bool,
    ) -> Callable[[], Awaitable[dict[str, Any]]]:
        max_tokens = params.get("max_tokens")
        max_tokens = 64 if max_tokens is None else int(max_tokens)
        if max_tokens > self.config.max_sample_tokens or max_tokens < 0:
            raise StepError(
                f"max_tokens must be 0..{self.config.max_sample_tokens}, not {max_tokens}", "user"
            )
        if not 1 <= num_samples <= 64:
            raise StepError(f"num_samples must be 1..64, not {num_samples}", "user")
        params = {**params, "max_tokens": max_tokens}
        worst = Usage(
            prefill=len(prompt) * (num_samples + int(prompt_logprobs)), sampled=max_tokens * num_samples
        )
        reservation = self.reserve(p, worst)
        fut = worker.submit(
            "sample",
            run=adapter,
            prompt=prompt,
            num_samples=num_samples,
            params=params,
            prompt_logprobs=prompt_logprobs,
        )

        async def wait() -> dict[str, Any]:
            try:
                res: dict[str, Any] = await fut
            except BaseException:
                await self.settle(p, reservation, run_id, base_model, Usage(), False, "sample")
                raise
            u = Usage(
                prefill=len(prompt) * (num_samples + int(prompt_logprobs)),
                sampled=res["sampled_tokens"],
                seconds=res["seconds"],
            )
            res["cost_usd"] = await self.settle(p, reservation, run_id, base_model, u, True, "sample")
            return res

        return wait

    # --- checkpoints ----------------------------------------------------------------------------
    async def save(
        self, p: Principal, run: Run, kind: str, name: str, optimizer: bool, overwrite: bool = False
    ) -> dict[str, Any]:
        check_name(name)
        ckpt_id = f"{kind}/{name}"
        async with self.store.engine.connect() as conn:
            exists = (
                await conn.execute(
                    select(training_checkpoints.c.run_id).where(
                        training_checkpoints.c.run_id == run.id,
                        training_checkpoints.c.checkpoint_id == ckpt_id,
                    )
                )
            ).first()
        if exists is not None and not overwrite:
            raise StepError(
                f"checkpoint {ckpt_id} of run {run.id} already exists; choose another name", "user"
            )
        res: dict[str, Any] = await run.worker.call(
            "save",
            run=run.id,
            folder=str(self.files.folder(run.id, kind, name)),
            optimizer=optimizer,
            meta={"run_id": run.id, "name": name},
            merged=kind == "merged",
        )
        try:
            res["size_bytes"] = await self.files.commit(run.id, kind, name)
        except (StorageError, CheckpointError) as e:
            raise StepError(f"checkpoint {ckpt_id} could not be stored: {e}", "server") from None
        res["uri"] = self.files.uri(run.id, kind, name)
        async with self._tx() as conn:
            await conn.execute(
                delete(training_checkpoints).where(
                    training_checkpoints.c.run_id == run.id, training_checkpoints.c.checkpoint_id == ckpt_id
                )
            )
            await conn.execute(
                insert(training_checkpoints).values(
                    run_id=run.id,
                    checkpoint_id=ckpt_id,
                    kind=kind,
                    name=name,
                    key_id=run.key_id,
                    size_bytes=res["size_bytes"],
                    optimizer=int(optimizer),
                    created_at=time.time(),
                )
            )
        return {**res, "checkpoint_id": ckpt_id, "tinker_path": f"tinker://{run.id}/{ckpt_id}"}

    async def checkpoint(self, p: Principal, run_id: str, kind: str, name: str) -> Any:
        """A stored checkpoint row the caller may use; StepError (user) otherwise."""
        async with self.store.engine.connect() as conn:
            row = (
                await conn.execute(
                    select(training_checkpoints).where(
                        training_checkpoints.c.run_id == run_id,
                        training_checkpoints.c.checkpoint_id == f"{kind}/{name}",
                    )
                )
            ).first()
        try:
            stored = row is not None and await self.files.exists(run_id, kind, name)
        except StorageError as e:
            raise StepError(f"checkpoint tinker://{run_id}/{kind}/{name}: {e}", "server") from None
        if row is None or not stored:
            raise StepError(f"checkpoint tinker://{run_id}/{kind}/{name} does not exist", "user")
        if row.key_id != p.key_id and not p.is_master:
            raise StepError(f"checkpoint tinker://{run_id}/{kind}/{name} belongs to another API key", "user")
        return row

    async def checkpoints(self, p: Principal, run_id: str | None) -> list[Any]:
        q = select(training_checkpoints).order_by(training_checkpoints.c.created_at)
        if run_id is not None:
            q = q.where(training_checkpoints.c.run_id == run_id)
        if not p.is_master:
            q = q.where(training_checkpoints.c.key_id == p.key_id)
        async with self.store.engine.connect() as conn:
            return list((await conn.execute(q)).all())

    async def delete_checkpoint(self, p: Principal, run_id: str, kind: str, name: str) -> None:
        try:
            await self.checkpoint(p, run_id, kind, name)
        except StepError as e:
            raise NotFoundError(e.message) from None
        try:
            await self.files.delete(run_id, kind, name)
        except StorageError as e:
            raise UpstreamUnavailableError(
                f"checkpoint tinker://{run_id}/{kind}/{name}: {e}", code="storage_unavailable"
            ) from None
        async with self._tx() as conn:
            await conn.execute(
                delete(training_checkpoints).where(
                    training_checkpoints.c.run_id == run_id,
                    training_checkpoints.c.checkpoint_id == f"{kind}/{name}",
                )
            )

    async def load_adapter(self, p: Principal, run_id: str, kind: str, name: str) -> tuple[Worker, str, str]:
        """A saved checkpoint loaded (once) into its base model's worker for sampling: (worker, adapter, base)."""
        await self.checkpoint(p, run_id, kind, name)
        meta = await self.read_meta(run_id, kind, name)
        base = meta["base_model"]
        w = await self.worker(base)
        adapter = f"ckpt:{run_id}/{kind}/{name}"
        folder = await self.fetch(run_id, kind, name)
        try:
            await w.call("load", run=adapter, folder=str(folder), optimizer=False)
        except WorkerError as e:
            raise StepError(e.message, e.category) from None
        return w, adapter, base

    async def read_meta(self, run_id: str, kind: str, name: str) -> dict[str, Any]:
        """A stored checkpoint's record (base model, LoRA settings, files); StepError when unreadable."""
        try:
            return await self.files.read_meta(run_id, kind, name)
        except (StorageError, CheckpointError) as e:
            raise StepError(f"checkpoint tinker://{run_id}/{kind}/{name}: {e}", "server") from None

    async def fetch(self, run_id: str, kind: str, name: str) -> Path:
        """A stored checkpoint as a local folder a worker can load (from the cache, or downloaded)."""
        try:
            return await self.files.fetch(run_id, kind, name)
        except (StorageError, CheckpointError) as e:
            raise StepError(f"checkpoint tinker://{run_id}/{kind}/{name}: {e}", "server") from None

    # --- sessions -------------------------------------------------------------------------------
    async def create_session(self, p: Principal) -> str:
        sid = str(uuid.uuid4())
        now = time.time()
        async with self._tx() as conn:
            await conn.execute(
                insert(training_sessions).values(id=sid, key_id=p.key_id, created_at=now, heartbeat_at=now)
            )
        return sid

    async def session(self, p: Principal, sid: str) -> Any:
        async with self.store.engine.connect() as conn:
            row = (await conn.execute(select(training_sessions).where(training_sessions.c.id == sid))).first()
        if row is None or (row.key_id != p.key_id and not p.is_master):
            raise NotFoundError(f"No session '{sid}'.", param="session_id")
        return row

    async def heartbeat(self, p: Principal, sid: str, finish: str | None = None) -> None:
        await self.session(p, sid)
        values: dict[str, Any] = {"heartbeat_at": time.time()}
        if finish is not None:
            values.update(finished_at=time.time(), finish_reason=finish[:32])
        async with self._tx() as conn:
            await conn.execute(
                update(training_sessions).where(training_sessions.c.id == sid).values(**values)
            )

    async def add_sampler(self, p: Principal, s: Sampler) -> None:
        self.samplers[s.id] = s
        async with self._tx() as conn:
            await conn.execute(delete(sampling_sessions).where(sampling_sessions.c.id == s.id))
            await conn.execute(
                insert(sampling_sessions).values(
                    id=s.id,
                    key_id=p.key_id,
                    base_model=s.base_model,
                    model_path=s.model_path,
                    created_at=time.time(),
                )
            )

    def sampler(self, p: Principal, sid: str) -> Sampler:
        s = self.samplers.get(sid)
        if s is None or (s.key_id != p.key_id and not p.is_master):
            raise StepError(f"sampling session {sid} does not exist (or the gateway restarted since)", "user")
        return s

    async def list_runs(self, p: Principal, limit: int, offset: int) -> tuple[list[Any], int]:
        q = select(training_runs).where(training_runs.c.status != "deleted")
        if not p.is_master:
            q = q.where(training_runs.c.key_id == p.key_id)
        await self.flush()
        async with self.store.engine.connect() as conn:
            rows = list((await conn.execute(q.order_by(training_runs.c.created_at))).all())
        return rows[offset : offset + limit], len(rows)

    async def delete_run(self, p: Principal, run_id: str) -> None:
        await self.run_row(p, run_id)
        run = self.runs.pop(run_id, None)
        if run is not None:
            try:
                await run.worker.call("drop", run=run_id)
            except WorkerError:
                pass
        async with self._tx() as conn:
            await conn.execute(
                update(training_runs).where(training_runs.c.id == run_id).values(status="deleted")
            )


__all__ = [
    "JSON",
    "PROTO",
    "FutureRec",
    "Run",
    "Sampler",
    "StepError",
    "TrainingService",
    "Usage",
    "check_name",
    "parse_tinker_path",
]
