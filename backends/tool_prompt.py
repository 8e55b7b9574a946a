"""Backend.render_prompt for every backend: the conversation through a chat template, tokenized.

A template with no tool section (ChatML ones such as SmolLM2's, tandem's tiny models) would drop the
tools silently; they are described to the model in the system message instead, in Hermes' words and
format (`<tool_call>{"name": ..., "arguments": ...}</tool_call>`), the format the gateway then parses
under tool_choice auto. A forced call does not depend on the model following it: the grammar makes it.

The Prompt also names the markers the output's readers parse that are single tokens of the vocabulary
(backends.tools.markers): the backends write those special tokens' text into the output.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

from backends.base import Prompt, PromptTooLongError, RenderOptions
from backends.chat_template import MAX_RENDERED_CHARS, ChatTemplate, ChatTemplateError
from backends.conversation import Conversation, Message, Role, TextPart, ToolChoiceKind
from backends.template_inputs import takes_tools, template_tools
from backends.tools.detect import format_of_template
from backends.tools.markers import markers_read, single_tokens

_DESCRIPTION = """# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{tools}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> \
XML tags:
<tool_call>
{{"name": <function-name>, "arguments": <args-json-object>}}
</tool_call>"""


def tool_description(conversation: Conversation) -> str:
    tools = template_tools(conversation) or []
    return _DESCRIPTION.format(tools="\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools))


def _calls_as_text(message: Message) -> Message:
    """An assistant's calls as the text the described format has them, after its content."""
    calls = "\n".join(
        f'<tool_call>\n{{"name": {json.dumps(c.name)}, "arguments": {c.arguments}}}\n</tool_call>'
        for c in message.tool_calls
    )
    text = f"{message.text}\n{calls}" if message.text else calls
    return dataclasses.replace(message, content=(*message.images, TextPart(text)), tool_calls=())


def with_tools_described(conversation: Conversation) -> Conversation:
    """For a template with no tool section: the tools as text at the end of the (first) system message (or
    as a system message of their own), and earlier calls as text in their assistant messages, which such a
    template would drop. Tool results keep their role; such templates render every role's content."""
    messages = [_calls_as_text(m) if m.tool_calls else m for m in conversation.messages]
    if not conversation.tools:
        return dataclasses.replace(conversation, messages=tuple(messages))
    description = tool_description(conversation)
    if messages and messages[0].role in (Role.SYSTEM, Role.DEVELOPER):
        first = messages[0]
        text = f"{first.text}\n\n{description}" if first.text else description
        messages[0] = dataclasses.replace(first, content=(TextPart(text),))
    else:
        messages.insert(0, Message.of_text(Role.SYSTEM, description))
    return dataclasses.replace(conversation, messages=tuple(messages), tools=())


THINK_START = "<think>"


def can_think(template: str) -> bool:
    """Whether the template has a thinking switch or writes a reasoning part (Qwen3, DeepSeek-R1, gpt-oss)."""
    return any(
        marker in template for marker in ("enable_thinking", "<think>", "reasoning_content", "<|channel|>")
    )


def render_prompt(
    template: ChatTemplate | None,
    conversation: Conversation,
    options: RenderOptions,
    tokenize: Callable[[str], list[int]],
    model_name: str,
) -> Prompt:
    if options.template is not None:
        limit = MAX_RENDERED_CHARS if options.max_chars is None else options.max_chars
        template = ChatTemplate(options.template, max_chars=limit)
    if template is None:
        raise ChatTemplateError(f"model {model_name!r} has no chat template; use /v1/completions")
    if conversation.thinking and not can_think(template.source):
        raise ChatTemplateError(f"model {model_name!r} does not support thinking")
    if conversation.tool_choice.kind is ToolChoiceKind.NONE:
        # 'none': the model is not to call any; not showing it the tools is what makes that likely
        conversation = dataclasses.replace(conversation, tools=())
    shown = conversation  # the tools the output may call, before a description takes their place
    own_section = takes_tools(template.source)
    described = bool(conversation.tools) and not own_section
    if not own_section:
        conversation = with_tools_described(conversation)
    text = template.render_conversation(conversation, options.add_generation_prompt)
    size = len(text.encode("utf-8", errors="surrogatepass"))
    if options.max_bytes is not None and size > options.max_bytes:
        raise PromptTooLongError(size)
    tool_format = None if described else format_of_template(template.source)
    reasoning = THINK_START in template.source and conversation.thinking is not False
    opened = reasoning and text.rstrip().endswith(THINK_START)  # DeepSeek-R1's, Qwen3's with thinking forced
    markers = single_tokens(markers_read(shown, tool_format, options.tool_parser, reasoning), tokenize)
    return Prompt(tokenize(text), text, tool_format, described, reasoning, opened, markers)
