"""OpenAI request and answer shapes <-> Gemini's generateContent, without any I/O.

The wire format (camelCase JSON; streamed answers are whole GenerateContentResponse objects in SSE events,
with the finish reason and the complete usage on the last one) was checked by running the official
google-genai SDK against a loopback server: shared/research/fal-runpod-gemini-sdks.md, section 3.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any

from hybridgate.protocol import Endpoint, Usage, whole_count

# Finish reasons that mean "a filter stopped it": the OpenAI shape says content_filter.
_FILTERED = frozenset(
    {
        "SAFETY",
        "RECITATION",
        "LANGUAGE",
        "BLOCKLIST",
        "PROHIBITED_CONTENT",
        "SPII",
        "IMAGE_SAFETY",
        "IMAGE_PROHIBITED_CONTENT",
        "IMAGE_RECITATION",
    }
)
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+);base64,(.*)$", re.S)
# OpenAI parameters with no Gemini counterpart that change the answer: refused (400) rather than ignored.
_UNSUPPORTED_CHAT = (
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "logit_bias",
    "audio",
    "prediction",
)
_UNSUPPORTED_COMPLETIONS = ("logit_bias", "suffix")


class TranslationError(Exception):
    """The request asks for something the gemini kind cannot express: the client's 400, naming `param`."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def finish_reason(gemini: str | None) -> str | None:
    """Gemini's finishReason as OpenAI's finish_reason (None while a candidate is still going)."""
    if not gemini or gemini == "FINISH_REASON_UNSPECIFIED":
        return None
    if gemini == "MAX_TOKENS":
        return "length"
    if gemini in _FILTERED:
        return "content_filter"
    return "stop"  # STOP, and OTHER / MALFORMED_FUNCTION_CALL: the answer ended


def _refusal(candidate: dict[str, Any]) -> str:
    """Why a filter stopped a candidate, in words: its finish reason, message and the flagged categories."""
    reason = str(candidate.get("finishReason"))
    out = f"Gemini stopped the answer: finish reason {reason}"
    if candidate.get("finishMessage"):
        out += f" ({candidate['finishMessage']})"
    flagged = [
        f"{r.get('category')}={r.get('probability')}"
        for r in candidate.get("safetyRatings") or ()
        if isinstance(r, dict) and (r.get("blocked") or r.get("probability") in ("MEDIUM", "HIGH"))
    ]
    if flagged:
        out += "; flagged: " + ", ".join(flagged)
    return out


def _blocked(payload: dict[str, Any]) -> str | None:
    """Why the whole prompt was blocked, or None when it was not."""
    fb = payload.get("promptFeedback")
    if not isinstance(fb, dict) or not fb.get("blockReason"):
        return None
    out = f"Gemini blocked the prompt: block reason {fb['blockReason']}"
    if fb.get("blockReasonMessage"):
        out += f" ({fb['blockReasonMessage']})"
    return out


def usage_of(meta: Any) -> Usage | None:
    """usageMetadata as Usage: thinking tokens are billed as output, so they count as completion tokens."""
    if not isinstance(meta, dict):
        return None
    try:
        prompt = int(meta.get("promptTokenCount") or 0) + int(meta.get("toolUsePromptTokenCount") or 0)
        out = int(meta.get("candidatesTokenCount") or 0) + int(meta.get("thoughtsTokenCount") or 0)
    except (TypeError, ValueError):
        return None
    return Usage(prompt, out)


def _usage_json(meta: Any, usage: Usage) -> dict[str, Any]:
    d: dict[str, Any] = usage.as_dict()
    if isinstance(meta, dict):
        if meta.get("thoughtsTokenCount"):
            d["completion_tokens_details"] = {"reasoning_tokens": int(meta["thoughtsTokenCount"])}
        if meta.get("cachedContentTokenCount"):
            d["prompt_tokens_details"] = {"cached_tokens": int(meta["cachedContentTokenCount"])}
    return d


def _text(candidate: dict[str, Any]) -> str:
    """A candidate's answer text: its text parts, without thought summaries."""
    content = candidate.get("content")
    parts = content.get("parts") if isinstance(content, dict) else None
    return "".join(
        p["text"]
        for p in parts or ()
        if isinstance(p, dict) and isinstance(p.get("text"), str) and not p.get("thought")
    )


# ---- requests -------------------------------------------------------------------------------------------


def _parts(content: Any, where: str) -> list[dict[str, Any]]:
    """An OpenAI message content (a string or a list of parts) as Gemini parts."""
    if isinstance(content, str):
        return [{"text": content}]
    if not isinstance(content, list):
        raise TranslationError(f"{where}.content must be a string or a list of parts", where)
    out: list[dict[str, Any]] = []
    for i, part in enumerate(content):
        p = f"{where}.content[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            out.append({"text": part["text"]})
        elif kind == "image_url":
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            m = _DATA_URL.match(url) if isinstance(url, str) else None
            if m is None:
                raise TranslationError(
                    f"{p}: the gemini backend takes images inline only; send a data: URL "
                    "(data:image/png;base64,...)",
                    p,
                )
            out.append({"inlineData": {"mimeType": m.group(1), "data": m.group(2)}})
        elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
            audio = part["input_audio"]
            fmt = str(audio.get("format") or "wav")
            out.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": str(audio.get("data") or "")}})
        else:
            raise TranslationError(f"{p}: part type {kind!r} is not supported by the gemini backend", p)
    return out


