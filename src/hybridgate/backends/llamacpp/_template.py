"""How chat messages become one prompt for a local model: the built-in question/answer template for base
models, or the chat template the GGUF file carries.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

from hybridgate.backends._base import BackendHTTPError


class PromptTemplate(BaseModel):
    """How chat messages become one prompt for a model without a chat template (a base model).

    Base models only continue text, so the default writes a short instruction and a few solved examples,
    then the conversation as question/answer turns, and ends with the answer cue; the stop sequences end
    the answer where the model would start the next question. `{content}` marks where a message goes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Used as the system message when the request has none.
    default_system: str = "Answer each question correctly and briefly."
    # Few-shot (user, assistant) pairs written after the system text, through the same formats.
    examples: list[tuple[str, str]] = [
        ("Can you tell me the largest planet in the solar system?", "Jupiter."),
        ("In one word, what color is the sky on a clear day?", "Blue."),
        ("How many legs does a spider have?", "Eight."),
    ]
    system: str = "{content}\n\n"
    user: str = "Question: {content}\n"
    assistant: str = "Answer: {content}\n\n"
    # Written after the last message: the cue for the model's answer.
    generation: str = "Answer:"
    stop: list[str] = ["\n\nQuestion:", "\nQuestion:"]

    @field_validator("system", "user", "assistant")
    @classmethod
    def _has_slot(cls, v: str) -> str:
        if "{content}" not in v:
            raise ValueError("must contain {content}, where the message text goes")
        return v

    def prefix(self, system: Sequence[str] = ()) -> str:
        """The system text and the examples: the same for every request without a system message."""
        parts = [self.system.replace("{content}", "\n".join(system) if system else self.default_system)]
        for question, answer in self.examples:
            parts.append(self.user.replace("{content}", question))
            parts.append(self.assistant.replace("{content}", answer))
        return "".join(parts)

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        """The prompt text for `messages` (system and developer messages first, then the turns in order)."""
        system = [message_text(m) for m in messages if m.get("role") in ("system", "developer")]
        parts = [self.prefix(system)]
        for m in messages:
            role = m.get("role")
            if role in ("system", "developer"):
                continue
            fmt = self.assistant if role == "assistant" else self.user
            parts.append(fmt.replace("{content}", message_text(m)))
        parts.append(self.generation)
        return "".join(parts)


class ModelChatTemplate:
    """A chat template read from the GGUF's metadata (`tokenizer.chat_template`), rendered with Jinja."""

    def __init__(self, source: str, bos_token: str, eos_token: str) -> None:
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        self.template = env.from_string(source)
        self.bos_token, self.eos_token = bos_token, eos_token

    def render(self, messages: Sequence[dict[str, Any]]) -> str:
        def raise_exception(message: str) -> None:
            raise ValueError(message)

        msgs = [{**m, "content": message_text(m)} for m in messages]
        return self.template.render(
            messages=msgs,
            bos_token=self.bos_token,
            eos_token=self.eos_token,
            add_generation_prompt=True,
            raise_exception=raise_exception,
            strftime_now=lambda fmt: time.strftime(fmt),
        )


def message_text(m: dict[str, Any]) -> str:
    """A message's text; a local model reads text parts only."""
    c = m.get("content")
    if c is None or isinstance(c, str):
        return c or ""
    out = []
    for part in c:
        if isinstance(part, dict) and part.get("type", "text") == "text":
            out.append(str(part.get("text", "")))
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _client_error(f"This local model reads text only, not {kind!r} parts.", "messages")
    return "".join(out)


def _client_error(message: str, param: str, code: str = "invalid_value") -> BackendHTTPError:
    """A request this backend cannot take: the client's to fix (400, not retried elsewhere)."""
    body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}
    return BackendHTTPError(message, status=400, body=body)


DEFAULT_TEMPLATE = PromptTemplate()
