"""A model's own chat template (from GGUF metadata or tokenizer_config.json), rendered in a bounded
sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from backends.base import ChatMessage
from backends.conversation import Conversation
from backends.template_inputs import template_variables
from backends.template_sandbox import BUDGET_VARIABLE, BoundedSandbox, RenderBudget, TemplateBoundsError

# What one render may spend. Real chat templates take milliseconds; the cap on characters is an upper bound
# on a prompt any model here can take (512k tokens at 32 bytes each), and callers that know the model's
# context pass a tighter one.
RENDER_TIMEOUT_S = 2.0
MAX_RENDERED_CHARS = 16 * 1024 * 1024
SandboxT = TypeVar("SandboxT", bound=ImmutableSandboxedEnvironment)


class ChatTemplateError(ValueError):
    """The template rejected the conversation (e.g. roles out of order) or could not be rendered."""


def _raise_exception(message: str) -> None:
    raise ChatTemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: Any = None,
    sort_keys: bool = False,
) -> str:
    """Hugging Face's tojson: jinja's own escapes <, >, & and ' for HTML, and takes no separators."""
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class _GenerationBlock(jinja2.ext.Extension):
    """{% generation %}...{% endgeneration %} marks the assistant's text for Hugging Face's training masks;
    rendering it is rendering its body."""

    tags = {"generation"}  # noqa: RUF012  # a set, as jinja's Extension declares it

    def parse(self, parser: Any) -> list[Any]:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def chat_environment(sandbox: type[SandboxT]) -> SandboxT:
    """The environment apply_chat_template renders in (transformers.utils.chat_template_utils); the tests
    build it on jinja's plain sandbox too, to check that the bounds change no template's output."""
    env = sandbox(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols, _GenerationBlock]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env


class ChatTemplate:
    """Renders conversations the way Hugging Face's apply_chat_template does.

    Templates are untrusted input (they ship inside downloaded model files and Modelfiles), hence the
    sandbox, which also bounds a render's time and the size of what it builds (backends.template_sandbox).
    Rendering is CPU work: call it off the event loop.
    """

    def __init__(
        self,
        source: str,
        bos_token: str = "",
        eos_token: str = "",
        *,
        timeout_s: float = RENDER_TIMEOUT_S,
        max_chars: int = MAX_RENDERED_CHARS,
    ) -> None:
        env = chat_environment(BoundedSandbox)
        try:
            self._template = env.compile_guarded(source)
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc
        self.source = source
        self._bos_token = bos_token
        self._eos_token = eos_token
        self._timeout_s = timeout_s
        self._max_chars = max_chars

    def variables(
        self, messages: Sequence[ChatMessage], add_generation_prompt: bool = True
    ) -> dict[str, Any]:
        """What the template sees, as apply_chat_template passes it."""
        return {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "bos_token": self._bos_token,
            "eos_token": self._eos_token,
            "tools": None,  # as apply_chat_template passes them when there are none
            "documents": None,
        }

    def render(
        self,
        messages: Sequence[ChatMessage],
        add_generation_prompt: bool = True,
        *,
        max_chars: int | None = None,
    ) -> str:
        return self._generate(self.variables(messages, add_generation_prompt), max_chars)

    def render_conversation(
        self, conversation: Conversation, add_generation_prompt: bool = True, *, max_chars: int | None = None
    ) -> str:
        """With everything apply_chat_template passes: tool calls, tool results, `tools`, switches such as
        enable_thinking (backends.template_inputs)."""

        def variables(arguments_as_text: bool) -> dict[str, Any]:
            return {
                **template_variables(conversation, self.source, arguments_as_text),
                "add_generation_prompt": add_generation_prompt,
                "bos_token": self._bos_token,
                "eos_token": self._eos_token,
                "documents": None,
            }

        try:
            return self._generate(variables(arguments_as_text=False), max_chars)
        except ChatTemplateError:
            if not any(m.tool_calls for m in conversation.messages):
                raise
            # most templates take a call's arguments as a dict; a few concatenate them as text
            return self._generate(variables(arguments_as_text=True), max_chars)

    def _generate(self, inputs: dict[str, Any], max_chars: int | None) -> str:
        limit = self._max_chars if max_chars is None else min(max_chars, self._max_chars)
        budget = RenderBudget(time.monotonic() + self._timeout_s, self._timeout_s, limit)
        variables = {**inputs, BUDGET_VARIABLE: budget}
        pieces, size = [], 0
        try:
            for piece in self._template.generate(variables):
                size += len(piece)
                budget.check_size(size, "its output")
                pieces.append(piece)
        except ChatTemplateError:
            raise
        except TemplateBoundsError as exc:
            raise ChatTemplateError(f"the model's chat template went over its limits: {exc}") from None
        except jinja2.TemplateError as exc:
            raise ChatTemplateError(f"the model's chat template failed on this conversation: {exc}") from exc
        except (ArithmeticError, LookupError, TypeError, ValueError, RecursionError, MemoryError) as exc:
            # the template is untrusted code: whatever it raises is its failure, not the server's
            raise ChatTemplateError(
                f"the model's chat template failed on this conversation: {type(exc).__name__}: {exc}"
            ) from exc
        return "".join(pieces)