def _contents(messages: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(system parts, contents): system and developer messages become the system instruction; user and
    assistant turns become user and model turns, consecutive turns of one role merged into one."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        role = m.get("role") if isinstance(m, dict) else None
        if role in ("system", "developer"):
            system.extend(_parts(m.get("content"), where))
            continue
        if role == "user":
            g_role = "user"
        elif role == "assistant":
            if m.get("tool_calls") or m.get("function_call"):
                raise TranslationError(
                    f"{where}: tool calls are not supported by the gemini backend", f"{where}.tool_calls"
                )
            g_role = "model"
        else:
            raise TranslationError(
                f"{where}: role {role!r} is not supported by the gemini backend "
                "(system, developer, user and assistant are)",
                f"{where}.role",
            )
        content = m.get("content")
        if content is None:
            raise TranslationError(f"{where}.content is missing", f"{where}.content")
        parts = _parts(content, where)
        if contents and contents[-1]["role"] == g_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": g_role, "parts": parts})
    if not contents:
        raise TranslationError(
            "the gemini backend needs at least one user or assistant message besides system ones", "messages"
        )
    return system, contents


def _generation_config(body: dict[str, Any], max_tokens: int | None) -> dict[str, Any]:
    g: dict[str, Any] = {}
    for ours, theirs in (
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ):
        v = body.get(ours)
        if v is not None:
            g[theirs] = v
    limits = [
        c
        for c in (whole_count(body.get("max_tokens")), whole_count(body.get("max_completion_tokens")))
        if c is not None
    ]
    limit = max(limits) if limits else max_tokens
    if limit is not None:
        g["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = [stop]
    if stop:
        g["stopSequences"] = [s for s in stop if isinstance(s, str) and s]
    n = whole_count(body.get("n"))
    if n is not None and n != 1:
        g["candidateCount"] = n
    seed = whole_count(body.get("seed"))
    if seed is not None:
        g["seed"] = seed
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") not in (None, "text"):
        if fmt.get("type") != "json_object":
            raise TranslationError(
                f"response_format type {fmt.get('type')!r} is not supported by the gemini backend "
                "(text and json_object are)",
                "response_format",
            )
        g["responseMimeType"] = "application/json"
    return g


def request_body(
    endpoint: Endpoint,
    body: dict[str, Any],
    max_tokens: int | None,
    safety_settings: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The generateContent body for an OpenAI chat or completions body; TranslationError if it cannot be."""
    if endpoint == "chat":
        for name in _UNSUPPORTED_CHAT:
            if body.get(name) not in (None, [], {}):
                raise TranslationError(f"`{name}` is not supported by the gemini backend", name)
        if body.get("logprobs") or body.get("top_logprobs"):
            raise TranslationError("`logprobs` is not supported by the gemini backend", "logprobs")
        messages = body.get("messages")
        if not isinstance(messages, list):
            raise TranslationError("messages must be a list", "messages")
        system, contents = _contents(messages)
    else:
        for name in _UNSUPPORTED_COMPLETIONS:
            if body.get(name) not in (None, ""):
                raise TranslationError(f"`{name}` is not supported by the gemini backend", name)
        if body.get("echo"):
            raise TranslationError("`echo` is not supported by the gemini backend", "echo")
        if body.get("logprobs") is not None:
            raise TranslationError("`logprobs` is not supported by the gemini backend", "logprobs")
        if (whole_count(body.get("best_of")) or 1) > 1:
            raise TranslationError("`best_of` is not supported by the gemini backend", "best_of")
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise TranslationError(
                "the gemini backend takes one text prompt (not token ids or a batch of prompts)", "prompt"
            )
        system, contents = [], [{"role": "user", "parts": [{"text": prompt}]}]
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    config = _generation_config(body, max_tokens)
    if config:
        out["generationConfig"] = config
    if safety_settings:
        out["safetySettings"] = safety_settings
    return out


# ---- answers --------------------------------------------------------------------------------------------


def completion_id(endpoint: Endpoint, payload: dict[str, Any]) -> str:
    rid = payload.get("responseId")
    tail = rid if isinstance(rid, str) and rid.isascii() and 0 < len(rid) <= 64 else os.urandom(12).hex()
    return ("chatcmpl-" if endpoint == "chat" else "cmpl-") + tail


def response_body(endpoint: Endpoint, payload: dict[str, Any], model: str) -> tuple[dict[str, Any], Usage]:
    """A whole generateContent answer as an OpenAI chat.completion / text_completion, with its usage.

    Raises ValueError when the answer holds neither candidates nor a reason for having none."""
    candidates = payload.get("candidates")
    choices: list[dict[str, Any]] = []
    if isinstance(candidates, list) and candidates:
        ordered = sorted(
            (c for c in candidates if isinstance(c, dict)), key=lambda c: int(c.get("index") or 0)
        )
        for i, c in enumerate(ordered):
            reason = finish_reason(c.get("finishReason")) or "stop"
            refusal = _refusal(c) if reason == "content_filter" else None
            choices.append(_choice(endpoint, i, _text(c), reason, refusal))
    else:
        why = _blocked(payload)
        if why is None:
            raise ValueError("the answer has no candidates and no block reason")
        choices.append(_choice(endpoint, 0, None, "content_filter", why))
    usage = usage_of(payload.get("usageMetadata"))
    reported = usage is not None
    if usage is None:
        usage = Usage(estimated=True)
    body: dict[str, Any] = {
        "id": completion_id(endpoint, payload),
        "object": "chat.completion" if endpoint == "chat" else "text_completion",
        "created": int(time.time()),
        "model": model,
        "choices": choices,
        "system_fingerprint": None,
    }
    if reported:
        body["usage"] = _usage_json(payload.get("usageMetadata"), usage)
    return body, usage


def _choice(
    endpoint: Endpoint, index: int, text: str | None, reason: str, refusal: str | None
) -> dict[str, Any]:
    if endpoint == "chat":
        return {
            "index": index,
            "message": {"role": "assistant", "content": text, "refusal": refusal},
            "logprobs": None,
            "finish_reason": reason,
        }
    return {"index": index, "text": text or "", "logprobs": None, "finish_reason": reason}


@dataclass
class StreamTranslator:
    """Gemini stream events in, OpenAI chunks out. Usage comes from the last event that carried it (the
    final one holds the complete counts; earlier ones only the prompt's), never a sum over events."""

    endpoint: Endpoint
    model: str
    # How many candidates were asked for (n): the stream is complete when that many have finished.
    expected: int = 1
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))
    started: set[int] = field(default_factory=set)
    finished: set[int] = field(default_factory=set)
    usage_meta: dict[str, Any] | None = None
    blocked: bool = False

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The chunks for one event (possibly none)."""
        if not self.id:
            self.id = completion_id(self.endpoint, event)
        meta = event.get("usageMetadata")
        if isinstance(meta, dict):
            self.usage_meta = meta
        out: list[dict[str, Any]] = []
        candidates = event.get("candidates")
        if isinstance(candidates, list) and candidates:
            for c in candidates:
                if not isinstance(c, dict):
                    continue
                i = int(c.get("index") or 0)
                text = _text(c)
                reason = finish_reason(c.get("finishReason"))
                if text or i not in self.started:
                    out.append(self._chunk(i, text=text, role=i not in self.started))
                    self.started.add(i)
                if reason is not None:
                    refusal = _refusal(c) if reason == "content_filter" else None
                    out.append(self._chunk(i, finish=reason, refusal=refusal))
                    self.finished.add(i)
        else:
            why = _blocked(event)
            if why is not None:
                if 0 not in self.started:
                    out.append(self._chunk(0, text="", role=True))
                    self.started.add(0)
                out.append(self._chunk(0, finish="content_filter", refusal=why))
                self.finished.add(0)
                self.blocked = True
        return out

    @property
    def complete(self) -> bool:
        """Every candidate asked for has a finish reason (or the prompt was blocked: no candidate will)."""
        return self.blocked or (len(self.finished) >= self.expected and self.started <= self.finished)

    def usage(self) -> Usage | None:
        return usage_of(self.usage_meta)

    def usage_chunk(self) -> dict[str, Any] | None:
        """The closing usage-only chunk, from the final usageMetadata; None when Gemini sent none."""
        usage = self.usage()
        if usage is None:
            return None
        return {
            "id": self.id,
            "object": "chat.completion.chunk" if self.endpoint == "chat" else "text_completion",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": _usage_json(self.usage_meta, usage),
        }

    def _chunk(
        self,
        index: int,
        *,
        text: str | None = None,
        role: bool = False,
        finish: str | None = None,
        refusal: str | None = None,
    ) -> dict[str, Any]:
        choice: dict[str, Any]
        if self.endpoint == "chat":
            delta: dict[str, Any] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            if refusal is not None:
                delta["refusal"] = refusal
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
            obj = "text_completion"
        return {
            "id": self.id,
            "object": obj,
            "created": self.created,
            "model": self.model,
            "choices": [choice],
            "system_fingerprint": None,
        }


__all__ = [
    "StreamTranslator",
    "TranslationError",
    "finish_reason",
    "request_body",
    "response_body",
    "usage_of",
]
