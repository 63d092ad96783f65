"""The llamacpp backend itself: loads the model in a background thread, then runs one generation at a time
in a worker thread, answering and streaming in OpenAI's shapes. The package docstring lists its options.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import logging
import random
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hybridgate.backends._base import (
    Backend,
    BackendError,
    BackendRequest,
    BackendResponse,
    BackendStreamError,
    BackendTimeoutError,
    BackendUnavailableError,
    Lifecycle,
)
from hybridgate.backends.llamacpp._gate import FifoGate, QueueFull
from hybridgate.backends.llamacpp._model_file import (
    INSTALL_HINT,
    PACKAGED_MODEL,
    ModelFileError,
    check_gguf,
    packaged_model_path,
)
from hybridgate.backends.llamacpp._options import LlamaCppOptions
from hybridgate.backends.llamacpp._stops import StopFilter
from hybridgate.backends.llamacpp._template import (
    DEFAULT_TEMPLATE,
    ModelChatTemplate,
    PromptTemplate,
    _client_error,
)
from hybridgate.config import BackendConfig
from hybridgate.protocol import Usage, chunk_body, completion_id, response_body, usage_chunk

log = logging.getLogger("hybridgate.llamacpp")


@dataclass(slots=True)
class _Prompt:
    """A rendered request, ready for the worker thread."""

    text: str
    special: bool  # parse special tokens (<start_of_turn> ...) in the text
    stops: list[str]
    max_tokens: int | None
    strip_leading: bool  # chat answers start without the space the answer cue leaves
    sampling: dict[str, Any]
    seed: int | None


@dataclass(slots=True, eq=False)
class _Job:
    prompt: _Prompt
    on_text: Callable[[str], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


@dataclass(slots=True)
class _Outcome:
    text: str
    finish_reason: str
    usage: Usage


class LlamaCppBackend(Backend):
    """A GGUF model in this process. See the package docstring for its options and states."""

    Options = LlamaCppOptions
    options: LlamaCppOptions

    def __init__(self, config: BackendConfig) -> None:
        super().__init__(config)  # validates `options` (LlamaCppOptions); a bad one fails the config load
        self._state = "loading"
        self._error: str | None = None
        self._llm: Any = None
        self._chat_template: ModelChatTemplate | None = None
        self._prefix: list[int] | None = None  # the template's fixed prefix, kept evaluated in the model
        self.model_path: Path | None = None
        self.resident_mb: float | None = None
        self._gate = FifoGate(self.options.max_queue)
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loader: threading.Thread | None = None
        self._closing = threading.Event()
        self._running: set[_Job] = set()

    # --- lifecycle --------------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        # "Not starting any more": a failed backend is tried so that its reason is seen (and it fails fast).
        return self._state != "loading"

    @property
    def state(self) -> str:
        return self._state

    @property
    def lifecycle(self) -> Lifecycle:
        return {"loading": Lifecycle.WARMING, "ready": Lifecycle.READY}.get(self._state, Lifecycle.FAILED)

    @property
    def last_error(self) -> str | None:
        return self._error

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        try:
            import llama_cpp  # noqa: F401
        except ImportError as e:
            self._fail(
                f"llama-cpp-python is not installed, so backend '{self.name}' cannot run GGUF models: "
                f"{INSTALL_HINT} ({e})"
            )
            return
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"llamacpp-{self.name}")
        self._loader = threading.Thread(target=self._load, name=f"llamacpp-load-{self.name}", daemon=True)
        self._loader.start()

    def _fail(self, message: str) -> None:
        self._error = message
        self._state = "failed"
        log.error("backend %s failed to start: %s", self.name, message)

    def _load(self) -> None:
        """Runs in the loader thread: find the file, load it, warm it up. Never raises."""
        t0 = time.perf_counter()
        try:
            o = self.options
            if o.load_delay_s and self._closing.wait(o.load_delay_s):
                return
            if o.model_path:
                path = Path(o.model_path).expanduser()
            else:
                log.info("backend %s: locating the packaged model %s", self.name, PACKAGED_MODEL)
                path = packaged_model_path(o.cache_dir)
            check_gguf(path)
            self.model_path = path
            size_mb = path.stat().st_size / 1e6
            log.info("backend %s: loading %s (%.0f MB)", self.name, path, size_mb)
            rss0 = _rss_mb()
            llm = self._open(path)
            if self._closing.is_set():
                llm.close()
                return
            self._adopt_template(llm)
            self._warm_up(llm)
            rss1 = _rss_mb()
            self.resident_mb = rss1 - rss0 if rss0 is not None and rss1 is not None else None
            self._llm = llm
            self._state = "ready"
            log.info(
                "backend %s: model ready in %.1fs (resident +%s MB, process %s MB; template: %s)",
                self.name,
                time.perf_counter() - t0,
                f"{self.resident_mb:.0f}" if self.resident_mb is not None else "?",
                f"{rss1:.0f}" if rss1 is not None else "?",
                "prompt_template" if self._chat_template is None else "the model's own chat template",
            )
        except ModelFileError as e:
            self._fail(str(e))
        except Exception as e:  # a loader that dies silently would leave the backend "loading" forever
            log.exception("backend %s: loading crashed", self.name)
            self._fail(f"loading the model crashed: {type(e).__name__}: {e}")

    def _open(self, path: Path) -> Any:
        from llama_cpp import Llama

        o = self.options
        try:
            return Llama(
                model_path=str(path),
                n_ctx=o.n_ctx,
                n_threads=o.n_threads,
                n_batch=o.n_batch,
                n_gpu_layers=o.n_gpu_layers,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as e:
            hint = (
                "delete it and restart (it is re-assembled from the installed package)"
                if not o.model_path
                else "download it again, or use a llama-cpp-python that knows this model's architecture"
            )
            raise ModelFileError(
                f"llama.cpp could not load model file {path} ({e}); it may be truncated or corrupt: {hint}"
            ) from None

    def _warm_up(self, llm: Any) -> None:
        """Run the template's fixed prefix (instruction and examples) through the model once, now.

        Requests that start with it then only evaluate their own part, which is most of the time to first
        token saved. See `_position` for why this is the only prompt state ever reused.
        """
        tmpl = self.template()
        if isinstance(tmpl, PromptTemplate):
            self._prefix = llm.tokenize(tmpl.prefix().encode("utf-8"), add_bos=True, special=False)
            llm.reset()
            llm.eval(self._prefix)
        else:  # still worth one pass: the first request skips llama.cpp's lazy allocations
            llm.eval(llm.tokenize(b"Hi", add_bos=True))
            llm.reset()

    def _position(self, llm: Any, tokens: list[int]) -> list[int]:
        """Set the model's state for `tokens` and return the tokens still to evaluate.

        llama.cpp's logits depend (slightly, but enough to change a sampled token) on how a prompt was cut
        into batches, so reusing whatever prefix the last request left would make the same request with the
        same seed answer differently depending on what came before it. Only the template's prefix, always
        evaluated as one batch, is reused; any other prompt is evaluated from scratch.
        """
        pre = self._prefix
        if pre and len(tokens) > len(pre) and tokens[: len(pre)] == pre:
            if llm.n_tokens < len(pre) or llm.input_ids[: len(pre)].tolist() != pre:
                llm.reset()
                llm.eval(pre)
            llm.n_tokens = len(pre)  # the next eval drops the cache beyond this point
            return tokens[len(pre) :]
        llm.reset()
        return tokens

    def _adopt_template(self, llm: Any) -> None:
        if self.options.prompt_template is not None:
            return
        source = (llm.metadata or {}).get("tokenizer.chat_template")
        if not source:
            return
        bos, eos = (_token_text(llm, t) for t in (llm.token_bos(), llm.token_eos()))
        self._chat_template = ModelChatTemplate(source, bos, eos)

    async def close(self) -> None:
        self._closing.set()
        for job in list(self._running):
            job.cancel.set()
        if self._executor is not None:
            await asyncio.to_thread(self._executor.shutdown, True, cancel_futures=True)
        if self._llm is not None:
            self._llm.close()
            self._llm = None

    async def check_health(self) -> None:
        if self._state == "failed":
            raise BackendUnavailableError(self._error or "failed")
        if self._state != "ready":
            raise BackendUnavailableError(f"model still {self._state}")

    # --- requests ---------------------------------------------------------------------------------
    def template(self) -> PromptTemplate | ModelChatTemplate:
        """What renders chat messages: options.prompt_template, else the model's own, else the default."""
        return self.options.prompt_template or self._chat_template or DEFAULT_TEMPLATE

    def prepare(self, req: BackendRequest) -> _Prompt:
        """Render a request into a prompt; a request this model cannot take is the client's error (400)."""
        body = req.body
        stops_raw = body.get("stop")
        stops = [stops_raw] if isinstance(stops_raw, str) else list(stops_raw or [])
        if req.endpoint == "chat":
            tmpl = self.template()
            try:
                text = tmpl.render(body.get("messages") or [])
            except BackendError:
                raise
            except Exception as e:  # a chat template may reject a conversation (e.g. roles out of order)
                msg = f"The model's chat template rejected these messages: {e}"
                raise _client_error(msg, "messages") from None
            if isinstance(tmpl, PromptTemplate):
                stops += tmpl.stop
            special, strip = isinstance(tmpl, ModelChatTemplate), True
        else:
            prompt = body.get("prompt") or ""
            if isinstance(prompt, list):
                if len(prompt) != 1 or not isinstance(prompt[0], str):
                    raise _client_error("This local model takes one text prompt per request.", "prompt")
                prompt = prompt[0]
            text, special, strip = str(prompt), True, False
        o = self.options
        sampling = {
            "temp": _num(body.get("temperature"), 1.0),
            "top_p": _num(body.get("top_p"), 1.0),
            "top_k": int(_num(body.get("top_k"), o.top_k)),
            "min_p": _num(body.get("min_p"), o.min_p),
            "repeat_penalty": _num(body.get("repeat_penalty"), o.repeat_penalty),
            "frequency_penalty": _num(body.get("frequency_penalty"), 0.0),
            "presence_penalty": _num(body.get("presence_penalty"), 0.0),
        }
        seed = body.get("seed")
        seed = int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else None
        return _Prompt(text, special, stops, req.max_tokens, strip, sampling, seed)

    def _check_usable(self) -> None:
        if self._state == "failed":
            raise BackendUnavailableError(self._error or "failed")
        if self._state != "ready" or self._llm is None:
            raise BackendUnavailableError(f"model still {self._state}")

    async def _enter(self) -> None:
        """Wait for the model, in turn; refuse at once when the queue is full."""
        timeout = self.config.timeouts.first_byte_s
        try:
            await self._gate.acquire(timeout)
        except QueueFull:
            raise BackendUnavailableError(
                f"busy: the local model is generating and its queue is full ({self._gate.waiting} waiting, "
                f"options.max_queue={self._gate.max_queue}); retry shortly",
                status=503,
            ) from None
        except TimeoutError:
            raise BackendTimeoutError(
                f"waited {timeout:g}s in the queue for this local model (timeouts.first_byte_s)"
            ) from None

    def _submit(self, job: _Job) -> concurrent.futures.Future[_Outcome]:
        """Run a job in the worker thread; the gate opens for the next job only once the thread is done."""
        assert self._executor is not None and self._loop is not None
        loop = self._loop
        try:
            fut = self._executor.submit(self._generate, job)
        except RuntimeError:  # executor shut down: the gateway is closing
            self._gate.release()
            raise BackendUnavailableError("the gateway is shutting down") from None
        self._running.add(job)

        def done(_: concurrent.futures.Future[_Outcome]) -> None:
            self._running.discard(job)
            try:
                loop.call_soon_threadsafe(self._gate.release)
            except RuntimeError:  # loop closed at shutdown: nobody is waiting any more
                pass

        fut.add_done_callback(done)
        return fut

    def _generate(self, job: _Job) -> _Outcome:
        """Runs in the worker thread, the only thread that touches the model after loading."""
        import llama_cpp

        llm, p = self._llm, job.prompt
        if job.cancel.is_set():  # its client left before its turn came: skip the prompt evaluation too
            return _Outcome("", "cancelled", Usage())
        data = p.text.encode("utf-8")
        bos = llm.token_bos()
        # A chat template writes the BOS token itself; do not add a second one.
        add_bos = not (p.special and bos >= 0 and p.text.startswith(_token_text(llm, bos)))
        tokens = llm.tokenize(data, add_bos=add_bos, special=p.special)
        room = llm.n_ctx() - len(tokens)
        if room <= 0:
            msg = (
                f"This model's context is {llm.n_ctx()} tokens, but the prompt has {len(tokens)} tokens. "
                "Shorten the messages (or raise options.n_ctx)."
            )
            raise _client_error(msg, "messages", "context_length_exceeded")
        limit = min(p.max_tokens or self.options.default_max_tokens, room)
        llm.set_seed(p.seed if p.seed is not None else random.getrandbits(32))
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        stops = StopFilter(p.stops)
        vocab = llm._model.vocab
        out: list[str] = []
        strip = p.strip_leading
        n, finish, hit = 0, "length", False

        def emit(text: str) -> None:
            nonlocal strip
            if strip:
                text = text.lstrip()
                if not text:
                    return
                strip = False
            out.append(text)
            if job.on_text is not None:
                job.on_text(text)

        for tok in llm.generate(self._position(llm, tokens), reset=False, **p.sampling):
            if job.cancel.is_set():
                finish = "cancelled"
                break
            if llama_cpp.llama_vocab_is_eog(vocab, tok):
                finish = "stop"
                break
            n += 1
            text, hit = stops.feed(decoder.decode(llm.detokenize([tok])))
            if text:
                emit(text)
            if hit:
                finish = "stop"
                break
            if n >= limit:
                break
        if not hit and finish != "cancelled":
            # The model ended (EOS or the limit) while text was held back as a possible stop: it is output.
            tail = stops.flush() + decoder.decode(b"", final=True)
            if tail:
                emit(tail)
        return _Outcome("".join(out), finish, Usage(len(tokens), n))

    async def complete(self, req: BackendRequest) -> BackendResponse:
        self._check_usable()
        prompt = self.prepare(req)
        await self._enter()
        job = _Job(prompt)
        fut = self._submit(job)
        try:
            outcome = await asyncio.shield(asyncio.wrap_future(fut))
        except asyncio.CancelledError:
            job.cancel.set()  # the caller gave up: stop at the next token; the gate opens when it has
            raise
        except BackendError:
            raise
        except Exception as e:
            log.exception("backend %s: generation failed", self.name)
            raise BackendUnavailableError(f"generation failed: {type(e).__name__}: {e}") from None
        model = str(req.body.get("model", self.name))
        id_ = completion_id(req.endpoint)
        body = response_body(req.endpoint, id_, model, outcome.text, outcome.finish_reason, outcome.usage)
        return BackendResponse(body, outcome.usage)

    async def stream(self, req: BackendRequest) -> AsyncIterator[dict[str, Any]]:
        batches = self.stream_batches(req)
        try:
            async for batch in batches:
                for chunk in batch:
                    yield chunk
        finally:
            await batches.aclose()  # at once, not at garbage collection: it frees the model

    async def stream_batches(self, req: BackendRequest) -> AsyncGenerator[list[dict[str, Any]], None]:
        """Chunks as the model makes them; tokens that piled up while the client was slow go out together."""
        self._check_usable()
        prompt = self.prepare(req)
        await self._enter()
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()

        def on_text(text: str) -> None:
            try:
                loop.call_soon_threadsafe(pieces.put_nowait, text)
            except RuntimeError:  # loop closed: stop generating for nobody
                job.cancel.set()

        job = _Job(prompt, on_text)
        fut = self._submit(job)
        wrapped = asyncio.wrap_future(fut)

        def finished(f: asyncio.Future[_Outcome]) -> None:
            if not f.cancelled():
                f.exception()  # retrieved here too, so a stream closed early logs no "never retrieved"
            pieces.put_nowait(None)  # after every piece: the worker queued those before it returned

        wrapped.add_done_callback(finished)
        endpoint, model = req.endpoint, str(req.body.get("model", self.name))
        id_, created = completion_id(endpoint), int(time.time())
        started, done = False, False
        try:
            while not done:
                texts = [await pieces.get()]
                while not pieces.empty():
                    texts.append(pieces.get_nowait())
                if texts[-1] is None:
                    texts.pop()
                    done = True
                batch = [chunk_body(endpoint, id_, model, created, text=t) for t in texts if t is not None]
                if batch and not started and endpoint == "chat":
                    batch.insert(0, chunk_body(endpoint, id_, model, created, role=True))
                started = started or bool(batch)
                if batch:
                    yield batch
            try:
                outcome = wrapped.result()
            except BackendError:
                raise
            except Exception as e:
                log.exception("backend %s: generation failed", self.name)
                err = f"generation failed: {type(e).__name__}: {e}"
                raise (BackendStreamError(err) if started else BackendUnavailableError(err)) from None
            tail = []
            if not started and endpoint == "chat":
                tail.append(chunk_body(endpoint, id_, model, created, role=True))
            tail.append(chunk_body(endpoint, id_, model, created, finish_reason=outcome.finish_reason))
            tail.append(usage_chunk(endpoint, id_, model, created, outcome.usage))
            yield tail
        finally:
            # Closed or cancelled (the client went away): the worker stops at its next token.
            job.cancel.set()


def _token_text(llm: Any, token: int) -> str:
    """A special token's text (<bos>), as a chat template writes it."""
    return str(llm.detokenize([token], special=True).decode("utf-8", "replace")) if token >= 0 else ""


def _num(v: Any, default: float) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else default


def _rss_mb() -> float | None:
    """This process's resident memory in MB (Linux), for the loading log and the docs."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None
